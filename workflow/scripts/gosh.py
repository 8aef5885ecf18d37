from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.influence import write_gosh

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_gosh,
    snakemake.input.studies,
    snakemake.output.table,
    snakemake.output.pdf,
    snakemake.output.png,
    dataset=snakemake.params.study.dataset,
    meta=snakemake.params.meta,
    seed=snakemake.params.seed,
)
