import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.core.inputs import write_processed_sessions

write_processed_sessions(snakemake.input.raw, snakemake.output.sessions, **snakemake.params)
