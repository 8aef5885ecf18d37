from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.sessions import write_session_figures

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_session_figures,
    snakemake.input.sessions,
    snakemake.input.mixed_models,
    snakemake.input.posterior,
    {
        name: (snakemake.output[f"{name}_pdf"], snakemake.output[f"{name}_png"])
        for name in ("trajectories", "coefficients", "posterior")
    },
    settings=snakemake.params.session,
)
