"""APA-style tables (Markdown and LaTeX) built from the pipeline's CSV tables.

Each builder takes a contract table (as written by :mod:`alliancemeta.pipeline`) and returns an
:class:`ApaTable`: a title, column heads, formatted cells and a note, rounded as APA asks
(:mod:`alliancemeta.report.numbers`).  The same object renders as a Markdown pipe table (for
``summary.md`` and the report) and as a LaTeX ``table`` with booktabs rules (for a manuscript).
Correlations are shown on the r scale (back-transformed), the scale readers of this literature use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.report.numbers import MISSING, bounded, interval, latex, level_pct, num, p_text, percent, pval, small

TEST_NAMES = {"knha": "Knapp–Hartung", "z": "z", "t": "t", "cr2": "CR2 robust"}


@dataclass(frozen=True)
class ApaTable:
    """A table as APA lays it out: number and title above, a note below."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str
    align: str = ""  # one character per column, l or r; default: first column left, the rest right

    def _align(self) -> str:
        return self.align or "l" + "r" * (len(self.columns) - 1)

    def markdown(self, number: int | None = None) -> str:
        head = f"**Table {number}**\n\n*{self.title}*\n\n" if number is not None else f"*{self.title}*\n\n"
        sep = "|" + "|".join("---:" if a == "r" else "---" for a in self._align()) + "|"
        lines = ["| " + " | ".join(self.columns) + " |", sep]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in self.rows]
        return head + "\n".join(lines) + f"\n\n*Note.* {self.note}\n"

    def latex(self, number: int | None = None, label: str = "") -> str:
        cols = self._align()
        lines = [
            r"\begin{table}[htbp]",
            r"\centering",
            rf"\caption{{{latex(self.title)}}}" + (rf"\label{{{label}}}" if label else ""),
            rf"\begin{{tabular}}{{{cols}}}",
            r"\toprule",
            " & ".join(latex(c) for c in self.columns) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(latex(cell) for cell in row) + r" \\" for row in self.rows]
        note = rf"{{\footnotesize\textit{{Note.}} {latex(self.note)}\par}}"
        lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", note, r"\end{table}"]
        return "\n".join(lines) + "\n"


def _r_ci(row, prefix: str = "r") -> str:
    return interval(row[f"{prefix}_ci_lb"], row[f"{prefix}_ci_ub"])


def random_effects_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Pooled correlations per tau^2 estimator and test (``random_effects.csv``)."""
    pct = level_pct(level)
    rows = []
    for _, r in frame.iterrows():
        rows.append((
            str(r["estimator"]), TEST_NAMES.get(str(r["test"]), str(r["test"])), str(int(r["k"])),
            bounded(r["r"]), _r_ci(r), interval(r["r_pi_lb"], r["r_pi_ub"]), pval(r["pval"]),
            small(r["tau2"]), percent(r["I2"]), num(r["Q"]),
        ))  # fmt: skip
    note = (
        f"Data: {data}. Random-effects meta-analysis of Fisher-z transformed correlations, back-transformed "
        f"to r. CI = {pct} confidence interval; PI = {pct} prediction interval; τ² = between-study variance "
        "(Fisher z); I² = share of total variance due to heterogeneity; Q = Cochran's Q. The first row is the "
        "headline model."
    )
    return ApaTable("Pooled Correlations", ("Estimator", "Test", "k", "r", f"{pct} CI",
                    f"{pct} PI", "p", "τ²", "I²", "Q"), tuple(rows), note)  # fmt: skip


def multilevel_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """The three-level model (``multilevel.csv``)."""
    pct = level_pct(level)
    rows = []
    for _, r in frame.iterrows():
        rows.append((
            TEST_NAMES.get(str(r["test"]), str(r["test"])), str(int(r["k"])), str(int(r["n_studies"])),
            bounded(r["r"]), _r_ci(r), interval(np.tanh(r["pi_lb"]), np.tanh(r["pi_ub"])), pval(r["pval"]),
            small(r["sigma2_study"]), small(r["sigma2_within"]),
        ))  # fmt: skip
    note = (
        f"Data: {data}. Three-level random-effects model (effect sizes nested in studies), REML. CR2 robust = "
        f"cluster-robust standard errors with Satterthwaite degrees of freedom. CI and PI at {pct}. "
        "σ²(study), σ²(within) = variance between studies and between effect sizes within studies (Fisher z)."
    )
    return ApaTable("Three-Level Meta-Analysis", ("Inference", "k", "Studies", "r", f"{pct} CI", f"{pct} PI", "p",
                    "σ²(study)", "σ²(within)"), tuple(rows), note)  # fmt: skip


def moderator_table(coefficients: pd.DataFrame, tests: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Meta-regression coefficients with each moderator's omnibus test (``moderators.csv``, ``moderator_tests.csv``)."""
    pct = level_pct(level)
    headline = coefficients["test"].iloc[0] if len(coefficients) else "knha"
    omnibus = tests[tests["test"] == headline].set_index("moderator") if len(tests) else pd.DataFrame()
    rows = []
    for moderator, part in coefficients.groupby("moderator", sort=False):
        qm = omnibus.loc[moderator] if moderator in omnibus.index else None
        test_text = MISSING
        if qm is not None and np.isfinite(qm["QM"]):
            df2 = qm.get("QM_ddf", np.inf)
            df_text = f"{int(qm['QM_df'])}" + (f", {int(df2)}" if np.isfinite(df2) else "")
            stat = "F" if np.isfinite(df2) else "Q_M"
            test_text = f"{stat}({df_text}) = {num(qm['QM'])}, {p_text(qm['QM_pval'])}"
        for i, (_, r) in enumerate(part.iterrows()):
            rows.append((
                moderator if i == 0 else "", str(r["term"]), num(r["estimate"], 3), num(r["se"], 3),
                interval(r["ci_lb"], r["ci_ub"], num, digits=3), pval(r["pval"]),
                test_text if i == 0 else "", percent(qm["R2"], 1) if (i == 0 and qm is not None) else "",
            ))  # fmt: skip
    note = (
        f"Data: {data}. Mixed-effects meta-regressions on Fisher z, one per moderator and all together, "
        f"{TEST_NAMES.get(headline, headline)} inference; categorical moderators treatment-coded (first level "
        f"in sorted order is the reference, intercept = its effect); CI at {pct}. R² = share of τ² accounted "
        "for."
    )
    return ApaTable("Moderators of the Pooled Correlation", ("Moderator", "Term", "b", "SE", f"{pct} CI",
                    "p", "Omnibus test", "R²"), tuple(rows), note, align="llrrrrlr")  # fmt: skip


BIAS_NAMES = {
    "egger": "Egger's regression test",
    "rank": "Rank correlation (Begg)",
    "trimfill": "Trim and fill (L0)",
    "trimfill_r0": "Trim and fill (R0)",
    "pet": "PET",
    "peese": "PEESE",
    "pet_peese": "PET-PEESE (conditional)",
    "selection_3psm": "Three-parameter selection model",
    "failsafe_rosenthal": "Fail-safe N (Rosenthal)",
}


def publication_bias_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Small-study tests and adjusted estimates (``publication_bias.csv``), estimates as r."""
    pct = level_pct(level)
    rows = []
    for _, r in frame.iterrows():
        method = str(r["method"])
        stat = num(r["statistic"], 0 if method == "failsafe_rosenthal" else 2)
        est = bounded(np.tanh(r["estimate"])) if np.isfinite(r["estimate"]) else MISSING
        ci = interval(np.tanh(r["ci_lb"]), np.tanh(r["ci_ub"])) if np.isfinite(r["ci_lb"]) else MISSING
        k0 = str(int(r["k0"])) if np.isfinite(r["k0"]) else ""
        rows.append((BIAS_NAMES.get(method, method), stat, pval(r["pval"]), est, ci, k0))
    note = (
        f"Data: {data}. Statistic: z or t of Egger's test, Kendall's τ, z or t of the filled model, t of the "
        "PET/PEESE intercept, likelihood-ratio χ² of the selection model, the fail-safe N. Adjusted estimates "
        f"back-transformed to r with {pct} CI; k₀ = studies imputed by trim and fill."
    )
    return ApaTable("Publication Bias and Small-Study Effects", ("Method", "Statistic", "p", "Adjusted r", f"{pct} CI",
                    "k₀"), tuple(rows), note)  # fmt: skip


def bayes_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Posterior summaries of the Bayesian models (``bayes.csv``)."""
    pct = level_pct(level)
    rows = []
    for _, r in frame.iterrows():
        name = str(r["parameter"])
        fmt_r = name == "r" or name.endswith(":r")
        fmt = bounded if fmt_r else (lambda x: num(x, 3))
        rows.append(
            (
                str(r["model"]).replace("_", " "),
                name,
                fmt(r["mean"]),
                fmt(r["sd"]),
                f"[{fmt(r['eti_lb'])}, {fmt(r['eti_ub'])}]",
                num(r["r_hat"], 3),
                str(round(r["ess_bulk"])),
            )
        )
    note = (
        f"Data: {data}. Posterior mean, SD and {pct} equal-tailed credible interval (CrI) on the Fisher-z scale "
        "(r = pooled correlation); R̂ and bulk effective sample size (ESS) of the MCMC run (nutpie); every run met "
        "R̂ ≤ 1.01, ESS ≥ 400 and no divergences."
    )
    return ApaTable("Bayesian Meta-Analysis", ("Model", "Parameter", "Mean", "SD", f"{pct} CrI", "R̂", "ESS"),
                    tuple(rows), note, align="llrrrrr")  # fmt: skip


#: Components of the inclusion Bayes factors, in the order of the table.
INCLUSION_LABELS = {"effect": "an effect", "heterogeneity": "heterogeneity", "bias": "publication bias",
                    "selection": "selection (weight functions)", "pet": "PET", "peese": "PEESE"}  # fmt: skip
#: Model-averaged rows, with their labels.
AVERAGED_LABELS = {"model_averaged": "model-averaged", "model_averaged_unadjusted": "unadjusted (no-bias models)",
                   "conditional_effect": "conditional on an effect"}  # fmt: skip


def _bf_text(x) -> str:
    x = float(x)
    if not np.isfinite(x):
        return MISSING if np.isnan(x) else "∞"
    if x >= 1000 or x < 0.001:
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{mantissa} × 10^{int(exponent)}"
    return num(x)


def model_averaging_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Inclusion Bayes factors and model-averaged r of the exact no-bias ensemble and of RoBMA-PSMA
    (``bayes_model_averaging.csv``)."""
    pct = level_pct(level)
    rows = []
    by = frame.set_index("model")
    for prefix, ensemble in (("", "Effect × heterogeneity (exact)"), ("robma:", "RoBMA-PSMA")):
        for comp, label in INCLUSION_LABELS.items():
            key = f"{prefix}inclusion:{comp}"
            if key in by.index:
                r = by.loc[key]
                rows.append((ensemble, f"Inclusion BF for {label}", _bf_text(r["bf_inclusion"]),
                             num(r["post_prob"], 3), MISSING, MISSING))  # fmt: skip
        for name, label in AVERAGED_LABELS.items():
            key = f"{prefix}{name}"
            if key in by.index:
                r = by.loc[key]
                mean = r["r_mean"] if "r_mean" in r and np.isfinite(r["r_mean"]) else np.tanh(r["mu_mean"])
                rows.append((ensemble, f"r, {label}", MISSING, num(r["post_prob"], 3), bounded(mean),
                             interval(np.tanh(r["mu_eti_lb"]), np.tanh(r["mu_eti_ub"]))))  # fmt: skip
    note = (
        f"Data: {data}. BF = inclusion Bayes factor (posterior over prior inclusion odds); P = posterior probability "
        f"of the component or of the models averaged; r = posterior mean correlation with its {pct} equal-tailed "
        "credible interval (CrI), back-transformed from Fisher z (exact ensemble: tanh of the posterior mean of z). "
        "The exact ensemble uses the priors of the Bayesian random-effects model; RoBMA-PSMA uses RoBMA's default "
        "priors rescaled to Fisher z, six selection models, PET and PEESE (36 models), and its model-averaged r is "
        "the publication-bias-adjusted estimate."
    )
    return ApaTable("Bayesian Model Averaging", ("Ensemble", "Quantity", "BF", "P", "r", f"{pct} CrI"),
                    tuple(rows), note, align="llrrrr")  # fmt: skip


def mixed_models_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Session-level coefficients of every model and engine (``mixed_models.csv``)."""
    pct = level_pct(level)
    has_df = "df" in frame.columns
    rows = []
    for _, r in frame.iterrows():
        row = [
            str(r["model"]).replace("_", " "),
            str(r["engine"]),
            str(r["term"]),
            num(r["estimate"], 3),
            num(r["se"], 3),
            interval(r["ci_lb"], r["ci_ub"], num, digits=3),
            pval(r["pval"]),
        ]
        if has_df:
            row.append(num(r["df"], 1))
        rows.append(tuple(row))
    note = (
        f"Data: {data}. Outcome aligned so that positive coefficients mean a stronger alliance goes with a better "
        f"outcome. mixedlm: REML linear mixed models ({pct} CI"
        + ("; Satterthwaite df" if has_df else "")
        + f"); pymc: posterior mean, SD and {pct} equal-tailed "
        "interval (no p-value)."
    )
    columns = ("Model", "Engine", "Term", "b", "SE", f"{pct} CI", "p") + (("df",) if has_df else ())
    return ApaTable(
        "Session-Level Alliance Effects", columns, tuple(rows), note, align="lll" + "r" * (len(columns) - 3)
    )


def che_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """The CHE working model over the assumed within-study correlations (``che.csv``)."""
    pct = level_pct(level)
    rows = []
    for _, r in frame.iterrows():
        rows.append((
            bounded(r["rho"]), TEST_NAMES.get(str(r["test"]), str(r["test"])), bounded(r["r"]), _r_ci(r),
            num(r["df"], 1) if np.isfinite(r["df"]) else MISSING, pval(r["pval"]), small(r["sigma2_study"]),
            small(r["sigma2_within"]),
        ))  # fmt: skip
    note = (
        f"Data: {data}. Correlated-and-hierarchical-effects working model: sampling errors of effect sizes from one "
        f"study correlated at ρ; random effects for studies and effect sizes within studies (REML). CR2 robust = "
        f"cluster-robust standard errors with Satterthwaite df. r back-transformed from Fisher z; CI at {pct}."
    )
    return ApaTable("Correlated and Hierarchical Effects Model", ("ρ", "Inference", "r", f"{pct} CI", "df", "p",
                    "σ²(study)", "σ²(within)"), tuple(rows), note)  # fmt: skip


def location_scale_table(coefficients: pd.DataFrame, tests: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Scale coefficients (log τ²) per moderator with the tests of constant heterogeneity (``location_scale*.csv``)."""
    pct = level_pct(level)
    by = tests.set_index("moderator")
    rows = []
    for moderator, part in coefficients[coefficients["part"] == "scale"].groupby("moderator", sort=False):
        test = by.loc[moderator] if moderator in by.index else None
        for i, (_, r) in enumerate(part.iterrows()):
            first = i == 0 and test is not None
            rows.append((
                moderator if i == 0 else "", str(r["term"]), num(r["estimate"]), num(r["se"]),
                interval(r["ci_lb"], r["ci_ub"], num), pval(r["pval"]),
                f"{num(test['LRT'])}, {p_text(test['LRT_pval'])}" if first and np.isfinite(test["LRT"]) else "",
            ))  # fmt: skip
    note = (
        f"Data: {data}. Location-scale models: intercept-only location, log τ² linear in the moderator (REML); "
        f"coefficients on the log τ² scale with {pct} CI; LRT = likelihood-ratio test against a constant τ²."
    )
    return ApaTable("Heterogeneity by Moderator (Location-Scale Models)", ("Moderator", "Term", "b (log τ²)", "SE",
                    f"{pct} CI", "p", "LRT"), tuple(rows), note, align="llrrrrl")  # fmt: skip


def distribution_table(frame: pd.DataFrame, level: float, data: str) -> ApaTable:
    """Share of true effects above each threshold (``distribution.csv``)."""
    pct = level_pct(level)
    rows = [(bounded(r["threshold"]), str(r["method"]), percent(100 * r["share"]),
             interval(100 * r["ci_lb"], 100 * r["ci_ub"], percent), str(r.get("ci_method", "")))
            for _, r in frame.iterrows()]  # fmt: skip
    note = (
        f"Data: {data}. Estimated share of true correlations above r: normal random-effects model and "
        f"calibrated study estimates (Mathur & VanderWeele, 2019); {pct} intervals by the delta method or the BCa "
        "bootstrap (Interval column)."
    )
    return ApaTable(
        "Distribution of True Effects",
        ("Above r", "Method", "Share", f"{pct} CI", "Interval"),
        tuple(rows),
        note,
        align="llrrl",
    )


#: Builders by the CSV they read: (function, extra CSVs it needs, title used in the file name).
BUILDERS = {
    "random_effects": (random_effects_table, ()),
    "multilevel": (multilevel_table, ()),
    "moderators": (moderator_table, ("moderator_tests",)),
    "publication_bias": (publication_bias_table, ()),
    "bayes": (bayes_table, ()),
    "bayes_model_averaging": (model_averaging_table, ()),
    "mixed_models": (mixed_models_table, ()),
    "che": (che_table, ()),
    "location_scale": (location_scale_table, ("location_scale_tests",)),
    "distribution": (distribution_table, ()),
}


def build_tables(
    tables: dict[str, pd.DataFrame], level: float, data: str, order: Sequence[str] = tuple(BUILDERS)
) -> dict[str, ApaTable]:
    """Every APA table whose CSVs are in ``tables`` (name -> frame), in ``order``."""
    out = {}
    for name in order:
        if name not in tables or name not in BUILDERS:
            continue
        fn, extra = BUILDERS[name]
        if any(e not in tables for e in extra):
            continue
        out[name] = fn(tables[name], *(tables[e] for e in extra), level=level, data=data)
    return out
