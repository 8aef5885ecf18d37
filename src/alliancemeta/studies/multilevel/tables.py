"""The pipeline's ``multilevel.csv`` (SPEC §5), the aggregated random-effects table and their writers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alliancemeta.studies.multilevel.aggregate import aggregate_within_studies
from alliancemeta.studies.multilevel.model import MultilevelFit, three_level
from alliancemeta.studies.multilevel.robust import robust_cr2

TABLE_TESTS = ("z", "t", "cr2")
#: Trailing columns after the SPEC contract: total and level-specific I^2 in percent (Cheung 2014).
LEVEL_I2_COLUMNS = ("I2", "I2_study", "I2_within")
MULTILEVEL_COLUMNS = (
    "test", "k", "n_studies", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub",
    "sigma2_study", "sigma2_within", "r", "r_ci_lb", "r_ci_ub",
)  # fmt: skip


def multilevel_table(frame: pd.DataFrame, level: float = 0.95, tests=TABLE_TESTS) -> pd.DataFrame:
    """One row per test of the intercept-only three-level model: ``tables/multilevel.csv``.

    ``frame`` is a processed study table with columns ``study_id`` (the cluster), ``yi`` and ``vi``
    (Fisher z).  Tests: ``z`` and ``t`` (model-based, :func:`three_level`) and ``cr2``
    (:func:`robust_cr2` with Satterthwaite df; its prediction interval uses the CR2 standard
    error and the Satterthwaite t quantile, as ``predict`` on a ``robust.rma`` object does).
    ``r`` columns are the back-transformed (tanh) estimate and confidence bounds.
    """
    missing = [c for c in ("study_id", "yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"the study table lacks column(s) {', '.join(missing)} needed by the three-level model")
    unknown = [t for t in tests if t not in TABLE_TESTS]
    if unknown:
        raise ValueError(f"unknown multilevel test(s) {', '.join(map(repr, unknown))}; expected {TABLE_TESTS}")
    yi, vi, cluster = frame["yi"].to_numpy(float), frame["vi"].to_numpy(float), frame["study_id"].to_numpy()
    fits: dict[str, MultilevelFit] = {}
    rows = []
    for test in tests:
        base = "z" if test == "cr2" else test
        if base not in fits:
            fits[base] = three_level(yi, vi, cluster, test=base, level=level)
        fit = fits[base]
        if test == "cr2":
            rob = robust_cr2(fit)
            pred = rob.predict()
            stat, pval = float(rob.stat[0]), float(rob.pval[0])
        else:
            pred = fit.predict()
            stat, pval = float(fit.stat[0]), float(fit.pval[0])
        rows.append(
            {
                "test": test,
                "k": fit.k,
                "n_studies": fit.n_clusters,
                "estimate": pred.pred,
                "se": pred.se,
                "stat": stat,
                "pval": pval,
                "ci_lb": pred.ci_lb,
                "ci_ub": pred.ci_ub,
                "pi_lb": pred.pi_lb,
                "pi_ub": pred.pi_ub,
                "sigma2_study": fit.sigma2_study,
                "sigma2_within": fit.sigma2_within,
                "r": float(np.tanh(pred.pred)),
                "r_ci_lb": float(np.tanh(pred.ci_lb)),
                "r_ci_ub": float(np.tanh(pred.ci_ub)),
                "I2": fit.I2,
                "I2_study": fit.I2_study,
                "I2_within": fit.I2_within,
            }
        )
    return pd.DataFrame(rows, columns=[*MULTILEVEL_COLUMNS, *LEVEL_I2_COLUMNS])


def write_multilevel(studies, table, level: float = 0.95, tests=TABLE_TESTS) -> None:
    """Read a processed study table (``study, study_id, yi, vi, ...``) and write ``multilevel.csv``."""
    from alliancemeta.core.tables import write_csv

    frame = pd.read_csv(studies)
    write_csv(multilevel_table(frame, level, tests), table, [*MULTILEVEL_COLUMNS, *LEVEL_I2_COLUMNS])


def write_aggregated_random_effects(studies, table, rho: float = 0.5, estimators=("REML",), tests=("knha",),
                                    level: float = 0.95) -> None:
    """The simpler alternative to the three-level model: aggregate within studies, then pool.

    Effects sharing a ``study_id`` are combined with :func:`aggregate_within_studies` under the
    assumed sampling correlation ``rho`` (config ``meta.aggregate_rho``), and the one-per-study effects
    go through the same random-effects table as ``random_effects.csv`` (its columns, k = studies).
    """
    from alliancemeta.core.tables import write_csv
    from alliancemeta.studies.random_effects import random_effects_table

    frame = pd.read_csv(studies)
    agg = aggregate_within_studies(frame["yi"], frame["vi"], frame["study_id"].to_numpy(), rho)
    out = random_effects_table(agg.yi, agg.vi, estimators, tests, level)
    out["rho"] = rho
    write_csv(out, table)
