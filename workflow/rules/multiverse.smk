# Stage multiverse: the multiverse / specification-curve analysis of each study-level dataset (make multiverse;
# not part of make run). Every combination of the configured choices (multiverse.*) is one specification; the
# specifications are computed in batch jobs of multiverse.batch_size (one Slurm job each under the Slurm
# profile), gathered into tables/multiverse.csv with a descriptive summary, and drawn as a specification curve.
# On a cluster the gather and the figure are local rules: they take seconds and run in the Snakemake process
# itself as soon as the last batch is done, without a Slurm job's start-up and status polling (about 10-20 s
# each, workflow/profiles/slurm/README.md). The helpers (settings, batch plan) are in common.smk.
try:
    multiverse_settings()
except ValueError as err:
    _stop(f"config multiverse: {err}")

for _name in (
    "multiverse_all",
    "multiverse_batch",
    "multiverse",
    "specification_curve",
):
    own_target(_name, "multiverse")


wildcard_constraints:
    batch="[0-9]+",


localrules:
    multiverse,
    specification_curve,


rule multiverse_all:
    input:
        multiverse_targets(),


rule multiverse_batch:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=temp("results/studies/{dataset}/multiverse/batch_{batch}.csv"),
    log:
        "logs/multiverse/batch_{dataset}_{batch}.log",
    benchmark:
        "benchmarks/out/multiverse_batch_{dataset}_{batch}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        batch=multiverse_batch_params,
    script:
        "../scripts/multiverse_batch.py"


rule multiverse:
    input:
        batches=multiverse_batch_tables,
    output:
        table=report(
            "results/studies/{dataset}/tables/multiverse.csv",
            caption="../report/multiverse.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "multiverse"},
        ),
        summary=report(
            "results/studies/{dataset}/tables/multiverse_summary.csv",
            caption="../report/multiverse_summary.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "multiverse summary"},
        ),
    log:
        "logs/multiverse/gather_{dataset}.log",
    benchmark:
        "benchmarks/out/multiverse_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        n_specs=multiverse_n_specs,
        about=about_study,
    script:
        "../scripts/multiverse_gather.py"


rule specification_curve:
    input:
        table="results/studies/{dataset}/tables/multiverse.csv",
    output:
        pdf="results/studies/{dataset}/figures/specification_curve.pdf",
        png=report(
            "results/studies/{dataset}/figures/specification_curve.png",
            caption="../report/specification_curve.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "specification curve"},
        ),
    log:
        "logs/multiverse/specification_curve_{dataset}.log",
    benchmark:
        "benchmarks/out/specification_curve_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/multiverse_figure.py"
