from alliancemeta.pipeline.bayes import write_exact_tables
from alliancemeta.pipeline.common import run_stage

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_exact_tables,
    snakemake.input.studies,
    snakemake.output.sensitivity,
    snakemake.output.averaging,
    bayes=snakemake.params.bayes,
)
