"""Unit tests of the mixed model engine (alliancemeta.sessions.lmm) against dense brute-force REML/ML.

The brute force builds the full n x n marginal covariance V = I + Z Lambda Lambda' Z' from the documented theta
layout (client block first, lower triangle of Lambda column by column, then the therapist block) and evaluates
lme4's profiled deviance, lmerTest's (theta, sigma) deviance and vcov(beta) with dense linear algebra and finite
differences, independently of the engine's Woodbury recursions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliancemeta.sessions import lmm
from alliancemeta.sessions.lmm import MixedModelError, RandomTerm, fit_lmm

#: Central differences of smooth dense functions with step 1e-5 (gradients) or 1e-4 (Hessians): truncation
#: error ~1e-9 relative, round-off ~1e-9 on deviances of order 100.
FD_RTOL = 1e-6
#: Agreement of engine and brute force at the same theta: both direct solves, round-off only.
EXACT_RTOL = 1e-9
#: Satterthwaite df against a brute-force Hessian by plain central differences (error ~1e-7).
DF_RTOL = 1e-5


def simulate(seed: int, n_therapists=5, clients=4, sessions=6, slope_sd=0.7, therapist_sd=1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n_therapists):
        u = rng.normal(0, therapist_sd)
        for i in range(clients):
            b0, b1 = rng.normal(0, 1.5), rng.normal(0, slope_sd)
            n_i = int(rng.integers(sessions - 2, sessions + 3))
            x = rng.normal(size=n_i)
            s = np.arange(1, n_i + 1, dtype=float)
            y = 1.0 + 0.5 * x - 0.2 * s + u + b0 + b1 * x + rng.normal(0, 1.0, n_i)
            for k in range(n_i):
                rows.append((f"t{j}", f"t{j}c{i}", s[k], x[k], rng.normal(), y[k]))
    return pd.DataFrame(rows, columns=["therapist", "client", "session", "x", "z", "y"])


def factor(q: int, correlated: bool, theta: np.ndarray) -> np.ndarray:
    lam = np.zeros((q, q))
    pos = [(a, b) for b in range(q) for a in range(b, q)] if correlated else [(a, a) for a in range(q)]
    for value, (a, b) in zip(theta, pos, strict=True):
        lam[a, b] = value
    return lam


def n_theta(term: RandomTerm) -> int:
    q = len(term.names)
    return q * (q + 1) // 2 if term.correlated else q


class Dense:
    """Brute-force dense REML/ML for one data set and model."""

    def __init__(self, data, response, fixed, client, therapist, reml=True):
        self.y = data[response].to_numpy(float)
        n = self.y.size
        self.X = np.column_stack([np.ones(n), *(data[f].to_numpy(float) for f in fixed)])
        self.reml = reml
        self.levels = []
        for term in [client] + ([therapist] if therapist is not None else []):
            codes, uniq = pd.factorize(data[term.group], sort=True)
            cols = ([np.ones(n)] if term.intercept else []) + [data[s].to_numpy(float) for s in term.slopes]
            self.levels.append((term, codes, len(uniq), np.column_stack(cols)))

    def V(self, theta):
        n = self.y.size
        V = np.eye(n)
        k = 0
        for term, codes, _count, Z in self.levels:
            m = n_theta(term)
            lam = factor(Z.shape[1], term.correlated, theta[k : k + m])
            k += m
            D = lam @ lam.T
            same = codes[:, None] == codes[None, :]
            V += same * (Z @ D @ Z.T)
        return V

    def parts(self, theta):
        V = self.V(theta)
        Vi = np.linalg.inv(V)
        XVX = self.X.T @ Vi @ self.X
        beta = np.linalg.solve(XVX, self.X.T @ Vi @ self.y)
        e = self.y - self.X @ beta
        return V, XVX, beta, float(e @ Vi @ e)

    def deviance(self, theta):
        V, XVX, _, r2 = self.parts(theta)
        n, p = self.X.shape
        dof = n - p if self.reml else n
        dev = np.linalg.slogdet(V)[1] + dof * (1 + np.log(2 * np.pi * r2 / dof))
        return dev + (np.linalg.slogdet(XVX)[1] if self.reml else 0.0)

    def varpar_deviance(self, tau):
        """lmerTest's devfun_vp: deviance in (theta, sigma) with beta profiled."""
        theta, sigma = tau[:-1], tau[-1]
        V, XVX, _, r2 = self.parts(theta)
        n, p = self.X.shape
        dof = n - p if self.reml else n
        dev = np.linalg.slogdet(V)[1] + r2 / sigma**2 + dof * np.log(2 * np.pi * sigma**2)
        return dev + (np.linalg.slogdet(XVX)[1] if self.reml else 0.0)

    def covbeta(self, tau):
        _, XVX, _, _ = self.parts(tau[:-1])
        return tau[-1] ** 2 * np.linalg.inv(XVX)


def fd_gradient(f, x, h=1e-5):
    return np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.size)])


def fd_hessian(f, x, h=1e-4):
    k = x.size
    H = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            ei, ej = h * np.eye(k)[i], h * np.eye(k)[j]
            H[i, j] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h * h)
    return 0.5 * (H + H.T)


MODELS = {
    "intercepts": (RandomTerm("client"), RandomTerm("therapist"), True),
    "slope_corr": (RandomTerm("client", ("x",)), RandomTerm("therapist"), True),
    "slope_diag": (RandomTerm("client", ("x",), correlated=False), RandomTerm("therapist"), True),
    "two_slopes_no_therapist": (RandomTerm("client", ("x", "session")), None, True),
    "therapist_slope": (RandomTerm("client", ("x",)), RandomTerm("therapist", ("x",)), True),
    "no_intercept_slope": (RandomTerm("client"), RandomTerm("therapist", ("x",), intercept=False), True),
    "slope_corr_ml": (RandomTerm("client", ("x",)), RandomTerm("therapist"), False),
}


@pytest.fixture(scope="module")
def small():
    return simulate(7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_matches_dense_brute_force(small, name):
    client, therapist, reml = MODELS[name]
    fit = fit_lmm(small, "y", ["x", "session"], client, therapist, reml=reml, label=name)
    dense = Dense(small, "y", ["x", "session"], client, therapist, reml=reml)
    theta = fit.theta
    # the reported log-likelihood is the dense one at the reported theta
    np.testing.assert_allclose(-2 * fit.loglik, dense.deviance(theta), rtol=EXACT_RTOL)
    # theta is a stationary point of the dense deviance (the deviance is even in a vanishing diagonal element)
    grad = fd_gradient(dense.deviance, theta)
    np.testing.assert_allclose(grad, 0.0, atol=1e-5 * max(1.0, abs(fit.deviance)))
    # fixed effects and vcov: GLS at theta
    _, XVX, beta, r2 = dense.parts(theta)
    n, p = dense.X.shape
    sigma2 = r2 / (n - p if reml else n)
    np.testing.assert_allclose(fit.estimate, beta, rtol=EXACT_RTOL, atol=1e-12)
    np.testing.assert_allclose(fit.sigma**2, sigma2, rtol=EXACT_RTOL)
    np.testing.assert_allclose(fit.vcov, sigma2 * np.linalg.inv(XVX), rtol=1e-8, atol=1e-14)
    # Satterthwaite: lmerTest's recipe on the dense functions
    tau = np.r_[theta, fit.sigma]
    H = fd_hessian(dense.varpar_deviance, tau)
    vals, vecs = np.linalg.eigh(H)
    pos = vals > lmm.HESSIAN_EIGEN_TOL
    A = 2 * (vecs[:, pos] / vals[pos]) @ vecs[:, pos].T
    J = np.array([(dense.covbeta(tau + 1e-6 * e) - dense.covbeta(tau - 1e-6 * e)) / 2e-6 for e in np.eye(tau.size)])
    np.testing.assert_allclose(fit.jacobian, J, rtol=1e-5, atol=1e-7 * np.abs(J).max())
    for k in range(p):
        L = np.eye(p)[k]
        g = np.einsum("i,kij,j->k", L, J, L)
        df = 2 * (L @ fit.vcov @ L) ** 2 / (g @ A @ g)
        np.testing.assert_allclose(fit.df[k], df, rtol=DF_RTOL, err_msg=f"{name} df of {fit.terms[k]}")


@pytest.mark.parametrize("name", ["slope_corr", "therapist_slope", "two_slopes_no_therapist", "slope_corr_ml"])
def test_analytic_gradient_and_jacobian(small, name, monkeypatch):
    """The engine's gradient of the profiled deviance and d vcov / d theta at an arbitrary theta."""
    client, therapist, reml = MODELS[name]
    dense = Dense(small, "y", ["x"], client, therapist, reml=reml)
    captured = {}

    def capture(problem, label):
        captured["problem"] = problem
        raise RuntimeError("captured")

    monkeypatch.setattr(lmm, "_optimise", capture)
    with pytest.raises(RuntimeError, match="captured"):
        fit_lmm(small, "y", ["x"], client, therapist, reml=reml)
    problem = captured["problem"]
    rng = np.random.default_rng(1)
    theta = rng.uniform(0.2, 1.2, problem.m) * rng.choice([-1.0, 1.0], problem.m)
    ev = problem.evaluate(theta, derivatives=True, jacobian=True)
    np.testing.assert_allclose(ev.deviance, dense.deviance(theta), rtol=EXACT_RTOL)
    np.testing.assert_allclose(problem.profiled_gradient(ev), fd_gradient(dense.deviance, theta), rtol=FD_RTOL,
                               atol=1e-7)  # fmt: skip
    # d (X'V^-1 X)^-1 / d theta_k = phi omega_k phi; the engine centres X, so compare on its scale
    fd = np.array(
        [(problem.evaluate(theta + 1e-6 * e).phi - problem.evaluate(theta - 1e-6 * e).phi) / 2e-6
         for e in np.eye(theta.size)]
    )  # fmt: skip
    np.testing.assert_allclose(np.einsum("ij,kjl,lm->kim", ev.phi, ev.omega, ev.phi), fd, rtol=1e-5, atol=1e-10)


def test_batched_cholesky_and_solve():
    rng = np.random.default_rng(2)
    k, n = 3, 50
    B = rng.normal(size=(n, k, k))
    A = B @ B.transpose(0, 2, 1) + np.eye(k)
    L, logdet = lmm._chol(A.transpose(1, 2, 0))
    np.testing.assert_allclose(L.transpose(2, 0, 1), np.linalg.cholesky(A), rtol=1e-12)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(A)[1], rtol=1e-12)
    rhs = rng.normal(size=(k, n, 4))
    X = lmm._fsolve(L, rhs)
    np.testing.assert_allclose(np.einsum("nab,bnm->anm", np.linalg.cholesky(A), X), rhs, atol=1e-12)


def test_invariant_to_row_order_and_labels(small):
    client, therapist, _ = MODELS["slope_corr"]
    fit = fit_lmm(small, "y", ["x", "session"], client, therapist)
    shuffled = small.sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled["client"] = "id_" + shuffled["client"].str[::-1]  # other labels, other sort order
    again = fit_lmm(shuffled, "y", ["x", "session"], client, therapist)
    np.testing.assert_allclose(again.estimate, fit.estimate, rtol=1e-9)
    np.testing.assert_allclose(again.se, fit.se, rtol=1e-7)
    np.testing.assert_allclose(again.df, fit.df, rtol=1e-6)
    np.testing.assert_allclose(again.loglik, fit.loglik, rtol=1e-12)


def test_same_input_same_bits(small):
    client, therapist, _ = MODELS["slope_corr"]
    a = fit_lmm(small, "y", ["x"], client, therapist)
    b = fit_lmm(small, "y", ["x"], client, therapist)
    assert a.estimate.tobytes() == b.estimate.tobytes()
    assert a.df.tobytes() == b.df.tobytes()


@settings(max_examples=8, deadline=None)
@given(scale=st.floats(0.01, 100.0), shift=st.floats(-1e3, 1e3))
def test_affine_response(scale, shift):
    """y -> a y + c: slopes scale by a, the intercept to a b0 + c; theta, t statistics and df are unchanged."""
    data = simulate(11, n_therapists=4, clients=3)
    client, therapist = RandomTerm("client", ("x",), correlated=False), RandomTerm("therapist")
    fit = fit_lmm(data, "y", ["x"], client, therapist)
    moved = fit_lmm(data.assign(y=scale * data["y"] + shift), "y", ["x"], client, therapist)
    np.testing.assert_allclose(moved.estimate[1:], scale * fit.estimate[1:], rtol=1e-6)
    np.testing.assert_allclose(moved.estimate[0], scale * fit.estimate[0] + shift, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(moved.theta, fit.theta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moved.stat[1:], fit.stat[1:], rtol=1e-5)
    np.testing.assert_allclose(moved.df, fit.df, rtol=1e-4)


def test_singular_fit_reported():
    data = simulate(5, therapist_sd=0.0, slope_sd=0.0)
    fit = fit_lmm(data, "y", ["x"], RandomTerm("client", ("x",), correlated=False), RandomTerm("therapist"))
    assert fit.converged
    if fit.singular:
        assert any("singular" in note for note in fit.notes)
    boundary = [v for v in fit.theta if v < lmm.SINGULAR_TOL]
    assert fit.singular == bool(boundary)
    assert all(v >= 0 for v in fit.theta)  # lme4's parameter region


def test_contrast_and_tables(small):
    fit = fit_lmm(small, "y", ["x", "session"], RandomTerm("client"), RandomTerm("therapist"))
    row = fit.contrast({"x": 1.0})
    k = fit.terms.index("x")
    assert row.estimate == pytest.approx(fit.estimate[k])
    assert row.df == pytest.approx(fit.df[k])
    assert row.pval == pytest.approx(fit.pval[k])
    both = fit.contrast({"x": 1.0, "session": -1.0}, level=0.9)
    same = fit.contrast([0.0, 1.0, -1.0], level=0.9)
    assert both.df == pytest.approx(same.df) and both.ci_lb == pytest.approx(same.ci_lb)
    assert both.ci_ub - both.estimate == pytest.approx(both.estimate - both.ci_lb)
    with pytest.raises(MixedModelError, match="unknown terms"):
        fit.contrast({"nope": 1.0})
    table = fit.coefficients()
    assert list(table.columns) == ["term", "estimate", "se", "df", "stat", "pval", "ci_lb", "ci_ub"]
    vc = fit.variance_components()
    assert list(vc["group"]) == ["client", "therapist", "Residual"]
    np.testing.assert_allclose(vc["sdcor"] ** 2, vc["vcov"], rtol=1e-12)


# ---- error paths ------------------------------------------------------------------------------------------------


def fit_small(data, **kwargs):
    args = {"response": "y", "fixed": ["x"], "client": RandomTerm("client"), "therapist": RandomTerm("therapist")}
    args.update(kwargs)
    return fit_lmm(data, label="test_model", **args)


def test_missing_value_is_named(small):
    bad = small.copy()
    bad.loc[3, "x"] = np.nan
    with pytest.raises(MixedModelError, match=r"'test_model'.*column 'x'.*1 missing"):
        fit_small(bad)


def test_missing_column_and_label(small):
    with pytest.raises(MixedModelError, match="no column 'nope'"):
        fit_small(small, fixed=["nope"])
    bad = small.copy()
    bad.loc[0, "client"] = None
    with pytest.raises(MixedModelError, match="missing label"):
        fit_small(bad)


def test_client_under_two_therapists(small):
    bad = small.copy()
    bad.loc[0, "therapist"] = "t4" if bad.loc[0, "therapist"] != "t4" else "t3"
    with pytest.raises(MixedModelError, match="more than one therapist"):
        fit_small(bad)


def test_too_few_groups(small):
    one = small.assign(therapist="t0")
    with pytest.raises(MixedModelError, match="'therapist' has 1 level"):
        fit_small(one)
    with pytest.raises(MixedModelError, match="random effects for"):
        fit_small(small.groupby("client").head(2), client=RandomTerm("client", ("x", "session")))


def test_collinear_fixed_effects(small):
    with pytest.raises(MixedModelError, match="collinear"):
        fit_small(small.assign(x2=2 * small["x"] + 1), fixed=["x", "x2"])
    with pytest.raises(MixedModelError, match="collinear"):
        fit_small(small.assign(c=3.0), fixed=["x", "c"])


def test_exact_fit_is_an_error_not_a_traceback(small):
    exact = small.assign(y=1.0 + 2.0 * small["x"])
    with pytest.raises(MixedModelError, match="test_model"):
        fit_small(exact)


def test_non_convergence_raises(small, monkeypatch):
    monkeypatch.setattr(lmm, "MAX_NEWTON", 0)
    monkeypatch.setattr(lmm, "MAX_LBFGS", 1)
    with pytest.raises(MixedModelError, match="did not converge"):
        fit_small(small, client=RandomTerm("client", ("x",)))


def test_table_rows(small):
    fits = {
        "within_between": fit_lmm(small, "y", ["x", "session"], RandomTerm("client"), RandomTerm("therapist")),
        "slope": fit_lmm(small, "y", ["x"], RandomTerm("client", ("x",)), None),
    }
    rows = lmm.mixed_models_rows(fits, contrasts={"within_between": {"x_minus_session": {"x": 1, "session": -1}}},
                                 rename={"session": "time"})  # fmt: skip
    assert tuple(rows.columns) == lmm.MIXED_MODEL_COLUMNS
    assert list(rows["term"]) == ["x", "time", "x_minus_session", "x"]
    assert list(rows["model"]) == ["within_between"] * 3 + ["slope"]
    wb = fits["within_between"]
    np.testing.assert_allclose(rows["df"].iloc[:2], wb.df[1:])
    np.testing.assert_allclose(rows["estimate"].iloc[2], wb.coef("x") - wb.coef("session"))
    variances = lmm.variance_rows(fits)
    assert tuple(variances.columns) == lmm.VARIANCE_COLUMNS
    assert list(variances["group"]) == ["client", "therapist", "Residual", "client", "client", "client", "Residual"]
