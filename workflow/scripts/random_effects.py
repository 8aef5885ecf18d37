import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.studies.random_effects import write_random_effects

write_random_effects(snakemake.input.studies, snakemake.output.table, **snakemake.params.settings)
