"""Forest plot of a study-level dataset on the r scale."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from alliancemeta.core.inference import critical_value
from alliancemeta.plots.style import PALETTE, STYLE

#: Above this many rows a forest plot drops the study labels and becomes a caterpillar plot.
FOREST_MAX_LABELLED = 80


def forest_plot(labels, yi, vi, summary: dict, level: float, title: str = "",
                xlabel: str = "Correlation r (back-transformed)"):
    """Forest plot on the r scale: study estimates with CIs at ``level``, the pooled diamond and the PI.

    ``summary`` holds ``estimate, ci_lb, ci_ub, pi_lb, pi_ub`` on the Fisher-z scale (a row of
    ``random_effects.csv``) and a ``label`` for the pooled row.  Marker areas are proportional to
    the inverse-variance weight.  With more than :data:`FOREST_MAX_LABELLED` effects the rows are
    sorted by effect size and unlabelled (a caterpillar plot), which stays legible at any k.
    """
    yi = np.asarray(yi, dtype=float)
    vi = np.asarray(vi, dtype=float)
    labels = np.asarray(labels, dtype=object)
    k = yi.size
    labelled = k <= FOREST_MAX_LABELLED
    order = np.arange(k) if labelled else np.argsort(yi, kind="stable")
    half = critical_value(level) * np.sqrt(vi)
    lo, hi, mid = np.tanh(yi - half), np.tanh(yi + half), np.tanh(yi)
    height = 1.2 + (0.18 * k if labelled else 4.5)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, min(height, 40)))
        ypos = np.arange(k, 0, -1, dtype=float)
        w = 1.0 / vi
        sizes = 8 + 60 * w[order] / w.max()
        ax.hlines(ypos, lo[order], hi[order], color="0.35", lw=0.7 if labelled else 0.4)
        ax.scatter(mid[order], ypos, s=sizes if labelled else 4, marker="s", color="0.1", zorder=3, linewidths=0)
        est = np.tanh(summary["estimate"])
        cl, cu = np.tanh(summary["ci_lb"]), np.tanh(summary["ci_ub"])
        pl, pu = np.tanh(summary["pi_lb"]), np.tanh(summary["pi_ub"])
        yd = -max(0.6, 0.03 * k)  # the pooled row sits below the studies, scaled to the plot's height
        dh = max(0.45, 0.012 * k)
        ax.fill([cl, est, cu, est], [yd, yd + dh, yd, yd - dh], color=PALETTE["accent"], zorder=4)
        if np.isfinite(pl) and np.isfinite(pu):
            ax.hlines(yd, pl, pu, color=PALETTE["accent"], lw=1.0, linestyles="dotted")
        ax.axvline(0, color="0.6", lw=0.6)
        ax.axvline(est, color=PALETTE["accent"], lw=0.5, ls="--", alpha=0.6)
        if labelled:
            ax.set_yticks(np.append(ypos, yd))
            ax.set_yticklabels([*labels[order], summary.get("label", "Pooled")])
            for y, a, b, c in zip(ypos, mid[order], lo[order], hi[order], strict=True):
                ax.text(1.02, y, f"{a:.2f} [{b:.2f}, {c:.2f}]", transform=ax.get_yaxis_transform(),
                        va="center", fontsize=6.5)
            ax.text(1.02, yd, f"{est:.2f} [{cl:.2f}, {cu:.2f}]", transform=ax.get_yaxis_transform(),
                    va="center", fontsize=6.5, fontweight="bold")
        else:
            ax.set_yticks([yd])
            ax.set_yticklabels([summary.get("label", "Pooled")])
            ax.set_ylabel(f"{k} effect sizes, sorted by r")
        ax.set_ylim(yd - 2 * dh, k + 0.8)
        ax.set_xlabel(xlabel)
        ax.set_xlim(max(-1.0, min(lo.min(), pl if np.isfinite(pl) else 0) - 0.05), min(1.0, hi.max() + 0.05))
        if title:
            ax.set_title(title, loc="left")
        ax.spines["left"].set_visible(False)
        ax.tick_params(axis="y", length=0)
    return fig


