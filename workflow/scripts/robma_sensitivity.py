from alliancemeta.pipeline.bayes import write_robma_sensitivity
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_robma_sensitivity,
    snakemake.input.studies,
    snakemake.output.table,
    bayes=snakemake.params.bayes,
    seed=snakemake.params.seed,
    dataset=snakemake.params.study.dataset,
    workers=snakemake.threads,
)
