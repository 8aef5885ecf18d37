import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.pipeline.multiverse import write_specification_curve

write_specification_curve(
    snakemake.input.table,
    snakemake.output.pdf,
    snakemake.output.png,
    dataset=snakemake.params.dataset,
    level=snakemake.params.level,
)
