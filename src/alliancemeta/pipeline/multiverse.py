"""The multiverse rules (``workflow/rules/multiverse.smk``): batch tables, ``multiverse.csv`` and its summary.

The specifications of a dataset are enumerated when the workflow is planned (to know how many batch jobs
to create) and again inside every batch job from the processed study table; :func:`write_multiverse_batch`
checks that both enumerations agree, so a batch can never compute a different slice than planned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from alliancemeta.core.settings import Dataset
from alliancemeta.core.tables import write_csv
from alliancemeta.studies.multiverse import (
    EXTRA_COLUMNS,
    MULTIVERSE_COLUMNS,
    SUMMARY_COLUMNS,
    MultiverseSettings,
    batch_bounds,
    enumerate_specifications,
    evaluate_specifications,
    gather_batches,
    multiverse_summary,
    prior_combinations,
)

#: ``multiverse.csv``: the SPEC §5 columns, then the trailing ones of the engine.
TABLE_COLUMNS = (*MULTIVERSE_COLUMNS, *EXTRA_COLUMNS)


def multiverse_settings(multiverse: Mapping, level: float, rho: float, bayes: Mapping) -> MultiverseSettings:
    """The frozen settings from the validated config: ``multiverse``, ``meta.level``, ``meta.aggregate_rho``
    and the ``bayes`` section (the prior combinations when ``multiverse.priors`` is null; ``[]``: no
    Bayesian rows)."""
    return MultiverseSettings.from_config(multiverse, level, rho, prior_combinations(bayes, multiverse["priors"]))


def planned_specifications(frame: pd.DataFrame, settings: MultiverseSettings) -> int:
    """Number of specifications of a study table (the workflow creates one job per batch of them)."""
    return len(enumerate_specifications(frame, settings))


def planned_batches(frame: pd.DataFrame, settings: MultiverseSettings) -> list[int]:
    """Batch numbers (0, 1, ...) of a study table, for the ``{batch}`` wildcard."""
    return list(range(len(batch_bounds(planned_specifications(frame, settings), settings.batch_size))))


def write_multiverse_batch(studies: str | os.PathLike, table: str | os.PathLike, *, batch: int, n_specs: int,
                           settings: MultiverseSettings) -> None:  # fmt: skip
    """Compute batch ``batch`` (0-based) of the specifications of a processed study table and write its rows."""
    frame = pd.read_csv(studies)
    specs = enumerate_specifications(frame, settings)
    if len(specs) != n_specs:
        raise RuntimeError(
            f"{studies} gives {len(specs)} specifications but the workflow planned {n_specs}; the processed table "
            "changed after planning: rerun the workflow"
        )
    bounds = batch_bounds(n_specs, settings.batch_size)
    if not 0 <= batch < len(bounds):
        raise ValueError(f"batch {batch} does not exist; {studies} has batches 0..{len(bounds) - 1}")
    start, stop = bounds[batch]
    write_csv(evaluate_specifications(frame, specs[start:stop], settings), table, TABLE_COLUMNS)


def write_multiverse(batches: Sequence[str | os.PathLike], table: str | os.PathLike,
                     summary: str | os.PathLike, *, n_specs: int) -> None:  # fmt: skip
    """Gather the batch tables into ``multiverse.csv`` (checking that every specification is there once) and
    write the descriptive summary ``multiverse_summary.csv``."""
    frames = [pd.read_csv(path, keep_default_na=False, na_values=[""]) for path in batches]
    for frame in frames:
        frame["prior"] = frame["prior"].fillna("")
        frame["note"] = frame["note"].fillna("")
    gathered = gather_batches(frames, n_specs)
    write_csv(gathered, table, TABLE_COLUMNS)
    write_csv(multiverse_summary(gathered), summary, SUMMARY_COLUMNS)


def read_multiverse(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``multiverse.csv`` back with blank ``prior``/``note`` cells as empty text."""
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    frame["prior"] = frame["prior"].fillna("")
    frame["note"] = frame["note"].fillna("")
    return frame


def write_specification_curve(table: str | os.PathLike, pdf: str | os.PathLike, png: str | os.PathLike, *,
                              dataset: Dataset, level: float) -> None:  # fmt: skip
    """Read ``multiverse.csv`` and save the specification curve as PDF and PNG (byte-reproducible)."""
    # imported here: the workflow imports this module when it is planned (the batch plan), in every job step of a
    # cluster run too, and matplotlib would add about half a second to each
    from alliancemeta.plots.multiverse import specification_curve
    from alliancemeta.plots.style import save_figure

    save_figure(specification_curve(read_multiverse(table), dataset.label, level), pdf, png)
