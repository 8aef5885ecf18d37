"""GOSH figure: the pooled correlation against I² over all (or random) subsets, one panel per model.

Up to a million points per panel, so the points are binned: a 2-D histogram with a logarithmic colour
scale (viridis: sequential, perceptually uniform and readable with colour-vision deficiencies and in
grey scale), marginal histograms of r (top) and I² (right), and the estimate on all k effects marked
(vermillion cross and dashed lines, Okabe-Ito colours).  Few subsets (at most
:data:`SCATTER_MAX_POINTS`) are drawn as points instead.  The dense layer is rasterised inside the
vector PDF, so the file stays small; axes and text stay vector.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from alliancemeta.plots.style import STYLE, save_figure
from alliancemeta.studies.gosh import GoshResult

#: At most this many subsets per panel are drawn as individual points; more are binned.
SCATTER_MAX_POINTS = 5_000
#: Bins of the 2-D histogram (r x I²) and of the marginal histograms.
BINS_R = 120
BINS_I2 = 100
#: The marginal histogram of I² is clipped when its I² = 0 bar is this many times the tallest other bar.
ZERO_BAR_RATIO = 2.0
CMAP = "viridis"
FULL_COLOUR = "#D55E00"  # Okabe-Ito vermillion: the estimate on all k effects
MARGIN_COLOUR = "#0072B2"  # Okabe-Ito blue
MODEL_LABELS = {
    "FE": "equal effects (FE)",
    "DL": "random effects, DerSimonian-Laird",
    "HE": "random effects, Hedges",
    "HS": "random effects, Hunter-Schmidt",
    "SJ": "random effects, Sidik-Jonkman",
    "ML": "random effects, ML",
    "REML": "random effects, REML",
    "EB": "random effects, empirical Bayes",
    "PM": "random effects, Paule-Mandel",
}


def _limits(x: np.ndarray, lo: float, hi: float, min_span: float, pad: float = 0.04) -> tuple[float, float]:
    """Axis limits around the finite values of ``x``, padded, at least ``min_span`` wide, within [lo, hi]."""
    x = x[np.isfinite(x)]
    a, b = (float(x.min()), float(x.max())) if x.size else (lo, hi)
    if b - a < min_span:
        a, b = (a + b - min_span) / 2, (a + b + min_span) / 2
    span = b - a
    return max(lo, a - pad * span), min(hi, b + pad * span)


def _panel(fig, spec, res: GoshResult, xlim, ylim, show_ylabel: bool):
    """Main axes with its marginal histograms in one cell of the figure's grid; returns the artist
    carrying the colour scale (None for a scatter)."""
    inner = spec.subgridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), wspace=0.05, hspace=0.05)
    ax = fig.add_subplot(inner[1, 0])
    top = fig.add_subplot(inner[0, 0], sharex=ax)
    right = fig.add_subplot(inner[1, 1], sharey=ax)
    ok = np.isfinite(res.estimate) & np.isfinite(res.I2)
    r = np.tanh(res.estimate[ok])
    i2 = res.I2[ok]
    x_edges = np.linspace(*xlim, BINS_R + 1)
    y_edges = np.linspace(*ylim, BINS_I2 + 1)
    mappable = None
    if r.size <= SCATTER_MAX_POINTS:
        ax.scatter(r, i2, s=4, color="#31688E", alpha=0.5, linewidths=0, rasterized=r.size > 500)
    else:
        counts, _, _ = np.histogram2d(r, i2, bins=(x_edges, y_edges))
        counts = np.ma.masked_equal(counts.T, 0.0)
        mappable = ax.pcolormesh(
            x_edges, y_edges, counts, cmap=CMAP, norm=LogNorm(vmin=1, vmax=max(2.0, counts.max())), rasterized=True
        )
    top.hist(r, bins=x_edges, color=MARGIN_COLOUR, linewidth=0)
    right_counts, _, _ = right.hist(i2, bins=y_edges, orientation="horizontal", color=MARGIN_COLOUR, linewidth=0)
    at_zero = float(np.mean(i2 == 0.0)) if i2.size else 0.0
    rest = right_counts[1:].max() if right_counts.size > 1 else 0.0
    if at_zero > 0 and right_counts[0] > ZERO_BAR_RATIO * rest > 0:
        # the bar of subsets with I² = 0 would flatten the rest: clip it and print its share instead
        right.set_xlim(0, 1.15 * rest)
        right.annotate(
            f"I² = 0: {100 * at_zero:.0f}%",
            (1.15 * rest, y_edges[1]),
            xytext=(-1, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=6.5,
        )
    full_r = float(np.tanh(res.full.estimate[0]))
    full_i2 = float(res.full.I2[0])
    ax.plot([full_r], [full_i2], marker="X", markersize=8, color=FULL_COLOUR, markeredgecolor="white", zorder=5)
    for a in (ax, top):
        a.axvline(full_r, color=FULL_COLOUR, lw=0.8, ls="--", zorder=4)
    right.axhline(full_i2, color=FULL_COLOUR, lw=0.8, ls="--", zorder=4)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("Pooled correlation r in the subset")
    if show_ylabel:
        ax.set_ylabel("I² (%)")
    top.tick_params(axis="x", labelbottom=False)
    right.tick_params(axis="y", labelleft=False)
    top.set_yticks([])
    right.set_xticks([])
    for a in (top, right):
        for side in ("left", "top", "right", "bottom"):
            a.spines[side].set_visible(side == ("bottom" if a is top else "left"))
    how = f"all {res.n_subsets:,} subsets" if res.exact else f"{res.n_subsets:,} random subsets"
    failed = f", {res.n_failed:,} not estimable" if res.n_failed else ""
    top.set_title(
        f"{MODEL_LABELS.get(res.method, res.method)}\n{how} of k = {res.k}{failed}\n"
        f"all k effects (×): r = {full_r:.3f}, I² = {full_i2:.1f}%",
        loc="left",
    )
    return mappable


def gosh_figure(results: Sequence[GoshResult], dataset_label: str = ""):
    """GOSH plot (Olkin, Dahabreh & Trikalinos 2012) of each model side by side.

    ``results`` are analyses of the same data (e.g. FE and the headline estimator); the x axis is
    the subset's pooled estimate back-transformed to r (tanh of Fisher z) and shared by the panels,
    the y axis the subset's I² in percent (for FE and DL metafor's Q-based I², else tau²-based).
    ``dataset_label`` is :attr:`~alliancemeta.core.settings.Dataset.label` (it carries the SYNTHETIC mark).
    """
    if isinstance(results, GoshResult):
        results = (results,)
    results = tuple(results)
    # the ranges of every panel, the estimates on all k effects included
    r_all = np.tanh(np.concatenate([np.r_[res.estimate, res.full.estimate] for res in results]))
    xlim = _limits(r_all, -1.0, 1.0, min_span=0.02)
    ylim = _limits(np.concatenate([np.r_[res.I2, res.full.I2] for res in results]), 0.0, 100.0, min_span=10.0)
    ylim = (ylim[0] - 0.01 * (ylim[1] - ylim[0]), ylim[1])  # I² = 0 stays visible above the axis
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(3.6 * len(results) + 0.8, 3.9))
        outer = fig.add_gridspec(1, len(results) + 1, width_ratios=[*([1.0] * len(results)), 0.04], wspace=0.22)
        mappables = [_panel(fig, outer[0, i], res, xlim, ylim, i == 0) for i, res in enumerate(results)]
        binned = [m for m in mappables if m is not None]
        if binned:
            cax = fig.add_subplot(outer[0, -1])
            # one scale for every panel: share the largest bin count
            vmax = max(m.norm.vmax for m in binned)
            for m in binned:
                m.set_norm(LogNorm(vmin=1, vmax=vmax))
            fig.colorbar(binned[0], cax=cax, label="subsets per bin")
        else:
            fig.add_subplot(outer[0, -1]).set_axis_off()
        if dataset_label:
            fig.suptitle(f"{dataset_label}: GOSH plot", x=0.02, ha="left", fontsize=9, y=1.08)
    return fig


def write_gosh_figure(results: Sequence[GoshResult], pdf: str | os.PathLike, png: str | os.PathLike,
                      dataset_label: str = ""):
    """Draw :func:`gosh_figure` and save it as PDF (vector, dense layer rasterised) and PNG."""
    save_figure(gosh_figure(results, dataset_label), pdf, png)
