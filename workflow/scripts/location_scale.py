from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.meta import write_location_scale

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_location_scale,
    snakemake.input.studies,
    snakemake.output.coefficients,
    snakemake.output.tests,
    study=snakemake.params.study,
    meta=snakemake.params.meta,
)
