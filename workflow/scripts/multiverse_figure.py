from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.multiverse import write_specification_curve

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_specification_curve,
    snakemake.input.table,
    snakemake.output.pdf,
    snakemake.output.png,
    dataset=snakemake.params.study.dataset,
    level=snakemake.params.meta.level,
)
