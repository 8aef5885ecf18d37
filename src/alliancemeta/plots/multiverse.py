"""Specification curve of the multiverse (``figures/specification_curve.{pdf,png}``).

Top panel: every specification's pooled r with its interval, sorted by r, coloured by whether the interval
excludes 0 (above or below); the median r and 0 as reference lines, and the descriptive summary in words.
Bottom panel: which option of every choice each specification uses (Simonsohn, Simmons & Nelson 2020,
fig. 2; Steegen et al. 2016).  Specifications that could not be estimated are left out and counted.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from alliancemeta.plots.style import STYLE
from alliancemeta.studies.multiverse import CHOICES, headline_text, multiverse_summary, significant

#: Colours of significantly positive, non-significant and significantly negative specifications.
COLOURS = {"positive": "#1f4e79", "none": "0.62", "negative": "#b2182b"}
#: Above this many specifications intervals are drawn as a band instead of one line each.
MAX_INTERVAL_LINES = 400


def _category(table: pd.DataFrame) -> np.ndarray:
    sig = significant(table).to_numpy()
    return np.where(sig & (table["ci_lb"] > 0).to_numpy(), "positive",
                    np.where(sig & (table["ci_ub"] < 0).to_numpy(), "negative", "none"))  # fmt: skip


def _indicator_rows(table: pd.DataFrame, sorted_table: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(choice, option, mask over ``sorted_table``) for every option in use, options in the order of the
    enumeration (``table``); blank priors (the frequentist rows) are not a row."""
    rows = []
    for choice in CHOICES:
        options = list(dict.fromkeys(table[choice].fillna("").astype(str)))
        values = sorted_table[choice].fillna("").astype(str).to_numpy()
        if choice == "prior":
            options = [o for o in options if o]
        if len(options) < 2 and choice != "prior":
            continue  # a choice with one option carries no information
        for option in options:
            rows.append((choice, option, values == option))
    return rows


def specification_curve(table: pd.DataFrame, dataset_label: str = "", level: float = 0.95):
    """The two-panel specification-curve figure of a ``multiverse.csv`` table."""
    ok = table[np.isfinite(table["r"])].copy()
    order = np.argsort(ok["r"].to_numpy(), kind="stable")
    ok = ok.iloc[order].reset_index(drop=True)
    n = len(ok)
    x = np.arange(1, n + 1)
    cat = _category(ok)
    rows = _indicator_rows(table.sort_values("spec_id", kind="stable"), ok)
    summary = multiverse_summary(table)
    height_bottom = 0.6 + 0.13 * len(rows)
    with plt.rc_context(STYLE):
        fig, (top, bottom) = plt.subplots(
            2, 1, figsize=(7.0, 2.8 + height_bottom), sharex=True,
            gridspec_kw={"height_ratios": [2.8, height_bottom], "hspace": 0.06},
        )  # fmt: skip
        lo, hi, r = ok["r_ci_lb"].to_numpy(), ok["r_ci_ub"].to_numpy(), ok["r"].to_numpy()
        if n > MAX_INTERVAL_LINES:
            top.fill_between(x, lo, hi, color="0.85", lw=0, step="mid", label=f"{100 * level:g}% interval")
        else:
            for key, colour in COLOURS.items():
                m = cat == key
                top.vlines(x[m], lo[m], hi[m], color=colour, lw=0.6, alpha=0.55)
        for key, colour in COLOURS.items():
            m = cat == key
            top.scatter(x[m], r[m], s=4 if n > MAX_INTERVAL_LINES else 9, color=colour, linewidths=0, zorder=3)
        top.axhline(0.0, color="0.3", lw=0.6)
        if n:
            top.axhline(float(np.median(r)), color=COLOURS["positive"], lw=0.6, ls="--", alpha=0.7)
        top.set_ylabel(f"Pooled r with {100 * level:g}% interval")
        title = f"{dataset_label}: specification curve" if dataset_label else "Specification curve"
        top.set_title(title, loc="left")
        top.text(0.01, 0.97, headline_text(summary), transform=top.transAxes, va="top", fontsize=6.5)
        handles = [
            Line2D([], [], ls="", marker="o", ms=4, color=COLOURS["positive"], label="interval above 0"),
            Line2D([], [], ls="", marker="o", ms=4, color=COLOURS["none"], label="interval includes 0"),
            Line2D([], [], ls="", marker="o", ms=4, color=COLOURS["negative"], label="interval below 0"),
            Line2D([], [], ls="--", color=COLOURS["positive"], lw=0.6, label="median r"),
        ]
        top.legend(handles=handles, loc="lower right", ncol=2)

        labels = []
        for i, (choice, option, mask) in enumerate(rows):
            y = len(rows) - i
            for key, colour in COLOURS.items():
                m = mask & (cat == key)
                bottom.scatter(x[m], np.full(int(m.sum()), y), marker="|", s=9, color=colour, linewidths=0.5)
            labels.append(f"{choice}: {option}")
        bottom.set_yticks(np.arange(len(rows), 0, -1))
        bottom.set_yticklabels(labels, fontsize=5.5)
        bottom.set_ylim(0.3, len(rows) + 0.7)
        bottom.set_xlim(0.0, n + 1.0)
        skipped = len(table) - n
        extra = f" ({skipped} not estimable, not shown)" if skipped else ""
        bottom.set_xlabel(f"Specification, sorted by r ({n} specifications{extra})")
        bottom.tick_params(axis="y", length=0)
        bottom.spines["left"].set_visible(False)
    return fig
