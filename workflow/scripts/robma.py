from alliancemeta.pipeline.bayes import write_model_averaging
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_model_averaging,
    snakemake.input.studies,
    snakemake.output.averaging,
    snakemake.output.pdf,
    snakemake.output.png,
    bayes=snakemake.params.bayes,
    seed=snakemake.params.seed,
    dataset=snakemake.params.study.dataset,
    workers=snakemake.threads,
)
