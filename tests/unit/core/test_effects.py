import numpy as np
import pytest

from alliancemeta.core import effects


def test_zcor_matches_fisher_formula():
    es = effects.escalc_cor([0.3, -0.5, 0.0], [50, 10, 4])
    np.testing.assert_allclose(es.yi, np.arctanh([0.3, -0.5, 0.0]))
    np.testing.assert_allclose(es.vi, [1 / 47, 1 / 7, 1.0])


def test_cor_large_sample_variance():
    es = effects.escalc_cor([0.3], [50], "COR")
    np.testing.assert_allclose(es.vi, (1 - 0.09) ** 2 / 49)


def test_ucor_shrinks_towards_zero_less_than_raw_bias():
    # the Olkin-Pratt correction moves |r| away from zero (r is biased towards zero) and vanishes as n grows
    small = effects.escalc_cor([0.3], [10], "UCOR").yi[0]
    large = effects.escalc_cor([0.3], [10_000], "UCOR").yi[0]
    assert small > 0.3
    assert abs(large - 0.3) < 1e-4


def test_round_trip_r_z():
    r = np.linspace(-0.99, 0.99, 41)
    np.testing.assert_allclose(effects.z_to_r(effects.r_to_z(r)), r, rtol=1e-14)


def test_r_from_t_and_f_agree():
    t, df = 2.5, 40
    assert effects.r_from_t(t, df) == pytest.approx(effects.r_from_f(t**2, df))
    assert effects.r_from_f(t**2, df, sign=-1) == pytest.approx(-effects.r_from_t(t, df))


def test_r_from_d_equal_groups():
    # d = 2r / sqrt(1 - r^2) for equal groups, so the conversion must invert it
    r = 0.3
    d = 2 * r / np.sqrt(1 - r**2)
    assert effects.r_from_d(d) == pytest.approx(r)
    assert effects.r_from_d(d, 50, 50) == pytest.approx(r)


def test_r_from_beta_range():
    assert effects.r_from_beta(0.2) == pytest.approx(0.25)
    assert effects.r_from_beta(-0.2) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match=r"0\.5"):
        effects.r_from_beta(0.6)


def test_unknown_measure():
    with pytest.raises(ValueError, match="unknown measure"):
        effects.escalc_cor([0.1], [10], "SMD")
