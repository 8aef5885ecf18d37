"""Stage ``influence`` (workflow/rules/influence.smk): how much single effects and studies move the result.

Writes ``influence.csv``, ``cumulative.csv`` and ``baujat.csv`` for the headline random-effects model,
``influence_multilevel.csv`` for the three-level model (when ``study_id`` groups effects), and the
leave-one-out, cumulative, Baujat, influence and three-level influence figures.  The statistics live in
:mod:`alliancemeta.studies.influence` and :mod:`alliancemeta.studies.multilevel.influence`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import Dataset, MetaSettings
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.common import read_studies_table, year_of
from alliancemeta.plots.gosh import gosh_figure
from alliancemeta.plots.influence import (
    baujat_plot,
    cumulative_plot,
    influence_multilevel_plot,
    influence_panel,
    leave1out_plot,
)
from alliancemeta.plots.style import save_figure, unavailable
from alliancemeta.studies.gosh import (
    GOSH_EXTRA_COLUMNS,
    GOSH_SUMMARY_COLUMNS,
    gosh,
    gosh_summary_table,
    gosh_summary_unavailable,
)
from alliancemeta.studies.influence.cumulative import cumul
from alliancemeta.studies.influence.deletions import DeletionFits, deletion_fits
from alliancemeta.studies.influence.diagnostics import baujat, hat_values, influence, leave1out
from alliancemeta.studies.multilevel.influence import MultilevelInfluence, multilevel_influence
from alliancemeta.studies.multilevel.model import MultilevelFit, three_level
from alliancemeta.studies.random_effects import MetaFit, random_effects

# the rule's log lines read "alliancemeta.pipeline.influence"
log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# influence.csv, cumulative.csv, baujat.csv and their figures
# --------------------------------------------------------------------------------------------------

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


def write_influence(studies, influence_csv, cumulative_csv, baujat_csv, meta: MetaSettings) -> None:
    """Influence, leave-one-out, cumulative and Baujat tables of the headline model of one dataset.

    With too few effect sizes for a deleted fit (k < 3 without moderators) :func:`deletion_fits`
    raises; the reason is logged as a warning (the rule's log file) and the deletion columns are
    written as NaN, so the tables keep their shape; the cumulative table is complete for any k.
    """
    frame = read_studies_table(studies)
    fit = random_effects(frame["yi"], frame["vi"], method=meta.method, test=meta.test, level=meta.level)
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



FIGURES = ("leave1out", "cumulative", "baujat", "influence")


def write_influence_figures(studies, outputs: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]], *,
                            dataset: Dataset, meta: MetaSettings) -> None:
    """The stage's figures for one processed study table (``study, yi, vi`` [+ ``year``]).

    ``outputs`` maps each of :data:`FIGURES` to its (pdf, png) paths.  The headline model
    (``meta.method``, ``meta.test``) is the one of the tables.  With too few effect sizes for a deleted
    fit, the deletion figures state why they are empty.
    """
    missing = [name for name in FIGURES if name not in outputs]
    if missing:
        raise ValueError(f"no output paths for figure(s) {', '.join(missing)}")
    frame = read_studies_table(studies)
    labels = frame["study"].astype(str).to_numpy()
    fit = random_effects(frame["yi"], frame["vi"], method=meta.method, test=meta.test, level=meta.level)
    years = year_of(frame)
    label = dataset.label
    try:
        deleted = deletion_fits(fit)
    except ValueError as err:  # too few effect sizes for a deleted fit: say so in those figures
        reason = str(err)
        figures = {
            name: (lambda name=name: unavailable(name, reason, label)) for name in ("leave1out", "baujat", "influence")
        }
    else:
        inf = influence(fit, deleted)
        figures = {
            "leave1out": lambda: leave1out_plot(labels, fit, leave1out(fit, deleted), label),
            "baujat": lambda: baujat_plot(labels, baujat(fit, deleted), inf.inf, label),
            "influence": lambda: influence_panel(fit, inf, label),
        }
    figures["cumulative"] = lambda: cumulative_plot(labels, fit, cumul(fit, years), years is not None, label, years)
    for name in FIGURES:
        pdf, png = outputs[name]
        save_figure(figures[name](), pdf, png)


# --------------------------------------------------------------------------------------------------
# influence_multilevel.csv and its figure
# --------------------------------------------------------------------------------------------------

INFLUENCE_MULTILEVEL_COLUMNS = (
    "study_id", "k", "cooks_distance", "dfbetas", "rstudent_X2", "rstudent_df", "rstudent_pval",
    "rstandard_X2", "hat", "sigma2_study_del", "sigma2_within_del", "loo_estimate", "loo_se", "loo_pval",
    "loo_ci_lb", "loo_ci_ub", "loo_r", "loo_r_ci_lb", "loo_r_ci_ub", "influential",
)  # fmt: skip


def influence_multilevel_table(fit: MultilevelFit, inf: MultilevelInfluence) -> pd.DataFrame:
    """``tables/influence_multilevel.csv``: one row per study, in order of first appearance.

    Columns: ``study_id``; ``k`` (its effect sizes); ``cooks_distance``; ``dfbetas`` (of the pooled
    estimate); ``rstudent_X2``, ``rstudent_df`` (= k) and ``rstudent_pval`` (upper tail of
    chi^2_k: the study's multivariate studentized deleted residual); ``rstandard_X2`` (its internally
    standardized counterpart, no deletion); ``hat`` (the study's leverage, the sum of its effects' hat
    values); ``sigma2_study_del``, ``sigma2_within_del`` (variance components without the study);
    ``loo_estimate``, ``loo_se``, ``loo_pval``, ``loo_ci_lb``, ``loo_ci_ub`` (the pooled Fisher z
    without the study, with the model's test) and ``loo_r*`` (tanh of them); ``influential`` (the rules
    of :mod:`alliancemeta.studies.multilevel.influence`).
    """
    if inf.level != "study":
        raise ValueError("the influence_multilevel table holds study deletions (level='study')")
    return pd.DataFrame(
        {
            "study_id": inf.units,
            "k": inf.k,
            "cooks_distance": inf.cooks_distance,
            "dfbetas": inf.dfbetas[:, 0],
            "rstudent_X2": inf.rstudent_X2,
            "rstudent_df": inf.rstudent_df,
            "rstudent_pval": inf.rstudent_pval,
            "rstandard_X2": inf.rstandard_X2,
            "hat": inf.hat_unit,
            "sigma2_study_del": inf.sigma2_del[:, 0],
            "sigma2_within_del": inf.sigma2_del[:, 1],
            "loo_estimate": inf.loo_estimate,
            "loo_se": inf.loo_se,
            "loo_pval": inf.loo_pval,
            "loo_ci_lb": inf.loo_ci_lb,
            "loo_ci_ub": inf.loo_ci_ub,
            "loo_r": np.tanh(inf.loo_estimate),
            "loo_r_ci_lb": np.tanh(inf.loo_ci_lb),
            "loo_r_ci_ub": np.tanh(inf.loo_ci_ub),
            "influential": inf.influential,
        },
        columns=list(INFLUENCE_MULTILEVEL_COLUMNS),
    )


def write_influence_multilevel(studies, table, pdf, png, *, dataset: Dataset, meta: MetaSettings) -> None:
    """Fit the three-level model to a processed study table and write its study-deletion diagnostics.

    ``studies`` has columns ``study_id``, ``yi``, ``vi``; the three-level model uses the headline test
    (``z``, or ``t`` for the headline ``t`` and ``knha``: :attr:`MetaSettings.multilevel_test`).  Writes
    ``table`` (see :func:`influence_multilevel_table`) and the figure (``pdf``, ``png``).
    """
    frame = read_studies_table(studies)
    if "study_id" not in frame.columns:
        raise ValueError(f"{studies}: the study table lacks column study_id needed by the three-level model")
    fit = three_level(frame["yi"], frame["vi"], frame["study_id"].astype(str).to_numpy(), test=meta.multilevel_test,
                      level=meta.level)
    inf = multilevel_influence(fit, "study")
    log.info(
        "three-level influence: %d studies, %d refits, %d iterations in total, %d influential",
        fit.n_clusters, inf.units.size, int(inf.iterations.sum()), int(inf.influential.sum()),
    )  # fmt: skip
    write_csv(influence_multilevel_table(fit, inf), table, INFLUENCE_MULTILEVEL_COLUMNS)
    save_figure(influence_multilevel_plot(fit, inf, dataset.label), pdf, png)


# --------------------------------------------------------------------------------------------------
# GOSH
# --------------------------------------------------------------------------------------------------


def write_gosh(studies, table, pdf, png, *, dataset: Dataset, meta: MetaSettings, seed: int) -> None:
    """``gosh_summary.csv`` and ``figures/gosh.{pdf,png}``: the equal-effects model and the headline estimator
    fitted to every subset of the effects (k <= ``meta.gosh_max_k``) or to ``meta.gosh_subsets`` random ones.

    ``seed`` is the config seed; the random subsets use ``derive_seed(seed, "gosh/<dataset>")``.  The effects
    are treated as independent (as metafor's ``gosh()``, which accepts only ``rma.uni`` models).  With one
    effect there is no subset to compare: the table holds empty rows with the reason and the figure says why.
    """
    frame = read_studies_table(studies)
    yi, vi = frame["yi"].to_numpy(dtype=float), frame["vi"].to_numpy(dtype=float)
    methods = ("FE", meta.method)
    if yi.size < 2:
        reason = f"k = {yi.size}: a GOSH plot needs at least two effect sizes"
        log.warning("%s: %s", dataset.name, reason)
        write_csv(gosh_summary_unavailable(methods, int(yi.size), reason), table,
                  [*GOSH_SUMMARY_COLUMNS, *GOSH_EXTRA_COLUMNS])
        save_figure(unavailable("GOSH plot", reason, dataset.label), pdf, png)
        return
    results = gosh(yi, vi, methods, max_k=meta.gosh_max_k, subsets=meta.gosh_subsets,
                   seed=derive_seed(seed, f"gosh/{dataset.name}"))
    log.info("%s: GOSH on %s subsets of k = %d (%s)", dataset.name, f"{results[0].n_subsets:,}", yi.size,
             "all" if results[0].exact else "random")
    write_csv(gosh_summary_table(results), table, [*GOSH_SUMMARY_COLUMNS, *GOSH_EXTRA_COLUMNS])
    save_figure(gosh_figure(results, dataset.label), pdf, png)
