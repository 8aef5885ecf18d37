import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.studies.multilevel import write_multilevel

write_multilevel(snakemake.input.studies, snakemake.output.table, level=snakemake.params.level)
