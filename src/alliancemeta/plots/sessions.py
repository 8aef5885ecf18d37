"""Session-level figures: trajectories, within/between coefficient plot, posterior densities."""

from __future__ import annotations

import os

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from scipy import stats

from alliancemeta.plots.forest import STYLE, save_figure
from alliancemeta.sessions.data import read_session_table

#: At most this many individual trajectories are drawn (evenly spaced over the sorted client ids,
#: so the choice is deterministic); the mean trajectory uses every client.
MAX_SPAGHETTI = 60
ALLIANCE_TERMS = ("alliance_within", "alliance_between", "alliance_therapist")
TERM_LABELS = {
    "alliance_within": "Within client\n(session deviation)",
    "alliance_between": "Between clients\n(client mean)",
    "alliance_therapist": "Between therapists\n(therapist mean)",
}
ENGINE_COLOURS = {"mixedlm": "#1f4e79", "pymc": "#b5523b"}
MODEL_MARKERS = {"within_between": "o", "lagged": "s", "therapist": "D"}


def _title(dataset: str, what: str) -> str:
    synthetic = " — SYNTHETIC data" if dataset.endswith("_synthetic") else ""
    return f"{dataset}{synthetic}: {what}" if dataset else what


def trajectories_figure(frame: pd.DataFrame, outcome_lower_is_better: bool, dataset: str = ""):
    """Alliance and outcome by session: individual trajectories of up to :data:`MAX_SPAGHETTI`
    clients (thin) and the mean over the clients observed at each session with its 95% CI (thick);
    the number of clients still observed is printed along the session axis."""
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
            mean, se = by.mean(), by.std(ddof=1) / np.sqrt(by.size())
            ax.fill_between(mean.index, mean - 1.96 * se, mean + 1.96 * se, color="#1f4e79", alpha=0.25, lw=0)
            ax.plot(mean.index, mean, color="#1f4e79", lw=1.8, label="Mean (95% CI)")
            ax.set_xlabel("Session")
            ax.set_ylabel(label)
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].legend(loc="lower right")
        axes[1].text(0.99, 0.98, f"{clients.size} clients; {shown.size} trajectories shown",
                     transform=axes[1].transAxes, ha="right", va="top", fontsize=6.5)  # fmt: skip
        fig.suptitle(_title(dataset, "session-by-session trajectories"), x=0.01, ha="left", fontsize=9)
        fig.tight_layout()
    return fig


def coefficients_figure(table: pd.DataFrame, dataset: str = ""):
    """Alliance coefficients with 95% intervals from ``mixed_models.csv``: one row per model and
    engine within each alliance component (sign convention: positive = better outcome)."""
    rows = table[table["term"].isin(ALLIANCE_TERMS)].copy()
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
        ax.set_xlabel("Coefficient per alliance point (95% CI; positive = better outcome)")
        ax.set_title(_title(dataset, "alliance components"), loc="left")
        ax.tick_params(axis="y", length=0)
        handles = [Line2D([], [], color=c, lw=1.2, label=e) for e, c in ENGINE_COLOURS.items()
                   if e in set(rows["engine"])]  # fmt: skip
        handles += [Line2D([], [], ls="", marker=m, color="0.3", ms=4.5, label=model + (
            " (previous session's within-client alliance)" if model == "lagged" else ""))
            for model, m in MODEL_MARKERS.items() if model in set(rows["model"])]  # fmt: skip
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 * 4.0 / (0.9 + 0.32 * len(rows))),
                  ncol=2, fontsize=6.5)  # fmt: skip
    return fig


def posterior_figure(idata: az.InferenceData, table: pd.DataFrame | None = None, dataset: str = ""):
    """Posterior densities (Gaussian KDE) of the Bayesian ``within_between`` alliance coefficients
    with their 95% equal-tailed intervals; the REML estimate and Wald CI of the same model are
    drawn for comparison when ``table`` (``mixed_models.csv``) is given."""
    beta = idata.posterior["beta"]
    terms = [t for t in ALLIANCE_TERMS if t in beta.coords["term"].values]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(terms), figsize=(2.4 * len(terms), 2.4), squeeze=False)
        for ax, term in zip(axes[0], terms, strict=True):
            draws = beta.sel(term=term).to_numpy().reshape(-1)
            lo, hi = np.quantile(draws, [0.025, 0.975])
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
            Line2D([], [], color=ENGINE_COLOURS["pymc"], lw=1.2, label="Posterior (95% equal-tailed interval shaded)")
        ]
        if table is not None:
            handles.append(Line2D([], [], color=ENGINE_COLOURS["mixedlm"], marker="o", ms=3.5, lw=1.2,
                                  label="REML estimate (95% Wald CI)"))  # fmt: skip
        fig.legend(handles=handles, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.04))
        fig.suptitle(_title(dataset, "posterior of the Bayesian within/between model"), x=0.01, ha="left", fontsize=9)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def write_session_figures(
    sessions: str | os.PathLike,
    mixed_models: str | os.PathLike,
    posterior: str | os.PathLike,
    trajectories_pdf, trajectories_png, coefficients_pdf, coefficients_png, posterior_pdf, posterior_png,
    *,
    outcome_lower_is_better: bool,
    dataset: str = "",
) -> None:  # fmt: skip
    """Write the three session figures (PDF + PNG each) for one dataset."""
    frame = read_session_table(sessions)
    table = pd.read_csv(mixed_models)
    save_figure(trajectories_figure(frame, outcome_lower_is_better, dataset), trajectories_pdf, trajectories_png)
    save_figure(coefficients_figure(table, dataset), coefficients_pdf, coefficients_png)
    idata = az.from_netcdf(str(posterior))
    save_figure(posterior_figure(idata, table, dataset), posterior_pdf, posterior_png)
