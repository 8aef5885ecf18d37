"""The linear mixed model engine against lme4 + lmerTest (tests/reference/lmm.json from refs_lmm.R).

The fixture data follow the bundled SYNTHETIC session data (``make_lmm_data.py``); after the data were regenerated
with the realistic generator (blank cells, random alliance slopes) the fixture was regenerated and the measured
maxima below were re-checked (they stay within the same orders of magnitude; see the sessions notes).

Every case of the fixture is fitted from the same CSV that R read.  lme4 ran BOBYQA to rhoend = 1e-12; the engine
polishes its optimum with Newton steps on the analytic gradient.  Measured maxima over all cases (relative): fixed
effects 3e-7 (lagged), standard errors 2e-6, variance components 8e-6, Satterthwaite df 4e-6, log-likelihood 1e-10
(absolute), the last four in the case ``slope_session_corr`` (seven covariance parameters), where BOBYQA stops about
4e-6 short along the flat therapist direction (our log-likelihood is 1e-10 higher; a restart of nloptwrap's BOBYQA
from lme4's solution moves half-way to ours).  In every other case standard errors agree to 5e-7 and df to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import HERE, assert_close, load_ref
from make_lmm_data import lmm_sessions

from alliancemeta.sessions.lmm import LmmFit, RandomTerm, fit_lmm

#: Fixed effects: the REML optimum pins them to 3e-7 even where the variance parameters differ by 4e-6.
FIXED_RTOL = 1e-6
#: Standard errors, vcov, t statistics and interval bounds scale with the variance parameters (measured <= 2e-6).
SE_RTOL = 1e-5
#: Variances and SDs: measured up to 8e-6 (slope_session_corr, see the module docstring).
VARIANCE_RTOL = 1e-5
#: Variances that are zero in one engine and ~1e-13 in the other (boundary fits), in the units of the data.
VARIANCE_ATOL = 1e-8
#: Correlations of random effects (measured 1e-6).
CORR_ATOL = 1e-5
#: lmerTest's df come from numDeriv's Richardson-extrapolated Hessian (error ~1e-7 relative, e.g. 17.0000052
#: for the balanced sleepstudy model whose exact df is 17) and the engines' optima differ slightly (measured 4e-6).
DF_RTOL = 1e-5
#: p-values: d log p / d t is about t for large t, so the relative difference of a p-value is about t^2 times that
#: of t (p = 1e-23 at t = 18 in session effects): compared on the -log10 scale instead.
LOG10P_ATOL = 1e-4
LOGLIK_ATOL = 1e-8  # absolute, on log-likelihoods of about -12,400 (measured 1e-10)
#: theta: relative to max(|theta|, 1e-3): boundary elements are 0 here and up to 6e-8 in lme4.
THETA_ATOL = 1e-6
THETA_RTOL = 1e-5
#: lmerTest's d vcov / d varpar (numerical Jacobian) and A = 2 H^+ (numerical Hessian), non-singular fits only.
DERIV_RTOL = 1e-4

REF = load_ref("lmm")["cases"]
WB = ("alliance_within", "alliance_between", "alliance_therapist", "session")
R = RandomTerm
# case -> (data, response, fixed, client level, therapist level, REML)
SPECS = {
    "wb_intercepts": ("d", "y", WB, R("client"), R("therapist"), True),
    "wb_session_diag": ("d", "y", WB, R("client", ("session",), correlated=False), R("therapist"), True),
    "wb_slope_corr": ("d", "y", WB, R("client", ("alliance_within",)), R("therapist"), True),
    "wb_slope_diag": ("d", "y", WB, R("client", ("alliance_within",), correlated=False), R("therapist"), True),
    "therapist": (
        "d", "y", ("alliance_therapist", "alliance_between", "session"),
        R("client", ("session",), correlated=False), R("therapist"), True,
    ),
    "lagged": ("lagged", "y", ("alliance_within_lag", "outcome_lag", "session"), R("client"), R("therapist"), True),
    "slope_corr": ("d", "y_slope", WB, R("client", ("alliance_within",)), R("therapist"), True),
    "slope_diag": ("d", "y_slope", WB, R("client", ("alliance_within",), correlated=False), R("therapist"), True),
    "slope_corr_no_therapist": ("d", "y_slope", WB, R("client", ("alliance_within",)), None, True),
    "slope_corr_ml": ("d", "y_slope", WB, R("client", ("alliance_within",)), R("therapist"), False),
    "slope_session_corr": ("d", "y_slope", WB, R("client", ("alliance_within", "session")), R("therapist"), True),
    "slope_therapist_slope": (
        "d", "y_slope", WB, R("client", ("alliance_within",)),
        R("therapist", ("alliance_within",), correlated=False), True,
    ),
    "sleepstudy_intercept": ("sleep", "Reaction", ("Days",), R("Subject"), None, True),
    "sleepstudy_corr": ("sleep", "Reaction", ("Days",), R("Subject", ("Days",)), None, True),
    "sleepstudy_diag": ("sleep", "Reaction", ("Days",), R("Subject", ("Days",), correlated=False), None, True),
    "sleepstudy_corr_ml": ("sleep", "Reaction", ("Days",), R("Subject", ("Days",)), None, False),
    "sleepstudy_pair_singular": ("sleep", "Reaction", ("Days",), R("Subject", ("Days",)), R("pair"), True),
}  # fmt: skip


def lme4_term(term: RandomTerm) -> str:
    bar = "|" if term.correlated else "||"
    return f"({' + '.join(('1' if term.intercept else '0', *term.slopes))} {bar} {term.group})"


def lme4_formula(response, fixed, client, therapist) -> str:
    levels = ([therapist] if therapist is not None else []) + [client]
    return f"{response} ~ {' + '.join(fixed)} + {' + '.join(lme4_term(t) for t in levels)}"


@pytest.fixture(scope="module")
def data():
    d = pd.read_csv(HERE / "data" / "lmm_sessions.csv", dtype={"client": str, "therapist": str})
    sleep = pd.read_csv(HERE / "data" / "sleepstudy.csv", dtype={"Subject": str, "pair": str})
    return {"d": d, "lagged": d.dropna(subset=["outcome_lag", "alliance_within_lag"]), "sleep": sleep}


@pytest.fixture(scope="module")
def fits(data) -> dict[str, LmmFit]:
    out = {}
    for name, (frame, response, fixed, client, therapist, reml) in SPECS.items():
        out[name] = fit_lmm(data[frame], response, fixed, client, therapist, reml=reml, label=name)
    return out


def test_every_case_is_specified():
    assert set(SPECS) == set(REF)


def test_data_is_the_package_decomposition(data):
    """The CSV both engines fit is the package's decomposition and lag of the bundled data."""
    expected = lmm_sessions()
    got = data["d"]
    assert list(got.columns) == list(expected.columns)
    for col in ("therapist", "client"):
        assert (got[col] == expected[col]).all()
    numeric = [c for c in expected.columns if c not in ("therapist", "client")]
    np.testing.assert_allclose(got[numeric].to_numpy(float), expected[numeric].to_numpy(float), rtol=1e-15)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_specification_matches_r(case):
    _, response, fixed, client, therapist, reml = SPECS[case]
    ref = REF[case]
    assert lme4_formula(response, fixed, client, therapist) == ref["formula"]
    assert reml == (ref["REML"] == "TRUE")


@pytest.mark.parametrize("case", sorted(SPECS))
def test_fixed_effects(fits, case):
    fit, ref = fits[case], REF[case]
    assert fit.terms == tuple(ref["terms"])
    assert fit.n_obs == ref["n_obs"]
    assert fit.n_groups == ref["n_groups"]
    assert fit.converged
    assert_close(fit.estimate, ref["estimate"], rtol=FIXED_RTOL, what=f"{case} beta")
    assert_close(fit.se, ref["se"], rtol=SE_RTOL, what=f"{case} se")
    scale = np.outer(ref["se"], ref["se"])  # covariances compared as correlations (small ones are noise)
    assert_close(fit.vcov / scale, np.asarray(ref["vcov"]) / scale, rtol=0, atol=SE_RTOL, what=f"{case} vcov")
    assert_close(fit.stat, ref["t"], rtol=SE_RTOL, what=f"{case} t")


@pytest.mark.parametrize("case", sorted(SPECS))
def test_satterthwaite(fits, case):
    fit, ref = fits[case], REF[case]
    assert_close(fit.df, ref["df"], rtol=DF_RTOL, what=f"{case} Satterthwaite df")
    # p-values below the smallest normal double (R's pt reaches subnormals, SciPy returns 0) are not compared
    normal = np.asarray(ref["pval"], dtype=float) > np.finfo(float).tiny
    np.testing.assert_allclose(-np.log10(fit.pval[normal]), -np.log10(np.asarray(ref["pval"])[normal]), rtol=0,
                               atol=LOG10P_ATOL)  # fmt: skip
    assert np.all(fit.pval[~normal] < 1e-300)
    assert_close(fit.ci_lb, ref["ci_lb"], rtol=SE_RTOL, atol=1e-9, what=f"{case} ci_lb")
    assert_close(fit.ci_ub, ref["ci_ub"], rtol=SE_RTOL, atol=1e-9, what=f"{case} ci_ub")
    for name, c in ref.get("contrasts", {}).items():
        got = fit.contrast(c["L"], level=0.95)
        assert_close(got.estimate, c["estimate"], rtol=FIXED_RTOL, what=f"{case} {name}")
        assert_close([got.se, got.stat, got.ci_lb, got.ci_ub], [c["se"], c["t"], c["ci_lb"], c["ci_ub"]],
                     rtol=SE_RTOL, what=f"{case} {name}")  # fmt: skip
        assert_close(got.df, c["df"], rtol=DF_RTOL, what=f"{case} {name} df")
        np.testing.assert_allclose(-np.log10(got.pval), -np.log10(c["pval"]), rtol=0, atol=LOG10P_ATOL)


@pytest.mark.parametrize("case", sorted(SPECS))
def test_variance_components(fits, case):
    fit, ref = fits[case], REF[case]
    vc = ref["varcorr"]
    # lme4 names the separate terms of (1 + x || g) g, g.1, ...: the group is the part before the dot
    ref_rows = {
        (grp.split(".")[0], v1, v2): (vcov, sdcor)
        for grp, v1, v2, vcov, sdcor in zip(vc["grp"], vc["var1"], vc["var2"], vc["vcov"], vc["sdcor"], strict=True)
    }
    ours = {(v.group, v.var1, v.var2): (v.vcov, v.sdcor) for v in fit.varcorr}
    assert set(ours) == set(ref_rows)
    for key, (vcov, sdcor) in ours.items():
        rv, rs = ref_rows[key]
        if key[2] is None:
            assert_close(vcov, rv, rtol=VARIANCE_RTOL, atol=VARIANCE_ATOL, what=f"{case} variance {key}")
            assert_close(sdcor, rs, rtol=VARIANCE_RTOL, atol=np.sqrt(VARIANCE_ATOL), what=f"{case} sd {key}")
        else:
            scale = ref_rows[(key[0], key[1], None)][1] * ref_rows[(key[0], key[2], None)][1]
            assert_close(vcov / scale, rv / scale, rtol=0, atol=VARIANCE_RTOL, what=f"{case} covariance {key}")
            if fit.singular and abs(rs) > 1 - 1e-6:
                continue  # a correlation of +-1 at the boundary: its sign and value are fixed by the covariance
            assert_close(sdcor, rs, rtol=0, atol=CORR_ATOL, what=f"{case} correlation {key}")
    assert_close(fit.sigma, ref["sigma"], rtol=VARIANCE_RTOL, what=f"{case} sigma")
    theta = dict(zip(fit.theta_names, fit.theta, strict=True))
    ref_theta = dict(zip(np.atleast_1d(ref["theta_names"]), np.atleast_1d(ref["theta"]), strict=True))
    assert set(theta) == set(ref_theta)
    for name, value in ref_theta.items():
        np.testing.assert_allclose(theta[name], value, rtol=THETA_RTOL, atol=THETA_ATOL, err_msg=f"{case} {name}")
    assert fit.singular == ref["singular"]


@pytest.mark.parametrize("case", sorted(SPECS))
def test_loglik(fits, case):
    fit, ref = fits[case], REF[case]
    np.testing.assert_allclose(fit.loglik, ref["loglik"], rtol=0, atol=LOGLIK_ATOL)
    np.testing.assert_allclose(fit.deviance, ref["deviance"], rtol=0, atol=2 * LOGLIK_ATOL)
    assert fit.loglik >= ref["loglik"] - 1e-10  # our optimum is never worse than lme4's


@pytest.mark.parametrize("case", sorted(c for c in SPECS if not REF[c]["singular"]))
def test_lmertest_derivatives(fits, case):
    """lmerTest's numerical Jacobian of vcov(beta) and its A = 2 H^-1, mapped to our parameter order."""
    fit, ref = fits[case], REF[case]
    names = [*np.atleast_1d(ref["theta_names"]), "sigma"]
    ours = [*fit.theta_names, "sigma"]
    perm = [ours.index(n) for n in names]
    A = np.atleast_2d(np.asarray(ref["vcov_varpar"], dtype=float))
    assert_close(fit.vcov_varpar[np.ix_(perm, perm)], A, rtol=DERIV_RTOL, atol=DERIV_RTOL * np.abs(A).max(),
                 what=f"{case} vcov_varpar")  # fmt: skip
    p = len(fit.terms)
    J = np.asarray(ref["jacobian"], dtype=float).reshape(len(names), p, p)
    assert_close(fit.jacobian[perm], J, rtol=DERIV_RTOL, atol=DERIV_RTOL * np.abs(J).max(), what=f"{case} jacobian")
