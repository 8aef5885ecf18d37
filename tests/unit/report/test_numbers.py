"""APA number formatting (Publication Manual, 7th ed., 6.36 and 6.40-6.46)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alliancemeta.report.numbers import (
    MINUS,
    MISSING,
    bounded,
    count,
    interval,
    latex,
    num,
    p_text,
    percent,
    pval,
    small,
)


@pytest.mark.parametrize(
    ("x", "text"),
    [(0.2834, ".28"), (-0.0512, f"{MINUS}.05"), (1.0, "1.00"), (-0.001, ".00"), (0.999, "1.00"), (0.0, ".00")],
)
def test_bounded_drops_the_leading_zero(x, text):
    assert bounded(x) == text


@pytest.mark.parametrize(
    ("p", "text"), [(0.0004, "< .001"), (0.001, ".001"), (0.04, ".040"), (0.9995, "> .999"), (1.0, "> .999")]
)
def test_p_values(p, text):
    assert pval(p) == text


def test_p_in_text_and_missing_values():
    assert p_text(1e-30) == "p < .001"
    assert p_text(0.5) == "p = .500"
    for fmt in (num, small, bounded, pval, percent, count):
        assert fmt(float("nan")) == MISSING
        assert fmt(None) == MISSING


def test_other_statistics_keep_their_leading_zero_and_significant_digits():
    assert num(866.36884) == "866.37"
    assert num(-1.2) == f"{MINUS}1.20"
    assert small(0.0109676) == "0.011"
    assert small(0.00793793) == "0.0079"
    assert small(0.0) == "0"
    assert percent(53.63) == "54%"
    assert count(31953) == "31,953"
    assert interval(0.261, 0.289) == "[.26, .29]"


def test_latex_escapes():
    assert latex(f"τ² = {MINUS}0.5, 54% & p < .001") == r"$\tau$$^2$ = $-$0.5, 54\% \& p $<$ .001"


@given(st.floats(-1, 1, allow_nan=False))
def test_bounded_values_never_show_a_leading_zero(x):
    text = bounded(x).replace(MINUS, "")
    assert not text.startswith("0") and math.isclose(float(text), abs(round(x, 2)), abs_tol=1e-12)
