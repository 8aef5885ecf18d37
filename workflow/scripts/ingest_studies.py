from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.ingest import write_processed_studies

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_processed_studies,
    snakemake.input.raw,
    snakemake.output.studies,
    moderators=snakemake.params.study.moderators,
)
