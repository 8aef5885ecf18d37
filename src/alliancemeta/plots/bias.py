"""Figures of the publication-bias stage: the contour-enhanced funnel plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch
from scipy import stats

from alliancemeta.plots.style import PALETTE, STYLE, title
from alliancemeta.studies.bias.trim_and_fill import TrimFill
from alliancemeta.studies.random_effects import MetaFit

#: Two-sided p-value contours of the funnel plot (Peters et al. 2008, *J Clin Epidemiol* 61, 991-996).
FUNNEL_CONTOURS = (0.10, 0.05, 0.01)
#: Fill colours of the contour bands, from p in (.10, .05] to p <= .01 (light to dark grey).
CONTOUR_SHADES = ("0.90", "0.78", "0.64")


def funnel_plot(fit: MetaFit, fill: TrimFill | None = None, dataset_label: str = "", adjusted: float | None = None):
    r"""Contour-enhanced funnel plot: Fisher z against its standard error (0 at the top).

    Shaded regions mark where a study's two-sided p-value (test of :math:`\theta = 0`) lies in
    (.10, .05], (.05, .01] and below .01 (:data:`FUNNEL_CONTOURS`); the white wedge is p > .10.
    Observed effects are filled circles; trim-and-fill imputed ones (``fill``) open circles.  The
    vertical lines are the headline estimate, dashed the trim-and-fill estimate and, dotted, the
    selection-adjusted estimate of the three-parameter selection model (``adjusted``) when given.
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
        accent = PALETTE["accent"]
        ax.axvline(fit.estimate, color=accent, lw=0.9, label=f"{fit.method} estimate ({fit.estimate:.3f})")
        if fill is not None and fill.k0 > 0:
            ax.axvline(fill.estimate, color=accent, lw=0.9, ls="--", label=f"trim and fill ({fill.estimate:.3f})")
            ax.scatter(fill_y, fill_se, s=16, facecolors="white", edgecolors="0.1", linewidths=0.7, zorder=3,
                       label=f"imputed ({fill.k0}, {fill.side} side)")  # fmt: skip
        if adjusted is not None and np.isfinite(adjusted):
            ax.axvline(adjusted, color=PALETTE["third"], lw=1.0, ls=":",
                       label=f"selection model, 3PSM ({adjusted:.3f})")  # fmt: skip
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
        title(ax, "contour-enhanced funnel plot", dataset_label)
    return fig
