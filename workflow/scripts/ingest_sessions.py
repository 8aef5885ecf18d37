from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.ingest import write_processed_sessions

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_processed_sessions,
    snakemake.input.raw,
    snakemake.output.sessions,
    groups=snakemake.params.session.groups,
)
