import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alliancemeta.studies import random_effects as meta

RTOL = 1e-9  # identities below hold exactly up to floating-point round-off


def _data(seed=1, k=20, tau=0.1):
    rng = np.random.default_rng(seed)
    n = rng.integers(20, 400, k)
    vi = 1.0 / (n - 3.0)
    yi = rng.normal(0.25, np.sqrt(vi + tau**2))
    return yi, vi


def test_dl_closed_form():
    yi, vi = _data()
    w = 1 / vi
    mu_fe = np.sum(w * yi) / w.sum()
    Q = np.sum(w * (yi - mu_fe) ** 2)
    tau2 = max(0.0, (Q - (len(yi) - 1)) / (w.sum() - np.sum(w**2) / w.sum()))
    fit = meta.random_effects(yi, vi, method="DL")
    assert fit.tau2 == pytest.approx(tau2, rel=RTOL)
    ws = 1 / (vi + tau2)
    assert fit.estimate == pytest.approx(np.sum(ws * yi) / ws.sum(), rel=RTOL)
    assert fit.se[0] == pytest.approx(np.sqrt(1 / ws.sum()), rel=RTOL)
    assert fit.QE == pytest.approx(Q, rel=RTOL)


@pytest.mark.parametrize("method", ["ML", "REML", "EB", "PM"])
def test_iterative_estimators_solve_their_equations(method):
    yi, vi = _data(k=30, tau=0.15)
    fit = meta.random_effects(yi, vi, method=method)
    w = 1 / (vi + fit.tau2)
    e = yi - fit.estimate
    if method == "ML":
        score = np.sum(w**2 * e**2) - np.sum(w)
    elif method == "REML":
        score = np.sum(w**2 * e**2) - (w.sum() - np.sum(w**2) / w.sum())
    else:  # EB and PM both solve Q(tau2) = k - 1
        score = np.sum(w * e**2) - (len(yi) - 1)
    assert abs(score) < 1e-8 * np.sum(w)


def test_eb_equals_pm():
    yi, vi = _data(k=25, tau=0.2)
    eb = meta.random_effects(yi, vi, method="EB")
    pm = meta.random_effects(yi, vi, method="PM")
    assert eb.tau2 == pytest.approx(pm.tau2, rel=1e-8)


def test_knha_scales_variance():
    yi, vi = _data()
    z = meta.random_effects(yi, vi, test="z")
    kh = meta.random_effects(yi, vi, test="knha")
    s2w = np.sum(z.weights * (yi - z.estimate) ** 2) / (len(yi) - 1)
    assert kh.se[0] == pytest.approx(z.se[0] * np.sqrt(s2w), rel=RTOL)
    assert kh.ddf == len(yi) - 1


def test_q_profile_bounds_solve_the_q_equation():
    yi, vi = _data(k=40, tau=0.2)
    fit = meta.random_effects(yi, vi)
    ci = meta.confint_tau2(fit)
    from scipy import stats

    assert meta.q_gen(ci.tau2_ci_lb, yi, vi, fit.X) == pytest.approx(stats.chi2.ppf(0.975, 39), rel=1e-9)
    assert meta.q_gen(ci.tau2_ci_ub, yi, vi, fit.X) == pytest.approx(stats.chi2.ppf(0.025, 39), rel=1e-9)
    assert ci.tau2_ci_lb < fit.tau2 < ci.tau2_ci_ub


def test_tau2_zero_gives_equal_effects_results():
    yi = np.array([0.2, 0.2, 0.2, 0.2])
    vi = np.array([0.01, 0.02, 0.03, 0.04])
    for method in meta.ESTIMATORS:
        fit = meta.random_effects(yi, vi, method=method)
        assert fit.tau2 == 0.0
        assert fit.estimate == pytest.approx(0.2)


def test_meta_regression_recovers_slope():
    rng = np.random.default_rng(3)
    k = 200
    x = rng.normal(size=k)
    vi = np.full(k, 0.01)
    yi = 0.2 + 0.1 * x + rng.normal(0, np.sqrt(vi + 0.005))
    fit = meta.random_effects(yi, vi, X=np.column_stack([np.ones(k), x]))
    assert abs(fit.beta[1] - 0.1) < 4 * fit.se[1]
    assert fit.QM == pytest.approx((fit.beta[1] / fit.se[1]) ** 2)


def test_collinear_moderators_error():
    yi, vi = _data()
    x = np.arange(len(yi), dtype=float)
    with pytest.raises(ValueError, match="collinear"):
        meta.random_effects(yi, vi, X=np.column_stack([np.ones_like(x), x, 2 * x]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="vi must be > 0"):
        meta.random_effects([0.1, 0.2], [0.01, 0.0])
    with pytest.raises(ValueError, match="unknown tau"):
        meta.random_effects([0.1, 0.2], [0.01, 0.02], method="XX")
    with pytest.raises(ValueError, match="unknown test"):
        meta.random_effects([0.1, 0.2], [0.01, 0.02], test="hksj2")


# --- property-based invariants -------------------------------------------------------------------

effect_sets = st.integers(3, 40).flatmap(
    lambda k: st.tuples(
        arrays(np.float64, k, elements=st.floats(-1.5, 1.5, allow_nan=False)),
        arrays(np.float64, k, elements=st.floats(1e-3, 0.5, allow_nan=False)),
    )
)


@settings(max_examples=60, deadline=None)
@given(effect_sets, st.sampled_from(["REML", "DL", "PM", "ML"]), st.randoms(use_true_random=False))
def test_invariant_to_row_order(data, method, rnd):
    yi, vi = data
    perm = np.array(rnd.sample(range(len(yi)), len(yi)))
    a = meta.random_effects(yi, vi, method=method)
    b = meta.random_effects(yi[perm], vi[perm], method=method)
    assert b.estimate == pytest.approx(a.estimate, rel=1e-8, abs=1e-10)
    assert b.tau2 == pytest.approx(a.tau2, rel=1e-6, abs=1e-10)


@settings(max_examples=60, deadline=None)
@given(effect_sets, st.floats(-2, 2), st.sampled_from(["REML", "DL", "PM", "SJ", "HE"]))
def test_shift_equivariance(data, shift, method):
    yi, vi = data
    a = meta.random_effects(yi, vi, method=method)
    b = meta.random_effects(yi + shift, vi, method=method)
    assert b.estimate == pytest.approx(a.estimate + shift, rel=1e-7, abs=1e-8)
    assert b.tau2 == pytest.approx(a.tau2, rel=1e-6, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(effect_sets)
def test_fixed_tau2_zero_equals_equal_effects(data):
    yi, vi = data
    fe = meta.random_effects(yi, vi, method="FE")
    re0 = meta.random_effects(yi, vi, method="REML", tau2=0.0)
    assert re0.estimate == pytest.approx(fe.estimate, rel=1e-12, abs=1e-14)
    assert re0.se[0] == pytest.approx(fe.se[0], rel=1e-12)


