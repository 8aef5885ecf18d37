"""The Bayesian stage end to end: moderator designs, all models for one dataset, the written outputs."""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.errors import SamplingError
from alliancemeta.core.mcmc import ESS_BULK_MIN, R_HAT_MAX
from alliancemeta.core.settings import BayesSettings, Dataset, validate_config
from alliancemeta.pipeline import bayes as stage
from alliancemeta.pipeline.bayes import (
    BAYES_COLUMNS,
    robma_cluster,
    write_bayes,
    write_model_averaging,
    write_posterior_figure,
    write_prior_sensitivity,
    write_robma_sensitivity,
)
from alliancemeta.studies.bayes.averaging import AVERAGING_COLUMNS
from alliancemeta.studies.bayes.quadrature import SENSITIVITY_COLUMNS
from alliancemeta.studies.bayes.robma import ROBMA_COLUMNS, ROBMA_SENSITIVITY_COLUMNS
from alliancemeta.studies.bayes.summary import COMPARISON_COLUMNS
from alliancemeta.studies.regression import design_matrix

BAYES = BayesSettings.from_config(validate_config({"bayes": {"draws": 1000, "tune": 1000, "chains": 4}}))
DEMO = Dataset("demo_synthetic", True)


def dataset(seed=5, n_clusters=16):
    """A small processed study table: effects nested in studies, three kinds of moderator."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_clusters)
    study_id = np.repeat([f"S{j:02d}" for j in range(n_clusters)], sizes)
    k = study_id.size
    rater = rng.choice(["client", "observer", "therapist"], k)
    dose = rng.normal(12, 4, k)
    dose[[1, 5]] = np.nan  # incomplete numeric moderator: its model drops two rows
    n = rng.integers(30, 250, k)
    _, codes = np.unique(study_id, return_inverse=True)
    theta = 0.29 - 0.05 * (rater == "therapist") + rng.normal(0, 0.1, n_clusters)[codes] + rng.normal(0, 0.05, k)
    yi = rng.normal(theta, 1 / np.sqrt(n - 3))
    return pd.DataFrame({"study": [f"Effect {i + 1}" for i in range(k)], "yi": yi, "vi": 1.0 / (n - 3),
                         "study_id": study_id, "rater": rater, "dose": dose, "setting": "outpatient"})


def test_centred_designs_map_back_to_the_uncentred_coefficients():
    frame = dataset()
    d = design_matrix(frame, ["rater"])
    Xc, T = d.centred()
    np.testing.assert_array_equal(Xc, d.X)  # dummies are not centred
    np.testing.assert_array_equal(T, np.eye(3))
    num = design_matrix(frame, ["dose"])
    Xc, T = num.centred()
    assert Xc[:, 1].mean() == pytest.approx(0.0, abs=1e-12)
    b_c = np.array([0.3, -0.02])
    np.testing.assert_allclose(num.X @ (T @ b_c), Xc @ b_c, rtol=1e-14)  # same fitted values


def test_nothing_is_written_when_a_model_fails(tmp_path, monkeypatch):
    studies = tmp_path / "studies.csv"
    dataset().to_csv(studies, index=False)
    table = tmp_path / "tables" / "bayes.csv"
    table.parent.mkdir()
    table.write_text("an earlier good result\n")

    def failing(*args, **kwargs):
        raise SamplingError("random-effects model: MCMC did not converge")

    monkeypatch.setattr(stage, "fit", failing)
    with pytest.raises(SamplingError, match="did not converge"):
        write_bayes(studies, table, tmp_path / "tables" / "cmp.csv", tmp_path / "posterior.nc", bayes=BAYES,
                    seed=1, moderators=[], dataset=DEMO)
    assert table.read_text() == "an earlier good result\n"
    assert not (tmp_path / "posterior.nc").exists() and not (tmp_path / "tables" / "cmp.csv").exists()


@pytest.mark.slow
def test_write_bayes_end_to_end(tmp_path):
    frame = dataset()
    studies = tmp_path / "studies.csv"
    frame.to_csv(studies, index=False)
    out = {"table": tmp_path / "tables" / "bayes.csv", "comparison": tmp_path / "tables" / "model_comparison.csv",
           "posterior": tmp_path / "posterior.nc"}
    write_bayes(studies, out["table"], out["comparison"], out["posterior"], bayes=BAYES, seed=42,
                moderators=["rater", "dose", "setting"], dataset=DEMO)
    table = pd.read_csv(out["table"])
    assert list(table.columns) == list(BAYES_COLUMNS)
    assert list(table["parameter"].iloc[:4]) == ["mu", "tau", "r", "theta_new"]
    assert {"rater:intrcpt", "rater:raterobserver", "rater:ratertherapist", "rater:tau", "dose:dose",
            "three_level:mu", "three_level:sigma_study", "three_level:sigma_within"} <= set(table["parameter"])
    assert not table["parameter"].str.startswith("setting").any()
    assert (table["r_hat"] <= R_HAT_MAX).all() and (table["ess_bulk"] >= ESS_BULK_MIN).all()
    assert (table["n_divergent"] == 0).all()
    assert table.loc[table["parameter"].str.startswith("dose:"), "k"].eq(len(frame) - 2).all()
    # every MCMC summary with an exact counterpart agrees within Monte-Carlo error
    exact = table.dropna(subset=["exact_mean"])
    assert len(exact) == len(table) - 5  # all but the five three-level rows
    z = (exact["mean"] - exact["exact_mean"]) / exact["mcse_mean"]
    assert (z.abs() < 4.5).all(), exact.loc[z.abs() >= 4.5, "parameter"].tolist()

    comparison = pd.read_csv(out["comparison"])
    assert list(comparison.columns) == list(COMPARISON_COLUMNS)
    effect = comparison[comparison["unit"] == "effect"]
    assert set(effect["model"]) == {"random_effects", "fixed_effect", "meta_regression:rater"}
    study = comparison[comparison["unit"] == "study"]
    assert set(study["model"]) == {"random_effects", "fixed_effect", "three_level"}
    assert (study["k"] == frame["study_id"].nunique()).all()

    idata = az.from_netcdf(out["posterior"], engine="h5netcdf")
    assert {"posterior", "log_likelihood", "sample_stats", "observed_data", "constant_data"} <= set(idata.groups())
    assert idata.log_likelihood["y"].sizes["study"] == len(frame)

    pdf, png = tmp_path / "figures" / "posterior.pdf", tmp_path / "figures" / "posterior.png"
    write_posterior_figure(studies, out["posterior"], pdf, png, bayes=BAYES, dataset=DEMO)
    assert pdf.stat().st_size > 5_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prior_sensitivity_table(tmp_path):
    frame = pd.read_csv(Path(__file__).resolve().parents[3] / "data" / "raw" / "molloy2014.csv")
    studies = tmp_path / "studies.csv"
    pd.DataFrame({"study": frame["study"], "yi": np.arctanh(frame["r"]), "vi": 1 / (frame["n"] - 3)}).to_csv(
        studies, index=False)
    out = tmp_path / "tables" / "prior_sensitivity.csv"
    write_prior_sensitivity(studies, out, bayes=BAYES)
    table = pd.read_csv(out)
    assert list(table.columns) == list(SENSITIVITY_COLUMNS)
    # the configured prior equals the first sensitivity prior, so it is listed once: 4 tau + 1 mu prior
    assert table["prior"].nunique() == 5
    assert table["prior_tau"].nunique() >= 4
    assert table.groupby("prior")["parameter"].apply(list).map(tuple).unique().tolist() == [
        ("mu", "tau", "r", "theta_new")]
    informative = table[table["prior_mu"].str.startswith("Normal(0.2855")]
    assert len(informative) == 4
    # the informative prior pulls mu towards .2855 (molloy's own estimate is ~.15)
    base = table[table["prior"] == table["prior"].iloc[0]].set_index("parameter")
    assert informative.set_index("parameter").loc["mu", "mean"] > base.loc["mu", "mean"] + 0.05



#: A reduced RoBMA ensemble (one weight function and PET: 12 models) keeps the stage tests to seconds.
SMALL_ROBMA = {"weightfunctions": [{"side": "one.sided", "steps": [0.05]}], "components": ["selection", "pet"],
               "sensitivity": {"mu N(0, 1)": {"prior_mu": {"dist": "normal", "mu": 0, "sigma": 1}}}}


def robma_bayes(**robma) -> BayesSettings:
    return BayesSettings.from_config(validate_config({"bayes": {"robma": {**SMALL_ROBMA, **robma}}}))


def test_model_averaging_table_and_figure_three_level(tmp_path):
    frame = dataset(n_clusters=8)
    studies = tmp_path / "studies.csv"
    frame.to_csv(studies, index=False)
    averaging = tmp_path / "tables" / "bayes_model_averaging.csv"
    pdf, png = tmp_path / "figures" / "robma.pdf", tmp_path / "figures" / "robma.png"
    write_model_averaging(studies, averaging, pdf, png, bayes=robma_bayes(), seed=3, dataset=DEMO)
    table = pd.read_csv(averaging)
    assert list(table.columns) == list(ROBMA_COLUMNS)
    assert list(table.columns[: len(AVERAGING_COLUMNS)]) == list(AVERAGING_COLUMNS)
    assert table["model"].is_unique
    exact = table[~table["model"].str.startswith("robma:")]
    assert list(exact["model"][:4]) == ["fixed_null", "fixed", "random_null", "random"]
    models = table[table["model"].str.count(":").eq(2) & ~table["model"].str.contains("inclusion")]
    assert len(models) == 12 and models["post_prob"].sum() == pytest.approx(1.0, abs=1e-12)
    assert {"robma:inclusion:bias", "robma:model_averaged", "robma:model_averaged_unadjusted"} <= set(table["model"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.stat().st_size > 5_000


def test_model_averaging_switched_off_keeps_the_exact_rows(tmp_path):
    frame = dataset(n_clusters=6)
    studies = tmp_path / "studies.csv"
    frame.to_csv(studies, index=False)
    averaging = tmp_path / "bayes_model_averaging.csv"
    write_model_averaging(studies, averaging, tmp_path / "r.pdf", tmp_path / "r.png", bayes=robma_bayes(enabled=False),
                          seed=3, dataset=DEMO)  # fmt: skip
    table = pd.read_csv(averaging)
    assert not table["model"].str.startswith("robma:").any() and len(table) == 7


def test_robma_cluster_only_when_studies_group_effects():
    frame = dataset(n_clusters=6)
    assert robma_cluster(frame) is not None
    assert robma_cluster(frame.drop_duplicates("study_id")) is None
    assert robma_cluster(frame.drop(columns="study_id")) is None


@pytest.mark.slow
def test_robma_sensitivity_table(tmp_path):
    frame = dataset(n_clusters=8).drop(columns="study_id")
    studies = tmp_path / "studies.csv"
    frame.to_csv(studies, index=False)
    out = tmp_path / "prior_sensitivity_robma.csv"
    write_robma_sensitivity(studies, out, bayes=robma_bayes(), seed=3, dataset=DEMO)
    table = pd.read_csv(out)
    assert list(table.columns) == list(ROBMA_SENSITIVITY_COLUMNS)
    assert list(table["prior"]) == ["default", "mu N(0, 1)"]
    assert list(table["models_refitted"]) == [12, 6]  # only the models with an effect use the mu prior
