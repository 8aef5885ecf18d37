from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.report import write_session_report

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_session_report,
    snakemake.input.sessions,
    snakemake.input.tables,
    snakemake.output.summary,
    snakemake.output.headline,
    settings=snakemake.params.session,
)
