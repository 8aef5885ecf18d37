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

from alliancemeta.core.errors import ModelError
from alliancemeta.studies.random_effects import MetaFit, random_effects


class ModeratorError(ModelError):
    """A moderator cannot be analysed (constant, collinear, too few effects); the message says why."""


@dataclass(frozen=True)
class Design:
    """A design matrix with R's term names; ``numeric`` marks the columns of numeric moderators."""

    X: np.ndarray
    terms: list[str]
    rows: np.ndarray  # boolean mask of rows used
    single_levels: list[str]  # "moderator=level" for levels observed in a single effect size
    numeric: np.ndarray  # (p,) bool: column holds a numeric moderator (as opposed to the intercept or a dummy)

    def centred(self) -> tuple[np.ndarray, np.ndarray]:
        r"""The design with numeric columns centred at their means, and the map back to this design's coefficients.

        With :math:`X_c = X - 1c'` on the numeric columns (c their means), :math:`X_c b_c = X b` for
        :math:`b = T b_c`, :math:`T = I - e_1 c'`: only the intercept changes (to the effect at the
        moderators' means).  Samplers work on :math:`b_c` (intercept and slopes nearly uncorrelated).
        """
        centre = np.where(self.numeric, self.X.mean(axis=0), 0.0)
        T = np.eye(self.X.shape[1])
        T[0, :] -= centre
        T[0, 0] = 1.0
        return self.X - centre, T


def is_categorical(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values)


def design_matrix(frame: pd.DataFrame, moderators: Sequence[str]) -> Design:
    """Intercept plus moderators, R-style: treatment-coded factors (sorted levels), numeric columns as is."""
    moderators = list(moderators)
    rows = frame[moderators].notna().all(axis=1).to_numpy()
    used = frame.loc[rows]
    columns, terms, single, numeric = [np.ones(int(rows.sum()))], ["intrcpt"], [], [False]
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
                numeric.append(False)
        else:
            x = values.to_numpy(dtype=float)
            if np.ptp(x) == 0:
                raise ModeratorError(f"moderator {mod!r} is constant ({x[0]:g}) among the rows analysed")
            columns.append(x)
            terms.append(mod)
            numeric.append(True)
    X = np.column_stack(columns)
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ModeratorError(f"moderators {', '.join(moderators)} are collinear: some terms are linear "
                             "combinations of others; analyse them separately")
    return Design(X, terms, rows, single, np.asarray(numeric, dtype=bool))


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


