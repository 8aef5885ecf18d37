"""Session-level analyses: within- and between-client alliance effects, lags, ruptures, sites.

Sessions are nested in clients, clients in therapists and therapists in sites.  The analyses
(SPEC §1, §5) and where their maths lives:

- :mod:`alliancemeta.sessions.data`: reading, the sign convention and the alliance decomposition
  into within-client, between-client and therapist components;
- :mod:`alliancemeta.sessions.models`: REML mixed models ``within_between``, ``lagged`` and
  ``therapist`` (statsmodels MixedLM; checked against lme4);
- :mod:`alliancemeta.sessions.bayes`: the Bayesian ``within_between`` model (PyMC + nutpie);
- :mod:`alliancemeta.sessions.descriptives`: descriptives, rupture-repair episodes, early alliance
  vs residualised outcome change;
- :mod:`alliancemeta.sessions.sites`: two-stage pooling of per-site within-client effects.

**Sign convention.**  When ``outcome_lower_is_better`` the outcome is multiplied by -1 before
modelling, so every reported coefficient and correlation reads "positive = a stronger alliance
goes with a better outcome" (SPEC §4), the ``session`` coefficient is positive when clients improve
and ``outcome_lag`` keeps its sign.  Descriptive tables and trajectory plots show the raw outcome.

This module holds the entry points used by the workflow scripts: each reads the processed
session table, computes, and writes its outputs atomically.
"""

from __future__ import annotations

import os
import sys

import pandas as pd

from alliancemeta.core.tables import atomic_path, write_csv
from alliancemeta.sessions.bayes import (
    DEFAULT_SETTINGS,
    DIAGNOSTIC_COLUMNS,
    bayes_table_rows,
    build_within_between_model,
    diagnostics_table,
    sample_model,
    summarise_posterior,
)
from alliancemeta.sessions.data import MIN_THERAPISTS, decompose_alliance, has_therapist, read_session_table
from alliancemeta.sessions.descriptives import (
    CLIENT_LEVEL_COLUMNS,
    DESCRIPTIVE_COLUMNS,
    RUPTURE_COLUMNS,
    client_level_table,
    descriptives_table,
    ruptures_table,
)
from alliancemeta.sessions.models import (
    MIXED_MODEL_COLUMNS,
    VARIANCE_COLUMNS,
    fit_session_models,
    mixed_models_table,
    variance_components_table,
)
from alliancemeta.sessions.sites import SITE_COLUMNS, site_effects_table

__all__ = [
    "decompose_alliance",
    "fit_session_models",
    "read_session_table",
    "write_session_descriptives",
    "write_session_models",
    "write_site_effects",
]


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def write_session_models(
    sessions: str | os.PathLike,
    mixed_models: str | os.PathLike,
    variance_components: str | os.PathLike,
    diagnostics: str | os.PathLike,
    posterior: str | os.PathLike,
    *,
    outcome_lower_is_better: bool,
    seed: int,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    level: float = 0.95,
) -> None:
    """Fit the mixed models (``mixedlm``) and the Bayesian ``within_between`` model (``pymc``) and
    write ``mixed_models.csv``, ``variance_components.csv`` (both engines), the sampler diagnostics
    and the posterior (ArviZ netCDF).  Sampler settings default to
    :data:`alliancemeta.sessions.bayes.DEFAULT_SETTINGS`."""
    frame = read_session_table(sessions)
    if "therapist" in frame.columns and not has_therapist(frame):
        _log(f"note: {frame['therapist'].nunique()} therapist(s) are too few for a therapist level "
             f"(at least {MIN_THERAPISTS} needed); therapists are ignored by the models")  # fmt: skip
    decomposed = decompose_alliance(frame, outcome_lower_is_better)
    fits = fit_session_models(decomposed, level=level)
    for fit in fits.values():
        _log(
            f"{fit.model}: n={fit.n_obs}, REML logLik {fit.reml_loglik:.6f}, {fit.iterations} iterations, "
            f"gradient {fit.gradient:.2e}, random slope {fit.random_slope}"
        )
        for note in fit.notes:
            _log(f"  note: {note}")
    wb = fits["within_between"]
    settings = {**DEFAULT_SETTINGS, **{k: v for k, v in (("draws", draws), ("tune", tune), ("chains", chains))
                                        if v is not None}}  # fmt: skip
    model = build_within_between_model(decomposed, wb.terms[1:], random_slope=wb.random_slope)
    idata = sample_model(model, seed=seed, **settings)
    summary = summarise_posterior(idata, level=level)
    _log(f"pymc within_between: {settings}, seed {seed}, diagnostics {'passed' if summary.ok else 'FAILED'}")
    table = pd.concat([mixed_models_table(fits), bayes_table_rows(summary)], ignore_index=True)
    write_csv(table, mixed_models, MIXED_MODEL_COLUMNS)
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
    write_csv(pd.concat([variances, bayes_sd], ignore_index=True), variance_components, VARIANCE_COLUMNS)
    write_csv(diagnostics_table(summary), diagnostics, DIAGNOSTIC_COLUMNS)
    with atomic_path(posterior) as tmp:
        idata.to_netcdf(str(tmp))


def write_session_descriptives(
    sessions: str | os.PathLike,
    descriptives: str | os.PathLike,
    ruptures: str | os.PathLike,
    client_level: str | os.PathLike,
    *,
    outcome_lower_is_better: bool,
    groups=(),
    level: float = 0.95,
) -> None:
    """Write ``descriptives.csv``, ``ruptures.csv`` and ``client_level.csv``."""
    frame = read_session_table(sessions)
    groups = list(groups or ())
    write_csv(descriptives_table(frame, groups), descriptives, DESCRIPTIVE_COLUMNS)
    rupture_rows = ruptures_table(frame)
    summary = rupture_rows.iloc[-1]
    _log(f"ruptures: {summary['n_episodes']} episodes in {summary['n_clients_with_episode']} of "
         f"{summary['n_clients']} clients assessed")  # fmt: skip
    write_csv(rupture_rows, ruptures, RUPTURE_COLUMNS)
    write_csv(client_level_table(frame, outcome_lower_is_better, groups, level), client_level, CLIENT_LEVEL_COLUMNS)


def write_site_effects(
    sessions: str | os.PathLike,
    table: str | os.PathLike,
    *,
    outcome_lower_is_better: bool,
    method: str = "REML",
    test: str = "knha",
    level: float = 0.95,
) -> None:
    """Write ``site_effects.csv`` (two-stage pooling over sites; needs a ``site`` column)."""
    frame = read_session_table(sessions)
    if "site" not in frame.columns:
        raise ValueError(f"{sessions}: two-stage pooling needs a 'site' column")
    decomposed = decompose_alliance(frame, outcome_lower_is_better)
    _log(f"site effects: {frame['site'].nunique()} sites, {frame['client'].nunique()} clients")
    write_csv(site_effects_table(decomposed, method=method, test=test, level=level), table, SITE_COLUMNS)
