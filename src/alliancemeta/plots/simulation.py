"""Figure of the simulation study: coverage and bias of every interval method across the conditions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from alliancemeta.core.inference import critical_value
from alliancemeta.plots.style import PALETTE, STYLE, title
from alliancemeta.studies.simulation import METHODS

#: Colour and marker per method (colour-blind-safe palette; markers keep methods apart in grey print).
MARKS = {
    "z": (PALETTE["muted"], "o"),
    "knha": (PALETTE["accent"], "s"),
    "three_level": (PALETTE["second"], "^"),
    "cr2": (PALETTE["highlight"], "D"),
    "che": (PALETTE["third"], "v"),
    "bayes": (PALETTE["fourth"], "P"),
}
#: Horizontal spread of the methods within one condition (in units of the spacing of conditions).
DODGE = 0.75


def simulation_figure(summary: pd.DataFrame, level: float, labels: dict[str, str] | None = None):
    """Two panels over the conditions: coverage of the ``level`` interval (nominal line) and bias (zero line).

    ``summary`` has the columns of ``simulation.csv`` (``condition``, ``method``, ``coverage``,
    ``coverage_mcse``, ``bias``, ``bias_mcse``); error bars are ±1.96 Monte-Carlo SEs.  ``labels`` maps methods
    to legend labels (the method names when omitted).
    """
    conditions = list(dict.fromkeys(summary["condition"]))
    methods = [m for m in METHODS if m in set(summary["method"])]
    x0 = np.arange(len(conditions), dtype=float)
    offsets = (np.arange(len(methods)) - (len(methods) - 1) / 2) * (DODGE / max(len(methods), 1))
    z = critical_value(0.95)
    with plt.rc_context(STYLE):
        fig, (ax_cov, ax_bias) = plt.subplots(2, 1, figsize=(max(6.0, 0.55 * len(conditions) + 1.5), 5.2),
                                              sharex=True, constrained_layout=True)  # fmt: skip
        for offset, method in zip(offsets, methods, strict=True):
            colour, marker = MARKS.get(method, (PALETTE["muted"], "o"))
            part = summary[summary["method"] == method].set_index("condition").reindex(conditions)
            x = x0 + offset
            label = (labels or {}).get(method, method)
            ax_cov.errorbar(x, 100 * part["coverage"], yerr=100 * z * part["coverage_mcse"], fmt=marker, ms=3.5,
                            color=colour, elinewidth=0.7, capsize=0, label=label)  # fmt: skip
            ax_bias.errorbar(x, part["bias"], yerr=z * part["bias_mcse"], fmt=marker, ms=3.5, color=colour,
                             elinewidth=0.7, capsize=0)  # fmt: skip
        ax_cov.axhline(100 * level, color=PALETTE["light"], lw=1.0, zorder=0)
        ax_cov.set_ylabel(f"coverage of the {100 * level:g}% interval (%)")
        low = float(np.nanmin(100 * summary["coverage"])) if summary["coverage"].notna().any() else 100 * level
        ax_cov.set_ylim(min(low - 2.0, 100 * level - 5.0), 100.5)
        ax_bias.axhline(0.0, color=PALETTE["light"], lw=1.0, zorder=0)
        ax_bias.set_ylabel("bias (Fisher z)")
        for ax in (ax_cov, ax_bias):
            for boundary in x0[:-1] + 0.5:
                ax.axvline(boundary, color="0.92", lw=0.5, zorder=0)
        ax_bias.set_xticks(x0)
        ax_bias.set_xticklabels(conditions, rotation=35, ha="right")
        ax_bias.set_xlim(-0.6, len(conditions) - 0.4)
        fig.legend(*ax_cov.get_legend_handles_labels(), loc="outside lower center", ncol=min(len(methods), 3))
        title(ax_cov, "coverage and bias of the interval methods (±1.96 Monte-Carlo SE)",
              "Simulation study — SYNTHETIC data")  # fmt: skip
    return fig
