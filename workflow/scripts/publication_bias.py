from alliancemeta.pipeline.bias import write_publication_bias
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_publication_bias,
    snakemake.input.studies,
    snakemake.output.table,
    snakemake.params.meta,
)
