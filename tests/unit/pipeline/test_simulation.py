"""The simulation stage: settings from the schema, batches that do not depend on the batch size, the gather's
contract table (and its refusal of incomplete batches), the Markdown tables and the figure, byte-reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alliancemeta.core.errors import ConfigError
from alliancemeta.core.settings import validate_config
from alliancemeta.pipeline.simulation import (
    BATCH_COLUMNS,
    SIMULATION_COLUMNS,
    SIMULATION_EXTRA_COLUMNS,
    SimulationSettings,
    simulate_batch,
    simulation_summary,
    write_simulation,
    write_simulation_batch,
)
from alliancemeta.studies.simulation import METHODS

#: A design small enough for unit tests: two quick conditions, three replicates in batches of two.
TINY = {
    "replicates": 3,
    "batch_size": 2,
    "base": {"k": 5, "effects_mean": 1.5, "effects_max": 3},
    "conditions": {"plain": {}, "selected": {"selection": [1, 0.3, 0.3], "true_effects": "skewed"}},
}


def settings_of(simulation=None, **config) -> SimulationSettings:
    return SimulationSettings.from_config(validate_config({"simulation": simulation or {}, **config}))


def test_default_design_comes_from_the_schema():
    s = settings_of()
    assert len(s.conditions) == 12 and s.replicates == 1000 and s.batch_size == 250 and s.n_batches == 4
    base = s.conditions["base"]
    assert (base.k, base.mu_r, base.tau2, base.rho, base.selection) == (30, 0.28, 0.0125, 0.6, (1.0, 1.0, 1.0))
    assert s.conditions["k10"].k == 10 and s.conditions["k10"].tau2 == base.tau2  # one factor changed
    assert s.conditions["selection_strong"].selection == (1.0, 0.2, 0.1)
    assert s.fit.methods == METHODS and s.fit.level == 0.95 and s.fit.estimator == "REML"
    assert s.fit.che_rho == 0.5  # the middle of meta.che_rho [0.2, 0.5, 0.8]
    assert dict(s.fit.priors["prior_tau"]) == {"dist": "halfnormal", "sigma": 0.5}


def test_fit_settings_follow_meta_and_bayes():
    s = settings_of(
        {"methods": ["cr2", "z"]},
        meta={"level": 0.9, "estimators": ["DL", "REML"], "che_rho": [0.8, 0.1, 0.3, 0.6]},
        bayes={"prior_tau": {"dist": "halfcauchy", "beta": 0.3}},
    )
    assert s.fit.methods == ("cr2", "z") and s.fit.level == 0.9 and s.fit.estimator == "DL"
    assert s.fit.che_rho == 0.3  # sorted [0.1, 0.3, 0.6, 0.8]: the lower middle, a configured value
    assert s.fit.priors["prior_tau"]["dist"] == "halfcauchy"


def test_a_bad_condition_names_its_config_key():
    with pytest.raises(ConfigError, match=r"simulation\.conditions\.odd: .*n_min"):
        settings_of({"conditions": {"odd": {"n_min": 5}}})
    with pytest.raises(ConfigError, match=r"simulation\.conditions\.odd\.k"):
        SimulationSettings.from_config(
            validate_config({"simulation": {"conditions": {"odd": {"k": "many"}}}})
        )  # the schema catches wrong types first


def test_batches_cover_every_replicate_once():
    s = settings_of({"replicates": 7, "batch_size": 3})
    ranges = [s.batch_range(b) for b in range(s.n_batches)]
    assert ranges == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError, match="outside"):
        s.batch_range(3)

    class Wildcards:
        condition, batch = "base", "2"

    assert s.batch_replicates(Wildcards) == (6, 7) and s.batch_condition(Wildcards).name == "base"


def test_replicates_do_not_depend_on_the_batch_size():
    s = settings_of(TINY)
    cond = s.conditions["selected"]
    seed = s.condition_seed("selected")
    whole = simulate_batch(cond, range(3), s.fit, seed)
    parts = pd.concat([simulate_batch(cond, range(0, 2), s.fit, seed), simulate_batch(cond, range(2, 3), s.fit, seed)])
    pd.testing.assert_frame_equal(whole, parts.reset_index(drop=True), check_exact=True)
    assert list(whole.columns) == list(BATCH_COLUMNS) and len(whole) == 3 * len(METHODS)
    assert (whole["n_generated"] >= cond.k).all() and (whole["n_studies"] == cond.k).all()


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    """The tiny design run through both writers, twice (to check reproducibility)."""
    s = settings_of(TINY)
    out = []
    for run in range(2):
        root = tmp_path_factory.mktemp(f"run{run}")
        batches = []
        for name, cond in s.conditions.items():
            for b in range(s.n_batches):
                path = root / "batches" / name / f"batch{b}.csv"
                write_simulation_batch(path, condition=cond, replicates=s.batch_range(b), fit=s.fit, seed=s.seed)
                batches.append(str(path))
        files = {"table": "simulation.csv", "markdown": "simulation.md", "pdf": "figures/coverage.pdf",
                 "png": "figures/coverage.png"}  # fmt: skip
        paths = {key: root / name for key, name in files.items()}
        write_simulation(batches, *paths.values(), settings=s, code="0123abcd")
        out.append((batches, paths))
    return s, out


def test_the_gathered_table_has_the_contract_columns_and_measures(gathered):
    s, [(batches, paths), _] = gathered
    table = pd.read_csv(paths["table"], keep_default_na=False, na_values=[""])
    assert list(table.columns) == [*SIMULATION_COLUMNS, *SIMULATION_EXTRA_COLUMNS]
    assert list(table["condition"].unique()) == ["plain", "selected"]
    assert list(table["method"][:6]) == list(METHODS)
    assert (table["n_replicates"] == 3).all() and (table["level"] == 0.95).all()
    rows = pd.concat([pd.read_csv(p) for p in batches])
    one = rows[(rows["condition"] == "selected") & (rows["method"] == "cr2") & ~rows["failed"]]
    got = table[(table["condition"] == "selected") & (table["method"] == "cr2")].iloc[0]
    mu = s.conditions["selected"].mu
    assert got["bias"] == pytest.approx(one["estimate"].mean() - mu, rel=1e-12)
    assert got["coverage"] == pytest.approx(((one["ci_lb"] <= mu) & (mu <= one["ci_ub"])).mean())
    assert got["width"] == pytest.approx((one["ci_ub"] - one["ci_lb"]).mean(), rel=1e-12)
    assert got["selection"] == "1;0.3;0.3" and got["mu"] == pytest.approx(np.arctanh(0.28))
    assert got["mean_generated"] >= 5


def test_markdown_and_figure_are_written_and_reproducible(gathered):
    _, [(_, first), (_, second)] = gathered
    text = first["markdown"].read_text()
    assert "SYNTHETIC" in text and "*Simulation Design*" in text and "*Bias, RMSE and Coverage" in text
    assert "| selected | 5 |" in text and "Three-level, CR2" in text and "no MCMC" in text
    assert "package code 0123abcd" in text
    for key in first:
        assert first[key].stat().st_size > 0
        assert first[key].read_bytes() == second[key].read_bytes(), key


def test_incomplete_batches_are_an_error_not_a_smaller_sample(gathered):
    s, [(batches, _), _] = gathered
    rows = pd.concat([pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in batches], ignore_index=True)
    with pytest.raises(ValueError, match=r"condition 'plain'.*replicates 0\.\.2"):
        simulation_summary(rows[~((rows["condition"] == "plain") & (rows["replicate"] == 1))], s)
    with pytest.raises(ValueError, match="condition 'plain'"):
        simulation_summary(pd.concat([rows, rows[rows["condition"] == "plain"].head(1)]), s)
    with pytest.raises(ValueError, match="condition 'selected'"):
        simulation_summary(rows[rows["condition"] != "selected"], s)


def test_failed_fits_are_counted_in_the_table():
    s = settings_of(TINY)
    rows = []
    for name, cond in s.conditions.items():
        for rep in range(s.replicates):
            for method in s.fit.methods:
                fail = method == "che" and rep == 0
                rows.append({"condition": name, "replicate": rep, "method": method, "estimate": np.nan if fail else
                             cond.mu, "se": 0.1, "ci_lb": cond.mu - 0.1, "ci_ub": cond.mu + 0.1, "covered": 1.0,
                             "width": 0.2, "failed": fail, "k": 8, "n_studies": 5, "n_generated": 5,
                             "note": "che could not be fitted: ConvergenceError: x" if fail else ""})  # fmt: skip
    table = simulation_summary(pd.DataFrame(rows), s).set_index(["condition", "method"])
    assert table.loc[("plain", "che"), "n_failed"] == 1 and table.loc[("plain", "z"), "n_failed"] == 0
    assert table.loc[("plain", "che"), "note"] == "1x che could not be fitted: ConvergenceError: x"
    assert table.loc[("plain", "che"), "coverage"] == 1.0 and table.loc[("plain", "che"), "bias"] == 0.0
