from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.meta import write_forest

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_forest,
    snakemake.input.studies,
    snakemake.output.pdf,
    snakemake.output.png,
    study=snakemake.params.study,
    meta=snakemake.params.meta,
)
