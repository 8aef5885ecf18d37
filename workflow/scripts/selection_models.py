from alliancemeta.pipeline.bias import write_selection_models
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_selection_models,
    snakemake.input.studies,
    snakemake.output.table,
    dataset=snakemake.params.study.dataset,
    meta=snakemake.params.meta,
    seed=snakemake.params.seed,
)
