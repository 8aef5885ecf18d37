import logging
import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

from alliancemeta.studies.influence import write_influence

out = snakemake.output
write_influence(snakemake.input.studies, out.influence, out.cumulative, out.baujat, **snakemake.params.settings)
