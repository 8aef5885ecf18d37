"""The pipeline's influence, cumulative and Baujat tables (SPEC §5 ``influence.csv``) and their writer."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from alliancemeta.core.tables import write_csv
from alliancemeta.studies.influence.cumulative import cumul
from alliancemeta.studies.influence.deletions import DeletionFits, deletion_fits
from alliancemeta.studies.influence.diagnostics import baujat, hat_values, influence, leave1out
from alliancemeta.studies.random_effects import MetaFit, random_effects

# the package's logger: rule log lines read "alliancemeta.studies.influence", whichever module logs
log = logging.getLogger(__package__)

INFLUENCE_COLUMNS = (
    "study", "rstudent", "dffits", "cooks_distance", "cov_ratio", "tau2_del", "QE_del", "hat", "weight",
    "loo_estimate", "loo_se", "loo_ci_lb", "loo_ci_ub", "loo_tau2", "loo_I2",
    # extras after the SPEC §5 contract columns
    "loo_pval", "loo_Q", "loo_H2", "dfbetas", "influential",
)  # fmt: skip
CUMULATIVE_COLUMNS = (
    "step", "study", "order_by", "order_value", "k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub",
    "Q", "Q_pval", "tau2", "I2", "H2",
)  # fmt: skip
BAUJAT_COLUMNS = ("study", "x", "y")


def influence_table(labels, fit: MetaFit, deleted: DeletionFits | None = None) -> pd.DataFrame:
    """SPEC §5 ``influence.csv``: :func:`influence` and :func:`leave1out` side by side."""
    d = deletion_fits(fit) if deleted is None else deleted
    inf = influence(fit, d)
    loo = leave1out(fit, d)
    return pd.DataFrame(
        {
            "study": np.asarray(labels, dtype=object),
            "rstudent": inf.rstudent,
            "dffits": inf.dffits,
            "cooks_distance": inf.cooks_distance,
            "cov_ratio": inf.cov_ratio,
            "tau2_del": inf.tau2_del,
            "QE_del": inf.QE_del,
            "hat": inf.hat,
            "weight": inf.weight,
            "loo_estimate": loo.estimate,
            "loo_se": loo.se,
            "loo_ci_lb": loo.ci_lb,
            "loo_ci_ub": loo.ci_ub,
            "loo_tau2": loo.tau2,
            "loo_I2": loo.I2,
            "loo_pval": loo.pval,
            "loo_Q": loo.Q,
            "loo_H2": loo.H2,
            "dfbetas": inf.dfbetas[:, 0],
            "influential": inf.inf,
        }
    )


def cumulative_table(labels, fit: MetaFit, year=None) -> pd.DataFrame:
    """``cumulative.csv``: :func:`cumul` ordered by ``year`` when given, else in input order.

    The column ``order_by`` says which (``year`` or ``input``), so a table without years cannot be
    mistaken for a chronological one.
    """
    res = cumul(fit, order=year)
    labels = np.asarray(labels, dtype=object)[res.order]
    order_value = np.asarray(year, dtype=float)[res.order] if year is not None else res.order + 1.0
    return pd.DataFrame(
        {
            "step": np.arange(1, fit.k + 1),
            "study": labels,
            "order_by": "year" if year is not None else "input",
            "order_value": order_value,
            "k": np.arange(1, fit.k + 1),
            "estimate": res.estimate,
            "se": res.se,
            "stat": res.stat,
            "pval": res.pval,
            "ci_lb": res.ci_lb,
            "ci_ub": res.ci_ub,
            "Q": res.Q,
            "Q_pval": res.Qp,
            "tau2": res.tau2,
            "I2": res.I2,
            "H2": res.H2,
        }
    )


def baujat_table(labels, fit: MetaFit, deleted: DeletionFits | None = None) -> pd.DataFrame:
    b = baujat(fit, deleted)
    return pd.DataFrame({"study": np.asarray(labels, dtype=object), "x": b.x, "y": b.y})


def read_studies_table(path: str | os.PathLike) -> pd.DataFrame:
    """A processed study table (``study, yi, vi`` [+ ``year`` ...]) with its effect columns checked."""
    frame = pd.read_csv(path)
    missing = [c for c in ("study", "yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: processed study table lacks column(s) {', '.join(missing)}")
    return frame


def year_of(frame: pd.DataFrame):
    """The ``year`` column as floats when present and not entirely missing, else None."""
    if "year" not in frame.columns or frame["year"].isna().all():
        return None
    return frame["year"].to_numpy(dtype=float)


def _undeletable_tables(labels, fit: MetaFit) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Influence and Baujat tables when no deleted fit exists (k <= p + 1): the full-model columns
    (hat, weight, Baujat x) are filled, every deletion quantity is NaN."""
    nan = np.full(fit.k, np.nan)
    table = pd.DataFrame({c: nan for c in INFLUENCE_COLUMNS})
    table["study"] = np.asarray(labels, dtype=object)
    table["hat"] = hat_values(fit)
    table["weight"] = 100.0 * fit.weights / fit.weights.sum()
    table["influential"] = False
    x = (fit.yi - fit.X @ fit.beta) ** 2 / (fit.tau2 + fit.vi)
    return table, pd.DataFrame({"study": np.asarray(labels, dtype=object), "x": x, "y": nan})


def write_influence(
    studies,
    influence_csv,
    cumulative_csv,
    baujat_csv,
    method: str = "REML",
    test: str = "knha",
    level: float = 0.95,
) -> None:
    """Influence, leave-one-out, cumulative and Baujat tables of the headline model of one dataset.

    With too few effect sizes for a deleted fit (k < 3 without moderators) :func:`deletion_fits`
    raises; the reason is logged as a warning (the rule's log file) and the deletion columns are
    written as NaN, so the tables keep their shape; the cumulative table is complete for any k.
    """
    frame = read_studies_table(studies)
    fit = random_effects(frame["yi"], frame["vi"], method=method, test=test, level=level)
    labels = frame["study"].astype(str)
    try:
        deleted = deletion_fits(fit)
    except ValueError as err:
        log.warning("influence: leave-one-out diagnostics not computed (NaN columns written): %s", err)
        table, bj = _undeletable_tables(labels, fit)
    else:
        table, bj = influence_table(labels, fit, deleted), baujat_table(labels, fit, deleted)
    write_csv(table, influence_csv, INFLUENCE_COLUMNS)
    write_csv(cumulative_table(labels, fit, year_of(frame)), cumulative_csv, CUMULATIVE_COLUMNS)
    write_csv(bj, baujat_csv, BAUJAT_COLUMNS)
