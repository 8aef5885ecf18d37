import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.plots.bayes import write_posterior_figure

write_posterior_figure(
    snakemake.input.studies,
    snakemake.input.posterior,
    snakemake.output.pdf,
    snakemake.output.png,
    **snakemake.params,
)
