"""Stage ``meta`` (workflow/rules/meta.smk): pooled effects, moderators, the three-level model, forest plot.

Writes, per study-level dataset, ``random_effects.csv``, ``moderators.csv``, ``moderator_tests.csv``,
``subgroups.csv``, ``multilevel.csv``, ``random_effects_aggregated.csv`` and the forest plot (SPEC §5).
This module knows the output columns; the statistics live in :mod:`alliancemeta.studies`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from alliancemeta.core.inference import critical_value
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import MetaSettings, StudyDataset
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.common import read_studies_table
from alliancemeta.plots.forest import Pooled, forest_pages, forest_rows
from alliancemeta.plots.style import save_pages
from alliancemeta.studies.distribution import DISTRIBUTION_COLUMNS, DISTRIBUTION_EXTRA_COLUMNS, distribution_table
from alliancemeta.studies.location_scale import (
    LOCATION_SCALE_COLUMNS,
    LOCATION_SCALE_TEST_COLUMNS,
    LOCATION_SCALE_TEST_EXTRA,
    location_scale_table,
)
from alliancemeta.studies.multilevel.aggregate import aggregate_within_studies
from alliancemeta.studies.multilevel.che import CHE_COLUMNS, CHE_EXTRA_COLUMNS, che_table
from alliancemeta.studies.multilevel.model import MultilevelFit, three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import HeterogeneityCI, MetaFit, confint_tau2, random_effects
from alliancemeta.studies.regression import ModeratorError, ModeratorFit, fit_moderators, is_categorical, r_squared

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# random_effects.csv
# --------------------------------------------------------------------------------------------------

RANDOM_EFFECTS_COLUMNS = (
    "estimator", "test", "k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub",
    "tau2", "tau2_ci_lb", "tau2_ci_ub", "I2", "I2_ci_lb", "I2_ci_ub", "H2", "Q", "Q_df", "Q_pval",
    "r", "r_ci_lb", "r_ci_ub", "r_pi_lb", "r_pi_ub",
)  # fmt: skip


def _note(fit: MetaFit, requested_test: str) -> str:
    """Plain-language caveats for degenerate but valid data, written next to the numbers."""
    notes = []
    if fit.k == 1:
        notes.append("k = 1: the single effect size is reported; no heterogeneity can be estimated")
        if requested_test != fit.test:
            notes.append(f"test {requested_test!r} needs k > 1, so the z test is used")
    elif fit.k == 2:
        notes.append("k = 2: tau^2 is barely estimable and t-based intervals are very wide")
    if fit.method != "FE" and fit.k > 1 and fit.tau2 == 0.0:
        notes.append("tau^2 estimated at 0: the random-effects results equal the equal-effects results")
    return "; ".join(notes)


def _heterogeneity_ci(fit: MetaFit) -> HeterogeneityCI:
    """Q-profile intervals, or NaN bounds where tau^2 is not estimated (FE) or not estimable (k = p)."""
    if fit.method == "FE" or fit.k - fit.p < 1:
        return HeterogeneityCI(fit.tau2, np.nan, np.nan, fit.I2, np.nan, np.nan, fit.H2, np.nan, np.nan)
    return confint_tau2(fit)


def summary_row(fit: MetaFit, requested_test: str | None = None, het: HeterogeneityCI | None = None) -> dict:
    """One row of ``random_effects.csv`` for an intercept-only fit (Fisher-z scale plus r).

    ``requested_test`` is the test named in the config; it labels the row even when the model had to
    fall back (k = 1), and the trailing ``note`` says so.  ``het`` passes heterogeneity intervals
    already computed for the same data and estimator (they do not depend on the test).
    """
    requested_test = fit.test if requested_test is None else requested_test
    pred = fit.predict()
    het = _heterogeneity_ci(fit) if het is None else het
    return {
        "estimator": fit.method,
        "test": requested_test,
        "k": fit.k,
        "estimate": fit.estimate,
        "se": float(fit.se[0]),
        "stat": float(fit.stat_values[0]),
        "pval": float(fit.pvals[0]),
        "ci_lb": float(fit.ci_lbs[0]),
        "ci_ub": float(fit.ci_ubs[0]),
        "pi_lb": pred.pi_lb,
        "pi_ub": pred.pi_ub,
        "tau2": fit.tau2,
        "tau2_ci_lb": het.tau2_ci_lb,
        "tau2_ci_ub": het.tau2_ci_ub,
        "I2": fit.I2,
        "I2_ci_lb": het.I2_ci_lb,
        "I2_ci_ub": het.I2_ci_ub,
        "H2": fit.H2,
        "Q": fit.QE if fit.QE_df > 0 else np.nan,
        "Q_df": fit.QE_df,
        "Q_pval": fit.QE_pval if fit.QE_df > 0 else np.nan,
        "r": float(np.tanh(fit.estimate)),
        "r_ci_lb": float(np.tanh(fit.ci_lbs[0])),
        "r_ci_ub": float(np.tanh(fit.ci_ubs[0])),
        "r_pi_lb": float(np.tanh(pred.pi_lb)),
        "r_pi_ub": float(np.tanh(pred.pi_ub)),
        "note": _note(fit, requested_test),
    }


def random_effects_table(yi, vi, estimators: Sequence[str], tests: Sequence[str], level: float) -> pd.DataFrame:
    """Fit every (estimator, test) pair and return the SPEC §5 ``random_effects.csv`` table."""
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the k = 1 fallback is explained in the table's note column
        for m in estimators:
            # tau^2 and its Q-profile interval depend on the estimator, not on the test: compute them once
            tau2 = het = None
            for t in tests:
                fit = random_effects(yi, vi, method=m, test=t, level=level, tau2=tau2)
                tau2 = fit.tau2 if tau2 is None else tau2
                het = _heterogeneity_ci(fit) if het is None else het
                rows.append(summary_row(fit, t, het))
    return pd.DataFrame(rows, columns=[*RANDOM_EFFECTS_COLUMNS, "note"])


def write_random_effects(studies, table, meta: MetaSettings) -> None:
    """Read a processed study table (``study, yi, vi, ...``) and write ``random_effects.csv``."""
    frame = read_studies_table(studies)
    write_csv(random_effects_table(frame["yi"], frame["vi"], meta.estimators, meta.tests, meta.level), table,
              [*RANDOM_EFFECTS_COLUMNS, "note"])


# --------------------------------------------------------------------------------------------------
# moderators.csv, moderator_tests.csv, subgroups.csv
# --------------------------------------------------------------------------------------------------

MODERATOR_COLUMNS = ("moderator", "term", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub")
MODERATOR_TEST_COLUMNS = (
    "moderator", "test", "k", "QM", "QM_df", "QM_pval", "QE", "QE_df", "QE_pval", "tau2", "R2",
)  # fmt: skip
SUBGROUP_COLUMNS = ("moderator", "level", "k", "estimate", "se", "ci_lb", "ci_ub", "tau2", "I2", "r", "r_ci_lb",
                    "r_ci_ub")


def _moderator_note(mf: ModeratorFit) -> str:
    notes = []
    if mf.n_dropped:
        notes.append(f"{mf.n_dropped} effect size(s) with a missing value dropped")
    if mf.design.single_levels:
        notes.append("level(s) with a single effect size: " + ", ".join(mf.design.single_levels))
    return "; ".join(notes)


def moderator_tables(frame: pd.DataFrame, moderators: Sequence[str], method: str, tests: Sequence[str],
                     level: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``moderators.csv`` and ``moderator_tests.csv`` (SPEC §5): each moderator alone, then all together.

    Coefficients are reported for the headline test (``tests[0]``, named in a trailing ``test``
    column); omnibus tests for every test.  A moderator that cannot be analysed gets a test row with
    NaN statistics and the reason in the trailing ``note`` column, never a silent gap.
    """
    models = [[m] for m in moderators]
    if len(moderators) > 1:
        models.append(list(moderators))
    coef_rows, test_rows = [], []
    for mods in models:
        name = "+".join(mods)
        for t_index, test in enumerate(tests):
            try:
                mf = fit_moderators(frame, mods, method, test, level)
            except ModeratorError as err:
                test_rows.append({"moderator": name, "test": test, "note": str(err)})
                continue
            fit = mf.fit
            test_rows.append({
                "moderator": name, "test": test, "k": fit.k, "QM": fit.QM, "QM_df": fit.QM_df[0],
                "QM_pval": fit.QM_pval, "QE": fit.QE, "QE_df": fit.QE_df, "QE_pval": fit.QE_pval, "tau2": fit.tau2,
                "R2": r_squared(fit), "QM_ddf": fit.QM_df[1], "n_dropped": mf.n_dropped, "note": _moderator_note(mf),
            })
            if t_index == 0:
                for j, term in enumerate(mf.design.terms):
                    coef_rows.append({
                        "moderator": name, "term": term, "estimate": fit.beta[j], "se": fit.se[j],
                        "stat": fit.stat_values[j], "pval": fit.pvals[j], "ci_lb": fit.ci_lbs[j],
                        "ci_ub": fit.ci_ubs[j], "test": test,
                    })
    coefs = pd.DataFrame(coef_rows, columns=[*MODERATOR_COLUMNS, "test"])
    tests_frame = pd.DataFrame(test_rows, columns=[*MODERATOR_TEST_COLUMNS, "QM_ddf", "n_dropped", "note"])
    return coefs, tests_frame


def subgroup_table(frame: pd.DataFrame, moderators: Sequence[str], method: str, test: str,
                   level: float) -> pd.DataFrame:
    """Separate random-effects models within each level of each categorical moderator.

    Each row also carries the between-subgroup test computed as the heterogeneity Q of an
    equal-effects model fitted to the subgroup estimates and their standard errors (Borenstein et al.
    2009, ch. 19, "separate tau^2" approach), with df = levels - 1.  Subgroups with a single effect
    size are reported without heterogeneity.
    """
    rows = []
    for mod in moderators:
        values = frame[mod]
        if not is_categorical(values.dropna()):
            continue
        est, ses = [], []
        for lv in sorted(values.dropna().astype(str).unique()):
            sub = frame.loc[values.astype(str) == lv]
            fit = random_effects(sub["yi"], sub["vi"], method=method if len(sub) > 1 else "FE",
                                 test=test if len(sub) > 1 else "z", level=level)
            est.append(fit.estimate)
            ses.append(float(fit.se[0]))
            rows.append({
                "moderator": mod, "level": lv, "k": fit.k, "estimate": fit.estimate, "se": fit.se[0],
                "ci_lb": fit.ci_lbs[0], "ci_ub": fit.ci_ubs[0], "tau2": fit.tau2, "I2": fit.I2,
                "r": np.tanh(fit.estimate), "r_ci_lb": np.tanh(fit.ci_lbs[0]), "r_ci_ub": np.tanh(fit.ci_ubs[0]),
            })
        if len(est) > 1:
            between = random_effects(np.array(est), np.array(ses) ** 2, method="FE")
            for row in rows:
                if row["moderator"] == mod:
                    row.update(Q_between=between.QE, Q_between_df=between.QE_df,
                               Q_between_pval=float(stats.chi2.sf(between.QE, between.QE_df)))
    return pd.DataFrame(rows, columns=[*SUBGROUP_COLUMNS, "Q_between", "Q_between_df", "Q_between_pval"])


def write_moderators(studies, coefficients, tests_table, subgroups, *, moderators: Sequence[str],
                     meta: MetaSettings) -> None:
    """Read a processed study table and write the three moderator tables (headline estimator; every test)."""
    frame = read_studies_table(studies)
    coefs, omnibus = moderator_tables(frame, moderators, meta.method, meta.tests, meta.level)
    write_csv(coefs, coefficients, [*MODERATOR_COLUMNS, "test"])
    write_csv(omnibus, tests_table, [*MODERATOR_TEST_COLUMNS, "QM_ddf", "n_dropped", "note"])
    write_csv(subgroup_table(frame, moderators, meta.method, meta.test, meta.level), subgroups,
              [*SUBGROUP_COLUMNS, "Q_between", "Q_between_df", "Q_between_pval"])


# --------------------------------------------------------------------------------------------------
# multilevel.csv and random_effects_aggregated.csv
# --------------------------------------------------------------------------------------------------

TABLE_TESTS = ("z", "t", "cr2")
#: Trailing columns after the SPEC contract: total and level-specific I^2 in percent (Cheung 2014).
LEVEL_I2_COLUMNS = ("I2", "I2_study", "I2_within")
MULTILEVEL_COLUMNS = (
    "test", "k", "n_studies", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "pi_lb", "pi_ub",
    "sigma2_study", "sigma2_within", "r", "r_ci_lb", "r_ci_ub",
)  # fmt: skip


def multilevel_table(frame: pd.DataFrame, level: float, tests: Sequence[str] = TABLE_TESTS) -> pd.DataFrame:
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


def write_multilevel(studies, table, meta: MetaSettings) -> None:
    """Read a processed study table (``study, study_id, yi, vi, ...``) and write ``multilevel.csv``."""
    frame = read_studies_table(studies)
    write_csv(multilevel_table(frame, meta.level), table, [*MULTILEVEL_COLUMNS, *LEVEL_I2_COLUMNS])


def write_aggregated_random_effects(studies, table, meta: MetaSettings) -> None:
    """The simpler alternative to the three-level model: aggregate within studies, then pool.

    Effects sharing a ``study_id`` are combined with :func:`aggregate_within_studies` under the
    assumed sampling correlation ``rho`` (config ``meta.aggregate_rho``), and the one-per-study effects
    go through the same random-effects table as ``random_effects.csv`` (its columns, k = studies).
    """
    frame = read_studies_table(studies)
    agg = aggregate_within_studies(frame["yi"], frame["vi"], frame["study_id"].to_numpy(), meta.aggregate_rho)
    out = random_effects_table(agg.yi, agg.vi, meta.estimators, meta.tests, meta.level)
    out["rho"] = meta.aggregate_rho
    write_csv(out, table, [*RANDOM_EFFECTS_COLUMNS, "note", "rho"])


# --------------------------------------------------------------------------------------------------
# che.csv, location_scale.csv + location_scale_tests.csv, distribution.csv
# --------------------------------------------------------------------------------------------------


def write_che(studies, table, meta: MetaSettings) -> None:
    """``che.csv``: the CHE working model over the configured working correlations ``meta.che_rho``."""
    frame = read_studies_table(studies)
    write_csv(che_table(frame, meta.che_rho, meta.level), table, [*CHE_COLUMNS, *CHE_EXTRA_COLUMNS])


def write_location_scale(studies, coefficients, tests, *, study: StudyDataset, meta: MetaSettings) -> None:
    """``location_scale.csv`` and ``location_scale_tests.csv``: one model per scale moderator (REML)."""
    frame = read_studies_table(studies)
    coefs, omnibus = location_scale_table(frame, study.scale_moderators, meta.level)
    write_csv(coefs, coefficients, LOCATION_SCALE_COLUMNS)
    write_csv(omnibus, tests, [*LOCATION_SCALE_TEST_COLUMNS, *LOCATION_SCALE_TEST_EXTRA])


def write_distribution(studies, table, *, study: StudyDataset, meta: MetaSettings, seed: int) -> None:
    """``distribution.csv``: the share of true effects above ``meta.thresholds`` (normal model and calibrated
    estimates, headline estimator and test; the bootstrap resamples studies when ``study_id`` groups effects).

    ``seed`` is the config seed; the bootstrap uses ``derive_seed(seed, "distribution/<dataset>")``.
    """
    frame = read_studies_table(studies)
    cluster = frame["study_id"].astype(str).to_numpy() if "study_id" in frame.columns else None
    out = distribution_table(
        frame["yi"].to_numpy(float), frame["vi"].to_numpy(float), meta.thresholds, method=meta.method,
        level=meta.level, seed=derive_seed(seed, f"distribution/{study.dataset.name}"),
        n_boot=meta.distribution_n_boot, cluster=cluster, test=meta.test,
    )
    write_csv(out, table, [*DISTRIBUTION_COLUMNS, *DISTRIBUTION_EXTRA_COLUMNS])


# --------------------------------------------------------------------------------------------------
# forest plot
# --------------------------------------------------------------------------------------------------


def forest_figure(frame: pd.DataFrame, meta: MetaSettings, title: str, by: str | None = None):
    """The forest plot of a processed study table: the headline model, subgroup panels by ``by``."""
    yi, vi = frame["yi"].to_numpy(float), frame["vi"].to_numpy(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k = 1 falls back to z: the plot shows what was fitted
        fit = random_effects(yi, vi, method=meta.method, test=meta.test, level=meta.level)
    pred = fit.predict()
    weights = 100.0 * fit.weights / fit.weights.sum()
    label = f"{meta.method} model ({meta.test}), k = {fit.k}"
    overall = Pooled(label, fit.estimate, float(fit.ci_lbs[0]), float(fit.ci_ubs[0]), pred.pi_lb, pred.pi_ub)
    het = "" if fit.method == "FE" else f"τ² = {fit.tau2:.3g}, "
    note = f"Heterogeneity: {het}I² = {fit.I2:.0f}%, Q({fit.QE_df}) = {fit.QE:.2f}, p {_p(fit.QE_pval)}"
    groups = subgroup = None
    if by is not None and by in frame.columns and is_categorical(frame[by].dropna()):
        groups = frame[by].to_numpy(dtype=object)
        table = subgroup_table(frame, [by], meta.method, meta.test, meta.level)
        subgroup = {
            str(r["level"]): Pooled(f"Subgroup {r['level']} (k = {int(r['k'])})", r["estimate"], r["ci_lb"], r["ci_ub"])
            for _, r in table.iterrows()
        }
        if len(table) and np.isfinite(table["Q_between"].iloc[0]):
            q = table.iloc[0]
            note += f"; subgroup differences ({by}): Q({int(q['Q_between_df'])}) = {q['Q_between']:.2f}, p " + _p(
                q["Q_between_pval"])
    rows = forest_rows(frame["study"].astype(str), yi, vi, weights, critical_value(meta.level), overall, groups,
                       subgroup, note)
    return forest_pages(rows, meta.level, title)


def _p(p: float) -> str:
    return "< .001" if p < 0.001 else f"= {p:.3f}".replace("0.", ".", 1)


def write_forest(studies, pdf, png, *, study: StudyDataset, meta: MetaSettings) -> None:
    """Forest plot of a processed study table (headline model; subgroup panels by ``study.forest_by``)."""
    frame = read_studies_table(studies)
    whole, pages = forest_figure(frame, meta, f"{study.dataset.label}: forest plot", study.forest_by)
    save_pages(whole, pages, pdf, png)
