import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.core.inputs import write_processed_studies

write_processed_studies(snakemake.input.raw, snakemake.output.studies, **snakemake.params)
