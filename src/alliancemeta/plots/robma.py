"""RoBMA-PSMA figure: posterior model probabilities, inclusion Bayes factors and the averaged posterior of r.

Three panels drawn from the fitted ensemble (:class:`alliancemeta.studies.bayes.robma.RobmaFit`):

1. prior versus posterior probability of every model (bars, log scale), grouped by bias component;
2. inclusion Bayes factors for effect, heterogeneity and publication bias (and its parts), log scale,
   with the conventional evidence thresholds 1/10, 1/3, 3 and 10 marked;
3. the posterior of r: the model-averaged (bias-adjusted) CDF, the unadjusted average (no-bias
   models) and the conditional one (effect models only), with the point mass at r = 0 from the
   no-effect models shown as a jump.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from alliancemeta.plots.style import PALETTE, STYLE

_BIAS_COLOURS = {"none": PALETTE["accent"], "selection": PALETTE["second"], "pet": PALETTE["third"],
                 "peese": PALETTE["fourth"]}  # fmt: skip
_THRESHOLDS = (1 / 10, 1 / 3, 3, 10)


def _mixture_cdf(fit, mask, x):
    w = fit.post_prob * mask
    if w.sum() <= 0:
        return None
    w = w / w.sum()
    out = np.zeros_like(x)
    for m, wi in zip(fit.models, w, strict=True):
        if wi > 0:
            out += wi * m.marginal("mu").cdf_at(np.arctanh(x))
    return out


def robma_figure(fit, dataset_label: str = ""):
    """The three-panel RoBMA figure (see module docstring); returns the matplotlib figure.

    ``dataset_label`` heads the figure (it carries the SYNTHETIC warning, see ``Dataset.label``)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), gridspec_kw={"width_ratios": [2.2, 1.2, 1.6]})
        ax = axes[0]
        names = [m.spec.name for m in fit.models]
        pos = np.arange(len(names))
        colours = [_BIAS_COLOURS[m.spec.bias] for m in fit.models]
        ax.bar(pos - 0.2, fit.prior_prob, width=0.4, color=PALETTE["light"], label="prior")
        ax.bar(pos + 0.2, np.maximum(fit.post_prob, 1e-12), width=0.4, color=colours, label="posterior")
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1.5)
        ax.set_xticks(pos)
        ax.set_xticklabels(names, rotation=90, fontsize=5)
        ax.set_ylabel("model probability")
        ax.set_title("Prior (grey) and posterior model probabilities")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _BIAS_COLOURS.values()]
        ax.legend(handles, [f"bias: {b}" for b in _BIAS_COLOURS], loc="lower left", ncol=2)

        ax = axes[1]
        masks = fit.masks()
        labels, bfs = [], []
        for comp, mask in masks.items():
            labels.append(comp)
            bfs.append(np.exp(fit.inclusion(mask)[2]))
        bfs = np.array(bfs)
        y = np.arange(len(labels))[::-1]
        ax.barh(y, np.log10(bfs), color=[PALETTE["accent"] if b >= 1 else PALETTE["highlight"] for b in bfs])
        for t in _THRESHOLDS:
            ax.axvline(np.log10(t), color="0.6", lw=0.6, ls=":")
        ax.axvline(0.0, color="0.2", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.set_xlabel("log10 inclusion Bayes factor")
        ax.set_title("Inclusion Bayes factors")
        for yi, b in zip(y, bfs, strict=True):
            # to the right of the bar's end, or of zero for a BF below 1 (left of it are the category labels)
            ax.text(max(np.log10(b), 0.0), yi, f" {b:.3g}", va="center", ha="left", fontsize=6)

        ax = axes[2]
        x = np.linspace(-0.99, 0.99, 7921)
        specs = [m.spec for m in fit.models]
        sets = {
            "model-averaged (bias-adjusted)": np.ones(len(specs), dtype=bool),
            "unadjusted (no-bias models)": np.array([s.bias == "none" for s in specs]),
            "conditional (effect models)": np.array([s.effect for s in specs]),
        }
        curves = {label: _mixture_cdf(fit, mask, x) for label, mask in sets.items()}
        live = np.zeros(x.size, dtype=bool)
        for cdf in curves.values():
            if cdf is not None:
                live |= (cdf > 0.001) & (cdf < 0.999)
        span = x[live] if live.any() else x
        pad = 0.1 * (span[-1] - span[0] + 0.02)
        for (label, cdf), style in zip(curves.items(), ("-", "--", ":"), strict=True):
            if cdf is not None:
                ax.plot(x, cdf, ls=style, color="0.1", lw=1.0, label=label)
        ax.set_xlim(max(span[0] - pad, -1.0), min(span[-1] + pad, 1.0))
        ax.set_xlabel("correlation r")
        ax.set_ylabel("posterior CDF")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right")
        ax.set_title("Posterior of r")
        design = "three-level" if fit.three_level else "single-level"
        head = f"RoBMA-PSMA ({len(fit.models)} models, {design}, k = {fit.k})"
        fig.suptitle(f"{dataset_label}: {head}" if dataset_label else head, x=0.01, ha="left")
        fig.tight_layout()
    return fig
