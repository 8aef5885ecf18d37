"""The multiverse engine: enumeration, each choice against the model it stands for, batch independence,
the gathered table and its descriptive summary (alliancemeta.studies.multiverse)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from alliancemeta.pipeline.meta import random_effects_table
from alliancemeta.studies import multiverse as mv
from alliancemeta.studies.bayes.priors import MetaPriors
from alliancemeta.studies.bayes.quadrature import exact_posterior
from alliancemeta.studies.influence.diagnostics import influence
from alliancemeta.studies.multilevel.aggregate import aggregate_within_studies
from alliancemeta.studies.multilevel.che import che_fit, robust_cr2_che
from alliancemeta.studies.multilevel.influence import multilevel_influence
from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import random_effects
from alliancemeta.studies.synthetic import simulate_studies

BAYES = {
    "prior_mu": {"dist": "normal", "mu": 0, "sigma": 1},
    "prior_tau": {"dist": "halfnormal", "sigma": 0.5},
    "sensitivity_priors": [{"dist": "halfnormal", "sigma": 0.5}, {"dist": "halfcauchy", "beta": 0.3}],
    "informative_mu": {"dist": "normal", "mu": 0.2855, "sigma": 0.0308},
}
CONFIG = {
    "estimators": ["REML", "DL", "PM", "FE"],
    "tests": ["z", "t", "knha", "cr2"],
    "dependence": ["ignore", "aggregate", "three_level"],
    "outliers": ["none", "studentized", "cooks"],
    "subsets": ["format"],
    "priors": None,
    "rstudent_threshold": 1.96,
    "cooks_quantile": 0.5,
    "min_k": 8,
    "batch_size": 50,
}


def make_settings(**changes) -> mv.MultiverseSettings:
    config = {**CONFIG, **changes}
    return mv.MultiverseSettings.from_config(config, 0.95, 0.5, mv.prior_combinations(BAYES, config["priors"]))


@cache
def frame() -> pd.DataFrame:
    """40 SYNTHETIC studies (about 55 effect sizes) with Fisher-z effects, as a processed study table."""
    raw, _ = simulate_studies(seed=3, n_studies=40)
    out = raw.copy()
    out.insert(1, "yi", np.arctanh(raw["r"].to_numpy(float)))
    out.insert(2, "vi", 1.0 / (raw["n"].to_numpy(float) - 3.0))
    return out


@cache
def full_run() -> pd.DataFrame:
    return mv.run_multiverse(frame(), make_settings())


def row(table, **choices) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for key, value in {"subset": "all", "prior": "", **choices}.items():
        mask &= (table[key] == value).to_numpy()
    assert mask.sum() == 1, choices
    return table[mask].iloc[0]


def assert_row_matches(r, k, estimate, se, ci_lb, ci_ub, pval, rtol=0.0):
    np.testing.assert_allclose([r.k, r.estimate, r.se, r.ci_lb, r.ci_ub, r.pval],
                               [k, estimate, se, ci_lb, ci_ub, pval], rtol=rtol, atol=0)  # fmt: skip


# --- enumeration ------------------------------------------------------------------------------------


def test_enumeration_counts_every_supported_combination():
    s = make_settings()
    specs = mv.enumerate_specifications(frame(), s)
    subsets = mv.subset_levels(frame(), s)
    n_priors = len(s.priors)
    # rma.uni: 4 estimators x 3 tests; three-level: REML x (z, t, cr2); Bayes: priors; each x 3 outlier rules
    per_subset = 3 * (2 * (4 * 3 + n_priors) + 3)
    assert len(specs) == len(subsets) * per_subset
    assert [s.spec_id for s in specs] == list(range(1, len(specs) + 1))
    combos = {(x.dependence, x.test) for x in specs}
    assert ("three_level", "knha") not in combos and ("ignore", "cr2") not in combos
    assert not any(x.is_bayes and x.dependence == "three_level" for x in specs)
    assert all(x.estimator == "REML" for x in specs if x.dependence == "three_level")


def test_subsets_are_levels_with_enough_effects():
    s = make_settings(min_k=8, subsets=["rater", "format"])
    levels = mv.subset_levels(frame(), s)
    assert levels[0][0] == "all" and levels[0][2].all()
    counts = frame()["rater"].value_counts()
    expected = sorted(f"rater={lvl}" for lvl, n in counts.items() if n >= 8)
    assert [label for label, mod, _ in levels if mod == "rater"] == expected
    for label, mod, mask in levels[1:]:
        assert (frame()[mod].astype(str) == label.split("=", 1)[1]).to_numpy().tolist() == mask.tolist()


def test_without_nesting_only_ignore_is_enumerated():
    flat = frame().drop(columns="study_id")
    specs = mv.enumerate_specifications(flat, make_settings())
    assert {x.dependence for x in specs} == {"ignore"}


def test_level_labels_do_not_depend_on_the_number_type():
    a = pd.DataFrame({"yi": np.zeros(4), "vi": np.ones(4), "g": [1, 1, 2, 2]})
    b = a.assign(g=a["g"].astype(float))
    s = make_settings(subsets=["g"], min_k=2)
    assert [x[0] for x in mv.subset_levels(a, s)] == [x[0] for x in mv.subset_levels(b, s)] == ["all", "g=1", "g=2"]


def test_che_rows_and_their_outlier_rule():
    """CHE rows are che_fit at rho = meta.aggregate_rho (z, t, CR2); outlier rules drop the studies that the
    three-level model's study-level diagnostics flag."""
    f = frame()
    yi, vi, cl = f["yi"].to_numpy(), f["vi"].to_numpy(), f["study_id"].to_numpy()
    table = mv.run_multiverse(f, make_settings(dependence=["che"], subsets=[], estimators=["REML"]))
    assert set(table["dependence"]) == {"che"} and set(table["test"]) == {"z", "t", "cr2"}
    for test in ("z", "t"):
        fit = che_fit(yi, vi, cl, 0.5, test=test)
        r = row(table, estimator="REML", test=test, dependence="che", outliers="none")
        assert_row_matches(r, fit.k, fit.beta[0], fit.se[0], fit.ci_lb[0], fit.ci_ub[0], fit.pval[0])
        assert r.tau2 == pytest.approx(fit.sigma2.sum(), rel=1e-15)
    rob = robust_cr2_che(che_fit(yi, vi, cl, 0.5, test="z"))
    r = row(table, estimator="REML", test="cr2", dependence="che", outliers="none")
    assert_row_matches(r, len(yi), rob.beta[0], rob.se[0], rob.ci_lb[0], rob.ci_ub[0], rob.pval[0])
    inf = multilevel_influence(three_level(yi, vi, cl, test="z"), level="study")
    bad = set(inf.units[stats.chi2.sf(inf.rstudent_X2, inf.rstudent_df) < 2 * stats.norm.sf(1.96)])
    keep = ~np.isin(cl, list(bad))
    refit = che_fit(yi[keep], vi[keep], cl[keep], 0.5, test="z")
    r = row(table, estimator="REML", test="z", dependence="che", outliers="studentized")
    assert r.n_excluded == len(bad) > 0
    assert_row_matches(r, refit.k, refit.beta[0], refit.se[0], refit.ci_lb[0], refit.ci_ub[0], refit.pval[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"estimators": ["REML", "XX"]}, "multiverse.estimators"),
        ({"tests": ["z", "z"]}, "multiverse.tests"),
        ({"outliers": ["dfbetas"]}, "multiverse.outliers"),
        ({"cooks_quantile": 1.0}, "cooks_quantile"),
        ({"min_k": 1}, "min_k"),
    ],
)
def test_settings_reject_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        make_settings(**change)


def test_default_priors_are_the_prior_sensitivity_combinations():
    combos = mv.prior_combinations(BAYES)
    base = MetaPriors.from_config(BAYES)
    # the first sensitivity prior equals the configured one and is listed once
    assert [p.label for p in combos] == [
        base.label,
        "mu ~ Normal(0, 1); tau ~ HalfCauchy(0.3)",
        "mu ~ Normal(0.2855, 0.0308); tau ~ HalfNormal(0.5)",
    ]
    assert mv.prior_combinations(BAYES, []) == ()
    explicit = mv.prior_combinations(BAYES, [{"prior_tau": {"dist": "halfcauchy", "beta": 0.5}}])
    assert [p.label for p in explicit] == ["mu ~ Normal(0, 1); tau ~ HalfCauchy(0.5)"]


def test_batches_cover_every_specification_once():
    assert mv.batch_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert mv.batch_bounds(0, 3) == []
    assert mv.n_batches(7, 3) == 3


# --- each choice is the model it names ----------------------------------------------------------------


def test_reml_knha_row_is_the_random_effects_table_row_bit_for_bit():
    table = full_run()
    f = frame()
    ref = random_effects_table(f["yi"], f["vi"], ["REML"], ["knha"], 0.95).iloc[0]
    r = row(table, estimator="REML", test="knha", dependence="ignore", outliers="none")
    for col in ("k", "estimate", "se", "ci_lb", "ci_ub", "pval", "r", "r_ci_lb", "r_ci_ub", "tau2"):
        assert r[col] == ref[col], col


@pytest.mark.parametrize(("estimator", "test"), [("REML", "knha"), ("DL", "z"), ("PM", "t"), ("FE", "knha")])
def test_studentized_rule_drops_effects_by_rstudent_and_refits(estimator, test):
    f = frame()
    yi, vi = f["yi"].to_numpy(), f["vi"].to_numpy()
    diag = random_effects(yi, vi, method=estimator, test="knha" if test == "knha" else "z")
    drop = np.abs(influence(diag).rstudent) > 1.96
    fit = random_effects(yi[~drop], vi[~drop], method=estimator, test=test)
    r = row(full_run(), estimator=estimator, test=test, dependence="ignore", outliers="studentized")
    assert r.n_excluded == drop.sum()
    assert_row_matches(r, fit.k, fit.estimate, fit.se[0], fit.ci_lbs[0], fit.ci_ubs[0], fit.pvals[0])


@pytest.mark.parametrize("quantile", [0.5, 0.1])
def test_cooks_rule_drops_effects_beyond_the_chi2_quantile(quantile):
    f = frame()
    yi, vi = f["yi"].to_numpy(), f["vi"].to_numpy()
    diag = random_effects(yi, vi, method="FE", test="z")
    drop = influence(diag).cooks_distance > stats.chi2.ppf(quantile, 1)
    assert drop.any() == (quantile == 0.1)  # the stricter cut-off flags effects in these data
    fit = random_effects(yi[~drop], vi[~drop], method="FE", test="z")
    s = make_settings(estimators=["FE"], tests=["z"], dependence=["ignore"], outliers=["cooks"], subsets=[],
                      priors=[], cooks_quantile=quantile)  # fmt: skip
    r = row(mv.run_multiverse(f, s), estimator="FE", test="z", dependence="ignore", outliers="cooks")
    assert r.n_excluded == drop.sum()
    assert_row_matches(r, fit.k, fit.estimate, fit.se[0], fit.ci_lbs[0], fit.ci_ubs[0], fit.pvals[0])


def test_aggregate_pools_one_effect_per_study_and_drops_studies():
    f = frame()
    agg = aggregate_within_studies(f["yi"], f["vi"], f["study_id"].to_numpy(), 0.5)
    diag = random_effects(agg.yi, agg.vi, method="REML", test="z")
    drop = np.abs(influence(diag).rstudent) > 1.96
    fit = random_effects(agg.yi[~drop], agg.vi[~drop], method="REML", test="z")
    r = row(full_run(), estimator="REML", test="z", dependence="aggregate", outliers="studentized")
    assert r.k == f["study_id"].nunique() - drop.sum()
    assert_row_matches(r, fit.k, fit.estimate, fit.se[0], fit.ci_lbs[0], fit.ci_ubs[0], fit.pvals[0])


def test_three_level_rows_and_study_deletion():
    f = frame()
    yi, vi, cl = f["yi"].to_numpy(), f["vi"].to_numpy(), f["study_id"].to_numpy()
    fit = three_level(yi, vi, cl, test="z")
    rob = robust_cr2(fit)
    table = full_run()
    r = row(table, estimator="REML", test="z", dependence="three_level", outliers="none")
    assert_row_matches(r, fit.k, fit.estimate, fit.se[0], fit.ci_lb[0], fit.ci_ub[0], fit.pval[0])
    assert r.tau2 == pytest.approx(fit.sigma2.sum(), rel=1e-15)
    r = row(table, estimator="REML", test="cr2", dependence="three_level", outliers="none")
    assert_row_matches(r, fit.k, rob.estimate, rob.se[0], rob.ci_lb[0], rob.ci_ub[0], rob.pval[0])
    # studentized: a study's X2 against chi2 with its k effects, at the two-sided 1.96 level
    inf = multilevel_influence(fit, level="study")
    bad = set(inf.units[stats.chi2.sf(inf.rstudent_X2, inf.rstudent_df) < 2 * stats.norm.sf(1.96)])
    keep = ~np.isin(cl, list(bad))
    refit = three_level(yi[keep], vi[keep], cl[keep], test="t")
    r = row(table, estimator="REML", test="t", dependence="three_level", outliers="studentized")
    assert r.n_excluded == len(bad) > 0
    assert_row_matches(r, refit.k, refit.estimate, refit.se[0], refit.ci_lb[0], refit.ci_ub[0], refit.pval[0])


def test_bayesian_row_is_the_exact_posterior():
    f = frame()
    prior = MetaPriors.from_config(BAYES)
    post = exact_posterior(f["yi"], f["vi"], prior).summary(0.95).set_index("parameter")
    r = row(full_run(), estimator="bayes", test="eti", dependence="ignore", outliers="none", prior=prior.label)
    assert (r.estimate, r.se, r.ci_lb, r.ci_ub) == tuple(post.loc["mu", ["mean", "sd", "eti_lb", "eti_ub"]])
    assert (r.r, r.r_ci_lb, r.r_ci_ub) == tuple(post.loc["r", ["mean", "eti_lb", "eti_ub"]])
    assert np.isnan(r.pval)


def test_subset_rows_use_only_that_level():
    f = frame()
    level = mv.subset_levels(f, make_settings())[-1]
    sub = f[level[2]]
    fit = random_effects(sub["yi"], sub["vi"], method="DL", test="z")
    r = row(full_run(), estimator="DL", test="z", dependence="ignore", outliers="none", subset=level[0])
    assert_row_matches(r, fit.k, fit.estimate, fit.se[0], fit.ci_lbs[0], fit.ci_ubs[0], fit.pvals[0])


def test_a_model_that_cannot_be_estimated_gives_nan_and_a_note():
    # two studies (one with several effects): the three-level deletion diagnostics need three studies, so its
    # outlier rows fail; every other row is estimable
    sizes = frame()["study_id"].value_counts(sort=False)
    two = [sizes.index[sizes >= 2][0], sizes.index[sizes == 1][0]]
    small = frame()[frame()["study_id"].isin(two)]
    out = mv.run_multiverse(small, make_settings(min_k=100, subsets=[]))
    bad = out[(out.dependence == "three_level") & (out.outliers != "none")]
    assert len(bad) and bad["estimate"].isna().all() and (bad["k"] == 0).all()
    assert bad["note"].str.contains("three_level model .* could not be estimated: outlier rule").all()
    assert bad["note"].str.contains("use outliers 'none'").all()
    assert out.loc[out.outliers == "none", "estimate"].notna().all()


# --- batches, gathering, summary ------------------------------------------------------------------------


#: A smaller multiverse (one subset, one prior) for the batch property: every example recomputes it in pieces.
BATCH_SETTINGS = {"estimators": ["REML", "DL"], "subsets": [], "priors": [{"prior_tau": BAYES["prior_tau"]}]}


@cache
def small_run() -> pd.DataFrame:
    return mv.run_multiverse(frame(), make_settings(**BATCH_SETTINGS))


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 25), min_size=1, max_size=4))
def test_rows_do_not_depend_on_the_batches(sizes):
    s = make_settings(**BATCH_SETTINGS)
    specs = mv.enumerate_specifications(frame(), s)
    parts, start = [], 0
    for size in sizes * (len(specs) // sum(sizes) + 1):
        if start >= len(specs):
            break
        parts.append(mv.evaluate_specifications(frame(), specs[start : start + size], s))
        start += size
    gathered = mv.gather_batches(parts, len(specs))
    pd.testing.assert_frame_equal(gathered, small_run(), check_exact=True)


def test_gather_rejects_missing_or_repeated_specifications():
    t = full_run()
    with pytest.raises(ValueError, match=r"expected ids 1\.\."):
        mv.gather_batches([t.iloc[:10], t.iloc[11:]], len(t))
    with pytest.raises(ValueError, match=r"expected ids 1\.\."):
        mv.gather_batches([t, t.iloc[:1]], len(t))


def test_significance_is_the_p_value_for_frequentist_rows():
    t = full_run()
    freq = t[(t.prior == "") & np.isfinite(t.pval)]
    assert (mv.significant(freq) == (freq.pval < 0.05)).all()


def test_summary_counts_and_quantiles():
    t = pd.DataFrame({
        "spec_id": [1, 2, 3, 4], "estimator": ["REML", "REML", "DL", "DL"], "test": "z", "dependence": "ignore",
        "outliers": "none", "subset": "all", "prior": "", "r": [0.1, 0.2, 0.3, np.nan],
        "ci_lb": [-0.1, 0.05, 0.1, np.nan], "ci_ub": [0.3, 0.4, 0.5, np.nan],
    })  # fmt: skip
    s = mv.multiverse_summary(t).set_index(["choice", "option"])
    assert s.loc[("all", "all"), "n_specs"] == 4 and s.loc[("all", "all"), "n_estimated"] == 3
    assert s.loc[("all", "all"), "share_significant"] == pytest.approx(2 / 3)
    assert s.loc[("all", "all"), "r_median"] == pytest.approx(0.2)
    assert s.loc[("estimator", "DL"), "n_estimated"] == 1
    assert s.loc[("estimator", "DL"), "share_significant_positive"] == 1.0
    assert ("prior", "") not in s.index
    assert "2 of" not in mv.headline_text(mv.multiverse_summary(t))  # 3 of 4 estimable
    assert mv.headline_text(mv.multiverse_summary(t)).startswith("3 of 4 specifications estimable")
