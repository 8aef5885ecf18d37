from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.multiverse import write_multiverse_batch

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_multiverse_batch,
    snakemake.input.studies,
    snakemake.output.table,
    **snakemake.params.batch,
)
