from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.report import write_summary_index

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_summary_index,
    snakemake.input.headlines,
    snakemake.params.datasets,
    snakemake.input.front,
    snakemake.output.summary,
    snakemake.output.landing,
    snakemake.output.metadata,
    seed=snakemake.params.seed,
)
