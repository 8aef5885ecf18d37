import json
import re
from pathlib import Path

import numpy as np
import pytest

from alliancemeta.core.inputs import read_studies
from alliancemeta.studies.regression import fit_moderators, r_squared

ROOT = Path(__file__).resolve().parents[3]
RTOL = 1e-6  # SPEC §6 agreement with metafor


def _metareg_cases():
    cases = json.loads((ROOT / "tests/reference/meta.json").read_text())["cases"]
    return {name: case for name, case in cases.items() if name.startswith("metareg/")}


@pytest.mark.parametrize("name", sorted(_metareg_cases()))
def test_design_and_r2_match_metafor(name):
    """The pipeline's own design matrix (not a test helper) reproduces R's model.matrix and metafor's R^2."""
    case = _metareg_cases()[name]
    mods = re.findall(r"[a-z_]+", case["mods"].replace("factor", ""))
    frame = read_studies(ROOT / case["data"], mods)
    mf = fit_moderators(frame, mods, case["requested"]["method"], case["requested"]["test"])
    assert mf.design.terms == [re.sub(r"factor\((\w+)\)", r"\1", c) for c in case["fit"]["X_colnames"]]
    np.testing.assert_allclose(mf.fit.beta, case["fit"]["b"], rtol=RTOL)
    np.testing.assert_allclose(r_squared(mf.fit), case["fit"]["R2"], rtol=RTOL, atol=1e-8)
    np.testing.assert_allclose(mf.fit.QM_pval, case["fit"]["QMp"], rtol=RTOL)


