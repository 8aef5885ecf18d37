from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.report import write_apa_table

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_apa_table,
    snakemake.input.tables,
    snakemake.output.md,
    snakemake.output.tex,
    table=snakemake.wildcards.table,
    dataset=snakemake.params.session.dataset,
    level=snakemake.params.session.level,
)
