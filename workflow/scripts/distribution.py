from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.meta import write_distribution

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_distribution,
    snakemake.input.studies,
    snakemake.output.table,
    study=snakemake.params.study,
    meta=snakemake.params.meta,
    seed=snakemake.params.seed,
)
