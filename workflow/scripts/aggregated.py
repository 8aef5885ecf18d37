from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.meta import write_aggregated_random_effects

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_aggregated_random_effects,
    snakemake.input.studies,
    snakemake.output.table,
    snakemake.params.meta,
)
