# Helpers of the multiverse rules (workflow/rules/multiverse.smk): the frozen settings and the batch plan of each
# study-level dataset.  Belong in common.smk once the multiverse is wired in.
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
