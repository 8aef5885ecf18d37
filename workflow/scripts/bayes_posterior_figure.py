from alliancemeta.pipeline.bayes import write_posterior_figure
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_posterior_figure,
    snakemake.input.studies,
    snakemake.input.posterior,
    snakemake.output.pdf,
    snakemake.output.png,
    bayes=snakemake.params.bayes,
    dataset=snakemake.params.study.dataset,
)
