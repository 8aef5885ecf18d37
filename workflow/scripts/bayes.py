import logging
import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

from alliancemeta.studies.bayes.pipeline import write_bayes

write_bayes(
    snakemake.input.studies,
    snakemake.output.table,
    snakemake.output.comparison,
    snakemake.output.posterior,
    **snakemake.params,
)
