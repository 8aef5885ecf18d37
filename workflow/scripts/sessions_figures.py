import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.plots.sessions import write_session_figures

out = snakemake.output
write_session_figures(
    snakemake.input.sessions,
    snakemake.input.mixed_models,
    snakemake.input.posterior,
    out.trajectories_pdf,
    out.trajectories_png,
    out.coefficients_pdf,
    out.coefficients_png,
    out.posterior_pdf,
    out.posterior_png,
    **snakemake.params,
)
