import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.pipeline.sessions import write_session_models

write_session_models(
    snakemake.input.sessions,
    snakemake.output.mixed_models,
    snakemake.output.variance_components,
    snakemake.output.diagnostics,
    snakemake.output.posterior,
    outcome_lower_is_better=snakemake.params.outcome_lower_is_better,
    seed=snakemake.params.seed,
    level=snakemake.params.level,
    **snakemake.params.sampler,
)
