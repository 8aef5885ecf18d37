from alliancemeta.pipeline.bayes import write_bayes
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_bayes,
    snakemake.input.studies,
    snakemake.output.table,
    snakemake.output.comparison,
    snakemake.output.posterior,
    bayes=snakemake.params.bayes,
    seed=snakemake.params.seed,
    moderators=snakemake.params.study.moderators,
    dataset=snakemake.params.study.dataset,
)
