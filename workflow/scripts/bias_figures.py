import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.plots.bias import FIGURES, write_bias_figures

paths = {name: (snakemake.output[f"{name}_pdf"], snakemake.output[f"{name}_png"]) for name in FIGURES}
write_bias_figures(snakemake.input.studies, paths, dataset=snakemake.params.dataset, **snakemake.params.settings)
