"""GOSH engine: subset enumeration and sampling, and every subset's fit against a full ``random_effects`` refit."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliancemeta.core.effects import escalc_cor
from alliancemeta.core.settings import MetaSettings, validate_config
from alliancemeta.studies import gosh as G
from alliancemeta.studies.random_effects import ESTIMATORS, random_effects

ROOT = Path(__file__).resolve().parents[3]

#: Closed-form estimators (FE DL HE HS SJ) and the Q-equation root (PM, EB) agree with the engine to
#: round-off of differently ordered sums.
CLOSED_RTOL = 1e-10
#: ML/REML: the engine's Fisher scoring stops when tau^2 changes by less than 1e-12 (absolute), which
#: on a slowly converging (flat) likelihood leaves it up to ~1e-8 (relative) short of the root; the
#: GOSH solver finishes with Newton steps (measured: its roots agree with 50-digit arithmetic to 1e-15).
ITERATIVE_RTOL = 1e-7
#: Absolute floor for values at or near zero (tau^2 = 0, I^2 = 0).
ATOL = 1e-12
#: The schema defaults of meta.gosh_max_k and meta.gosh_subsets.
LIMITS = {"max_k": MetaSettings.from_config(validate_config({})).gosh_max_k,
          "subsets": MetaSettings.from_config(validate_config({})).gosh_subsets}


def molloy():
    d = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    es = escalc_cor(d["r"], d["n"])
    return es.yi, es.vi


def simulated(k, seed, tau=0.1):
    rng = np.random.default_rng(seed)
    n = rng.integers(15, 400, k)
    vi = 1.0 / (n - 3.0)
    return 0.25 + rng.normal(0, tau, k) + rng.normal(0, np.sqrt(vi)), vi


def refit(yi, vi, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return random_effects(yi, vi, method=method)


def check_rows(yi, vi, packed, fits, method, rows):
    rtol = ITERATIVE_RTOL if method in ("ML", "REML") else CLOSED_RTOL
    incl = G.unpack_subsets(packed[rows], yi.size)
    for j, sel in zip(rows, incl, strict=True):
        f = refit(yi[sel], vi[sel], method)
        # metafor's gosh() computes H2 for DL as Q / (k - 1), as for FE (its closed-form path)
        h2 = f.QE / (f.k - 1) if method == "DL" and f.k > 1 else f.H2
        got = (fits.k[j], fits.estimate[j], fits.tau2[j], fits.I2[j], fits.H2[j], fits.QE[j])
        want = (f.k, f.estimate, f.tau2, f.I2, h2, f.QE)
        np.testing.assert_allclose(
            got, want, rtol=rtol, atol=ATOL, err_msg=f"{method} subset {j}: {np.flatnonzero(sel)}"
        )


# --------------------------------------------------------------------------------------------------
# subsets
# --------------------------------------------------------------------------------------------------


def expand_grid_order(k, min_k=1):
    """metafor: expand.grid(replicate(k, c(FALSE, TRUE))) (first effect fastest), rows with >= min_k
    effects, then a stable order by size."""
    rows = [tuple(reversed(bits)) for bits in itertools.product((0, 1), repeat=k)]
    rows = [r for r in rows if sum(r) >= min_k]
    return np.array(sorted(rows, key=sum), dtype=bool)


@pytest.mark.parametrize(("k", "min_k"), [(1, 1), (2, 1), (5, 1), (7, 3), (9, 1)])
def test_all_subsets_in_metafor_order(k, min_k):
    packed = G.all_subsets(k, min_k)
    assert packed.shape == (G.n_subsets_total(k, min_k), (k + 7) // 8)
    np.testing.assert_array_equal(G.unpack_subsets(packed, k), expand_grid_order(k, min_k))
    np.testing.assert_array_equal(G.subset_sizes(packed), expand_grid_order(k, min_k).sum(axis=1))


def test_counts():
    assert G.n_subsets_total(16) == 2**16 - 1
    assert G.n_subsets_total(20) == 1_048_575
    assert G.n_subsets_total(10, 3) == 2**10 - 1 - 10 - 45
    with pytest.raises(ValueError, match="too many"):
        G.all_subsets(40)


def test_random_subsets_reproducible_and_prefix_stable():
    a = G.random_subsets(70, 3000, seed=11)
    np.testing.assert_array_equal(a, G.random_subsets(70, 3000, seed=11))
    # the first n valid draws of the stream: a shorter request is a prefix of a longer one
    np.testing.assert_array_equal(G.random_subsets(70, 10, seed=11), a[:10])
    assert not np.array_equal(a, G.random_subsets(70, 3000, seed=12))
    # bits beyond effect k stay 0 (70 effects use 6 bits of the ninth byte)
    assert not np.any(a[:, -1] >> 6)


def test_random_subsets_distribution():
    # each effect included with probability 1/2, independently: mean 1/2, sizes Binomial(k, 1/2)
    k, n = 12, 40_000
    incl = G.unpack_subsets(G.random_subsets(k, n, seed=3, min_k=1), k)
    np.testing.assert_allclose(incl.mean(axis=0), 0.5, atol=0.015)  # 6 standard errors
    sizes = incl.sum(axis=1)
    assert sizes.min() >= 1
    np.testing.assert_allclose(sizes.var(), k / 4, rtol=0.05)
    big = G.unpack_subsets(G.random_subsets(5, 2000, seed=3, min_k=4), 5).sum(axis=1)
    assert big.min() >= 4 and set(np.unique(big)) == {4, 5}


def test_gosh_chooses_all_or_random_subsets():
    yi, vi = simulated(12, 1)
    (res,) = G.gosh(yi, vi, ("FE",), max_k=12, subsets=100)
    assert res.exact and res.n_subsets == 4095 and res.seed is None
    (res,) = G.gosh(yi, vi, ("FE",), max_k=10, subsets=5000)  # more draws requested than subsets exist
    assert res.exact and res.n_subsets == 4095
    (res,) = G.gosh(yi, vi, ("FE",), max_k=10, subsets=500, seed=9)
    assert not res.exact and res.n_subsets == 500 and res.seed == 9
    assert np.all(np.diff(res.k_subset) >= 0)  # ordered by size, as metafor orders its results
    with pytest.raises(ValueError, match="at least 2 effect sizes"):
        G.gosh(yi[:1], vi[:1], **LIMITS)


def test_random_gosh_is_reproducible():
    yi, vi = simulated(30, 2)
    a = G.gosh(yi, vi, ("FE", "REML"), max_k=20, subsets=3000, seed=5)
    b = G.gosh(yi, vi, ("FE", "REML"), max_k=20, subsets=3000, seed=5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.membership, y.membership)
        for name in ("estimate", "tau2", "I2", "H2", "QE"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


# --------------------------------------------------------------------------------------------------
# every subset equals a full refit
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ESTIMATORS)
def test_every_subset_of_seven_equals_refit(method):
    yi, vi = simulated(7, 4)
    packed = G.all_subsets(7)
    fits = G.fit_subsets(yi, vi, packed, method)
    assert fits.n_failed == 0
    check_rows(yi, vi, packed, fits, method, np.arange(packed.shape[0]))


@pytest.mark.parametrize("method", ESTIMATORS)
def test_molloy_subsets_equal_refit(method):
    yi, vi = molloy()
    packed = G.all_subsets(16)
    rows = np.unique(np.r_[np.arange(0, packed.shape[0], 331), np.arange(16, 200, 7), packed.shape[0] - 1])
    fits = G.fit_subsets(yi, vi, packed[rows], method)
    check_rows(yi, vi, packed[rows], fits, method, np.arange(rows.size))


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_flat_likelihood_subsets(method):
    # molloy2014 subsets on which rma.uni's Fisher scoring crawls along a flat likelihood (100+ steps) or
    # has a second local maximum beside the boundary: the pooled slow path finds the same root
    yi, vi = molloy()
    packed = G.all_subsets(16)
    rows = np.array([434, 546, 4470, 10134, 15054, 29130, 47054])
    fits = G.fit_subsets(yi, vi, packed[rows], method)
    assert fits.n_failed == 0
    check_rows(yi, vi, packed[rows], fits, method, np.arange(rows.size))


@pytest.mark.parametrize("method", ["FE", "DL", "REML", "PM"])
def test_large_k_random_subsets_equal_refit(method):
    yi, vi = simulated(150, 6)  # memberships of three 64-bit words
    packed = G.random_subsets(150, 40, seed=1)
    fits = G.fit_subsets(yi, vi, packed, method)
    check_rows(yi, vi, packed, fits, method, np.arange(40))


def test_results_do_not_depend_on_batch_size():
    yi, vi = molloy()
    packed = G.all_subsets(16)[::7]
    a = G.fit_subsets(yi, vi, packed, "REML")
    b = G.fit_subsets(yi, vi, packed, "REML", batch_elements=1 << 10)
    for name in ("estimate", "tau2", "I2", "H2", "QE"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 9),
    seed=st.integers(0, 2**31),
    shift=st.floats(-2, 2),
    method=st.sampled_from(ESTIMATORS),
)
def test_invariants(k, seed, shift, method):
    yi, vi = simulated(k, seed, tau=0.2)
    packed = G.all_subsets(k)
    fits = G.fit_subsets(yi, vi, packed, method)
    assert fits.n_failed == 0
    incl = G.unpack_subsets(packed, k)
    ymin = np.where(incl, yi, np.inf).min(axis=1)
    ymax = np.where(incl, yi, -np.inf).max(axis=1)
    eps = 1e-12
    assert np.all((fits.estimate >= ymin - eps) & (fits.estimate <= ymax + eps))
    assert np.all(fits.tau2 >= 0) and np.all((fits.I2 >= 0) & (fits.I2 <= 100)) and np.all(fits.QE >= 0)
    one = fits.k == 1
    # a one-effect subset's estimate is its effect, up to rounding in the batched weighted sums (absolute, as
    # the effect itself may be ~0)
    np.testing.assert_allclose(fits.estimate[one], ymin[one], rtol=1e-14, atol=1e-15)
    assert np.all(fits.tau2[one] == 0) and np.all(fits.I2[one] == 0) and np.all(fits.H2[one] == 1)
    if method == "FE":
        assert np.all(fits.tau2 == 0)
    # location equivariance: shifting every effect shifts the estimates and leaves the rest unchanged
    moved = G.fit_subsets(yi + shift, vi, packed, method)
    np.testing.assert_allclose(moved.estimate, fits.estimate + shift, rtol=1e-9, atol=1e-9)
    for name in ("tau2", "I2", "H2", "QE"):
        np.testing.assert_allclose(getattr(moved, name), getattr(fits, name), rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# results and the summary table
# --------------------------------------------------------------------------------------------------


def test_full_data_values_and_summary_table():
    yi, vi = molloy()
    fe, reml = G.gosh(yi, vi, ("FE", "REML", "FE"), **LIMITS)
    for res in (fe, reml):
        f = refit(yi, vi, res.method)
        np.testing.assert_allclose(
            [res.full.estimate[0], res.full.tau2[0], res.full.I2[0], res.full.QE[0]],
            [f.estimate, f.tau2, f.I2, f.QE],
            rtol=1e-9,
        )
    table = G.gosh_summary_table((fe, reml))
    assert tuple(table.columns) == (*G.GOSH_SUMMARY_COLUMNS, *G.GOSH_EXTRA_COLUMNS)
    assert table["model"].tolist() == ["FE"] * 4 + ["REML"] * 4
    assert table["statistic"].tolist() == list(G.GOSH_STATISTICS) * 2
    row = table.iloc[4]
    x = reml.estimate
    np.testing.assert_allclose(
        [row["n_subsets"], row["mean"], row["sd"], row["q05"], row["q50"], row["q95"]],
        [65535, x.mean(), x.std(ddof=1), *np.quantile(x, [0.05, 0.5, 0.95])],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        row[["r_q05", "r_q50", "r_q95"]].astype(float), np.tanh(row[["q05", "q50", "q95"]].astype(float))
    )
    np.testing.assert_allclose(row["r_mean"], np.tanh(x).mean())
    assert row["subsets"] == "all" and row["n_failed"] == 0 and row["k"] == 16
    assert table.loc[1, "mean"] == 0.0  # FE: tau2 = 0 in every subset
    np.testing.assert_allclose(table.loc[7, "mean"], table.loc[3, "mean"])  # Q does not depend on the model


def test_incl_unpacks_rows():
    yi, vi = simulated(5, 1)
    (res,) = G.gosh(yi, vi, **LIMITS)
    np.testing.assert_array_equal(res.incl([0, 30]), [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])


def test_bad_input():
    with pytest.raises(ValueError, match="vi must be > 0"):
        G.gosh([0.1, 0.2], [0.01, 0.0], **LIMITS)
    with pytest.raises(ValueError, match="unknown tau"):
        G.fit_subsets([0.1, 0.2], [0.01, 0.02], G.all_subsets(2), "XX")


def test_summary_notes_and_unavailable_table():
    yi, vi = simulated(24, 3)
    (res,) = G.gosh(yi, vi, ("DL",), max_k=20, subsets=2000, seed=17)
    table = G.gosh_summary_table(res)
    assert set(table["note"]) == {"2,000 random subsets of 16,777,215 (seed 17)"}
    assert set(table["subsets"]) == {"random"}
    empty = G.gosh_summary_unavailable(("FE", "REML"), 1, "k = 1: GOSH needs at least two effect sizes")
    assert tuple(empty.columns) == tuple(table.columns)
    assert len(empty) == 8 and (empty["n_subsets"] == 0).all() and empty["mean"].isna().all()
