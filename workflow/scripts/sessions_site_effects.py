from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.sessions import write_site_effects

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_site_effects,
    snakemake.input.sessions,
    snakemake.output.table,
    settings=snakemake.params.session,
    meta_method=snakemake.params.meta.method,
    meta_test=snakemake.params.meta.test,
)
