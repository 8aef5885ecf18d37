import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.studies.bayes.averaging import write_exact_tables

write_exact_tables(
    snakemake.input.studies,
    snakemake.output.sensitivity,
    snakemake.output.averaging,
    **snakemake.params,
)
