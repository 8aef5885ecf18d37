"""The Bayesian session models (PyMC + nutpie) and the session figures.

Fast tests check the models' structure (levels, imputation, rescaling, a finite log density); the slow test samples a
small simulated dataset through the real entry point and checks diagnostics, agreement with REML and the written
outputs.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.mcmc import ESS_BULK_MIN, R_HAT_MAX
from alliancemeta.core.settings import Dataset, RuptureSettings, SamplerSettings, SessionDataset, scaled
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.sessions import (
    DIAGNOSTIC_COLUMNS,
    MIXED_MODEL_COLUMNS,
    VARIANCE_COLUMNS,
    write_session_figures,
    write_session_models,
)
from alliancemeta.sessions.bayes import build_session_model, diagnosed, prepare, spec_from_model
from alliancemeta.sessions.data import add_covariates, decompose_alliance
from alliancemeta.sessions.dsem import TERMS as LAGGED_LATENT_TERMS
from alliancemeta.sessions.models import model_specs
from alliancemeta.sessions.synthetic import SessionSimulationParameters, simulate_sessions

#: With N(0, 1) priors on standardised coefficients and ~1000 sessions the likelihood dominates: the posterior mean
#: sits within a fraction of a standard error of the REML estimate of the same model without random alliance slopes
#: (Monte Carlo error with ESS > 400 alone is < 0.05 SE); the Bayesian model's random slopes are independent, the
#: REML model's correlated, which moves estimates by a further small fraction of an SE.
POSTERIOR_VS_REML_SE = 0.35


def settings_for(path, **changes) -> SessionDataset:
    sampler = SamplerSettings(500, 500, 4, "nutpie", 0.9, 0.99, "sessions_bayes")
    base = SessionDataset(Dataset("small_synthetic", True), str(path), True, (), sampler, 0.95, True, True, None,
                          ("age",), RuptureSettings(0.85, 3), False, scaled(sampler, 4))  # fmt: skip
    return base._replace(**changes)


@pytest.fixture(scope="module")
def specs():
    frame, _ = simulate_sessions(8, n_sites=2, n_therapists=10, n_clients=80)
    d, cov = add_covariates(decompose_alliance(frame, True), ["age"])
    return model_specs(d, covariates=cov.terms)


def bayes_spec(specs, model, **kw):
    s = specs[model]
    return spec_from_model(model, s.data, s.fixed, therapist=s.upper.group == "therapist", case=s.upper.group == "case",
                           **kw)


def observed_rows(pm_model, name: str) -> int:
    """Rows of an observed variable's data (no compilation: the observed values are constants)."""
    return pm_model.rvs_to_values[pm_model[name]].data.shape[0]


@pytest.mark.parametrize("model", ["within_between", "components", "split"])
def test_models_build_with_their_levels(specs, model):
    """Structure only: compiling a log density with PyTensor's C backend takes minutes for the LKJ graph on a busy
    machine; the sampler compiles with numba, and the slow test samples every model."""
    spec = bayes_spec(specs, model)
    pm_model, prepared = build_session_model(spec)
    assert list(pm_model.coords["term"]) == list(spec.terms)
    assert len(pm_model.coords["client"]) == prepared.data["client"].nunique()
    assert ("case" in pm_model.coords) == (model == "split")
    assert ("therapist" in pm_model.coords) == (model != "split")  # split: the case is the upper level, as in REML
    names = {v.name for v in pm_model.deterministics}
    assert {"beta", "sd_client", "sd_client_session", "sigma"} <= names
    assert ("sd_case" in names) == (model == "split") and ("sd_therapist" in names) == (model != "split")
    assert set(diagnosed(pm_model)) == {"beta"} | {n for n in names if n.startswith("sd_") or n == "sigma"}
    assert observed_rows(pm_model, "y_std") == int(prepared.data["y"].notna().sum())


@pytest.mark.slow
def test_log_density_is_finite(specs):
    pm_model, _ = build_session_model(bayes_spec(specs, "within_between"))
    assert np.isfinite(pm_model.compile_logp()(pm_model.initial_point()))


def test_levels_of_the_terms(specs):
    split = bayes_spec(specs, "split")
    assert split.obs_terms == ("alliance_own_within",)
    assert split.case_terms == ("alliance_split", "alliance_therapist") and split.therapist_terms == ()
    assert set(split.client_terms) == {"alliance_own_between", "age"}
    comp = bayes_spec(specs, "components")
    assert comp.obs_terms == ("alliance_goal_within", "alliance_task_within", "alliance_bond_within")
    assert comp.slopes == ()  # the pipeline's Bayesian models have random session slopes only


def test_blank_cells_imputed_or_integrated_out(specs):
    spec = bayes_spec(specs, "within_between")
    prepared = prepare(spec)
    d = spec.data
    x_na, y_na = d["alliance_within"].isna(), d["y"].isna()
    assert prepared.n_rows == int((~(x_na & y_na)).sum())  # rows with neither are left out
    assert prepared.n_alliance_imputed == int((x_na & ~y_na).sum()) > 0
    assert prepared.n_outcome_missing == int((y_na & ~x_na).sum()) > 0
    pm_model, _ = build_session_model(spec)
    assert len(pm_model.coords["missing_row"]) == prepared.n_alliance_imputed
    assert pm_model.named_vars_to_dims["x_missing"] == ("missing_row",)
    assert observed_rows(pm_model, "y_std") == prepared.n_rows - prepared.n_outcome_missing  # observed only
    assert observed_rows(pm_model, "x_observed") == prepared.n_rows - prepared.n_alliance_imputed
    comp, _ = build_session_model(bayes_spec(specs, "components"))
    assert comp.named_vars_to_dims["x_missing"] == ("missing_row", "obs_term")  # imputed jointly (LKJ covariance)
    assert list(comp.coords["obs_term"]) == ["alliance_goal_within", "alliance_task_within", "alliance_bond_within"]


def test_beta_is_rescaled_to_the_data_scale(specs):
    spec = bayes_spec(specs, "within_between")
    pm_model, prepared = build_session_model(spec)
    beta_std = np.arange(1.0, len(spec.terms) + 1)
    beta = pm_model["beta"].eval({pm_model["beta_std"]: beta_std})
    d = prepared.data
    expected = beta_std * d["y"].std(ddof=0) / d[list(spec.terms)].std(ddof=0).to_numpy()
    np.testing.assert_allclose(beta, expected, rtol=1e-12)


def test_random_alliance_slope_on_request(specs):
    pm_model, _ = build_session_model(bayes_spec(specs, "within_between", slopes=("alliance_within",)))
    assert "sd_client_alliance_within" in {v.name for v in pm_model.deterministics}


@pytest.mark.slow
def test_write_session_models_and_figures(tmp_path):
    # no blank cells: the Bayesian models impute blank alliance cells where REML drops the rows, and the comparison
    # below is about the same data
    complete = SessionSimulationParameters(p_missing_alliance=0.0, p_missing_outcome=0.0)
    frame, truth = simulate_sessions(8, n_sites=2, n_therapists=10, n_clients=80, params=complete)
    src = tmp_path / "sessions.csv"
    write_csv(frame, src)
    out = {name: tmp_path / name for name in ("mm.csv", "vc.csv", "diag.csv", "posterior.nc")}
    settings = settings_for(src, random_slopes=False, lagged_latent=True)
    write_session_models(src, out["mm.csv"], out["vc.csv"], out["diag.csv"], out["posterior.nc"],
                         settings=settings, seed=20261121)  # fmt: skip
    table = pd.read_csv(out["mm.csv"])
    assert tuple(table.columns) == MIXED_MODEL_COLUMNS
    assert set(table["engine"]) == {"mixedlm", "pymc"}
    assert set(table.loc[table["engine"] == "pymc", "model"]) == {"within_between", "components", "split",
                                                                   "lagged_latent"}
    latent = table[table["model"] == "lagged_latent"].set_index("term")
    assert set(latent.index) == set(LAGGED_LATENT_TERMS) and latent["pval"].isna().all()
    assert latent["note"].str.contains("latent client levels").all()
    within = latent.loc["alliance_within"]  # its estimand: the truth file's alliance_within_lag
    assert abs(within["estimate"] - truth["reported"]["alliance_within_lag"]) < 3 * within["se"]
    for model in ("within_between", "components", "split"):
        bayes = table[(table["engine"] == "pymc") & (table["model"] == model)].set_index("term")
        reml = table[(table["engine"] == "mixedlm") & (table["model"] == model)].set_index("term")
        assert set(bayes.index) == set(reml.index)
        assert bayes["pval"].isna().all() and bayes["df"].isna().all()
        gap = (bayes["estimate"] - reml.loc[bayes.index, "estimate"]).abs() / reml.loc[bayes.index, "se"]
        assert (gap < POSTERIOR_VS_REML_SE).all(), (model, gap)
    diag = pd.read_csv(out["diag.csv"])
    assert tuple(diag.columns) == DIAGNOSTIC_COLUMNS
    assert diag["passed"].all()
    assert (diag["r_hat"] <= R_HAT_MAX).all() and (diag["ess_bulk"] >= ESS_BULK_MIN).all()
    assert tuple(pd.read_csv(out["vc.csv"]).columns) == VARIANCE_COLUMNS
    idata = az.from_netcdf(out["posterior.nc"])
    assert idata.posterior["beta"].sizes["chain"] == 4
    assert "split_posterior" in idata.groups() and "components_posterior" in idata.groups()
    stored = set(idata["lagged_latent_posterior"].data_vars)  # the reported quantities, not the per-client values
    assert set(LAGGED_LATENT_TERMS) <= stored and "sd_alliance_innovation" in stored and "level_alliance" not in stored
    assert "lagged_latent" in set(diag["model"])

    outputs = {n: (tmp_path / f"{n}.pdf", tmp_path / f"{n}.png") for n in ("trajectories", "coefficients", "posterior")}
    write_session_figures(src, out["mm.csv"], out["posterior.nc"], outputs, settings=settings)
    for path in [p for pair in outputs.values() for p in pair]:
        head = path.read_bytes()[:8]
        assert head.startswith(b"%PDF") if path.suffix == ".pdf" else head.startswith(b"\x89PNG")
