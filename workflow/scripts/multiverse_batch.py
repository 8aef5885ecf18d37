import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.pipeline.multiverse import write_multiverse_batch

write_multiverse_batch(snakemake.input.studies, snakemake.output.table, **snakemake.params.batch)
