"""Figures of the influence and sensitivity stage: leave-one-out and cumulative forest plots, Baujat plot,
the influence panel of the random-effects model and the leave-one-study-out plot of the three-level model."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from alliancemeta.plots.style import PALETTE, STYLE, title
from alliancemeta.studies.influence.cumulative import Cumulative
from alliancemeta.studies.influence.diagnostics import Baujat, Influence, LeaveOneOut
from alliancemeta.studies.multilevel.influence import MultilevelInfluence
from alliancemeta.studies.multilevel.model import MultilevelFit
from alliancemeta.studies.random_effects import MetaFit

#: Above this many rows a forest-type plot drops the row labels and becomes a caterpillar plot.
FOREST_MAX_LABELLED = 80

#: Points labelled in the Baujat plot: the most extreme by contribution and influence.
BAUJAT_LABELS = 5


def _interval_forest(ax, labels, est, lo, hi, ref_est, ref_lo, ref_hi, ylabel_unlabelled: str):
    """Rows of point estimates with intervals on the r scale, against the full-data estimate band."""
    k = est.size
    labelled = k <= FOREST_MAX_LABELLED
    ypos = np.arange(k, 0, -1, dtype=float)
    r, rl, rh = np.tanh(est), np.tanh(lo), np.tanh(hi)
    ax.axvspan(np.tanh(ref_lo), np.tanh(ref_hi), color=PALETTE["accent"], alpha=0.12, lw=0)
    ax.axvline(np.tanh(ref_est), color=PALETTE["accent"], lw=0.8)
    if labelled:
        ax.hlines(ypos, rl, rh, color="0.3", lw=0.7)
        ax.scatter(r, ypos, s=12, marker="s", color="0.1", zorder=3, linewidths=0)
    else:  # hundreds of rows: the intervals as a band, the estimates as a line
        ax.fill_betweenx(ypos, rl, rh, color="0.82", lw=0, label="confidence interval")
        ax.plot(r, ypos, color="0.1", lw=0.9, label="estimate")
        for bound in (ref_lo, ref_hi):
            ax.axvline(np.tanh(bound), color=PALETTE["accent"], lw=0.7, ls=":")
        ax.plot([], [], color=PALETTE["accent"], lw=0.8, label="all effect sizes (CI dotted)")
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


def leave1out_plot(labels, fit: MetaFit, loo: LeaveOneOut, dataset_label: str = ""):
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
        title(ax, f"leave-one-out ({fit.method}, {fit.test})", dataset_label)
    return fig


def cumulative_plot(labels, fit: MetaFit, cu: Cumulative, by_year: bool, dataset_label: str = "", years=None):
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
        title(ax, f"cumulative meta-analysis {order_text}", dataset_label)
    return fig


def baujat_plot(labels, b: Baujat, flagged=None, dataset_label: str = ""):
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
            ax.scatter(b.x[flagged], b.y[flagged], s=18, color=PALETTE["highlight"], linewidths=0, label="influential")
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
        title(ax, "Baujat plot", dataset_label)
    return fig


def influence_panel(fit: MetaFit, inf: Influence, dataset_label: str = ""):
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
                ax.scatter(idx[inf.inf], values[inf.inf], s=16 if small else 8, color=PALETTE["highlight"],
                           linewidths=0, zorder=4)
            ax.set_ylabel(name)
        for ax in axes[-1]:
            ax.set_xlabel("effect size (input order)")
        n_inf = int(inf.inf.sum())
        prefix = f"{dataset_label}: " if dataset_label else ""
        fig.suptitle(
            f"{prefix}influence diagnostics ({fit.method}, {fit.test}); {n_inf} influential in red",
            x=0.01, ha="left", fontsize=9,
        )  # fmt: skip
        fig.tight_layout()
    return fig



#: Influential studies are named in the figure when there are at most this many (else index only).
LABEL_MAX = 8


#: Up to this many studies the figure joins the Cook's distances and draws each leave-one-out interval;
#: beyond it the points alone stay legible (the band still shows the full-data interval).
INTERVALS_MAX = 60


def influence_multilevel_plot(fit: MultilevelFit, inf: MultilevelInfluence, dataset_label: str = ""):
    """Index plot per study: Cook's distance (top) and the leave-one-study-out pooled r (bottom).

    Studies in order of first appearance; the dashed line in the top panel is the Cook's distance
    cut-off (median of chi^2_p), the bottom panel's line and band are the full-data estimate and CI, and
    each study's leave-one-out CI is drawn up to :data:`INTERVALS_MAX` studies.  Influential studies are
    red, and named when there are at most :data:`LABEL_MAX` of them.
    """
    highlight, accent = PALETTE["highlight"], PALETTE["accent"]
    n = inf.units.size
    idx = np.arange(1, n + 1)
    flag = np.asarray(inf.influential, dtype=bool)
    small = n <= INTERVALS_MAX
    pred = fit.predict()
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.0, 5.2), sharex=True)
        if small:
            ax1.plot(idx, inf.cooks_distance, color="0.6", lw=0.6)
        ax1.axhline(inf.cooks_cutoff, color="0.45", lw=0.7, ls="--")
        ax1.scatter(idx[~flag], inf.cooks_distance[~flag], s=12 if small else 5, color="0.15", linewidths=0, zorder=3)
        ax1.scatter(idx[flag], inf.cooks_distance[flag], s=18 if small else 10, color=highlight, linewidths=0, zorder=4)
        ax1.set_ylabel("Cook's distance")
        ax1.set_ylim(bottom=0)
        if 0 < flag.sum() <= LABEL_MAX:
            for i in np.flatnonzero(flag):
                ax1.annotate(str(inf.units[i]), (idx[i], inf.cooks_distance[i]), xytext=(3, 3),
                             textcoords="offset points", fontsize=6, color=highlight)  # fmt: skip
        r, lo, hi = np.tanh(inf.loo_estimate), np.tanh(inf.loo_ci_lb), np.tanh(inf.loo_ci_ub)
        ax2.axhspan(np.tanh(pred.ci_lb), np.tanh(pred.ci_ub), color=accent, alpha=0.12, lw=0)
        ax2.axhline(np.tanh(pred.pred), color=accent, lw=0.8)
        colors = np.where(flag, highlight, "0.3")
        if small:  # with many studies the intervals would hide the estimates; the band shows the full CI
            ax2.vlines(idx, lo, hi, colors=colors, lw=0.8)
        ax2.scatter(idx, r, s=12 if small else 5, c=colors, linewidths=0, zorder=3)
        ax2.set_ylabel("pooled r without the study" + (f" ({100 * fit.level:g}% CI)" if small else ""))
        ax2.set_xlabel(f"study ({n} studies, in order of first appearance)")
        head = f"{dataset_label}\n" if dataset_label else ""
        ax1.set_title(
            f"{head}Three-level model ({fit.test}), each study left out: {int(flag.sum())} influential (red)",
            loc="left",
        )
        fig.tight_layout()
    return fig

