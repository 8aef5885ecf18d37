"""The Bayesian within/between model (PyMC + nutpie) and the session figures.

Fast tests check the model's structure; the slow test samples a small simulated dataset through
the real entry points and checks diagnostics, agreement with REML and the written outputs.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.mcmc import ESS_BULK_MIN, R_HAT_MAX
from alliancemeta.core.settings import Dataset, SamplerSettings, SessionDataset
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.sessions import (
    DIAGNOSTIC_COLUMNS,
    MIXED_MODEL_COLUMNS,
    VARIANCE_COLUMNS,
    write_session_figures,
    write_session_models,
)
from alliancemeta.sessions.bayes import build_within_between_model
from alliancemeta.sessions.data import decompose_alliance
from alliancemeta.sessions.models import TERMS
from alliancemeta.sessions.synthetic import simulate_sessions

#: With N(0, 1) priors on standardised coefficients and ~1000 sessions the likelihood dominates:
#: the posterior mean sits within a small fraction of a standard error of the REML estimate
#: (Monte Carlo error with ESS > 400 alone is < 0.05 SE).
POSTERIOR_VS_REML_SE = 0.3


def small():
    frame, truth = simulate_sessions(8, n_sites=2, n_therapists=10, n_clients=80)
    return frame, truth


def test_model_structure_and_finite_log_density():
    frame, _ = small()
    data = decompose_alliance(frame, True)
    terms = TERMS["within_between"]
    model = build_within_between_model(data, terms)
    assert list(model.coords["term"]) == list(terms)
    assert len(model.coords["client"]) == data["client"].nunique()
    assert len(model.coords["therapist"]) == data["therapist"].nunique()
    logp = model.compile_logp()(model.initial_point())
    assert np.isfinite(logp)
    names = {v.name for v in model.deterministics}
    assert {"beta", "sd_therapist", "sd_client", "sd_client_session", "sigma"} <= names


def test_model_without_therapists_or_slopes():
    frame, _ = small()
    data = decompose_alliance(frame.drop(columns="therapist"), True)
    terms = ("alliance_within", "alliance_between", "session")
    model = build_within_between_model(data, terms, random_slope=False)
    assert "therapist" not in model.coords
    assert {v.name for v in model.deterministics} == {"beta", "sd_client", "sigma"}
    assert np.isfinite(model.compile_logp()(model.initial_point()))


def test_beta_is_rescaled_to_the_data_scale():
    frame, _ = small()
    data = decompose_alliance(frame, True)
    terms = TERMS["within_between"]
    model = build_within_between_model(data, terms)
    beta_std = np.arange(1.0, len(terms) + 1)
    beta = model["beta"].eval({model["beta_std"]: beta_std})
    expected = beta_std * data["y"].std(ddof=0) / data[list(terms)].std(ddof=0).to_numpy()
    np.testing.assert_allclose(beta, expected, rtol=1e-12)


@pytest.mark.slow
def test_write_session_models_and_figures(tmp_path):
    frame, _ = small()
    src = tmp_path / "sessions.csv"
    write_csv(frame, src)
    out = {name: tmp_path / name for name in ("mm.csv", "vc.csv", "diag.csv", "posterior.nc")}
    sampler = SamplerSettings(500, 500, 4, "nutpie", 0.9, 0.99, "sessions_bayes")
    settings = SessionDataset(Dataset("small_synthetic", True), str(src), True, (), sampler, 0.95)
    write_session_models(src, out["mm.csv"], out["vc.csv"], out["diag.csv"], out["posterior.nc"],
                         settings=settings, seed=20261121)  # fmt: skip
    table = pd.read_csv(out["mm.csv"])
    assert tuple(table.columns) == MIXED_MODEL_COLUMNS
    assert set(table["engine"]) == {"mixedlm", "pymc"}
    bayes = table[table["engine"] == "pymc"].set_index("term")
    reml = table[(table["engine"] == "mixedlm") & (table["model"] == "within_between")].set_index("term")
    assert list(bayes.index) == list(reml.index)
    assert bayes["pval"].isna().all()
    gap = (bayes["estimate"] - reml["estimate"]).abs() / reml["se"]
    assert (gap < POSTERIOR_VS_REML_SE).all(), gap
    diag = pd.read_csv(out["diag.csv"])
    assert tuple(diag.columns) == DIAGNOSTIC_COLUMNS
    assert diag["passed"].all()
    assert (diag["r_hat"] <= R_HAT_MAX).all() and (diag["ess_bulk"] >= ESS_BULK_MIN).all()
    assert tuple(pd.read_csv(out["vc.csv"]).columns) == VARIANCE_COLUMNS
    idata = az.from_netcdf(out["posterior.nc"])
    assert idata.posterior["beta"].sizes["chain"] == 4

    outputs = {n: (tmp_path / f"{n}.pdf", tmp_path / f"{n}.png") for n in ("trajectories", "coefficients", "posterior")}
    write_session_figures(src, out["mm.csv"], out["posterior.nc"], outputs, settings=settings)
    for path in [p for pair in outputs.values() for p in pair]:
        head = path.read_bytes()[:8]
        assert head.startswith(b"%PDF") if path.suffix == ".pdf" else head.startswith(b"\x89PNG")
