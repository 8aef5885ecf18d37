from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.simulation import write_simulation_batch

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_simulation_batch,
    snakemake.output.table,
    condition=snakemake.params.condition,
    replicates=tuple(snakemake.params.replicates),
    fit=snakemake.params.fit,
    seed=snakemake.params.seed,
)
