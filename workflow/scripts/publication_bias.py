import logging
import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

from alliancemeta.studies.bias import write_publication_bias

write_publication_bias(snakemake.input.studies, snakemake.output.table, **snakemake.params.settings)
