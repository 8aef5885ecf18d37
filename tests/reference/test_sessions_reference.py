"""The pipeline's session models against lme4 + lmerTest (tests/reference/sessions.json from refs_sessions.R).

Every case is one model specification the pipeline fits, built here by the package itself (data preparation,
:func:`alliancemeta.sessions.models.model_specs` with the case's settings and the covariates age and gender) and
compared with lme4 on R's own, independent data preparation.  R's fits are BOBYQA (rhoend = 1e-12) polished by
Newton steps on lme4's own deviance function, so both sides report the exact optimum (BOBYQA alone stopped up to
2e-8 short in log-likelihood, which moved small coefficients by up to 2e-5 relative).  Measured maxima over the
seven cases (relative): fixed effects 4.6e-7 (a covariate of 0.33 in ``therapist``), standard errors 2.4e-7,
Satterthwaite df 1.7e-6 and variances 1.1e-6 (both in the singular ``components`` fit, a 5 x 5 client covariance
at the boundary), residual SD 8e-9; log-likelihoods within 3e-11.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, assert_close, load_ref

from alliancemeta.sessions.data import add_covariates, decompose_alliance, read_session_table, session_centre
from alliancemeta.sessions.models import fit_model, model_specs

#: Fixed effects (measured 4.6e-7): both optima are exact; the rest is the optimisers' last digits along flat
#: directions of the REML surface.
FIXED_RTOL = 1e-6
#: Standard errors, t statistics and interval bounds (measured 2.4e-7).
SE_RTOL = 1e-5
#: Variances and SDs of the random effects and the residual (measured 1.1e-6).
VARIANCE_RTOL = 1e-5
#: Variances at the boundary: zero in one engine and ~1e-13 in the other, in outcome units squared.
VARIANCE_ATOL = 1e-8
#: Covariances relative to the product of the SDs, and correlations, absolute.
CORR_ATOL = 1e-5
#: lmerTest's df come from numDeriv's Richardson-extrapolated Hessian (relative error ~1e-7; measured 1.7e-6).
DF_RTOL = 1e-5
#: p-values compared on the -log10 scale (d log p / d t grows with t; p reaches 1e-30 here).
LOG10P_ATOL = 1e-4
LOGLIK_ATOL = 1e-8  # absolute, on REML log-likelihoods of about -13,000 (measured 3e-11)

REF = load_ref("sessions")["cases"]
#: case -> (model, detrend, random_slopes)
CASES = {
    "within_between": ("within_between", True, True),
    "within_between_no_slopes": ("within_between", True, False),
    "lagged": ("lagged", True, True),
    "lagged_no_detrend": ("lagged", False, True),
    "therapist": ("therapist", True, True),
    "components": ("components", True, True),
    "split": ("split", True, True),
}
#: R's names for the package's terms.
R_NAME = {"gender[T.male]": "gendermale"}


@pytest.fixture(scope="module")
def prepared():
    frame = read_session_table(ROOT / REF["data"]["path"])
    decomposed = decompose_alliance(frame, REF["data"]["outcome_lower_is_better"])
    return frame, *add_covariates(decomposed, REF["data"]["covariates"])


@pytest.fixture(scope="module")
def fits(prepared):
    _, decomposed, cov = prepared
    out = {}
    for case, (model, detrend, slopes) in CASES.items():
        spec = model_specs(decomposed, detrend=detrend, random_slopes=slopes, covariates=cov.terms)[model]
        out[case] = (spec, fit_model(spec))
    return out


def test_every_case_is_specified():
    assert set(CASES) | {"data"} == set(REF)


def test_data_preparation_matches(prepared, fits):
    frame, _, _ = prepared
    data = REF["data"]
    assert len(frame) == data["n_rows"]
    assert session_centre(frame) == pytest.approx(data["session_centre"], rel=1e-15)
    assert len(fits["lagged"][0].data) == data["n_lagged"]
    split = fits["split"][0].data
    assert len(split) == data["n_split"] and split["case"].nunique() == data["n_split_cases"]


def lme4_formula(spec) -> str:
    """The lme4 formula of a package specification (R's term names; random terms as refs_sessions.R writes them)."""
    fixed = " + ".join(R_NAME.get(t, t) for t in spec.fixed).replace("gendermale", "gender")
    upper = f"(1 | {spec.upper.group})"
    client = f"(1 + {' + '.join(spec.client.slopes)} | client)" if spec.client.slopes else "(1 | client)"
    return f"y ~ {fixed} + {upper} + {client}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_specification_is_the_pipelines(fits, case):
    spec, result = fits[case]
    assert " ".join(lme4_formula(spec).split()) == " ".join(REF[case]["formula"].split())
    assert result.n_available == REF[case]["n_rows"]
    assert spec.client.correlated


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_effects_and_satterthwaite(fits, case):
    _, result = fits[case]
    fit, ref = result.fit, REF[case]
    assert tuple(R_NAME.get(t, t) for t in fit.terms) == tuple(ref["terms"])
    assert fit.n_obs == ref["n_obs"] and fit.n_groups == ref["n_groups"]
    assert_close(fit.estimate, ref["estimate"], rtol=FIXED_RTOL, what=f"{case} beta")
    assert_close(fit.se, ref["se"], rtol=SE_RTOL, what=f"{case} se")
    assert_close(fit.stat, ref["t"], rtol=SE_RTOL, what=f"{case} t")
    assert_close(fit.df, ref["df"], rtol=DF_RTOL, what=f"{case} df")
    np.testing.assert_allclose(-np.log10(fit.pval), -np.log10(ref["pval"]), rtol=0, atol=LOG10P_ATOL)
    assert_close(fit.ci_lb, ref["ci_lb"], rtol=SE_RTOL, atol=1e-9, what=f"{case} ci_lb")
    assert_close(fit.ci_ub, ref["ci_ub"], rtol=SE_RTOL, atol=1e-9, what=f"{case} ci_ub")
    for name, c in ref.get("contrasts", {}).items():
        got = fit.contrast(c["L"], level=0.95)
        assert_close(got.estimate, c["estimate"], rtol=FIXED_RTOL, what=f"{case} {name}")
        assert_close([got.se, got.ci_lb, got.ci_ub], [c["se"], c["ci_lb"], c["ci_ub"]], rtol=SE_RTOL, what=name)
        assert_close(got.df, c["df"], rtol=DF_RTOL, what=f"{case} {name} df")


@pytest.mark.parametrize("case", sorted(CASES))
def test_variance_components_and_loglik(fits, case):
    _, result = fits[case]
    fit, ref = result.fit, REF[case]
    assert fit.singular == ref["singular"]
    vc = ref["varcorr"]
    ref_rows = {(g, v1, v2): (vcov, sdcor)
                for g, v1, v2, vcov, sdcor in zip(vc["grp"], vc["var1"], vc["var2"], vc["vcov"], vc["sdcor"],
                                                  strict=True)}  # fmt: skip
    ours = {(v.group, v.var1, v.var2): (v.vcov, v.sdcor) for v in fit.varcorr}
    assert set(ours) == set(ref_rows)
    for key, (vcov, sdcor) in ours.items():
        rv, rs = ref_rows[key]
        if key[2] is None:
            assert_close(vcov, rv, rtol=VARIANCE_RTOL, atol=VARIANCE_ATOL, what=f"{case} variance {key}")
        else:
            scale = ref_rows[(key[0], key[1], None)][1] * ref_rows[(key[0], key[2], None)][1]
            assert_close(vcov / scale, rv / scale, rtol=0, atol=CORR_ATOL, what=f"{case} covariance {key}")
            assert_close(sdcor, rs, rtol=0, atol=CORR_ATOL, what=f"{case} correlation {key}")
    assert_close(fit.sigma, ref["sigma"], rtol=VARIANCE_RTOL, what=f"{case} sigma")
    np.testing.assert_allclose(fit.loglik, ref["loglik"], rtol=0, atol=LOGLIK_ATOL)
    assert fit.loglik >= ref["loglik"] - 1e-10  # our optimum is never worse than lme4's
