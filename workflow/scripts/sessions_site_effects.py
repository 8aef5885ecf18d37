import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.pipeline.sessions import write_site_effects

write_site_effects(snakemake.input.sessions, snakemake.output.table, **snakemake.params)
