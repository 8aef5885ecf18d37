"""Figures of the Bayesian meta-analysis: posterior densities with the prior overlaid."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from alliancemeta.core.inference import upper_quantile
from alliancemeta.plots.style import PALETTE, STYLE
from alliancemeta.studies.bayes.priors import MetaPriors
from alliancemeta.studies.bayes.quadrature import ExactPosterior

#: Probability mass left out on each side of the plotted range.
TAIL = 5e-4
N_GRID = 400
HIST_BINS = 60
COLORS = {"mcmc": PALETTE["light"], "exact": PALETTE["accent"], "prior": PALETTE["highlight"]}


def _shade(ax, x, density, lo: float, hi: float, label: str | None = None) -> None:
    """Shade the area under ``density`` between the interval bounds ``lo`` and ``hi``."""
    inside = (x >= lo) & (x <= hi)
    ax.fill_between(x[inside], density[inside], color=COLORS["exact"], alpha=0.15, lw=0, label=label)


def _range(lo: float, hi: float, pad: float = 0.15) -> np.ndarray:
    width = hi - lo
    return np.linspace(lo - pad * width, hi + pad * width, N_GRID)


def posterior_figure(idata, exact: ExactPosterior, priors: MetaPriors, level: float, title: str = ""):
    r"""Three panels: pooled r, heterogeneity tau and the effect of a new study (r scale).

    Each shows a histogram of the MCMC draws, the exact posterior density from the quadrature
    path (they should coincide), its equal-tailed credible interval at ``level`` (shaded) and, for r
    and tau, the prior density.  Densities on the r scale are transformed from Fisher z:
    :math:`p_r(x) = p_\mu(\operatorname{atanh} x) / (1 - x^2)`.
    """
    q_hi = upper_quantile(level)
    q_lo = 1.0 - q_hi
    post = idata.posterior
    draws = {
        "r": np.tanh(post["mu"].values.ravel()),
        "tau": post["tau"].values.ravel(),
        "new": np.tanh(post["theta_new"].values.ravel()),
    }
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(7.2, 2.5), constrained_layout=True)

        # pooled correlation
        ax = axes[0]
        z_lo, z_hi = exact.mixture_quantile("mu", TAIL), exact.mixture_quantile("mu", 1 - TAIL)
        x = np.tanh(_range(z_lo, z_hi))
        jac = 1.0 / (1.0 - x**2)
        ax.hist(draws["r"], bins=HIST_BINS, range=(x[0], x[-1]), density=True, color=COLORS["mcmc"],
                label="MCMC draws")
        dens = exact.mixture_density("mu", np.arctanh(x)) * jac
        ax.plot(x, dens, color=COLORS["exact"], lw=1.2, label="exact posterior")
        _shade(ax, x, dens, np.tanh(exact.mixture_quantile("mu", q_lo)), np.tanh(exact.mixture_quantile("mu", q_hi)),
               f"{100 * level:g}% credible interval")
        ax.plot(x, np.exp(priors.mu.logpdf(np.arctanh(x))) * jac, color=COLORS["prior"], lw=1.0, ls="--",
                label=f"prior: mu ~ {priors.mu.label}")
        if x[0] < 0.1 < x[-1]:
            ax.axvline(0.1, color="0.5", lw=0.5, ls=":")
        ax.set_xlim(x[0], x[-1])
        p01 = 1.0 - exact.mixture_cdf("mu", float(np.arctanh(0.1)))
        ax.set_title("Pooled correlation r = tanh(μ)", loc="left")
        ax.text(0.02, 0.97, f"P(r > .1) = {p01:.3f}", transform=ax.transAxes, ha="left", va="top", fontsize=6.5)
        ax.set_xlabel("r")
        ax.set_ylabel("density")

        # heterogeneity
        ax = axes[1]
        t = _range(exact.tau_quantile(TAIL), exact.tau_quantile(1 - TAIL))
        t = t[t > 0]
        ax.hist(draws["tau"], bins=HIST_BINS, range=(t[0], t[-1]), density=True, color=COLORS["mcmc"])
        dens = exact.tau_density(t)
        ax.plot(t, dens, color=COLORS["exact"], lw=1.2)
        _shade(ax, t, dens, exact.tau_quantile(q_lo), exact.tau_quantile(q_hi))
        ax.plot(t, np.exp(priors.tau.logpdf(t)), color=COLORS["prior"], lw=1.0, ls="--",
                label=f"prior: tau ~ {priors.tau.label}")
        ax.set_xlim(t[0], t[-1])
        ax.set_title("Heterogeneity τ (Fisher z)", loc="left")
        ax.set_xlabel("τ")

        # new study
        ax = axes[2]
        n_lo = exact.mixture_quantile("theta_new", TAIL)
        n_hi = exact.mixture_quantile("theta_new", 1 - TAIL)
        x = np.tanh(_range(n_lo, n_hi, pad=0.05))
        ax.hist(draws["new"], bins=HIST_BINS, range=(x[0], x[-1]), density=True, color=COLORS["mcmc"])
        dens = exact.mixture_density("theta_new", np.arctanh(x)) / (1.0 - x**2)
        ax.plot(x, dens, color=COLORS["exact"], lw=1.2)
        _shade(ax, x, dens, np.tanh(exact.mixture_quantile("theta_new", q_lo)),
               np.tanh(exact.mixture_quantile("theta_new", q_hi)))
        if x[0] < 0.0 < x[-1]:
            ax.axvline(0.0, color="0.5", lw=0.5, ls=":")
        ax.set_xlim(x[0], x[-1])
        ax.set_title("Correlation in a new study", loc="left")
        ax.set_xlabel("r")

        handles, labels = [], []
        for a in axes[:2]:
            h, lab = a.get_legend_handles_labels()
            handles += h
            labels += lab
        fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=6.5)
        if title:
            fig.suptitle(title, x=0.01, ha="left", fontsize=9)
    return fig
