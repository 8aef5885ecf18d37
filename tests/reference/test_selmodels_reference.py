"""Selection models against metafor 3.8-1's selmodel (fixture: tests/reference/selmodels.json, made by
tests/reference/refs_selmodels.R).

Each case is one dataset and one weight function.  ``refined`` holds metafor's fit refined to the exact
maximum of metafor's likelihood (see the R script's header: selmodel's optimisers stop short of it and its
integrals are inaccurate at the default tolerance); ``metafor_nlminb`` and ``metafor_default`` are
selmodel's own output, compared here only to document how far they are from the maximum.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from conftest import ATOL, RTOL, as_array, assert_close, load_ref

from alliancemeta.studies.bias.selection_table import TYPES, selection_models_table
from alliancemeta.studies.bias.selmodels import selmodel
from tests.unit.studies.selection_settings import selection_kwargs

REF = load_ref("selmodels")["cases"]
DATASETS: dict = REF["datasets"]
MODELS: dict = REF["models"]
#: A log-likelihood at the optimum is the same number whichever side computed it: absolute 1e-8 covers the
#: round-off of sums over k = 401 terms and of R's piecewise integrals (rel.tol 1e-12).
LL_ATOL = 1e-8
#: metafor's own selmodel fit (default control) is within this of the maximum (relative, on beta). Worst case in
#: the fixture: bangertdrowns2004/beta, 5.75% (BFGS stops on a flat ridge 0.0034 below the maximum log-likelihood);
#: every other case is within 1.2%.
METAFOR_OWN_RTOL = 0.1


FITTED = [n for n, c in MODELS.items() if "refined" in c]
INTERIOR = [n for n in FITTED if not MODELS[n]["refined"]["at_bound"]]


@cache
def data(dataset: str):
    d = DATASETS[dataset]
    return as_array(d["yi"]), as_array(d["vi"])


@cache
def table(dataset: str):
    return selection_models_table(*data(dataset), **selection_kwargs()).set_index("type")


@cache
def fit(name: str):
    case = MODELS[name]
    kind, steps = TYPES[case["type"]]
    return selmodel(*data(case["dataset"]), kind, steps=steps)


def test_fixture_versions():
    versions = load_ref("selmodels")["versions"]
    assert versions["metafor"] == "3.8.1"


def test_fixture_covers_every_type_and_four_datasets():
    assert {c["type"] for c in MODELS.values()} == set(TYPES)
    assert len(DATASETS) >= 4


@pytest.mark.parametrize("name", FITTED)
def test_estimates(name):
    ref = MODELS[name]["refined"]
    r = fit(name)
    assert_close(r.beta, ref["beta"], what="beta")
    assert_close(r.tau2, ref["tau2"], what="tau2")
    assert_close(r.delta, ref["delta"], what="delta")
    assert_close(r.ll, ref["ll"], rtol=0, atol=LL_ATOL, what="ll")
    assert_close(r.LRT, ref["LRT"], rtol=RTOL, atol=LL_ATOL, what="LRT")
    assert r.LRT_df == ref["LRTdf"]
    assert_close(r.LRT_pval, ref["LRTp"], rtol=RTOL, atol=ATOL, what="LRT p-value")
    assert set(r.at_bound) == set(ref["at_bound"])


@pytest.mark.parametrize("name", FITTED)
def test_standard_errors_and_inference(name):
    """Inverse observed information in (beta, tau2, delta), as selmodel's Hessian (htransf = FALSE); a
    parameter held at its bound has none, and the others are conditional on it."""
    ref = MODELS[name]["refined"]
    r = fit(name)
    assert_close(r.se, ref["se"], what="se")
    assert_close(r.se_tau2, ref["se_tau2"], what="se_tau2")
    assert_close(r.se_delta, ref["se_delta"], what="se_delta")
    for field in ("zval", "pval", "ci_lb", "ci_ub"):
        assert_close(getattr(r, field), ref[field], what=field)


@pytest.mark.parametrize("name", FITTED)
def test_optimum_is_at_least_metafors(name):
    """Our maximum is never below the likelihood at metafor's own (nlminb) estimates."""
    ref = MODELS[name]["refined"]
    assert fit(name).ll >= ref["ll_at_metafor_nlminb"] - LL_ATOL


@pytest.mark.parametrize("name", [n for n in INTERIOR if "metafor_default" in MODELS[n]])
def test_metafors_own_fit_is_near_the_maximum(name):
    """selmodel's default fit (BFGS, integrate at rel.tol 1.2e-4) is close to, but not at, the maximum."""
    own = MODELS[name]["metafor_default"]
    if "error" in own or own["beta"] is None:
        pytest.skip(f"metafor's default fit failed: {own.get('error')}")
    assert_close(fit(name).beta, own["beta"], rtol=METAFOR_OWN_RTOL, atol=1e-3, what="beta vs metafor default")


@pytest.mark.parametrize("name", FITTED)
def test_table_row(name):
    case = MODELS[name]
    row = table(case["dataset"]).loc[case["type"]]
    ref = case["refined"]
    if "delta" in ref["at_bound"]:
        assert np.isnan(row["estimate"]) and "bound" in row["note"]
        return
    assert_close(row["estimate"], ref["beta"], what="estimate")
    assert_close([row["ci_lb"], row["ci_ub"]], [ref["ci_lb"], ref["ci_ub"]], what="ci")
    assert_close([float(x) for x in row["delta"].split(";")], ref["delta"], what="delta")
