from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.influence import write_influence

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_influence,
    snakemake.input.studies,
    snakemake.output.influence,
    snakemake.output.cumulative,
    snakemake.output.baujat,
    snakemake.params.meta,
)
