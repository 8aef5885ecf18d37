# Multiverse / specification-curve analysis of each study-level dataset (SPEC §5, §8): every combination of
# the configured choices (multiverse.*) is one specification; the specifications are computed in batch jobs
# of multiverse.batch_size (one Slurm job each under --workflow-profile workflow/profiles/slurm), gathered into
# tables/multiverse.csv with a descriptive summary, and drawn as a specification curve.  Not part of `rule all`:
# build it with `snakemake multiverse_all` (a study of its own, like the simulations).  On a cluster the gather
# and the figure of a dataset run as one job (group multiverse_gather): one job start instead of two.
# Needs from common.smk: config (validated, with the multiverse section), STUDY_DATASETS, STUDY_FRAMES; its own
# helpers are in multiverse_common.smk.


include: "multiverse_common.smk"


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
    group:
        "multiverse_gather"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        n_specs=multiverse_n_specs,
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
    group:
        "multiverse_gather"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        dataset="{dataset}",
        level=config["meta"]["level"],
    script:
        "../scripts/multiverse_figure.py"
