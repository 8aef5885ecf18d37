"""Session-level figures: trajectories, within/between coefficient plot, posterior densities."""

from __future__ import annotations

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from scipy import stats

from alliancemeta.core.inference import critical_value, upper_quantile
from alliancemeta.plots.style import PALETTE, STYLE

#: At most this many individual trajectories are drawn (evenly spaced over the sorted client ids,
#: so the choice is deterministic); the mean trajectory uses every client.
MAX_SPAGHETTI = 60
ALLIANCE_TERMS = ("alliance_within", "alliance_between", "alliance_therapist")
TERM_LABELS = {
    "alliance_within": "Within client\n(session deviation)",
    "alliance_between": "Between clients\n(client mean)",
    "alliance_therapist": "Between therapists\n(therapist mean)",
}
ENGINE_COLOURS = {"mixedlm": PALETTE["accent"], "pymc": PALETTE["highlight"]}
#: Models drawn in the coefficient figure (the ``components`` and ``split`` models decompose the alliance
#: differently; their ``alliance_therapist`` is a control and is not drawn).
MODEL_MARKERS = {"within_between": "o", "lagged": "s", "therapist": "D", "lagged_latent": "^"}


def _title(dataset_label: str, what: str) -> str:
    return f"{dataset_label}: {what}" if dataset_label else what


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def trajectories_figure(frame: pd.DataFrame, outcome_lower_is_better: bool, level: float, dataset_label: str = ""):
    """Alliance and outcome by session: individual trajectories of up to :data:`MAX_SPAGHETTI`
    clients (thin) and the mean over the clients observed at each session with its normal-theory CI at
    ``level`` (thick); the number of clients still observed is printed along the session axis."""
    crit = critical_value(level)
    accent = PALETTE["accent"]
    clients = np.array(sorted(frame["client"].unique()))
    shown = clients[np.linspace(0, clients.size - 1, min(MAX_SPAGHETTI, clients.size)).round().astype(int)]
    outcome_label = "Outcome (raw; lower is better)" if outcome_lower_is_better else "Outcome (raw; higher is better)"
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0), sharex=True)
        for ax, col, label in zip(axes, ("alliance", "outcome"), ("Alliance", outcome_label), strict=True):
            for client in shown:
                part = frame[frame["client"] == client]
                ax.plot(part["session"], part[col], color="0.6", lw=0.4, alpha=0.6)
            by = frame.groupby("session")[col]
            mean, se = by.mean(), by.std(ddof=1) / np.sqrt(by.count())  # blank cells left out
            ax.fill_between(mean.index, mean - crit * se, mean + crit * se, color=accent, alpha=0.25, lw=0)
            ax.plot(mean.index, mean, color=accent, lw=1.8, label=f"Mean ({_pct(level)} CI)")
            ax.set_xlabel("Session")
            ax.set_ylabel(label)
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].legend(loc="lower right")
        axes[1].text(0.99, 0.98, f"{clients.size} clients; {shown.size} trajectories shown",
                     transform=axes[1].transAxes, ha="right", va="top", fontsize=6.5)  # fmt: skip
        fig.suptitle(_title(dataset_label, "session-by-session trajectories"), x=0.01, ha="left", fontsize=9)
        fig.tight_layout()
    return fig


def coefficients_figure(table: pd.DataFrame, level: float, dataset_label: str = ""):
    """Alliance coefficients with their intervals at ``level`` from ``mixed_models.csv``: one row per model and
    engine within each alliance component (sign convention: positive = better outcome)."""
    rows = table[table["term"].isin(ALLIANCE_TERMS) & table["model"].isin(MODEL_MARKERS)
                 & np.isfinite(table["estimate"])].copy()
    rows["order"] = rows["term"].map({t: k for k, t in enumerate(ALLIANCE_TERMS)})
    rows = rows.sort_values(["order", "model", "engine"], kind="stable")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 0.9 + 0.32 * len(rows)))
        y = np.arange(len(rows))[::-1].astype(float)
        for yy, (_, r) in zip(y, rows.iterrows(), strict=True):
            colour = ENGINE_COLOURS.get(r["engine"], "0.2")
            ax.hlines(yy, r["ci_lb"], r["ci_ub"], color=colour, lw=1.2)
            ax.plot(r["estimate"], yy, MODEL_MARKERS.get(r["model"], "o"), color=colour, ms=4.5)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r.model} · {r.engine}" for r in rows.itertuples()])
        ax.axvline(0, color="0.6", lw=0.6)
        for term in ALLIANCE_TERMS:
            ys = y[(rows["term"] == term).to_numpy()]
            if ys.size:
                ax.text(1.01, ys.mean(), TERM_LABELS[term], transform=ax.get_yaxis_transform(), va="center",
                        fontsize=7)  # fmt: skip
                ax.axhline(ys.min() - 0.5, color="0.85", lw=0.5)
        ax.set_xlabel(f"Coefficient per alliance point ({_pct(level)} interval; positive = better outcome)")
        ax.set_title(_title(dataset_label, "alliance components"), loc="left")
        ax.tick_params(axis="y", length=0)
        handles = [Line2D([], [], color=c, lw=1.2, label=e) for e, c in ENGINE_COLOURS.items()
                   if e in set(rows["engine"])]  # fmt: skip
        handles += [Line2D([], [], ls="", marker=m, color="0.3", ms=4.5, label=model + (
            " (previous session's within-client alliance)" if model.startswith("lagged") else ""))
            for model, m in MODEL_MARKERS.items() if model in set(rows["model"])]  # fmt: skip
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 * 4.0 / (0.9 + 0.32 * len(rows))),
                  ncol=2, fontsize=6.5)  # fmt: skip
    return fig


def posterior_figure(idata: az.InferenceData, table: pd.DataFrame | None, level: float, dataset_label: str = ""):
    """Posterior densities (Gaussian KDE) of the Bayesian ``within_between`` alliance coefficients
    with their equal-tailed intervals at ``level``; the REML estimate and t interval of the same model are
    drawn for comparison when ``table`` (``mixed_models.csv``) is given."""
    q_hi = upper_quantile(level)
    beta = idata.posterior["beta"]
    terms = [t for t in ALLIANCE_TERMS if t in beta.coords["term"].values]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(terms), figsize=(2.4 * len(terms), 2.4), squeeze=False)
        for ax, term in zip(axes[0], terms, strict=True):
            draws = beta.sel(term=term).to_numpy().reshape(-1)
            lo, hi = np.quantile(draws, [1.0 - q_hi, q_hi])
            grid = np.linspace(draws.min(), draws.max(), 300)
            density = stats.gaussian_kde(draws)(grid)
            ax.plot(grid, density, color=ENGINE_COLOURS["pymc"], lw=1.2)
            inside = (grid >= lo) & (grid <= hi)
            ax.fill_between(grid[inside], density[inside], color=ENGINE_COLOURS["pymc"], alpha=0.25, lw=0)
            if table is not None:
                ref = table[
                    (table["model"] == "within_between") & (table["engine"] == "mixedlm") & (table["term"] == term)
                ]
                if len(ref):
                    r = ref.iloc[0]
                    yref = density.max() * 1.08
                    ax.hlines(yref, r["ci_lb"], r["ci_ub"], color=ENGINE_COLOURS["mixedlm"], lw=1.2)
                    ax.plot(r["estimate"], yref, "o", color=ENGINE_COLOURS["mixedlm"], ms=3.5)
            ax.axvline(0, color="0.6", lw=0.6)
            ax.set_title(TERM_LABELS[term].replace("\n", " "), fontsize=8)
            ax.set_xlabel("Coefficient (positive = better)")
            ax.set_yticks([])
        axes[0, 0].set_ylabel("Posterior density")
        handles = [
            Line2D([], [], color=ENGINE_COLOURS["pymc"], lw=1.2,
                   label=f"Posterior ({_pct(level)} equal-tailed interval shaded)")
        ]
        if table is not None:
            handles.append(Line2D([], [], color=ENGINE_COLOURS["mixedlm"], marker="o", ms=3.5, lw=1.2,
                                  label=f"REML estimate ({_pct(level)} Satterthwaite t CI)"))  # fmt: skip
        fig.legend(handles=handles, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.04))
        fig.suptitle(_title(dataset_label, "posterior of the Bayesian within/between model"), x=0.01, ha="left",
                     fontsize=9)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
