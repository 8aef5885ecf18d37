from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.meta import write_moderators

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_moderators,
    snakemake.input.studies,
    snakemake.output.coefficients,
    snakemake.output.tests,
    snakemake.output.subgroups,
    moderators=snakemake.params.study.moderators,
    meta=snakemake.params.meta,
)
