"""Stage ``bias`` (workflow/rules/bias.smk): small-study tests, adjustments and the funnel plot.

Writes ``publication_bias.csv`` and ``figures/funnel.{pdf,png}`` for the headline model (first estimator
and test in the config); the statistics live in :mod:`alliancemeta.studies.bias`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import Dataset, MetaSettings
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.common import read_studies_table
from alliancemeta.plots.bias import funnel_plot
from alliancemeta.plots.style import save_figure
from alliancemeta.studies.bias.common import MIN_K
from alliancemeta.studies.bias.failsafe import fsn_rosenthal
from alliancemeta.studies.bias.rank import ranktest
from alliancemeta.studies.bias.regression_tests import peese, pet, pet_peese, regtest
from alliancemeta.studies.bias.selection import selmodel_stepfun
from alliancemeta.studies.bias.selection_table import EXTRA_COLUMNS as SELECTION_EXTRA_COLUMNS
from alliancemeta.studies.bias.selection_table import SELECTION_MODEL_COLUMNS, selection_models_table
from alliancemeta.studies.bias.trim_and_fill import trimfill
from alliancemeta.studies.random_effects import MetaFit, random_effects

# the rule's log lines read "alliancemeta.pipeline.bias"
log = logging.getLogger(__name__)

PUBLICATION_BIAS_COLUMNS = ("method", "statistic", "pval", "estimate", "ci_lb", "ci_ub", "k0")


METHODS = (
    "egger", "rank", "trimfill", "pet", "peese", "selection_3psm", "failsafe_rosenthal",  # SPEC §5
    "trimfill_r0", "pet_peese",  # extras
)  # fmt: skip


def _row(method, statistic=np.nan, pval=np.nan, estimate=np.nan, ci_lb=np.nan, ci_ub=np.nan, k0=np.nan):
    return {
        "method": method,
        "statistic": statistic,
        "pval": pval,
        "estimate": estimate,
        "ci_lb": ci_lb,
        "ci_ub": ci_ub,
        "k0": k0,
    }


def _method_row(method: str, fit: MetaFit) -> dict:
    if method == "egger":
        r = regtest(fit)
        return _row(method, r.stat, r.pval, r.est, r.ci_lb, r.ci_ub)
    if method == "rank":
        r = ranktest(fit.yi, fit.vi)
        return _row(method, r.tau, r.pval)
    if method in ("trimfill", "trimfill_r0"):
        r = trimfill(fit, "L0" if method == "trimfill" else "R0")
        return _row(method, r.stat, r.pval, r.estimate, r.ci_lb, r.ci_ub, float(r.k0))
    if method in ("pet", "peese"):
        r = (pet if method == "pet" else peese)(fit.yi, fit.vi, fit.level)
        return _row(method, r.tval, r.pval, r.intercept, r.ci_lb, r.ci_ub)
    if method == "pet_peese":
        pp = pet_peese(fit.yi, fit.vi, direction=np.sign(fit.estimate) or 1.0, level=fit.level)
        r = pp.estimate
        log.info("PET-PEESE: PET one-sided p = %.4g, reporting %s", pp.pet_one_sided_p, pp.chosen.upper())
        return _row(method, r.tval, r.pval, r.intercept, r.ci_lb, r.ci_ub)
    if method == "selection_3psm":
        r = selmodel_stepfun(fit, steps=(0.025,))
        return _row(method, r.LRT, r.LRT_pval, r.beta, r.ci_lb, r.ci_ub)
    if method == "failsafe_rosenthal":
        r = fsn_rosenthal(fit.yi, fit.vi)
        return _row(method, r.fsnum, r.pval)
    raise ValueError(f"unknown publication-bias method {method!r}")


def publication_bias_table(yi, vi, method: str, test: str, level: float) -> pd.DataFrame:
    """SPEC §5 ``publication_bias.csv``: one row per method of :data:`METHODS`, in that order.

    The headline model ``random_effects(yi, vi, method, test, level)`` feeds Egger's test,
    trim and fill and the selection model; PET and PEESE are WLS with weights 1/vi.  Columns:

    ========================  ==========================  ==============================  =====
    method                    statistic, pval             estimate, ci_lb, ci_ub          k0
    ========================  ==========================  ==============================  =====
    ``egger``                 z or t of the sei slope     limit estimate (intercept)      NaN
    ``rank``                  Kendall's tau, its p        NaN (no estimate)               NaN
    ``trimfill``              z or t of the filled model  filled estimate (L0)            k0
    ``pet``, ``peese``        t of the intercept          intercept (effect at SE = 0)    NaN
    ``selection_3psm``        LRT of delta = 1            adjusted estimate (z-based CI)  NaN
    ``failsafe_rosenthal``    fail-safe N, Stouffer's p   NaN (no estimate)               NaN
    ``trimfill_r0``           as trimfill, R0 estimator   filled estimate (R0)            k0
    ``pet_peese``             t of the chosen intercept   PEESE or PET (see pet_peese)    NaN
    ========================  ==========================  ==============================  =====

    NaN appears only where the quantity does not exist for the method, or when a method cannot
    be computed for these data (too few effect sizes, an empty p-value interval, no convergence):
    then its function raises, the reason is logged as a warning (the rule's log file), and the
    row is written with NaN so that the table keeps its shape.  Estimates are on the Fisher-z
    scale of the input.
    """
    fit = random_effects(yi, vi, method=method, test=test, level=level)
    rows = []
    for name in METHODS:
        try:
            rows.append(_method_row(name, fit))
        except (ValueError, ConvergenceError, np.linalg.LinAlgError) as err:
            log.warning("publication bias: %s not computed (NaN row written): %s", name, err)
            rows.append(_row(name))
    return pd.DataFrame(rows, columns=list(PUBLICATION_BIAS_COLUMNS))


def write_publication_bias(studies, table, meta: MetaSettings) -> None:
    """Read a processed study table (``study, yi, vi``), write ``publication_bias.csv`` atomically."""
    frame = read_studies_table(studies)
    out = publication_bias_table(frame["yi"].to_numpy(float), frame["vi"].to_numpy(float), meta.method, meta.test,
                                 meta.level)
    write_csv(out, table, PUBLICATION_BIAS_COLUMNS)


def write_funnel(studies, pdf, png, *, dataset: Dataset, meta: MetaSettings) -> None:
    """Contour-enhanced funnel plot of the headline model with the trim-and-fill (L0) imputations."""
    frame = read_studies_table(studies)
    fit = random_effects(frame["yi"], frame["vi"], method=meta.method, test=meta.test, level=meta.level)
    try:
        fill = trimfill(fit, "L0")
    except (ValueError, ConvergenceError) as err:
        log.warning("funnel plot: trim and fill not computed, no imputed studies drawn: %s", err)
        fill = None
    adjusted = None
    if fit.k >= MIN_K:
        try:
            adjusted = selmodel_stepfun(fit, steps=(0.025,)).beta
        except (ValueError, ConvergenceError) as err:
            log.warning("funnel plot: the selection model could not be estimated, its line is not drawn: %s", err)
    save_figure(funnel_plot(fit, fill, dataset.label, adjusted), pdf, png)


def write_selection_models(studies, table, *, dataset: Dataset, meta: MetaSettings, seed: int) -> None:
    """``selection_models.csv``: metafor's selection models (every weight function) on all effects, then, when
    ``study_id`` puts several effects in a study, metaselection's step-function model for dependent effects with
    cluster-robust SEs and cluster-bootstrap intervals (``meta.selection_models``; the bootstrap draws from
    ``derive_seed(seed, "selection_models/<dataset>")``).  A model that cannot be estimated is a NaN row whose
    ``note`` says why."""
    frame = read_studies_table(studies)
    cluster = frame["study_id"].astype(str).to_numpy() if "study_id" in frame.columns else None
    settings = meta.selection_models
    out = selection_models_table(
        frame["yi"].to_numpy(float), frame["vi"].to_numpy(float), cluster, level=meta.level,
        seed=derive_seed(seed, f"selection_models/{dataset.name}"), n_boot=settings["n_boot"],
        bootstrap=settings["bootstrap"], ci_type=settings["ci_type"], penalty=settings["penalty"],
    )
    for _, row in out[out["note"].fillna("").str.len() > 0].iterrows():
        log.info("%s: %s", row["type"], row["note"])
    write_csv(out, table, [*SELECTION_MODEL_COLUMNS, *SELECTION_EXTRA_COLUMNS])
