"""Stage ``sessions`` (workflow/rules/sessions.smk): session-level analyses of each session dataset.

Sessions are nested in clients, clients in therapists (and cases, and sites).  The analyses (SPEC §1, §5) and
where their maths lives:

- :mod:`alliancemeta.sessions.data`: reading, the sign convention, the alliance decomposition into
  within-client, between-client and therapist components, centred time, lags, the split alliance, covariates;
- :mod:`alliancemeta.sessions.models`: REML mixed models ``within_between``, ``lagged``, ``therapist``,
  ``components`` and ``split`` (engine :mod:`alliancemeta.sessions.lmm`, checked against lme4/lmerTest);
- :mod:`alliancemeta.sessions.bayes`: the Bayesian ``within_between``, ``components`` and ``split`` models
  (PyMC + nutpie, through :func:`alliancemeta.core.mcmc.fit`);
- :mod:`alliancemeta.sessions.descriptives`: descriptives and early alliance vs outcome change;
  :mod:`alliancemeta.sessions.ruptures`: rupture-repair episodes, their regression-to-the-mean null and their
  outcome;
- :mod:`alliancemeta.sessions.sites`: two-stage pooling of per-site within-client effects.

**Sign convention.**  When ``outcome_lower_is_better`` the outcome is multiplied by -1 before modelling, so every
reported coefficient and correlation reads "positive = a stronger alliance goes with a better outcome" (SPEC §4),
the ``session`` coefficient is positive when clients improve and ``outcome_lag`` keeps its sign.  Descriptive
tables and trajectory plots show the raw outcome.

This module holds the entry points used by the workflow scripts (each reads the processed session table,
computes, and writes its outputs atomically) and is the only place that knows the output columns.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import arviz as az
import numpy as np
import pandas as pd

from alliancemeta.core import mcmc
from alliancemeta.core.mcmc import ESS_BULK_MIN, R_HAT_MAX
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import SessionDataset
from alliancemeta.core.tables import atomic_path, write_csv
from alliancemeta.plots.sessions import coefficients_figure, posterior_figure, trajectories_figure
from alliancemeta.plots.style import save_figure
from alliancemeta.sessions.bayes import (
    BayesSummary,
    build_session_model,
    diagnosed,
    spec_from_model,
    summarise_posterior,
)
from alliancemeta.sessions.data import (
    MIN_THERAPISTS,
    SUBSCALES,
    add_covariates,
    decompose_alliance,
    has_therapist,
    read_session_table,
    session_centre,
)
from alliancemeta.sessions.descriptives import (
    client_change,
    client_covariates,
    describe,
    early_alliance_correlation,
)
from alliancemeta.sessions.dsem import TERMS as LAGGED_LATENT_TERMS
from alliancemeta.sessions.dsem import fit_lagged_latent, lagged_latent_summary, reported_names
from alliancemeta.sessions.models import SessionModelFit, fit_session_models
from alliancemeta.sessions.ruptures import detect_ruptures, rtm_null, rupture_outcome, rupture_rule
from alliancemeta.sessions.sites import two_stage

#: Bayesian versions of these REML models are sampled (SPEC §5).
BAYES_MODELS = ("within_between", "components", "split")
#: Columns are reported under these names (``session_c`` is the centred session; its slope is the session slope).
REPORTED = {"session_c": "session", "alliance_within_lag": "alliance_within"}


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _reported(term: str) -> str:
    return REPORTED.get(term, term)


# --------------------------------------------------------------------------------------------------
# mixed_models.csv, variance_components.csv, bayes_diagnostics.csv
# --------------------------------------------------------------------------------------------------

#: SPEC §5 columns, then the Satterthwaite ``df`` (empty for pymc) and a ``note``.
MIXED_MODEL_COLUMNS = ("model", "engine", "term", "estimate", "se", "ci_lb", "ci_ub", "pval", "df", "note")


def mixed_models_table(fits: Mapping[str, SessionModelFit]) -> pd.DataFrame:
    """Rows of ``tables/mixed_models.csv`` (engine ``mixedlm``): every fixed effect but the intercept (t tests and
    intervals with Satterthwaite df), then each model's contrasts (``therapist_minus_between``).  A model that could
    not be fitted gives NaN rows for its terms with the reason in ``note``; ``components`` rows carry their variance
    inflation factor in ``note``."""
    rows = []
    for name, result in fits.items():
        fit = result.fit
        if fit is None:
            for term in (*result.terms, *result.contrasts):
                rows.append((name, "mixedlm", _reported(term), *([np.nan] * 6), result.error))
            continue
        for k, term in enumerate(fit.terms):
            if term == "(Intercept)":
                continue
            note = f"VIF {result.vif[term]:.2f}" if term in result.vif else ""
            rows.append((name, "mixedlm", _reported(term), fit.estimate[k], fit.se[k], fit.ci_lb[k], fit.ci_ub[k],
                         fit.pval[k], fit.df[k], note))  # fmt: skip
        for contrast, weights in result.contrasts.items():
            c = fit.contrast(weights)
            rows.append((name, "mixedlm", contrast, c.estimate, c.se, c.ci_lb, c.ci_ub, c.pval, c.df, ""))
    return pd.DataFrame(rows, columns=list(MIXED_MODEL_COLUMNS))


def bayes_table_rows(summary: BayesSummary, model: str, note: str = "") -> pd.DataFrame:
    """Rows for ``tables/mixed_models.csv`` (engine ``pymc``): posterior mean, posterior SD as ``se``, the
    equal-tailed interval as ``ci_lb``/``ci_ub``; ``pval`` and ``df`` are empty."""
    k = summary.n_terms
    return pd.DataFrame({
        "model": model, "engine": "pymc", "term": [_reported(t) for t in summary.terms],
        "estimate": summary.mean[:k], "se": summary.sd[:k], "ci_lb": summary.eti_lb[:k],
        "ci_ub": summary.eti_ub[:k], "pval": np.nan, "df": np.nan, "note": note,
    })  # fmt: skip


#: One row per variance (``term2`` empty: ``variance`` and ``sd``) or covariance (``term2`` set: ``covariance`` and
#: ``correlation``) of a level's random effects, and the residual; with the fit's size and REML information.
VARIANCE_COLUMNS = (
    "model", "engine", "group", "term", "term2", "variance", "sd", "covariance", "correlation", "singular", "n_obs",
    "n_clients", "n_therapists", "n_cases", "loglik", "reml", "iterations",
)  # fmt: skip


def _group_counts(model: str, n_groups: Mapping[str, int]) -> dict:
    return {"n_clients": n_groups.get("client", np.nan), "n_therapists": n_groups.get("therapist", np.nan),
            "n_cases": n_groups.get("case", np.nan)}  # fmt: skip


def variance_components_table(fits: Mapping[str, SessionModelFit]) -> pd.DataFrame:
    """REML variance components of every fitted ``mixedlm`` model (lme4's ``VarCorr`` table in readable columns),
    with ``singular`` (a variance at the boundary, lme4's ``isSingular``), the rows used and the REML
    log-likelihood."""
    rows = []
    for name, result in fits.items():
        fit = result.fit
        if fit is None:
            continue
        common = {"model": name, "engine": "mixedlm", "singular": fit.singular, "n_obs": fit.n_obs,
                  **_group_counts(name, fit.n_groups), "loglik": fit.loglik, "reml": fit.reml,
                  "iterations": fit.iterations}  # fmt: skip
        for v in fit.varcorr:
            group = "residual" if v.group == "Residual" else v.group
            term = None if v.var1 is None else _reported(v.var1)
            if v.var2 is None:
                rows.append({**common, "group": group, "term": term, "variance": v.vcov, "sd": v.sdcor})
            else:
                rows.append({**common, "group": group, "term": term, "term2": _reported(v.var2),
                             "covariance": v.vcov, "correlation": v.sdcor})  # fmt: skip
    return pd.DataFrame(rows, columns=list(VARIANCE_COLUMNS))


def _bayes_variance_rows(summary: BayesSummary, model: str, n_obs: int, n_groups: Mapping[str, int]) -> pd.DataFrame:
    """Posterior means of the SDs (``sd``) and of their squares (``variance``) of a Bayesian model."""
    rows = []
    for p, mean, var in zip(summary.parameters[summary.n_terms:], summary.mean[summary.n_terms:],
                            summary.variance[summary.n_terms:], strict=True):  # fmt: skip
        if p == "sigma":
            group, term = "residual", None
        elif p in ("sd_therapist", "sd_case", "sd_client"):
            group, term = p.removeprefix("sd_"), "(Intercept)"
        else:
            group, term = "client", _reported(p.removeprefix("sd_client_"))
        rows.append({"model": model, "engine": "pymc", "group": group, "term": term, "variance": var, "sd": mean,
                     "n_obs": n_obs, **_group_counts(model, n_groups)})  # fmt: skip
    return pd.DataFrame(rows, columns=list(VARIANCE_COLUMNS))


DIAGNOSTIC_COLUMNS = ("model", "parameter", "mean", "sd", "eti_lb", "eti_ub", "ess_bulk", "ess_tail", "r_hat",
                      "divergences", "passed")  # fmt: skip


def diagnostics_table(summary: BayesSummary, model: str) -> pd.DataFrame:
    """Every summarised parameter with its diagnostics and whether it passed the house limits."""
    names = [_reported(p) if k < summary.n_terms else p for k, p in enumerate(summary.parameters)]
    return pd.DataFrame({
        "model": model, "parameter": names, "mean": summary.mean, "sd": summary.sd, "eti_lb": summary.eti_lb,
        "eti_ub": summary.eti_ub, "ess_bulk": summary.ess_bulk, "ess_tail": summary.ess_tail,
        "r_hat": summary.r_hat, "divergences": summary.divergences, "passed": summary.passed,
    })  # fmt: skip


# --------------------------------------------------------------------------------------------------
# descriptives.csv, ruptures.csv, rupture_outcome.csv, client_level.csv, site_effects.csv
# --------------------------------------------------------------------------------------------------

DESCRIPTIVE_COLUMNS = (
    "section", "group", "level", "session", "n_clients", "n_therapists", "n_sites", "n_sessions",
    "sessions_per_client_mean", "sessions_per_client_sd", "sessions_per_client_min",
    "sessions_per_client_median", "sessions_per_client_max", "alliance_mean", "alliance_sd",
    "outcome_mean", "outcome_sd",
    *(f"{s}_{stat}" for s in SUBSCALES for stat in ("mean", "sd")),
    "alliance_client_median", "alliance_client_q25", "alliance_client_q75", "alliance_ceiling_share",
)  # fmt: skip


def descriptives_table(frame: pd.DataFrame, groups: Sequence[str], alliance_max: float | None = None) -> pd.DataFrame:
    """``tables/descriptives.csv``: counts, means and SDs (sample SD, ddof = 1; blank cells left out) of alliance,
    raw outcome and subscales, and the median, quartiles and ceiling share (at ``alliance_max``) of the client mean
    alliance, in three sections: ``overall``; ``group`` (one row per level of every grouping column from the config;
    a client's level is taken from its first session); ``session`` (one row per session number, over the clients
    observed at it, whose "client mean" is that session's rating).  Columns that do not apply are empty."""
    rows = [{"section": "overall", "group": "all", "level": "all", "session": np.nan, **describe(frame, alliance_max)}]
    for g in groups:
        level_of_client = frame.groupby("client")[g].first()
        for level in sorted(level_of_client.dropna().unique(), key=str):
            part = frame[frame["client"].map(level_of_client).eq(level)]
            rows.append({"section": "group", "group": g, "level": str(level), "session": np.nan,
                         **describe(part, alliance_max)})  # fmt: skip
    for session, part in frame.groupby("session", sort=True):
        rows.append({"section": "session", "group": "all", "level": "all", "session": session,
                     **describe(part, alliance_max)})  # fmt: skip
    out = pd.DataFrame(rows)
    out["session"] = out["session"].astype("Int64")
    return out.loc[:, list(DESCRIPTIVE_COLUMNS)]


RUPTURE_COLUMNS = (
    "kind", "client", "therapist", "site", "session", "alliance_before", "alliance_dip", "drop",
    "fluctuation_sd", "drop_sd", "status", "repair_session", "sessions_to_repair",
    "n_clients", "n_clients_with_episode", "n_episodes", "n_repaired", "n_unrepaired", "n_censored",
)  # fmt: skip
_COUNT_COLUMNS = ("session", "repair_session", "sessions_to_repair", "n_clients", "n_clients_with_episode",
                  "n_episodes", "n_repaired", "n_unrepaired", "n_censored")  # fmt: skip


def ruptures_table(frame: pd.DataFrame, reliability: float, repair_within: int, seed: int):
    """``tables/ruptures.csv`` and the episodes: one ``episode`` row per detected episode (``fluctuation_sd`` is
    the standard error of a difference of the reliable-change rule, ``drop_sd`` the drop's reliable change index),
    one ``summary`` row (counts over the clients with two ratings in consecutive sessions; ``drop``/``drop_sd`` are
    means over episodes) and one ``rtm_null`` row: the median counts over the replicates of the
    regression-to-the-mean null (:func:`alliancemeta.sessions.ruptures.rtm_null`)."""
    rule = rupture_rule(frame, reliability, repair_within)
    episodes, n_clients = detect_ruptures(frame, rule)
    null = rtm_null(frame, rule, episodes, seed)
    first = frame.groupby("client").first()
    rows = []
    for e in episodes:
        rows.append({
            "kind": "episode", "client": e.client,
            "therapist": first.at[e.client, "therapist"] if "therapist" in first else None,
            "site": first.at[e.client, "site"] if "site" in first else None,
            "session": e.session, "alliance_before": e.alliance_before, "alliance_dip": e.alliance_dip,
            "drop": e.drop, "fluctuation_sd": e.se_diff, "drop_sd": e.rci,
            "status": e.status, "repair_session": e.repair_session,
            "sessions_to_repair": None if e.repair_session is None else e.repair_session - e.session,
        })  # fmt: skip
    status = [e.status for e in episodes]
    rows.append({
        "kind": "summary", "fluctuation_sd": rule.se_diff,
        "drop": float(np.mean([e.drop for e in episodes])) if episodes else np.nan,
        "drop_sd": float(np.mean([e.rci for e in episodes])) if episodes else np.nan,
        "n_clients": n_clients, "n_clients_with_episode": len({e.client for e in episodes}),
        "n_episodes": len(episodes), "n_repaired": status.count("repaired"),
        "n_unrepaired": status.count("unrepaired"), "n_censored": status.count("censored"),
    })  # fmt: skip
    rows.append({
        "kind": "rtm_null", "fluctuation_sd": rule.se_diff, "n_clients": n_clients,
        "n_clients_with_episode": null.median(4), "n_episodes": null.median(0), "n_repaired": null.median(1),
        "n_unrepaired": null.median(2), "n_censored": null.median(3),
    })  # fmt: skip
    out = pd.DataFrame(rows, columns=list(RUPTURE_COLUMNS))
    for col in _COUNT_COLUMNS:
        out[col] = out[col].astype("Int64")
    return out, episodes, rule, null


RUPTURE_OUTCOME_COLUMNS = ("term", "estimate", "se", "ci_lb", "ci_ub", "pval", "df", "n")


def rupture_outcome_table(frame: pd.DataFrame, episodes, outcome_lower_is_better: bool,
                          level: float) -> tuple[pd.DataFrame, str]:
    """``tables/rupture_outcome.csv`` (SPEC columns, then ``df`` and the number of clients ``n``): repaired,
    unrepaired and censored episodes per client as predictors of the outcome change (positive = more improvement),
    adjusted for the baseline outcome and the number of rated session-to-session changes, and the contrast
    ``repaired_minus_unrepaired``; and the method used."""
    rows, n, method = rupture_outcome(frame, episodes, outcome_lower_is_better, level)
    out = pd.DataFrame([vars(r) for r in rows], columns=[c for c in RUPTURE_OUTCOME_COLUMNS if c != "n"])
    out["n"] = n
    return out, method


CLIENT_LEVEL_COLUMNS = ("group", "level", "n", "r", "ci_lb", "ci_ub", "pval", "yi", "vi", "q")
#: Subgroups with fewer clients than this plus q are skipped (the Fisher variance 1/(n - 3 - q) needs n > 3 + q).
MIN_SUBGROUP = 4


def client_level_table(frame: pd.DataFrame, outcome_lower_is_better: bool, groups: Sequence[str], level: float,
                       covariates: Sequence[str] = ()) -> pd.DataFrame:
    """``tables/client_level.csv``: the partial correlation of early alliance and the last outcome given the
    baseline outcome and the client covariates (:func:`alliancemeta.sessions.descriptives.early_alliance_correlation`;
    positive = stronger early alliance, better outcome than the baseline predicts), overall, within each level of
    every grouping column and (with a ``site`` column naming two or more sites) within each site; each subset is
    residualised on its own.  ``q`` is the number of variables partialled out, ``vi`` = 1/(n - 3 - q)."""
    data, cov = add_covariates(frame, covariates)
    change = client_change(data, outcome_lower_is_better)
    covs = client_covariates(data, cov.terms, change.index)
    complete = covs.notna().all(axis=1).to_numpy()
    change, covs = change[complete], covs[complete]
    rows = []

    def add(group, lvl, mask):
        part = change[mask]
        if len(part) >= MIN_SUBGROUP + 1 + len(cov.terms):
            c = early_alliance_correlation(part, covs[mask], level)
            rows.append((group, lvl, c.n, c.r, c.ci_lb, c.ci_ub, c.pval, c.yi, c.vi, c.q))

    add("all", "all", np.ones(len(change), dtype=bool))
    splits = list(groups) + (["site"] if "site" in frame.columns and frame["site"].nunique() >= 2 else [])
    for g in dict.fromkeys(splits):
        level_of_client = frame.groupby("client")[g].first().reindex(change.index)
        for lvl in sorted(level_of_client.dropna().unique(), key=str):
            add(g, str(lvl), level_of_client.eq(lvl).to_numpy())
    out = pd.DataFrame(rows, columns=list(CLIENT_LEVEL_COLUMNS))
    out["q"] = out["q"].astype("Int64")
    return out


SITE_COLUMNS = (
    "model", "term", "site", "n_clients", "n_sessions", "estimate", "se", "ci_lb", "ci_ub", "pval", "weight",
    "method", "test", "tau2", "I2", "Q", "Q_df", "Q_pval", "pi_lb", "pi_ub",
)  # fmt: skip


def site_effects_table(decomposed: pd.DataFrame, method: str, test: str, level: float) -> pd.DataFrame:
    """``tables/site_effects.csv``: per model, one row per site (stage 1: REML with Satterthwaite t intervals; weight
    in percent of the pooled model) and a ``pooled`` row (stage 2: estimate, CI and PI by ``test``, tau^2, I^2, Q).
    The term is reported as ``alliance_within`` for both models (the lagged model's is the previous session's
    within-client alliance).  Needs at least two sites."""
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


def prepare_sessions(frame: pd.DataFrame, settings: SessionDataset):
    """The decomposed table with the covariate design columns, and the covariate terms."""
    decomposed = decompose_alliance(frame, settings.outcome_lower_is_better)
    return add_covariates(decomposed, settings.covariates)


def _log_fit(result: SessionModelFit) -> None:
    fit = result.fit
    if fit is None:
        _log(f"mixedlm {result.model}: NOT FITTED ({result.error}); its rows are NaN")
        return
    groups = ", ".join(f"{n} {g}s" for g, n in fit.n_groups.items())
    _log(f"mixedlm {result.model}: {fit.n_obs} of {result.n_available} rows, {groups}; REML logLik "
         f"{fit.loglik:.6f}, {fit.iterations} iterations, Newton decrement {fit.newton_decrement:.1e}, "
         f"singular {fit.singular}")  # fmt: skip
    for note in result.notes:
        _log(f"  note: {note}")


def bayes_models(fits: Mapping[str, SessionModelFit], settings: SessionDataset, seed: int):
    """Sample the Bayesian counterpart of every fitted REML model in :data:`BAYES_MODELS` through
    :func:`alliancemeta.core.mcmc.fit`; returns ``{model: (summary, idata, prepared, n_groups)}``."""
    out = {}
    name = settings.dataset.name
    for model in BAYES_MODELS:
        result = fits.get(model)
        if result is None or result.fit is None:
            if result is not None:
                _log(f"pymc {model}: not sampled, its REML model could not be fitted")
            continue
        spec = result.spec
        upper = spec.upper.group if spec.upper is not None else None  # the REML model's upper level
        bspec = spec_from_model(model, spec.data, spec.fixed, therapist=upper == "therapist", case=upper == "case")
        pm_model, prepared = build_session_model(bspec)
        key = f"sessions/{name}" if model == "within_between" else f"sessions/{name}/{model}"
        model_seed = derive_seed(seed, key)
        label = f"{settings.dataset.label}: Bayesian {model} model"
        result_mcmc = mcmc.fit(pm_model, settings.sampler, model_seed, label, diagnosed(pm_model))
        summary = summarise_posterior(result_mcmc.idata, level=settings.level)
        diag = result_mcmc.diagnostics
        _log(f"pymc {model}: {prepared.note()}; {settings.sampler.sampler}, seed {model_seed}, "
             f"{result_mcmc.attempts} attempt(s), max r_hat {diag.max_r_hat:.4f}, min ess_bulk {diag.min_ess_bulk:.0f}")
        d = prepared.data
        levels = ("client",) + (("therapist",) if bspec.therapist else ()) + (("case",) if bspec.case else ())
        n_groups = {g: d[g].nunique() for g in levels}
        out[model] = (summary, result_mcmc.idata, prepared, n_groups)
    return out


def lagged_latent_model(frame: pd.DataFrame, settings: SessionDataset, seed: int):
    """The ``lagged_latent`` model of one dataset (:mod:`alliancemeta.sessions.dsem`) through the one MCMC path
    with ``sessions_bayes.lagged_latent_scale`` times the draws; returns ``(fit, summary, note)`` or None when
    ``sessions.NAME.lagged_latent`` is false.  Data that cannot support it (too few consecutive sessions) stop the
    rule with the reason, as a failed ``within_between`` or ``lagged`` model does."""
    if not settings.lagged_latent:
        _log("pymc lagged_latent: not fitted (sessions.NAME.lagged_latent: false)")
        return None
    model_seed = derive_seed(seed, f"sessions/{settings.dataset.name}/lagged_latent")
    label = f"{settings.dataset.label}: Bayesian lagged_latent model"
    fit = fit_lagged_latent(frame, outcome_lower_is_better=settings.outcome_lower_is_better, seed=model_seed,
                            settings=settings.lagged_latent_sampler, detrend=settings.detrend,
                            random_slopes=settings.random_slopes, label=label)  # fmt: skip
    summary = lagged_latent_summary(fit.idata, settings.level)
    note = (f"{fit.n_rows} rows of {fit.n_clients} clients on {fit.n_cells} client-sessions ({fit.n_missed_sessions} "
            f"missed sessions); {fit.n_imputed_alliance} alliance and {fit.n_imputed_outcome} outcome values imputed; "
            f"latent client levels{' and trends' if fit.detrend else ''}; time centred at session "
            f"{fit.time_centre:.4g}")  # fmt: skip
    d = fit.diagnostics
    _log(f"pymc lagged_latent: {note}; {fit.backend}, seed {model_seed}, {fit.attempts} attempt(s), max r_hat "
         f"{d.max_r_hat:.4f}, min ess_bulk {d.min_ess_bulk:.0f}")
    return fit, summary, note


def lagged_latent_tables(fit, summary: pd.DataFrame, note: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of ``mixed_models.csv`` (terms) and of ``bayes_diagnostics.csv`` (terms and variance parameters)."""
    terms = summary[summary["name"].isin(LAGGED_LATENT_TERMS)]
    rows = pd.DataFrame({"model": "lagged_latent", "engine": "pymc", "term": terms["name"],
                         "estimate": terms["estimate"], "se": terms["se"], "ci_lb": terms["ci_lb"],
                         "ci_ub": terms["ci_ub"], "pval": np.nan, "df": np.nan, "note": note})  # fmt: skip
    d = fit.diagnostics
    diag = pd.DataFrame({"model": "lagged_latent", "parameter": summary["name"], "mean": summary["estimate"],
                         "sd": summary["se"], "eti_lb": summary["ci_lb"], "eti_ub": summary["ci_ub"],
                         "ess_bulk": summary["ess_bulk"], "ess_tail": summary["ess_tail"], "r_hat": summary["r_hat"],
                         "divergences": d.n_divergent,
                         "passed": (summary["r_hat"] <= R_HAT_MAX) & (summary["ess_bulk"] >= ESS_BULK_MIN)
                         & (d.n_divergent == 0)})  # fmt: skip
    return rows, diag


def _posterior_data(bayes: Mapping, lagged=None) -> az.InferenceData:
    """One InferenceData: ``within_between`` in the standard groups, the other models in groups prefixed by their
    name (``components_posterior``, ``split_sample_stats``, ...)."""
    main = bayes["within_between"][1]
    groups = {g: main[g] for g in main.groups()}
    for model, (_, idata, _, _) in bayes.items():
        if model != "within_between":
            groups.update({f"{model}_{g}": idata[g] for g in idata.groups()})
    if lagged is not None:  # the reported quantities only: the latent client values and imputed cells are large
        idata = lagged.idata
        groups["lagged_latent_posterior"] = idata.posterior[reported_names(idata)]
        groups["lagged_latent_sample_stats"] = idata.sample_stats
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*group is not defined in the InferenceData scheme.*")
        return az.InferenceData(**groups)


def write_session_models(sessions, mixed_models, variance_components, diagnostics, posterior, *,
                         settings: SessionDataset, seed: int) -> None:
    """Fit the REML mixed models (``mixedlm``) and the Bayesian models (``pymc``) and write ``mixed_models.csv``,
    ``variance_components.csv`` (both engines), the sampler diagnostics and the posteriors (ArviZ netCDF).

    ``seed`` is the config seed; the dataset's ``within_between`` model is sampled with
    ``derive_seed(seed, f"sessions/{name}")`` and the others with ``f"sessions/{name}/{model}"``, each through
    :func:`alliancemeta.core.mcmc.fit` (diagnostics, one retry, then a clear stop with nothing written).
    """
    frame = read_session_table(sessions)
    if "therapist" in frame.columns and not has_therapist(frame):
        _log(f"note: {frame['therapist'].nunique()} therapist(s) are too few for a therapist level "
             f"(at least {MIN_THERAPISTS} needed); therapists are ignored by the models")  # fmt: skip
    decomposed, cov = prepare_sessions(frame, settings)
    _log(f"session time centred at session {session_centre(frame):.4f} (the mean session number); covariates: "
         f"{', '.join(cov.terms) or 'none'}; detrend {settings.detrend}, random slopes {settings.random_slopes}")
    fits, unavailable = fit_session_models(decomposed, detrend=settings.detrend, random_slopes=settings.random_slopes,
                                           covariates=cov.terms, level=settings.level)  # fmt: skip
    for result in fits.values():
        _log_fit(result)
    for u in unavailable:
        _log(f"mixedlm {u.model}: not applicable ({u.reason})")
    bayes = bayes_models(fits, settings, seed)
    lagged = lagged_latent_model(frame, settings, seed)
    table = pd.concat([mixed_models_table(fits)] + [bayes_table_rows(s, m, p.note()) for m, (s, _, p, _) in
                                                     bayes.items()], ignore_index=True)  # fmt: skip
    variances = pd.concat([variance_components_table(fits)] + [
        _bayes_variance_rows(s, m, int(p.data["y"].notna().sum()), g) for m, (s, _, p, g) in bayes.items()
    ], ignore_index=True)  # fmt: skip
    diag = pd.concat([diagnostics_table(s, m) for m, (s, _, _, _) in bayes.items()], ignore_index=True)
    if lagged is not None:
        ll_rows, ll_diag = lagged_latent_tables(*lagged)
        table = pd.concat([table, ll_rows], ignore_index=True)
        diag = pd.concat([diag, ll_diag], ignore_index=True)
    idata = _posterior_data(bayes, None if lagged is None else lagged[0])
    with atomic_path(posterior) as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    write_csv(table, mixed_models, MIXED_MODEL_COLUMNS)
    write_csv(variances, variance_components, VARIANCE_COLUMNS)
    write_csv(diag, diagnostics, DIAGNOSTIC_COLUMNS)


def write_session_descriptives(sessions, descriptives, ruptures, client_level, rupture_outcome, *,
                               settings: SessionDataset, seed: int) -> None:
    """Write ``descriptives.csv``, ``ruptures.csv``, ``rupture_outcome.csv`` and ``client_level.csv``; the
    regression-to-the-mean null of the ruptures draws from ``derive_seed(seed, f"sessions/{name}/ruptures")``."""
    frame = read_session_table(sessions)
    groups = list(settings.groups)
    write_csv(descriptives_table(frame, groups, settings.alliance_max), descriptives, DESCRIPTIVE_COLUMNS)
    null_seed = derive_seed(seed, f"sessions/{settings.dataset.name}/ruptures")
    rule_settings = settings.ruptures
    rupture_rows, episodes, rule, null = ruptures_table(frame, rule_settings.reliability, rule_settings.repair_within,
                                                        null_seed)  # fmt: skip
    summary = rupture_rows[rupture_rows["kind"] == "summary"].iloc[0]
    _log(f"ruptures: reliable-change threshold {rule.threshold:.4f} (SD of first ratings {rule.sd:.4f}, reliability "
         f"{rule.reliability}, S_diff {rule.se_diff:.4f}); {summary['n_episodes']} episodes in "
         f"{summary['n_clients_with_episode']} of {summary['n_clients']} clients assessed")  # fmt: skip
    _log(f"ruptures: repaired share {null.observed_share:.3f} vs {null.null_share:.3f} under the "
         f"regression-to-the-mean null (AR(1) rho {null.rho:.3f}, SD {null.sd_within:.3f}; {len(null.counts)} "
         f"replicates, seed {null_seed}); one-sided Monte-Carlo p = {null.pval:.3f}")  # fmt: skip
    write_csv(rupture_rows, ruptures, RUPTURE_COLUMNS)
    outcome, method = rupture_outcome_table(frame, episodes, settings.outcome_lower_is_better, settings.level)
    _log(f"rupture_outcome: {method}, {int(outcome['n'].iloc[0])} clients")
    write_csv(outcome, rupture_outcome, RUPTURE_OUTCOME_COLUMNS)
    write_csv(client_level_table(frame, settings.outcome_lower_is_better, groups, settings.level, settings.covariates),
              client_level, CLIENT_LEVEL_COLUMNS)  # fmt: skip


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
