import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.bayes.quadrature import write_prior_sensitivity

write_prior_sensitivity(snakemake.input.studies, snakemake.output.table, **snakemake.params)
