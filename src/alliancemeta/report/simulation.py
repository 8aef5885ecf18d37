"""APA-style tables of the simulation study: the design and the performance of every interval method."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from alliancemeta.report.apa import ApaTable
from alliancemeta.report.numbers import MINUS, MISSING, bounded, level_pct
from alliancemeta.studies.simulation import GAMMA_SHAPE, MIXTURE_SHARE, SELECTION_STEPS, Condition


def method_label(method: str, che_rho: float) -> str:
    """A reader's name of a simulation method."""
    return {
        "z": "Random effects, z",
        "knha": "Random effects, Knapp–Hartung",
        "three_level": "Three-level, t",
        "cr2": "Three-level, CR2",
        "che": f"CHE (ρ = {bounded(che_rho)}), CR2",
        "bayes": "Bayesian random effects",
    }.get(method, method)


def _selection_text(selection: tuple[float, ...]) -> str:
    if all(w == 1.0 for w in selection):
        return "none"
    return "/".join(f"{w:g}" for w in selection)


def design_table(conditions: Iterable[Condition]) -> ApaTable:
    """Table 1: the conditions of the simulation design."""
    rows = []
    for c in conditions:
        rows.append((
            c.name, str(c.k), f"{c.effects_mean:g} (≤ {c.effects_max})", f"{c.n_median:g} ({c.n_sdlog:g})",
            f"{c.n_min}–{c.n_max}", bounded(c.mu_r), f"{c.tau2:g}", f"{c.within_share:g}", bounded(c.rho),
            _selection_text(c.selection), c.true_effects,
        ))  # fmt: skip
    steps = " and ".join(f"{s:g}".removeprefix("0") for s in SELECTION_STEPS)
    note = (
        "k = published studies per replicate; effects per study = 1 + Poisson(mean − 1), capped; n = sample size per "
        "study, round(lognormal(log median, SD of log n)) clipped to the range; r = true mean correlation (μ = atanh r "
        "is the target); τ² = variance of the true Fisher-z effects, split between and within studies by the within "
        "share; ρ = correlation of a study's outcome measures given the alliance, about the sampling correlation of "
        "its effect sizes. Correlations are drawn from the exact (Wishart) distribution of n clients and rounded to "
        f"two decimals. Selection: publication probabilities of a study whose primary effect has a one-sided p in "
        f"the intervals cut at {steps} (none = all published). True effects: normal, skewed (standardised gamma, shape "
        f"{GAMMA_SHAPE:g}) or mixture ({100 * MIXTURE_SHARE:g}% of studies in a high component)."
    )
    return ApaTable(
        "Simulation Design",
        ("Condition", "k", "Effects per study", "n median (SD log)", "n range", "r", "τ²", "Within share", "ρ",
         "Selection", "True effects"),
        tuple(rows),
        note,
        align="lrrrrrrrrll",
    )  # fmt: skip


def fixed(x, digits: int) -> str:
    """``x`` with exactly ``digits`` decimals and a true minus sign (no ``−0.000``); an em dash when missing."""
    if not np.isfinite(x):
        return MISSING
    text = f"{float(x):.{digits}f}"
    if float(text) == 0.0:
        text = text.lstrip("-")
    return text.replace("-", MINUS)


def _with_mcse(value, mcse, fmt) -> str:
    if not np.isfinite(value):
        return MISSING
    return f"{fmt(value)} ({fmt(mcse)})" if np.isfinite(mcse) else fmt(value)


def results_table(summary: pd.DataFrame, fit) -> ApaTable:
    """Table 2: bias, RMSE, coverage and width of every method in every condition (``simulation.csv``).

    ``fit`` is the :class:`~alliancemeta.pipeline.simulation.SimulationFit` (level, estimator, CHE rho).
    """
    pct = level_pct(fit.level)
    rows = []
    previous = None
    for _, r in summary.iterrows():
        rows.append((
            r["condition"] if r["condition"] != previous else "", method_label(r["method"], fit.che_rho),
            f"{int(r['n_failed'])}/{int(r['n_replicates'])}",
            _with_mcse(r["bias"], r["bias_mcse"], lambda x: fixed(x, 4)),
            fixed(r["rmse"], 4),
            _with_mcse(100 * r["coverage"], 100 * r["coverage_mcse"], lambda x: fixed(x, 1)),
            fixed(r["width"], 3),
        ))  # fmt: skip
        previous = r["condition"]
    note = (
        f"Performance over replicates on the Fisher-z scale against the true mean μ (before selection). Failed = "
        f"fits that could not be estimated (excluded from the other columns, never dropped silently). Bias and "
        f"coverage of the {pct} interval with their Monte-Carlo standard errors in parentheses; RMSE = root mean "
        f"squared error; width = mean interval width. Random-effects and Bayesian models treat every effect size as "
        f"independent ({fit.estimator} estimator; Bayesian: exact posterior by quadrature with the configured priors, "
        f"posterior mean and equal-tailed interval, no MCMC); three-level and CHE models nest effect sizes in "
        f"studies (REML); CR2 = cluster-robust SE with Satterthwaite df."
    )
    return ApaTable(
        "Bias, RMSE and Coverage of the Interval Methods",
        ("Condition", "Method", "Failed", "Bias (MCSE)", "RMSE", f"Coverage of {pct} CI, % (MCSE)", "Width"),
        tuple(rows),
        note,
        align="llrrrrr",
    )
