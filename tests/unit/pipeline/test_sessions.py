"""The sessions stage: settings, two-stage pooling over sites and the writers that need no sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.errors import ConfigError
from alliancemeta.core.settings import Dataset, RuptureSettings, SamplerSettings, SessionDataset, load_settings, scaled
from alliancemeta.core.tables import write_csv
from alliancemeta.pipeline.sessions import (
    CLIENT_LEVEL_COLUMNS,
    DESCRIPTIVE_COLUMNS,
    RUPTURE_COLUMNS,
    RUPTURE_OUTCOME_COLUMNS,
    SITE_COLUMNS,
    site_effects_table,
    write_session_descriptives,
    write_site_effects,
)
from alliancemeta.sessions.data import decompose_alliance
from alliancemeta.sessions.synthetic import simulate_sessions
from alliancemeta.studies.random_effects import random_effects


def _settings(path) -> SessionDataset:
    sampler = SamplerSettings(100, 100, 2, "nutpie", 0.9, 0.99, "sessions_bayes")
    return SessionDataset(Dataset("test_synthetic", True), str(path), True, ("gender", "format"), sampler, 0.95,
                          True, True, 15.0, ("age",), RuptureSettings(0.85, 3), False, scaled(sampler, 4))  # fmt: skip


def test_session_settings_from_the_schema_defaults():
    settings = load_settings({"sessions": {"x": {"path": "x.csv"}}}).sessions["x"]
    assert (settings.detrend, settings.random_slopes, settings.alliance_max, settings.covariates) == (
        True, True, None, ())  # fmt: skip
    assert settings.ruptures == RuptureSettings(0.85, 3)
    assert settings.lagged_latent and settings.lagged_latent_sampler.draws == 4 * settings.sampler.draws
    custom = load_settings({"sessions": {"x": {"path": "x.csv", "alliance_max": 7, "covariates": ["age"],
                                               "ruptures": {"reliability": 0.9}}}}).sessions["x"]  # fmt: skip
    assert custom.alliance_max == 7.0 and custom.covariates == ("age",) and custom.ruptures == RuptureSettings(0.9, 3)
    with pytest.raises(ConfigError, match="reliability"):
        load_settings({"sessions": {"x": {"path": "x.csv", "ruptures": {"reliability": 1.0}}}})


@pytest.fixture(scope="module")
def frame():
    data, truth = simulate_sessions(21, n_sites=3, n_therapists=9, n_clients=90)
    return data, truth


@pytest.fixture(scope="module")
def table(frame):
    return site_effects_table(decompose_alliance(frame[0], True), "REML", "knha", 0.95)


def test_stage_one_and_two_rows(frame, table):
    data, _ = frame
    assert tuple(table.columns) == SITE_COLUMNS
    for model in ("within_between", "lagged"):
        rows = table[table["model"] == model]
        assert list(rows["site"]) == ["s1", "s2", "s3", "pooled"]
        sites, pooled = rows.iloc[:-1], rows.iloc[-1]
        assert sites["weight"].sum() == pytest.approx(100.0)
        assert pooled["n_clients"] <= data["client"].nunique()
        ref = random_effects(sites["estimate"].to_numpy(), sites["se"].to_numpy() ** 2, method="REML", test="knha")
        assert pooled["estimate"] == pytest.approx(ref.estimate)
        assert pooled["tau2"] == pytest.approx(ref.tau2)
        assert pooled["Q_df"] == 2 and (pooled["method"], pooled["test"]) == ("REML", "knha")
        assert pooled["pi_lb"] <= pooled["ci_lb"] < pooled["estimate"] < pooled["ci_ub"] <= pooled["pi_ub"]
        assert sites[["tau2", "I2", "method"]].isna().all().all()  # pooled-only columns stay empty per site


def test_pooled_lagged_effect_is_near_the_truth(frame, table):
    _, truth = frame
    pooled = table[(table["model"] == "lagged") & (table["site"] == "pooled")].iloc[0]
    assert abs(pooled["estimate"] - truth["reported"]["alliance_within_lag"]) < 3 * pooled["se"]


def test_one_site_is_refused(frame):
    one = frame[0].assign(site="s1")
    with pytest.raises(ValueError, match="at least two sites"):
        site_effects_table(decompose_alliance(one, True), "REML", "knha", 0.95)


def test_writers(tmp_path, frame):
    data, _ = frame
    src = tmp_path / "sessions.csv"
    write_csv(data, src)
    settings = _settings(src)
    out = {n: tmp_path / f"{n}.csv" for n in ("d", "r", "c", "o")}
    write_session_descriptives(src, out["d"], out["r"], out["c"], out["o"], settings=settings, seed=3)
    for name, columns in (("d", DESCRIPTIVE_COLUMNS), ("r", RUPTURE_COLUMNS), ("c", CLIENT_LEVEL_COLUMNS),
                          ("o", RUPTURE_OUTCOME_COLUMNS)):  # fmt: skip
        assert tuple(pd.read_csv(out[name]).columns) == columns
    outcome = pd.read_csv(out["o"])
    assert list(outcome["term"]) == ["repaired", "unrepaired", "censored", "baseline_outcome", "rated_changes",
                                     "repaired_minus_unrepaired"]  # fmt: skip
    write_site_effects(src, tmp_path / "s.csv", settings=settings, meta_method="DL", meta_test="z")
    sites = pd.read_csv(tmp_path / "s.csv")
    assert set(sites.loc[sites["site"] == "pooled", "method"]) == {"DL"}
    assert np.isfinite(sites["estimate"]).all()
    no_site = tmp_path / "nosite.csv"
    write_csv(data.drop(columns="site"), no_site)
    with pytest.raises(ValueError, match="'site' column"):
        write_site_effects(no_site, tmp_path / "x.csv", settings=settings, meta_method="REML", meta_test="knha")
    assert not (tmp_path / "x.csv").exists()
