from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.report import write_provenance

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_provenance,
    snakemake.input.inputs,
    snakemake.output.provenance,
    snakemake.params.config,
)
