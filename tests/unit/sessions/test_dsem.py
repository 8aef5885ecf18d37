"""The ``lagged_latent`` model (DSEM-style): likelihood Op, session grid, model structure, summaries,
the detrended lagged MixedLM and (slow) recovery in a small simulation."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from alliancemeta.core.settings import SamplerSettings
from alliancemeta.sessions import dsem
from alliancemeta.sessions.dsem_likelihood import _kernel_python, lagged_latent_loglik, loglik_reference
from alliancemeta.sessions.synthetic import simulate_sessions

#: The kernel and the direct SciPy evaluation sum the same terms in a different order.
LOGP_RTOL = 1e-10
#: Central differences with h = 1e-6 on a log-likelihood of about 100: truncation ~h^2, round-off
#: ~1e-16 * 100 / h = 1e-8.
FD_STEP = 1e-6
FD_ATOL = 1e-6


def random_problem(rng: np.random.Generator, n_clients: int, max_len: int = 7):
    """A random grid (clients of 1..max_len cells, some missing values) and parameter values."""
    lens = rng.integers(1, max_len + 1, n_clients)
    n = int(lens.sum())
    cell_client = np.repeat(np.arange(n_clients), lens)
    first = np.zeros(n, dtype=bool)
    first[np.concatenate([[0], np.cumsum(lens)[:-1]])] = True
    time = rng.normal(0.0, 3.0, n)
    a_obs, y_obs = rng.normal(size=n), rng.normal(size=n)
    ia = np.flatnonzero(rng.random(n) < 0.2)
    iy = np.flatnonzero(rng.random(n) < 0.2)
    a_obs[ia] = 0.0
    y_obs[iy] = 0.0
    theta = np.array([
        rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(-0.4, 0.4),  # phi_a, phi_y, delta
        rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0), rng.uniform(-0.8, 0.8),  # s_a, s_y, rho
        rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0), rng.uniform(-0.8, 0.8),  # s0_a, s0_y, rho0
        rng.normal(0.0, 0.5), rng.uniform(0.0, 1.0),  # beta_w, sd_b
    ])  # fmt: skip
    params = [rng.normal(size=n_clients) for _ in range(2)] + [rng.normal(0, 0.2, n_clients) for _ in range(2)]
    params += [rng.normal(size=ia.size), rng.normal(size=iy.size), theta]
    data = [cell_client, time, first, a_obs, y_obs, ia, iy]
    return params, data


# --- the likelihood Op ------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_clients=st.integers(1, 8))
def test_kernel_equals_the_direct_likelihood(seed, n_clients):
    params, data = random_problem(np.random.default_rng(seed), n_clients)
    logp = float(_kernel_python(*params, *data)[0])
    np.testing.assert_allclose(logp, loglik_reference(*params, *data), rtol=LOGP_RTOL)


def test_kernel_gradient_matches_finite_differences():
    params, data = random_problem(np.random.default_rng(7), 6)
    out = _kernel_python(*params, *data)
    for i, p in enumerate(params):
        numeric = np.empty_like(p)
        for j in range(p.size):
            up = [x.copy() for x in params]
            dn = [x.copy() for x in params]
            up[i][j] += FD_STEP
            dn[i][j] -= FD_STEP
            numeric[j] = (loglik_reference(*up, *data) - loglik_reference(*dn, *data)) / (2 * FD_STEP)
        np.testing.assert_allclose(out[1 + i], numeric, atol=FD_ATOL, err_msg=f"input {i}")


def test_without_random_slopes_each_cell_is_a_bivariate_normal():
    """sd_b = 0: the marginal over the slope is the product of per-cell bivariate normal densities."""
    params, data = random_problem(np.random.default_rng(3), 5)
    params[-1][10] = 0.0
    la, ly, ga, gy, a_miss, y_miss, theta = params
    cc, time, first, a, y, ia, iy = (np.array(d) for d in data)
    a[ia], y[iy] = a_miss, y_miss
    phi_a, phi_y, delta, s_a, s_y, rho, s0_a, s0_y, rho0, beta_w, _ = theta
    da = a - la[cc] - ga[cc] * time
    dy = y - ly[cc] - gy[cc] * time
    total = 0.0
    for n in range(cc.size):
        if first[n]:
            x, cov = (da[n], dy[n]), [[s0_a**2, rho0 * s0_a * s0_y], [rho0 * s0_a * s0_y, s0_y**2]]
        else:
            x = (da[n] - phi_a * da[n - 1] - delta * dy[n - 1], dy[n] - phi_y * dy[n - 1] - beta_w * da[n - 1])
            cov = [[s_a**2, rho * s_a * s_y], [rho * s_a * s_y, s_y**2]]
        total += stats.multivariate_normal([0, 0], cov).logpdf(x)
    np.testing.assert_allclose(float(_kernel_python(*params, *data)[0]), total, rtol=LOGP_RTOL)


@pytest.mark.parametrize(("index", "value"), [(3, 0.0), (4, -1.0), (5, 1.0), (8, -1.0)])
def test_parameters_outside_the_support_give_zero_density(index, value):
    """An SD of 0 or a correlation of +-1 (a sampler's extreme step) is -inf, never an exception."""
    params, data = random_problem(np.random.default_rng(2), 3)
    params[-1][index] = value
    out = _kernel_python(*params, *data)
    assert out[0] == -np.inf and all(np.all(g == 0) for g in out[1:])


@pytest.mark.parametrize("mode", ["FAST_RUN", "NUMBA"])
def test_op_gradient_through_pytensor(mode):
    """pytensor.grad of the Op (Python ``perform`` and the numba dispatch) returns the kernel's gradient."""
    params, data = random_problem(np.random.default_rng(11), 4)
    xs = [pt.dvector(f"x{i}") for i in range(len(params))]
    logp = lagged_latent_loglik(*xs, *(pt.constant(d) for d in data))[0]
    f = pytensor.function(xs, [logp, *pytensor.grad(3.0 * logp, xs)], mode=mode)
    got = f(*params)
    want = _kernel_python(*params, *data)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for g, w in zip(got[1:], want[1:], strict=True):
        np.testing.assert_allclose(g, 3.0 * w, rtol=1e-12, atol=1e-12)


# --- the session grid -------------------------------------------------------------------------------


def small_frame():
    return pd.DataFrame({
        "client": ["b", "b", "b", "a", "a", "a"], "session": [2, 5, 3, 1, 2, 4],
        "alliance": [10.0, 12.0, np.nan, 9.0, 8.0, 11.0], "outcome": [50.0, 40.0, 45.0, 60.0, np.nan, 55.0],
    })  # fmt: skip


def test_grid_fills_missed_sessions_and_keeps_every_value_in_its_cell():
    g = dsem.session_grid(small_frame(), outcome_lower_is_better=True, time_centre=3.0)
    assert g.clients == ("a", "b")
    np.testing.assert_array_equal(g.cell_client, [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(g.session, [1, 2, 3, 4, 2, 3, 4, 5])  # a3 and b4 were missed
    np.testing.assert_array_equal(g.first, [True, False, False, False, True, False, False, False])
    np.testing.assert_array_equal(g.time, g.session - 3.0)
    alliance = g.alliance * g.alliance_sd + g.alliance_mean
    outcome = g.outcome * g.outcome_sd + g.outcome_mean
    np.testing.assert_allclose(alliance, [9, 8, np.nan, 11, 10, np.nan, np.nan, 12])
    np.testing.assert_allclose(outcome, [-60, np.nan, np.nan, -55, -50, -45, np.nan, -40])  # aligned: -outcome
    assert (g.n_rows, g.n_cells, g.n_missed_sessions, g.n_lagged_pairs) == (6, 8, 2, 0)
    np.testing.assert_allclose(np.nanmean(g.alliance), 0, atol=1e-12)
    np.testing.assert_allclose(np.nanstd(g.alliance), 1)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 12)), min_size=2, max_size=30, unique=True))
def test_grid_invariants(pairs):
    """Every row lands in the cell of its client and session; cells run without gaps per client."""
    rng = np.random.default_rng(len(pairs))
    frame = pd.DataFrame(pairs, columns=["client", "session"]).astype({"client": str})
    frame["alliance"] = rng.normal(size=len(frame))
    frame["outcome"] = rng.normal(size=len(frame))
    g = dsem.session_grid(frame, outcome_lower_is_better=False)
    assert g.n_cells == sum(s.max() - s.min() + 1 for _, s in frame.groupby("client")["session"])
    assert g.n_rows == len(frame) and g.n_missed_sessions == g.n_cells - len(frame)
    cell = {(g.clients[c], int(s)): n for n, (c, s) in enumerate(zip(g.cell_client, g.session, strict=True))}
    for row in frame.itertuples():
        n = cell[(row.client, row.session)]
        assert np.isclose(g.alliance[n] * g.alliance_sd + g.alliance_mean, row.alliance)
    steps = np.diff(g.session)[~g.first[1:]]
    assert (steps == 1).all()


def test_grid_refuses_duplicates_and_constant_scores():
    frame = small_frame()
    with pytest.raises(dsem.LaggedLatentError, match="twice"):
        dsem.session_grid(pd.concat([frame, frame.iloc[:1]]), outcome_lower_is_better=True)
    with pytest.raises(dsem.LaggedLatentError, match="must vary"):
        dsem.session_grid(frame.assign(alliance=10.0), outcome_lower_is_better=True)


# --- the model --------------------------------------------------------------------------------------


def fast_logp(model, point) -> float:
    """The model's log density without C compilation (that took minutes on a busy machine): the terms
    one by one in FAST_COMPILE mode (Python implementations; its Add of 32+ terms fails in NumPy)."""
    return float(sum(np.sum(t) for t in model.compile_logp(sum=False, mode="FAST_COMPILE")(point)))


@pytest.fixture(scope="module")
def simulated():
    return simulate_sessions(13, n_sites=2, n_therapists=6, n_clients=60)


def test_model_structure_and_finite_log_density(simulated):
    frame, _ = simulated
    model = dsem.build_lagged_latent_model(frame, outcome_lower_is_better=True)
    grid = dsem.session_grid(frame, outcome_lower_is_better=True)
    assert len(model.coords["client"]) == frame["client"].nunique()
    assert len(model.coords["therapist"]) == frame["therapist"].nunique()
    assert len(model.coords["alliance_cell"]) == int(np.isnan(grid.alliance).sum()) > grid.n_missed_sessions
    assert len(model.coords["outcome_cell"]) == int(np.isnan(grid.outcome).sum())
    assert set(dsem.reported_names(model)) == set(dsem.TERMS) | set(dsem.VARIANCE_PARAMETERS)
    point = model.initial_point()
    assert np.isfinite(fast_logp(model, point))  # the gradient is checked on the Op above


def test_model_variants_drop_their_parameters(simulated):
    frame, _ = simulated
    model = dsem.build_lagged_latent_model(frame.drop(columns="therapist"), outcome_lower_is_better=True,
                                           detrend=False, random_slopes=False)  # fmt: skip
    names = set(dsem.reported_names(model))
    assert "therapist" not in model.coords
    assert not names & {"alliance_therapist", "sd_therapist_alliance", "sd_therapist_outcome", "sd_alliance_trend",
                        "sd_outcome_trend", "trend_correlation", "sd_within_slope"}  # fmt: skip
    assert {"alliance_within", "outcome_to_alliance", "session"} <= names
    assert np.isfinite(fast_logp(model, model.initial_point()))


def test_too_few_consecutive_sessions_are_refused():
    frame = pd.DataFrame({"client": list("aabbcc"), "session": [1, 3, 1, 3, 1, 2],
                          "alliance": [1.0, 2, 3, 4, 5, 6], "outcome": [6.0, 5, 4, 3, 2, 1]})  # fmt: skip
    with pytest.raises(dsem.LaggedLatentError, match="lagged_latent: only 1 pairs of consecutive sessions"):
        dsem.build_lagged_latent_model(frame, outcome_lower_is_better=True)


def fake_posterior(names, rng, with_therapist=True):
    values = {n: rng.normal(i, 1.0 + i / 10, (4, 250)) for i, n in enumerate(names)}
    if not with_therapist:
        values.pop("alliance_therapist", None)
    return az.from_dict(posterior=values)


def test_summary_of_the_posterior():
    rng = np.random.default_rng(5)
    idata = fake_posterior([*dsem.TERMS, *dsem.VARIANCE_PARAMETERS], rng)
    table = dsem.lagged_latent_summary(idata, level=0.9)
    assert tuple(table.columns) == dsem.SUMMARY_COLUMNS
    assert tuple(table["name"]) == (*dsem.TERMS, *dsem.VARIANCE_PARAMETERS)
    draws = idata.posterior["alliance_between"].to_numpy().ravel()
    r = table.set_index("name").loc["alliance_between"]
    np.testing.assert_allclose([r.estimate, r.se], [draws.mean(), draws.std(ddof=1)])
    np.testing.assert_allclose([r.ci_lb, r.ci_ub], np.quantile(draws, [0.05, 0.95]))
    assert (table["r_hat"] < 1.02).all()  # independent draws
    no_therapist = dsem.lagged_latent_summary(fake_posterior(dsem.TERMS, rng, with_therapist=False), 0.95)
    assert "alliance_therapist" not in set(no_therapist["name"])
    with pytest.raises(ValueError, match="level"):
        dsem.lagged_latent_summary(idata, level=95)


# --- slow: sampling and recovery --------------------------------------------------------------------


@pytest.mark.slow
def test_sampling_recovers_the_within_effect():
    """One fit of 80 SYNTHETIC clients (the generator's feedback, trends, random slopes, gaps and blank cells): the
    model passes the one MCMC path's checks and its interval for the within-client lagged effect covers the truth."""
    frame, truth = simulate_sessions(21, n_sites=2, n_therapists=8, n_clients=80)
    settings = SamplerSettings(draws=1000, tune=1000, chains=4, sampler="nutpie", target_accept=0.9,
                               retry_target_accept=0.99, section="sessions_bayes")  # fmt: skip
    fit = dsem.fit_lagged_latent(frame, outcome_lower_is_better=True, seed=7, settings=settings, detrend=True,
                                 random_slopes=True)  # fmt: skip
    assert fit.diagnostics.ok and fit.n_clients == 80
    row = dsem.lagged_latent_summary(fit.idata, 0.95).set_index("name").loc["alliance_within"]
    true = truth["reported"]["alliance_within_lag"]  # the estimand of lagged_latent's alliance_within
    assert row.ci_lb <= true <= row.ci_ub
