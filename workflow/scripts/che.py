from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.meta import write_che

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_che,
    snakemake.input.studies,
    snakemake.output.table,
    snakemake.params.meta,
)
