from alliancemeta.pipeline.bias import write_funnel
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_funnel,
    snakemake.input.studies,
    snakemake.output.pdf,
    snakemake.output.png,
    dataset=snakemake.params.study.dataset,
    meta=snakemake.params.meta,
)
