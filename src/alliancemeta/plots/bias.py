"""Figures of the publication-bias and sensitivity stage: contour-enhanced funnel plot, leave-one-out
and cumulative forest plots, Baujat plot and the influence panel.

Every figure is drawn from the package's own results (:mod:`alliancemeta.studies.bias`,
:mod:`alliancemeta.studies.influence`) in the house style of :mod:`alliancemeta.plots.forest` and saved as PDF and
200-dpi PNG by :func:`alliancemeta.plots.forest.save_figure` (atomic, byte-reproducible).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from scipy import stats

from alliancemeta.plots.forest import FOREST_MAX_LABELLED, STYLE, save_figure
from alliancemeta.studies import bias
from alliancemeta.studies import influence as infl
from alliancemeta.studies.random_effects import MetaFit, random_effects

#: Two-sided p-value contours of the funnel plot (Peters et al. 2008, *J Clin Epidemiol* 61, 991-996).
FUNNEL_CONTOURS = (0.10, 0.05, 0.01)
#: Fill colours of the contour bands, from p in (.10, .05] to p <= .01 (light to dark grey).
CONTOUR_SHADES = ("0.90", "0.78", "0.64")
HIGHLIGHT = "#b2182b"
ACCENT = "#1f4e79"
#: Points labelled in the Baujat plot: the most extreme by contribution and influence.
BAUJAT_LABELS = 5
FIGURES = ("funnel", "leave1out", "cumulative", "baujat", "influence")


def _title(ax, text: str, dataset: str) -> None:
    synthetic = " — SYNTHETIC data" if dataset.endswith("_synthetic") else ""
    ax.set_title(f"{dataset}{synthetic}: {text}" if dataset else text, loc="left")


def funnel_plot(fit: MetaFit, fill: bias.TrimFill | None = None, dataset: str = ""):
    r"""Contour-enhanced funnel plot: Fisher z against its standard error (0 at the top).

    Shaded regions mark where a study's two-sided p-value (test of :math:`\theta = 0`) lies in
    (.10, .05], (.05, .01] and below .01 (:data:`FUNNEL_CONTOURS`); the white wedge is p > .10.
    Observed effects are filled circles; trim-and-fill imputed ones (``fill``) open circles.  The
    vertical lines are the headline estimate and, dashed, the trim-and-fill estimate.
    """
    sei = np.sqrt(fit.vi)
    yi = fit.yi
    fill_se = np.sqrt(fill.vi_fill) if fill is not None else np.empty(0)
    fill_y = fill.yi_fill if fill is not None else np.empty(0)
    se_max = 1.05 * max(sei.max(), fill_se.max() if fill_se.size else 0.0)
    z_crit = [stats.norm.isf(p / 2) for p in FUNNEL_CONTOURS]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.2, 4.2))
        se_grid = np.array([0.0, se_max])
        xr = max(np.abs(np.concatenate([yi, fill_y])).max(), z_crit[-1] * se_max) * 1.08
        ax.fill_betweenx(se_grid, -xr, xr, color=CONTOUR_SHADES[-1], lw=0)
        bands = list(zip(z_crit[::-1], [*CONTOUR_SHADES[:-1][::-1], "white"], strict=True))
        for z, shade in bands:
            ax.fill_betweenx(se_grid, -z * se_grid, z * se_grid, color=shade, lw=0)
        ax.axvline(fit.estimate, color=ACCENT, lw=0.9, label=f"{fit.method} estimate ({fit.estimate:.3f})")
        if fill is not None and fill.k0 > 0:
            ax.axvline(fill.estimate, color=ACCENT, lw=0.9, ls="--", label=f"trim and fill ({fill.estimate:.3f})")
            ax.scatter(fill_y, fill_se, s=16, facecolors="white", edgecolors="0.1", linewidths=0.7, zorder=3,
                       label=f"imputed ({fill.k0}, {fill.side} side)")  # fmt: skip
        ax.scatter(yi, sei, s=14, color="0.1", zorder=4, linewidths=0, label=f"observed (k = {fit.k})")
        # legend patches for the contours
        labels = ["p > .10", ".10 ≥ p > .05", ".05 ≥ p > .01", "p ≤ .01"]
        patches = [
            Patch(facecolor=c, edgecolor="0.6", lw=0.4, label=lab)
            for c, lab in zip(["white", *CONTOUR_SHADES], labels, strict=True)
        ]
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=[*handles, *patches], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6)
        ax.set_xlim(-xr, xr)
        ax.set_ylim(se_max, 0)
        ax.set_xlabel("Fisher z")
        ax.set_ylabel("Standard error")
        _title(ax, "contour-enhanced funnel plot", dataset)
    return fig


def _interval_forest(ax, labels, est, lo, hi, ref_est, ref_lo, ref_hi, ylabel_unlabelled: str):
    """Rows of point estimates with intervals on the r scale, against the full-data estimate band."""
    k = est.size
    labelled = k <= FOREST_MAX_LABELLED
    ypos = np.arange(k, 0, -1, dtype=float)
    r, rl, rh = np.tanh(est), np.tanh(lo), np.tanh(hi)
    ax.axvspan(np.tanh(ref_lo), np.tanh(ref_hi), color=ACCENT, alpha=0.12, lw=0)
    ax.axvline(np.tanh(ref_est), color=ACCENT, lw=0.8)
    if labelled:
        ax.hlines(ypos, rl, rh, color="0.3", lw=0.7)
        ax.scatter(r, ypos, s=12, marker="s", color="0.1", zorder=3, linewidths=0)
    else:  # hundreds of rows: the intervals as a band, the estimates as a line
        ax.fill_betweenx(ypos, rl, rh, color="0.82", lw=0, label="confidence interval")
        ax.plot(r, ypos, color="0.1", lw=0.9, label="estimate")
        for bound in (ref_lo, ref_hi):
            ax.axvline(np.tanh(bound), color=ACCENT, lw=0.7, ls=":")
        ax.plot([], [], color=ACCENT, lw=0.8, label="all effect sizes (CI dotted)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if labelled:
        ax.set_yticks(ypos)
        ax.set_yticklabels(labels)
    else:
        ax.set_yticks([])
        ax.set_ylabel(ylabel_unlabelled)
    ax.set_ylim(0.3, k + 0.7)
    ax.set_xlabel("Correlation r (back-transformed)")
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)


def _forest_height(k: int) -> float:
    return min(40.0, 1.2 + (0.17 * k if k <= FOREST_MAX_LABELLED else 4.5))


def leave1out_plot(labels, fit: MetaFit, loo: infl.LeaveOneOut, dataset: str = ""):
    """Leave-one-out forest: the pooled r (with CI) when each effect size is omitted, against the
    full-data estimate and its CI (band).  With more than FOREST_MAX_LABELLED effects the rows are
    sorted by the leave-one-out estimate and unlabelled."""
    labels = np.asarray(labels, dtype=object)
    order = np.arange(fit.k) if fit.k <= FOREST_MAX_LABELLED else np.argsort(loo.estimate, kind="stable")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, _forest_height(fit.k)))
        _interval_forest(
            ax, [f"without {s}" for s in labels[order]], loo.estimate[order], loo.ci_lb[order], loo.ci_ub[order],
            fit.estimate, fit.ci_lbs[0], fit.ci_ubs[0], f"{fit.k} deletions, sorted by estimate",
        )  # fmt: skip
        _title(ax, f"leave-one-out ({fit.method}, {fit.test})", dataset)
    return fig


def cumulative_plot(labels, fit: MetaFit, cu: infl.Cumulative, by_year: bool, dataset: str = "", years=None):
    """Cumulative forest: the pooled r (with CI) after adding each effect size in order (of
    publication year when ``by_year``), ending at the full-data estimate."""
    labels = np.asarray(labels, dtype=object)[cu.order]
    if by_year and years is not None:
        yr = np.asarray(years, dtype=float)[cu.order]
        labels = np.array(
            [f"+ {s} ({int(y)})" if np.isfinite(y) else f"+ {s}" for s, y in zip(labels, yr, strict=True)]
        )
    else:
        labels = np.array([f"+ {s}" for s in labels])
    order_text = "by year" if by_year else "in input order (no year column)"
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, _forest_height(fit.k)))
        _interval_forest(
            ax, labels, cu.estimate, cu.ci_lb, cu.ci_ub, fit.estimate, fit.ci_lbs[0], fit.ci_ubs[0],
            f"{fit.k} steps, {order_text} (top = first)",
        )  # fmt: skip
        _title(ax, f"cumulative meta-analysis {order_text}", dataset)
    return fig


def baujat_plot(labels, b: infl.Baujat, flagged=None, dataset: str = ""):
    """Baujat plot: contribution to heterogeneity (x) against influence on the pooled estimate (y);
    the :data:`BAUJAT_LABELS` most extreme points (largest x/max x + y/max y) and the influential
    ones (``flagged``) are labelled and highlighted."""
    labels = np.asarray(labels, dtype=object)
    flagged = np.zeros(b.x.size, dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
    score = b.x / max(b.x.max(), np.finfo(float).tiny) + b.y / max(b.y.max(), np.finfo(float).tiny)
    top = np.argsort(-score, kind="stable")[:BAUJAT_LABELS]
    show = np.zeros(b.x.size, dtype=bool)
    show[top] = True
    show |= flagged
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.0, 4.0))
        ax.scatter(b.x[~flagged], b.y[~flagged], s=14, color="0.25", linewidths=0, label="effect size")
        if flagged.any():
            ax.scatter(b.x[flagged], b.y[flagged], s=18, color=HIGHLIGHT, linewidths=0, label="influential")
            ax.legend(loc="upper left")
        for i in np.flatnonzero(show):
            ax.annotate(str(labels[i]), (b.x[i], b.y[i]), xytext=(3, 3), textcoords="offset points", fontsize=6)
        ax.set_xlabel("Contribution to overall heterogeneity")
        ax.set_ylabel("Influence on overall result")
        # identical effects under Knapp-Hartung give 0/0 influence (NaN): keep matplotlib's limits then
        for values, setter in ((b.x, ax.set_xlim), (b.y, ax.set_ylim)):
            finite = values[np.isfinite(values)]
            if finite.size and finite.max() > 0:
                setter(-0.02 * finite.max(), None)
        _title(ax, "Baujat plot", dataset)
    return fig


def influence_panel(fit: MetaFit, inf: infl.Influence, dataset: str = ""):
    """Influence diagnostics in metafor's ``plot.infl`` layout: one index plot per measure (rstudent,
    DFFITS, Cook's distance, COVRATIO, tau^2 and QE after deletion, hat, weight), reference lines
    at metafor's cut-offs, influential effect sizes in red."""
    k, p = fit.k, fit.p
    crit = fit.crit
    panels = [
        ("rstudent", inf.rstudent, [0.0, -crit, crit]),
        ("dffits", inf.dffits, [0.0, 3 * np.sqrt(p / (k - p)), -3 * np.sqrt(p / (k - p))]),
        ("cook.d", inf.cooks_distance, [float(stats.chi2.ppf(0.5, p))]),
        ("cov.r", inf.cov_ratio, [1.0]),
        ("tau2.del", inf.tau2_del, [fit.tau2]),
        ("QE.del", inf.QE_del, [fit.QE]),
        ("hat", inf.hat, [3 * p / k]),
        ("weight", inf.weight, [100 / k]),
    ]
    idx = np.arange(1, k + 1)
    small = k <= 60
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(4, 2, figsize=(7.0, 7.5), sharex=True)
        for ax, (name, values, refs) in zip(axes.ravel(), panels, strict=True):
            for r in refs:
                ax.axhline(r, color="0.55", lw=0.6, ls="--" if r != refs[0] or len(refs) == 1 else "-")
            if small:
                ax.plot(idx, values, color="0.45", lw=0.6)
            ax.scatter(idx[~inf.inf], values[~inf.inf], s=10 if small else 3, color="0.1", linewidths=0, zorder=3)
            if inf.inf.any():
                ax.scatter(idx[inf.inf], values[inf.inf], s=16 if small else 8, color=HIGHLIGHT, linewidths=0, zorder=4)
            ax.set_ylabel(name)
        for ax in axes[-1]:
            ax.set_xlabel("effect size (input order)")
        n_inf = int(inf.inf.sum())
        synthetic = " — SYNTHETIC data" if dataset.endswith("_synthetic") else ""
        fig.suptitle(
            f"{dataset}{synthetic}: influence diagnostics ({fit.method}, {fit.test}); {n_inf} influential in red",
            x=0.01, ha="left", fontsize=9,
        )  # fmt: skip
        fig.tight_layout()
    return fig


def unavailable(name: str, reason: str, dataset: str = ""):
    """A figure that states why ``name`` cannot be drawn for this dataset (e.g. k < 3)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.0, 1.6))
        ax.axis("off")
        ax.text(0.0, 0.5, f"{name}: not available for this dataset.\n{reason}", va="center", fontsize=8)
        _title(ax, name, dataset)
    return fig


def write_bias_figures(
    studies,
    outputs: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
    method: str = "REML",
    test: str = "knha",
    level: float = 0.95,
    dataset: str = "",
) -> None:
    """All figures of the stage for one processed study table (``study, yi, vi`` [+ ``year``]).

    ``outputs`` maps each of :data:`FIGURES` to its (pdf, png) paths.  The headline model
    (``method``, ``test``) is the one of the tables; trim and fill uses the L0 estimator.
    """
    missing = [name for name in FIGURES if name not in outputs]
    if missing:
        raise ValueError(f"no output paths for figure(s) {', '.join(missing)}")
    frame = pd.read_csv(studies)
    labels = frame["study"].astype(str).to_numpy()
    fit = random_effects(frame["yi"], frame["vi"], method=method, test=test, level=level)
    try:
        fill = bias.trimfill(fit, "L0")
    except (ValueError, bias.ConvergenceError):
        fill = None
    years = infl.year_of(frame)
    try:
        deleted = infl.deletion_fits(fit)
    except ValueError as err:  # too few effect sizes for a deleted fit: say so in those figures
        reason = str(err)
        figures = {
            name: (lambda name=name: unavailable(name, reason, dataset))
            for name in ("leave1out", "baujat", "influence")
        }
    else:
        inf = infl.influence(fit, deleted)
        figures = {
            "leave1out": lambda: leave1out_plot(labels, fit, infl.leave1out(fit, deleted), dataset),
            "baujat": lambda: baujat_plot(labels, infl.baujat(fit, deleted), inf.inf, dataset),
            "influence": lambda: influence_panel(fit, inf, dataset),
        }
    figures["funnel"] = lambda: funnel_plot(fit, fill, dataset)
    figures["cumulative"] = lambda: cumulative_plot(
        labels, fit, infl.cumul(fit, years), years is not None, dataset, years
    )
    for name in FIGURES:
        pdf, png = outputs[name]
        save_figure(figures[name](), pdf, png)
