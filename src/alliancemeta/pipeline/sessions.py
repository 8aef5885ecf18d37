"""Stage ``sessions`` (workflow/rules/sessions.smk): session-level analyses of each session dataset.

Sessions are nested in clients, clients in therapists and therapists in sites.  The analyses
(SPEC §1, §5) and where their maths lives:

- :mod:`alliancemeta.sessions.data`: reading, the sign convention and the alliance decomposition
  into within-client, between-client and therapist components;
- :mod:`alliancemeta.sessions.models`: REML mixed models ``within_between``, ``lagged`` and
  ``therapist`` (statsmodels MixedLM; checked against lme4);
- :mod:`alliancemeta.sessions.bayes`: the Bayesian ``within_between`` model (PyMC + nutpie);
- :mod:`alliancemeta.sessions.descriptives`: descriptives and early alliance vs residualised outcome
  change; :mod:`alliancemeta.sessions.ruptures`: rupture-repair episodes;
- :mod:`alliancemeta.sessions.sites`: two-stage pooling of per-site within-client effects.

**Sign convention.**  When ``outcome_lower_is_better`` the outcome is multiplied by -1 before
modelling, so every reported coefficient and correlation reads "positive = a stronger alliance
goes with a better outcome" (SPEC §4), the ``session`` coefficient is positive when clients improve
and ``outcome_lag`` keeps its sign.  Descriptive tables and trajectory plots show the raw outcome.

This module holds the entry points used by the workflow scripts (each reads the processed session
table, computes, and writes its outputs atomically) and is the only place that knows the output columns.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import arviz as az
import numpy as np
import pandas as pd

from alliancemeta.core import mcmc
from alliancemeta.core.inference import critical_value, p_value
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import SessionDataset
from alliancemeta.core.tables import atomic_path, write_csv
from alliancemeta.plots.sessions import coefficients_figure, posterior_figure, trajectories_figure
from alliancemeta.plots.style import save_figure
from alliancemeta.sessions.bayes import DIAGNOSED, BayesSummary, build_within_between_model, summarise_posterior
from alliancemeta.sessions.data import MIN_THERAPISTS, SUBSCALES, decompose_alliance, has_therapist, read_session_table
from alliancemeta.sessions.descriptives import client_change, describe, fisher_correlation
from alliancemeta.sessions.models import REPORTED_TERM, MixedModelFit, fit_session_models
from alliancemeta.sessions.ruptures import detect_ruptures
from alliancemeta.sessions.sites import two_stage


def _log(message: str) -> None:
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# mixed_models.csv, variance_components.csv, bayes_diagnostics.csv
# --------------------------------------------------------------------------------------------------

MIXED_MODEL_COLUMNS = ("model", "engine", "term", "estimate", "se", "ci_lb", "ci_ub", "pval")


def mixed_models_table(fits: dict[str, MixedModelFit]) -> pd.DataFrame:
    """Rows of ``tables/mixed_models.csv`` (engine ``mixedlm``): every slope (the intercept, which
    is on the sign-aligned scale, is left out) and, for ``therapist``, the contrast
    ``therapist_minus_between``."""
    rows = []
    for fit in fits.values():
        crit = critical_value(fit.level)
        for k, term in enumerate(fit.terms):
            if term == "Intercept":
                continue
            rows.append(
                (fit.model, "mixedlm", REPORTED_TERM.get(term, term), fit.estimate[k], fit.se[k], fit.ci_lb[k],
                 fit.ci_ub[k], fit.pval[k])
            )  # fmt: skip
        if fit.model == "therapist":
            est, se = fit.contrast({"alliance_therapist": 1.0, "alliance_between": -1.0})
            rows.append(
                (fit.model, "mixedlm", "therapist_minus_between", est, se, est - crit * se, est + crit * se,
                 p_value(est / se))
            )  # fmt: skip
    return pd.DataFrame(rows, columns=list(MIXED_MODEL_COLUMNS))


VARIANCE_COLUMNS = ("model", "engine", "component", "variance", "sd", "random_slope", "n_obs", "n_clients",
                    "n_therapists", "reml_loglik", "iterations")  # fmt: skip


def variance_components_table(fits: dict[str, MixedModelFit]) -> pd.DataFrame:
    """Variance components and fit information of every ``mixedlm`` model (one row per component)."""
    rows = []
    for fit in fits.values():
        for name, var in fit.variances.items():
            rows.append(
                (fit.model, "mixedlm", name, var, np.sqrt(var), fit.random_slope, fit.n_obs, fit.n_clients,
                 fit.n_therapists, fit.reml_loglik, fit.iterations)
            )  # fmt: skip
    return pd.DataFrame(rows, columns=list(VARIANCE_COLUMNS))



def bayes_table_rows(summary: BayesSummary, model: str) -> pd.DataFrame:
    """Rows for ``tables/mixed_models.csv`` (engine ``pymc``): posterior mean, posterior SD as
    ``se``, the equal-tailed interval as ``ci_lb``/``ci_ub``; ``pval`` is empty (no p-value)."""
    k = summary.n_terms
    return pd.DataFrame(
        {
            "model": model,
            "engine": "pymc",
            "term": summary.terms,
            "estimate": summary.mean[:k],
            "se": summary.sd[:k],
            "ci_lb": summary.eti_lb[:k],
            "ci_ub": summary.eti_ub[:k],
            "pval": np.nan,
        }
    )


DIAGNOSTIC_COLUMNS = ("model", "parameter", "mean", "sd", "eti_lb", "eti_ub", "ess_bulk", "ess_tail", "r_hat",
                      "divergences", "passed")  # fmt: skip


def diagnostics_table(summary: BayesSummary, model: str) -> pd.DataFrame:
    """Every summarised parameter with its diagnostics and whether it passed the house limits."""
    return pd.DataFrame(
        {
            "model": model,
            "parameter": summary.parameters,
            "mean": summary.mean,
            "sd": summary.sd,
            "eti_lb": summary.eti_lb,
            "eti_ub": summary.eti_ub,
            "ess_bulk": summary.ess_bulk,
            "ess_tail": summary.ess_tail,
            "r_hat": summary.r_hat,
            "divergences": summary.divergences,
            "passed": summary.passed,
        }
    )


# --------------------------------------------------------------------------------------------------
# descriptives.csv, ruptures.csv, client_level.csv, site_effects.csv
# --------------------------------------------------------------------------------------------------

DESCRIPTIVE_COLUMNS = (
    "section", "group", "level", "session", "n_clients", "n_therapists", "n_sites", "n_sessions",
    "sessions_per_client_mean", "sessions_per_client_sd", "sessions_per_client_min",
    "sessions_per_client_median", "sessions_per_client_max", "alliance_mean", "alliance_sd",
    "outcome_mean", "outcome_sd",
    *(f"{s}_{stat}" for s in SUBSCALES for stat in ("mean", "sd")),
)  # fmt: skip


def descriptives_table(frame: pd.DataFrame, groups: Sequence[str]) -> pd.DataFrame:
    """``tables/descriptives.csv``: counts and means/SDs (sample SD, ddof = 1) of alliance, raw outcome
    and subscales, in three sections: ``overall``; ``group`` (one row per level of every grouping
    column from the config; a client's level is taken from its first session); ``session`` (one
    row per session number, over the clients observed at it).  Columns that do not apply, or whose
    variable is absent, are empty."""
    rows = [{"section": "overall", "group": "all", "level": "all", "session": np.nan, **describe(frame)}]
    for g in groups:
        level_of_client = frame.groupby("client")[g].first()
        for level in sorted(level_of_client.dropna().unique(), key=str):
            part = frame[frame["client"].map(level_of_client).eq(level)]
            rows.append({"section": "group", "group": g, "level": str(level), "session": np.nan, **describe(part)})
    for session, part in frame.groupby("session", sort=True):
        rows.append({"section": "session", "group": "all", "level": "all", "session": session, **describe(part)})
    out = pd.DataFrame(rows)
    out["session"] = out["session"].astype("Int64")
    return out.loc[:, list(DESCRIPTIVE_COLUMNS)]



RUPTURE_COLUMNS = (
    "kind", "client", "therapist", "site", "session", "alliance_before", "alliance_dip", "drop",
    "fluctuation_sd", "drop_sd", "status", "repair_session", "sessions_to_repair",
    "n_clients", "n_clients_with_episode", "n_episodes", "n_repaired", "n_unrepaired", "n_censored",
)  # fmt: skip


def ruptures_table(frame: pd.DataFrame, **rule) -> pd.DataFrame:
    """``tables/ruptures.csv``: one ``episode`` row per detected episode, then one ``summary`` row
    (counts over the clients with a usable fluctuation scale; ``drop``/``drop_sd`` there are means
    over episodes).  ``rule`` passes ``threshold``, ``window`` and ``slack`` to :func:`detect_ruptures`."""
    episodes, n_clients = detect_ruptures(frame, **rule)
    first = frame.groupby("client").first()
    rows = []
    for e in episodes:
        rows.append({
            "kind": "episode", "client": e.client,
            "therapist": first.at[e.client, "therapist"] if "therapist" in first else None,
            "site": first.at[e.client, "site"] if "site" in first else None,
            "session": e.session, "alliance_before": e.alliance_before, "alliance_dip": e.alliance_dip,
            "drop": e.drop, "fluctuation_sd": e.fluctuation_sd, "drop_sd": e.drop / e.fluctuation_sd,
            "status": e.status, "repair_session": e.repair_session,
            "sessions_to_repair": None if e.repair_session is None else e.repair_session - e.session,
        })  # fmt: skip
    status = [e.status for e in episodes]
    rows.append({
        "kind": "summary",
        "drop": float(np.mean([e.drop for e in episodes])) if episodes else np.nan,
        "drop_sd": float(np.mean([e.drop / e.fluctuation_sd for e in episodes])) if episodes else np.nan,
        "n_clients": n_clients, "n_clients_with_episode": len({e.client for e in episodes}),
        "n_episodes": len(episodes), "n_repaired": status.count("repaired"),
        "n_unrepaired": status.count("unrepaired"), "n_censored": status.count("censored"),
    })  # fmt: skip
    out = pd.DataFrame(rows, columns=list(RUPTURE_COLUMNS))
    for col in ("session", "repair_session", "sessions_to_repair", "n_clients", "n_clients_with_episode",
                "n_episodes", "n_repaired", "n_unrepaired", "n_censored"):  # fmt: skip
        out[col] = out[col].astype("Int64")
    return out



CLIENT_LEVEL_COLUMNS = ("group", "level", "n", "r", "ci_lb", "ci_ub", "pval", "yi", "vi")


def client_level_table(frame: pd.DataFrame, outcome_lower_is_better: bool, groups: Sequence[str],
                       level: float) -> pd.DataFrame:
    """``tables/client_level.csv``: r between early alliance and residualised outcome change (positive
    = stronger early alliance, better change), overall and within each level of every grouping
    column (levels with fewer than 4 clients are skipped).  The residualisation is done once, over
    all clients, so subgroup correlations share one baseline adjustment."""
    change = client_change(frame, outcome_lower_is_better)
    rows = []

    def add(group, lvl, part):
        if len(part) >= 4:
            c = fisher_correlation(part["early_alliance"], part["residual_change"], level)
            rows.append((group, lvl, c.n, c.r, c.ci_lb, c.ci_ub, c.pval, c.yi, c.vi))

    add("all", "all", change)
    for g in groups:
        level_of_client = frame.groupby("client")[g].first().reindex(change.index)
        for lvl in sorted(level_of_client.dropna().unique(), key=str):
            add(g, str(lvl), change[level_of_client.eq(lvl).to_numpy()])
    return pd.DataFrame(rows, columns=list(CLIENT_LEVEL_COLUMNS))



SITE_COLUMNS = (
    "model", "term", "site", "n_clients", "n_sessions", "estimate", "se", "ci_lb", "ci_ub", "pval", "weight",
    "method", "test", "tau2", "I2", "Q", "Q_df", "Q_pval", "pi_lb", "pi_ub",
)  # fmt: skip


def site_effects_table(decomposed: pd.DataFrame, method: str, test: str, level: float) -> pd.DataFrame:
    """``tables/site_effects.csv``: per model, one row per site (stage 1, Wald z intervals, weight
    in percent of the pooled model) and a ``pooled`` row (stage 2: estimate, CI and PI by ``test``,
    tau^2, I^2, Q).  The term is reported as ``alliance_within`` for both models (the lagged model's
    is the previous session's within-client alliance).  Needs at least two sites."""
    rows = []
    for result in two_stage(decomposed, method, test, level):
        pooled = result.pooled
        weight = 100 * pooled.weights / pooled.weights.sum()
        for s, w in zip(result.sites, weight, strict=True):
            j = s.index
            rows.append({"model": result.model, "term": "alliance_within", "site": s.site, "n_clients": s.n_clients,
                         "n_sessions": s.n_sessions, "estimate": s.fit.estimate[j], "se": s.fit.se[j],
                         "ci_lb": s.fit.ci_lb[j], "ci_ub": s.fit.ci_ub[j], "pval": s.fit.pval[j], "weight": w})
        pred = pooled.predict()
        rows.append({
            "model": result.model, "term": "alliance_within", "site": "pooled",
            "n_clients": sum(s.n_clients for s in result.sites), "n_sessions": sum(s.n_sessions for s in result.sites),
            "estimate": pooled.estimate, "se": float(pooled.se[0]), "ci_lb": float(pooled.ci_lbs[0]),
            "ci_ub": float(pooled.ci_ubs[0]), "pval": float(pooled.pvals[0]), "weight": 100.0,
            "method": method, "test": test, "tau2": pooled.tau2, "I2": pooled.I2, "Q": pooled.QE,
            "Q_df": pooled.QE_df, "Q_pval": pooled.QE_pval, "pi_lb": pred.pi_lb, "pi_ub": pred.pi_ub,
        })  # fmt: skip
    out = pd.DataFrame(rows, columns=list(SITE_COLUMNS))
    out["Q_df"] = out["Q_df"].astype("Int64")
    return out


# --------------------------------------------------------------------------------------------------
# writers called by the workflow scripts
# --------------------------------------------------------------------------------------------------


def write_session_models(sessions, mixed_models, variance_components, diagnostics, posterior, *,
                         settings: SessionDataset, seed: int) -> None:
    """Fit the mixed models (``mixedlm``) and the Bayesian ``within_between`` model (``pymc``) and
    write ``mixed_models.csv``, ``variance_components.csv`` (both engines), the sampler diagnostics
    and the posterior (ArviZ netCDF).

    ``seed`` is the config seed; the dataset's model is sampled with
    ``derive_seed(seed, f"sessions/{name}")`` through :func:`alliancemeta.core.mcmc.fit` (diagnostics,
    one retry, then a clear stop with nothing written).
    """
    name = settings.dataset.name
    frame = read_session_table(sessions)
    if "therapist" in frame.columns and not has_therapist(frame):
        _log(f"note: {frame['therapist'].nunique()} therapist(s) are too few for a therapist level "
             f"(at least {MIN_THERAPISTS} needed); therapists are ignored by the models")  # fmt: skip
    decomposed = decompose_alliance(frame, settings.outcome_lower_is_better)
    fits = fit_session_models(decomposed, level=settings.level)
    for mixed in fits.values():
        _log(
            f"{mixed.model}: n={mixed.n_obs}, REML logLik {mixed.reml_loglik:.6f}, {mixed.iterations} iterations, "
            f"gradient {mixed.gradient:.2e}, random slope {mixed.random_slope}"
        )
        for note in mixed.notes:
            _log(f"  note: {note}")
    wb = fits["within_between"]
    model = build_within_between_model(decomposed, wb.terms[1:], random_slope=wb.random_slope)
    model_seed = derive_seed(seed, f"sessions/{name}")
    result = mcmc.fit(model, settings.sampler, model_seed, f"{settings.dataset.label}: Bayesian within_between model",
                 DIAGNOSED)
    idata = result.idata
    summary = summarise_posterior(idata, level=settings.level)
    _log(f"pymc within_between: {settings.sampler}, seed {model_seed}, {result.attempts} attempt(s), "
         f"max r_hat {result.diagnostics.max_r_hat:.4f}, min ess_bulk {result.diagnostics.min_ess_bulk:.0f}")
    table = pd.concat([mixed_models_table(fits), bayes_table_rows(summary, "within_between")], ignore_index=True)
    variances = variance_components_table(fits)
    sd_names = summary.parameters[summary.n_terms :]
    bayes_sd = pd.DataFrame({
        "model": "within_between", "engine": "pymc",
        "component": ["residual" if p == "sigma" else p.removeprefix("sd_") for p in sd_names],
        "variance": [float((idata.posterior[p] ** 2).mean()) for p in sd_names],  # posterior means
        "sd": summary.mean[summary.n_terms :],
        "random_slope": wb.random_slope, "n_obs": wb.n_obs, "n_clients": wb.n_clients,
        "n_therapists": wb.n_therapists,
    })  # fmt: skip
    with atomic_path(posterior) as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    write_csv(table, mixed_models, MIXED_MODEL_COLUMNS)
    write_csv(pd.concat([variances, bayes_sd], ignore_index=True), variance_components, VARIANCE_COLUMNS)
    write_csv(diagnostics_table(summary, "within_between"), diagnostics, DIAGNOSTIC_COLUMNS)


def write_session_descriptives(sessions, descriptives, ruptures, client_level, *, settings: SessionDataset) -> None:
    """Write ``descriptives.csv``, ``ruptures.csv`` and ``client_level.csv``."""
    frame = read_session_table(sessions)
    groups = list(settings.groups)
    write_csv(descriptives_table(frame, groups), descriptives, DESCRIPTIVE_COLUMNS)
    rupture_rows = ruptures_table(frame)
    summary = rupture_rows.iloc[-1]
    _log(f"ruptures: {summary['n_episodes']} episodes in {summary['n_clients_with_episode']} of "
         f"{summary['n_clients']} clients assessed")  # fmt: skip
    write_csv(rupture_rows, ruptures, RUPTURE_COLUMNS)
    write_csv(client_level_table(frame, settings.outcome_lower_is_better, groups, settings.level), client_level,
              CLIENT_LEVEL_COLUMNS)


def write_site_effects(sessions, table, *, settings: SessionDataset, meta_method: str, meta_test: str) -> None:
    """Write ``site_effects.csv`` (two-stage pooling over sites with the headline estimator and test)."""
    frame = read_session_table(sessions)
    if "site" not in frame.columns:
        raise ValueError(f"{sessions}: two-stage pooling needs a 'site' column")
    decomposed = decompose_alliance(frame, settings.outcome_lower_is_better)
    _log(f"site effects: {frame['site'].nunique()} sites, {frame['client'].nunique()} clients")
    write_csv(site_effects_table(decomposed, meta_method, meta_test, settings.level), table, SITE_COLUMNS)


def write_session_figures(sessions, mixed_models, posterior, outputs: dict, *, settings: SessionDataset) -> None:
    """Write the three session figures (PDF + PNG each) for one dataset; ``outputs`` maps ``trajectories``,
    ``coefficients`` and ``posterior`` to their (pdf, png) paths."""
    frame = read_session_table(sessions)
    table = pd.read_csv(mixed_models)
    label, level = settings.dataset.label, settings.level
    idata = az.from_netcdf(str(posterior), engine="h5netcdf")
    figures = {
        "trajectories": lambda: trajectories_figure(frame, settings.outcome_lower_is_better, level, label),
        "coefficients": lambda: coefficients_figure(table, level, label),
        "posterior": lambda: posterior_figure(idata, table, level, label),
    }
    for name, make in figures.items():
        save_figure(make(), *outputs[name])
