"""One module per workflow rule file: read the processed inputs, call studies/ or sessions/, write the tables.

The only place that knows output columns.  :mod:`.common` runs a stage with clear errors;
:mod:`.ingest`, :mod:`.meta`, :mod:`.bias`, :mod:`.influence`, :mod:`.bayes`, :mod:`.sessions`,
:mod:`.report` and :mod:`.simulation` match ``workflow/rules/<stage>.smk`` (``simulate.smk`` for the last).
"""
