import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.studies.regression import write_moderators

write_moderators(
    snakemake.input.studies,
    snakemake.output.coefficients,
    snakemake.output.tests,
    snakemake.output.subgroups,
    **snakemake.params.settings,
)
