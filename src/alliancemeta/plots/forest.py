r"""Forest plot of a study-level dataset on the r scale, journal style.

Rows, top to bottom: for each subgroup (levels of a moderator, or one group of all effect sizes) its
effect sizes — label, a square whose area is proportional to the effect's weight in the model, the
confidence interval, and the columns "r [CI]" and "Weight" — followed by the subgroup's pooled diamond;
then the overall diamond of the headline model, its prediction interval as a bar, and the
between-subgroup test.  The axis is on the r scale (every interval is computed on Fisher z and
back-transformed with tanh).

Readable at any k: the figure grows by a fixed height per row, so the PNG is one tall image; the PDF is cut
into pages of :data:`ROWS_PER_PAGE` rows (the same layout, the pooled rows on the last page), so a printed
forest plot of 300 effect sizes stays legible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Polygon

from alliancemeta.plots.style import PALETTE, STYLE
from alliancemeta.report.numbers import bounded, interval, percent

#: Rows (effect sizes, headers, diamonds) on one PDF page.
ROWS_PER_PAGE = 70
#: Figure height per row (inches) and the fixed part (title, axis).
ROW_HEIGHT = 0.17
FIXED_HEIGHT = 1.3
#: Widths (inches) of the label column, the plot and the two numeric columns.
LABEL_WIDTH, PLOT_WIDTH, TEXT_WIDTH = 2.3, 3.3, 1.9


@dataclass(frozen=True)
class Pooled:
    """A pooled estimate drawn as a diamond (Fisher z), with an optional prediction interval."""

    label: str
    estimate: float
    ci_lb: float
    ci_ub: float
    pi_lb: float = np.nan
    pi_ub: float = np.nan


@dataclass(frozen=True)
class ForestRow:
    kind: str  # "study", "header", "subgroup", "overall", "pi", "note"
    label: str
    yi: float = np.nan
    lb: float = np.nan
    ub: float = np.nan
    weight: float = np.nan
    pooled: Pooled | None = None


def forest_rows(labels, yi, vi, weights, crit: float, overall: Pooled, groups=None,
                subgroup_pooled: dict[str, Pooled] | None = None, note: str = "") -> list[ForestRow]:
    """The rows of a forest plot: effect sizes (grouped when ``groups`` is given), pooled rows, notes.

    ``weights`` are percentages of the overall model; ``crit`` is the critical value of the effect-size
    intervals (normal, at the configured level).
    """
    labels = np.asarray(labels, dtype=object)
    yi, vi, weights = (np.asarray(x, dtype=float) for x in (yi, vi, weights))
    half = crit * np.sqrt(vi)
    rows: list[ForestRow] = []
    if groups is None:
        order = [np.arange(yi.size)]
        names = [None]
    else:
        groups = np.asarray(groups, dtype=object)
        names = sorted({str(g) for g in groups if g is not None and g == g}, key=str)
        order = [np.flatnonzero(groups.astype(str) == name) for name in names]
        missing = np.flatnonzero([g is None or g != g for g in groups])
        if missing.size:
            names.append("(missing)")
            order.append(missing)
    for name, idx in zip(names, order, strict=True):
        if name is not None:
            rows.append(ForestRow("header", name))
        for i in idx:
            rows.append(ForestRow("study", str(labels[i]), yi[i], yi[i] - half[i], yi[i] + half[i], weights[i]))
        if name is not None and subgroup_pooled and name in subgroup_pooled:
            rows.append(ForestRow("subgroup", subgroup_pooled[name].label, pooled=subgroup_pooled[name]))
    rows.append(ForestRow("overall", overall.label, pooled=overall))
    if np.isfinite(overall.pi_lb):
        rows.append(ForestRow("pi", "Prediction interval", lb=overall.pi_lb, ub=overall.pi_ub, pooled=overall))
    if note:
        rows.append(ForestRow("note", note))
    return rows


def _xlim(rows: Sequence[ForestRow]) -> tuple[float, float]:
    lows = [r.lb for r in rows if np.isfinite(r.lb)] + [r.pooled.ci_lb for r in rows if r.pooled is not None]
    highs = [r.ub for r in rows if np.isfinite(r.ub)] + [r.pooled.ci_ub for r in rows if r.pooled is not None]
    lo, hi = np.tanh(min(lows)), np.tanh(max(highs))
    pad = 0.05 * (hi - lo)
    return max(-1.0, lo - pad), min(1.0, hi + pad)


def _draw(rows: Sequence[ForestRow], xlim, level: float, title: str, max_weight: float, last_page: bool):
    n = len(rows)
    height = FIXED_HEIGHT + ROW_HEIGHT * (n + 1)
    width = LABEL_WIDTH + PLOT_WIDTH + TEXT_WIDTH
    pct = f"{100 * level:g}%"
    accent, muted = PALETTE["accent"], PALETTE["muted"]
    with plt.rc_context(STYLE):
        fig = plt.figure(figsize=(width, height))
        ax = fig.add_axes((LABEL_WIDTH / width, 0.65 / height, PLOT_WIDTH / width, (height - FIXED_HEIGHT) / height))
        ax.set_ylim(n + 0.5, -0.5)
        ax.set_xlim(*xlim)
        small = n > 60
        fontsize = 6.0 if small else 7.0
        text_x = [1.04, 1.04 + 1.25 / PLOT_WIDTH]
        for y, row in enumerate(rows):
            if row.kind == "header":
                ax.text(-0.02, y, row.label, transform=ax.get_yaxis_transform(), ha="right", va="center",
                        fontsize=fontsize + 0.5, fontweight="bold")
            elif row.kind == "study":
                lo, hi, r = np.tanh(row.lb), np.tanh(row.ub), np.tanh(row.yi)
                ax.plot([lo, hi], [y, y], color=muted, lw=0.6, solid_capstyle="butt")
                size = 6 + 40 * row.weight / max_weight
                ax.scatter([r], [y], s=size, marker="s", color="0.15", linewidths=0, zorder=3)
                ax.text(-0.02, y, row.label, transform=ax.get_yaxis_transform(), ha="right", va="center",
                        fontsize=fontsize)
                ax.text(text_x[0], y, f"{bounded(r)} {interval(lo, hi)}", transform=ax.get_yaxis_transform(),
                        ha="left", va="center", fontsize=fontsize)
                ax.text(text_x[1], y, percent(row.weight, 1), transform=ax.get_yaxis_transform(), ha="right",
                        va="center", fontsize=fontsize)
            elif row.kind in ("subgroup", "overall"):
                p = row.pooled
                est, lo, hi = np.tanh(p.estimate), np.tanh(p.ci_lb), np.tanh(p.ci_ub)
                overall = row.kind == "overall"
                colour = accent if overall else "0.35"
                ax.add_patch(Polygon([(lo, y), (est, y - 0.38), (hi, y), (est, y + 0.38)], closed=True,
                                     facecolor=colour, edgecolor=colour, zorder=4))
                ax.text(-0.02, y, row.label, transform=ax.get_yaxis_transform(), ha="right", va="center",
                        fontsize=fontsize, fontweight="bold" if overall else "normal")
                ax.text(text_x[0], y, f"{bounded(est)} {interval(lo, hi)}", transform=ax.get_yaxis_transform(),
                        ha="left", va="center", fontsize=fontsize, fontweight="bold" if overall else "normal")
                if overall:
                    last = max(i for i, r in enumerate(rows) if r.kind != "note")
                    ax.plot([est, est], [-0.5, last + 0.5], color=accent, lw=0.6, ls="--", alpha=0.7, zorder=1)
            elif row.kind == "pi":
                lo, hi = np.tanh(row.lb), np.tanh(row.ub)
                ax.plot([lo, hi], [y, y], color=accent, lw=2.2, solid_capstyle="butt")
                ax.text(-0.02, y, f"{pct} prediction interval", transform=ax.get_yaxis_transform(), ha="right",
                        va="center", fontsize=fontsize)
                ax.text(text_x[0], y, interval(lo, hi), transform=ax.get_yaxis_transform(), ha="left",
                        va="center", fontsize=fontsize)
            elif row.kind == "note":
                ax.text(-(LABEL_WIDTH - 0.1) / PLOT_WIDTH, y + 0.3, row.label, transform=ax.get_yaxis_transform(),
                        ha="left", va="center", fontsize=fontsize - 0.5, style="italic")
        ax.axvline(0.0, color="0.6", lw=0.6, zorder=0)
        ax.set_yticks([])
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel(f"Correlation r ({pct} CI)")
        head = -0.95
        ax.text(text_x[0], head, f"r [{pct} CI]", transform=ax.get_yaxis_transform(), ha="left", va="bottom",
                fontsize=fontsize + 0.5, fontweight="bold")
        ax.text(text_x[1], head, "Weight", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=fontsize + 0.5, fontweight="bold")
        ax.text(-0.02, head, "Study", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=fontsize + 0.5, fontweight="bold")
        if title:
            fig.suptitle(title + ("" if last_page else " (continued)"), x=0.01, ha="left", fontsize=9,
                         y=1 - 0.15 / height, va="top")
    return fig


def forest_pages(rows: Sequence[ForestRow], level: float, title: str = "",
                 rows_per_page: int = ROWS_PER_PAGE) -> tuple[object, list]:
    """The whole plot as one figure (for the PNG) and as pages of ``rows_per_page`` rows (for the PDF)."""
    xlim = _xlim(rows)
    max_weight = max([r.weight for r in rows if r.kind == "study"] or [1.0])
    whole = _draw(rows, xlim, level, title, max_weight, True)
    if len(rows) <= rows_per_page:
        return whole, [whole]
    chunks = [rows[i : i + rows_per_page] for i in range(0, len(rows), rows_per_page)]
    pages = [_draw(chunk, xlim, level, title, max_weight, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    return whole, pages
