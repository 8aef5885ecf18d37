# Multiverse / specification-curve analysis of each study-level dataset (SPEC §5, §8): every combination of
# the configured choices (multiverse.*) is one specification; the specifications are computed in batch jobs
# of multiverse.batch_size (one Slurm job each under --workflow-profile workflow/profiles/slurm), gathered into
# tables/multiverse.csv with a descriptive summary, and drawn as a specification curve.  Not part of `rule all`:
# build it with `snakemake multiverse_all` (a study of its own, like the simulations).
# Needs from common.smk: config (validated, with the multiverse section), STUDY_DATASETS, STUDY_FRAMES.
import functools

from alliancemeta.pipeline.multiverse import (
    multiverse_settings as _multiverse_settings,
    planned_batches,
    planned_specifications,
)


wildcard_constraints:
    batch="[0-9]+",


@functools.cache
def multiverse_settings():
    """The frozen multiverse settings, built once from the validated config."""
    return _multiverse_settings(
        config["multiverse"],
        config["meta"]["level"],
        config["meta"]["aggregate_rho"],
        config["bayes"],
    )


@functools.cache
def _multiverse_plan(dataset):
    frame = STUDY_FRAMES[dataset]
    return planned_specifications(frame, multiverse_settings()), planned_batches(
        frame, multiverse_settings()
    )


def multiverse_n_specs(wildcards):
    return _multiverse_plan(wildcards.dataset)[0]


def multiverse_batch_tables(wildcards):
    return expand(
        "results/studies/{dataset}/multiverse/batch_{batch}.csv",
        dataset=wildcards.dataset,
        batch=_multiverse_plan(wildcards.dataset)[1],
    )


def multiverse_batch_params(wildcards):
    return {
        "batch": int(wildcards.batch),
        "n_specs": _multiverse_plan(wildcards.dataset)[0],
        "settings": multiverse_settings(),
    }


def multiverse_targets():
    return expand(
        "results/studies/{dataset}/{path}",
        dataset=STUDY_DATASETS,
        path=[
            "tables/multiverse.csv",
            "tables/multiverse_summary.csv",
            "figures/specification_curve.pdf",
            "figures/specification_curve.png",
        ],
    )


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
    conda:
        "../envs/alliancemeta.yaml"
    params:
        dataset="{dataset}",
        level=config["meta"]["level"],
    script:
        "../scripts/multiverse_figure.py"
