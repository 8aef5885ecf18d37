from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.sessions import write_session_descriptives

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_session_descriptives,
    snakemake.input.sessions,
    snakemake.output.descriptives,
    snakemake.output.ruptures,
    snakemake.output.client_level,
    snakemake.output.rupture_outcome,
    settings=snakemake.params.session,
    seed=snakemake.params.seed,
)
