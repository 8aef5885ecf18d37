from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.multiverse import write_multiverse

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_multiverse,
    snakemake.input.batches,
    snakemake.output.table,
    snakemake.output.summary,
    n_specs=snakemake.params.n_specs,
)
