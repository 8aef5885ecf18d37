import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.pipeline.multiverse import write_multiverse

write_multiverse(
    snakemake.input.batches, snakemake.output.table, snakemake.output.summary, n_specs=snakemake.params.n_specs
)
