from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.sessions import write_session_models

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_session_models,
    snakemake.input.sessions,
    snakemake.output.mixed_models,
    snakemake.output.variance_components,
    snakemake.output.diagnostics,
    snakemake.output.posterior,
    settings=snakemake.params.session,
    seed=snakemake.params.seed,
)
