from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.simulation import write_simulation

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_simulation,
    list(snakemake.input.batches),
    snakemake.output.table,
    snakemake.output.markdown,
    snakemake.output.pdf,
    snakemake.output.png,
    settings=snakemake.params.simulation,
    code=snakemake.params.code,
)
