import logging
import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

from alliancemeta.studies.multilevel.influence import write_influence_multilevel

out = snakemake.output
write_influence_multilevel(
    snakemake.input.studies, out.table, out.pdf, out.png, dataset=snakemake.params.dataset, **snakemake.params.settings
)
