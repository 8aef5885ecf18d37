from alliancemeta.pipeline.common import run_stage
from alliancemeta.pipeline.influence import FIGURES, write_influence_figures

run_stage(
    snakemake.rule,
    snakemake.log[0],
    write_influence_figures,
    snakemake.input.studies,
    {name: (snakemake.output[f"{name}_pdf"], snakemake.output[f"{name}_png"]) for name in FIGURES},
    dataset=snakemake.params.study.dataset,
    meta=snakemake.params.meta,
)
