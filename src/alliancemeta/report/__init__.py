"""What a reader of the results needs besides the tables: the provenance record of a run."""
