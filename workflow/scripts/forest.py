import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.plots.forest import write_forest

write_forest(
    snakemake.input.studies,
    snakemake.input.random_effects,
    snakemake.output.pdf,
    snakemake.output.png,
    dataset=snakemake.wildcards.dataset,
)
