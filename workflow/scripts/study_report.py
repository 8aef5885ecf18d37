from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.report import write_study_report

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_study_report,
    snakemake.input.studies,
    snakemake.input.tables,
    snakemake.output.summary,
    snakemake.output.checklist,
    snakemake.output.headline,
    study=snakemake.params.study,
    meta=snakemake.params.meta,
    bayes=snakemake.params.bayes,
)
