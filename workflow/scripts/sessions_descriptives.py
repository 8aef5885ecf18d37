import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.pipeline.sessions import write_session_descriptives

write_session_descriptives(
    snakemake.input.sessions,
    snakemake.output.descriptives,
    snakemake.output.ruptures,
    snakemake.output.client_level,
    **snakemake.params,
)
