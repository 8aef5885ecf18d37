from alliancemeta.pipeline.bayes import write_prior_sensitivity
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_prior_sensitivity,
    snakemake.input.studies,
    snakemake.output.sensitivity,
    bayes=snakemake.params.bayes,
)
