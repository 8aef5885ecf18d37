"""The Bayesian within/between model (PyMC + nutpie) and the session figures.

Fast tests check the model's structure; the slow test samples a small simulated dataset through
the real entry points and checks diagnostics, agreement with REML and the written outputs.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.sessions import write_session_models
from alliancemeta.plots.sessions import write_session_figures
from alliancemeta.sessions.bayes import DIAGNOSTIC_COLUMNS, ESS_MIN, RHAT_MAX, build_within_between_model
from alliancemeta.sessions.data import decompose_alliance
from alliancemeta.sessions.models import MIXED_MODEL_COLUMNS, TERMS, VARIANCE_COLUMNS
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
    write_session_models(src, out["mm.csv"], out["vc.csv"], out["diag.csv"], out["posterior.nc"],
                         outcome_lower_is_better=True, seed=20261121)  # fmt: skip
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
    assert (diag["r_hat"] <= RHAT_MAX).all() and (diag["ess_bulk"] >= ESS_MIN).all()
    assert tuple(pd.read_csv(out["vc.csv"]).columns) == VARIANCE_COLUMNS
    idata = az.from_netcdf(out["posterior.nc"])
    assert idata.posterior["beta"].sizes["chain"] == 4

    figures = [tmp_path / f"{n}.{e}" for n in ("trajectories", "coefficients", "posterior") for e in ("pdf", "png")]
    write_session_figures(src, out["mm.csv"], out["posterior.nc"], *figures, outcome_lower_is_better=True,
                          dataset="small_synthetic")  # fmt: skip
    for path in figures:
        head = path.read_bytes()[:8]
        assert head.startswith(b"%PDF") if path.suffix == ".pdf" else head.startswith(b"\x89PNG")
