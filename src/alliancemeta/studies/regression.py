"""Moderator analyses: mixed-effects meta-regression and subgroup analyses on study-level tables.

Design matrices follow R's ``model.matrix`` with treatment coding (the first level in sorted order is
the reference), so coefficients are named and valued as in ``metafor::rma(yi, vi, mods = ~ x)``.
Rows with a missing value in a model's moderators are dropped for that model only, and the tables
say how many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from alliancemeta.studies.random_effects import MetaFit, random_effects

MODERATOR_COLUMNS = ("moderator", "term", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub")
MODERATOR_TEST_COLUMNS = (
    "moderator", "test", "k", "QM", "QM_df", "QM_pval", "QE", "QE_df", "QE_pval", "tau2", "R2",
)  # fmt: skip
SUBGROUP_COLUMNS = ("moderator", "level", "k", "estimate", "se", "ci_lb", "ci_ub", "tau2", "I2", "r", "r_ci_lb",
                    "r_ci_ub")


class ModeratorError(ValueError):
    """A moderator cannot be analysed (constant, collinear, too few effects); the message says why."""


@dataclass(frozen=True)
class Design:
    X: np.ndarray
    terms: list[str]
    rows: np.ndarray  # boolean mask of rows used
    single_levels: list[str]  # "moderator=level" for levels observed in a single effect size


def is_categorical(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values)


def design_matrix(frame: pd.DataFrame, moderators: Sequence[str]) -> Design:
    """Intercept plus moderators, R-style: treatment-coded factors (sorted levels), numeric columns as is."""
    moderators = list(moderators)
    rows = frame[moderators].notna().all(axis=1).to_numpy()
    used = frame.loc[rows]
    columns, terms, single = [np.ones(int(rows.sum()))], ["intrcpt"], []
    for mod in moderators:
        values = used[mod]
        if is_categorical(values):
            levels = sorted(values.astype(str).unique())
            if len(levels) < 2:
                raise ModeratorError(f"moderator {mod!r} has a single level ({levels[0]!r}) among the rows analysed")
            counts = values.astype(str).value_counts()
            single += [f"{mod}={lv}" for lv in levels if counts[lv] == 1]
            for level in levels[1:]:
                columns.append((values.astype(str) == level).to_numpy(dtype=float))
                terms.append(f"{mod}{level}")
        else:
            x = values.to_numpy(dtype=float)
            if np.ptp(x) == 0:
                raise ModeratorError(f"moderator {mod!r} is constant ({x[0]:g}) among the rows analysed")
            columns.append(x)
            terms.append(mod)
    X = np.column_stack(columns)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ModeratorError(f"moderators {', '.join(moderators)} are collinear: some terms are linear "
                             "combinations of others; analyse them separately")
    return Design(X, terms, rows, single)


def r_squared(fit: MetaFit) -> float:
    """Proportion of heterogeneity accounted for, in percent, as metafor reports it.

    Random/mixed effects: :math:`R^2 = \\max(0, 100 (\\hat\\tau^2_{RE} - \\hat\\tau^2_{ME}) / \\hat\\tau^2_{RE})`
    with the intercept-only model fitted to the same rows (Raudenbush 1994); 0 when
    :math:`\\hat\\tau^2_{RE} = 0`.  Equal effects: the adjusted R² of the weighted least-squares
    regression, truncated at 0.
    """
    if fit.method == "FE":
        w = 1.0 / fit.vi
        X = fit.X
        fitted = X @ fit.beta
        ybar = np.sum(w * fit.yi) / w.sum()
        ss_res = np.sum(w * (fit.yi - fitted) ** 2)
        ss_tot = np.sum(w * (fit.yi - ybar) ** 2)
        if ss_tot == 0:
            return 0.0
        adj = 1 - (ss_res / (fit.k - fit.p)) / (ss_tot / (fit.k - 1))
        return max(0.0, 100.0 * adj)
    tau2_re = random_effects(fit.yi, fit.vi, method=fit.method, test=fit.test).tau2
    if tau2_re == 0:
        return 0.0
    return max(0.0, 100.0 * (tau2_re - fit.tau2) / tau2_re)


@dataclass(frozen=True)
class ModeratorFit:
    moderator: str
    design: Design
    fit: MetaFit
    n_dropped: int


def fit_moderators(frame: pd.DataFrame, moderators: Sequence[str], method: str = "REML", test: str = "knha",
                   level: float = 0.95) -> ModeratorFit:
    """Fit ``yi ~ moderators`` as a mixed-effects model on the rows with all moderators observed."""
    design = design_matrix(frame, moderators)
    k = int(design.rows.sum())
    if k <= design.X.shape[1]:
        raise ModeratorError(
            f"moderators {', '.join(moderators)}: {k} effect sizes for {design.X.shape[1]} coefficients; "
            "need more effect sizes than coefficients"
        )
    yi = frame["yi"].to_numpy(dtype=float)[design.rows]
    vi = frame["vi"].to_numpy(dtype=float)[design.rows]
    fit = random_effects(yi, vi, X=design.X, method=method, test=test, level=level)
    return ModeratorFit("+".join(moderators), design, fit, int((~design.rows).sum()))


def _note(mf: ModeratorFit) -> str:
    notes = []
    if mf.n_dropped:
        notes.append(f"{mf.n_dropped} effect size(s) with a missing value dropped")
    if mf.design.single_levels:
        notes.append("level(s) with a single effect size: " + ", ".join(mf.design.single_levels))
    return "; ".join(notes)


def moderator_tables(frame: pd.DataFrame, moderators: Sequence[str], method: str = "REML",
                     tests: Sequence[str] = ("knha",), level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
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
                "R2": r_squared(fit), "QM_ddf": fit.QM_df[1], "n_dropped": mf.n_dropped, "note": _note(mf),
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


def subgroup_table(frame: pd.DataFrame, moderators: Sequence[str], method: str = "REML", test: str = "knha",
                   level: float = 0.95) -> pd.DataFrame:
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


def write_moderators(studies, coefficients, tests_table, subgroups, moderators: Sequence[str] = (),
                     method: str = "REML", tests: Sequence[str] = ("knha",), level: float = 0.95) -> None:
    """Pipeline entry: read a processed study table, write the three moderator tables."""
    from alliancemeta.core.tables import write_csv

    frame = pd.read_csv(studies)
    coefs, omnibus = moderator_tables(frame, moderators, method, tests, level)
    write_csv(coefs, coefficients)
    write_csv(omnibus, tests_table)
    write_csv(subgroup_table(frame, moderators, method, tests[0], level), subgroups)
