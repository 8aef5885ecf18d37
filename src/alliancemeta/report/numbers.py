"""Numbers as APA style asks for them (Publication Manual, 7th ed., sections 6.36 and 6.40-6.46).

- Statistics that cannot exceed 1 in absolute value (correlations, proportions, p-values) have no leading
  zero: ``r = .28``, ``p = .040``.
- p-values with three decimals, ``p < .001`` below that; never ``p = .000``.
- Other statistics with two decimals by default (``Q(400) = 866.37``, ``tau^2 = 0.011`` with three where two
  would round to zero).
- A true minus sign (U+2212) in text; LaTeX gets ``$-$``.

Every function returns text; missing values (NaN, None) become an em dash, as APA tables show them.
"""

from __future__ import annotations

import math

MINUS = "\u2212"
MISSING = "\u2014"


def _missing(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _sign(text: str) -> str:
    return text.replace("-", MINUS)


def num(x, digits: int = 2) -> str:
    """A statistic with ``digits`` decimals and its leading zero (``0.011``, ``866.37``, ``−1.20``)."""
    if _missing(x):
        return MISSING
    x = float(x)
    if math.isinf(x):
        return _sign("-inf" if x < 0 else "inf").replace("inf", "\u221e")
    text = f"{x:.{digits}f}"
    if float(text) == 0.0 and x != 0.0:  # keep significant digits of small, non-zero values
        text = f"{x:.{digits}g}" if abs(x) >= 10 ** -(digits + 3) else f"{x:.1e}"
    return _sign(text)


def small(x, digits: int = 3) -> str:
    """A small positive quantity (tau^2, sigma^2) with enough decimals to show its first significant digits."""
    if _missing(x):
        return MISSING
    x = float(x)
    if x == 0.0:
        return "0"
    d = max(digits, -math.floor(math.log10(abs(x))) + 1)
    return _sign(f"{x:.{d}f}")


def bounded(x, digits: int = 2) -> str:
    """A value in [-1, 1] (r, a proportion) without leading zero: ``.28``, ``−.05``, ``1.00``."""
    if _missing(x):
        return MISSING
    text = f"{float(x):.{digits}f}"
    if text.startswith("0."):
        text = text[1:]
    elif text.startswith("-0."):
        text = "-" + text[2:]
    if text in ("-.00", "-." + "0" * digits):
        text = text[1:]
    return _sign(text)


def pval(p) -> str:
    """``.040``, ``< .001``, ``> .999`` (without the ``p``; see :func:`p_text`)."""
    if _missing(p):
        return MISSING
    p = float(p)
    if p < 0.001:
        return "< .001"
    if p > 0.999:
        return "> .999"
    return bounded(p, 3)


def p_text(p) -> str:
    """``p = .040`` or ``p < .001`` for running text."""
    value = pval(p)
    if value == MISSING:
        return f"p = {MISSING}"
    return f"p {value}" if value[0] in "<>" else f"p = {value}"


def interval(lb, ub, fmt=bounded, **kwargs) -> str:
    """``[.26, .29]`` with the given number format."""
    return f"[{fmt(lb, **kwargs)}, {fmt(ub, **kwargs)}]"


def percent(x, digits: int = 0) -> str:
    """A percentage: ``54%``."""
    if _missing(x):
        return MISSING
    return _sign(f"{float(x):.{digits}f}%")


def count(n) -> str:
    """An integer with thousands separators: ``31,953``."""
    if _missing(n):
        return MISSING
    return f"{round(float(n)):,}"


def level_pct(level: float) -> str:
    """``95%`` for a level of 0.95."""
    return f"{100 * float(level):g}%"


def latex(text: str) -> str:
    """Markdown/Unicode text made safe for LaTeX (minus, percent, Greek letters, comparison signs)."""
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        MINUS: "$-$",
        MISSING: "---",
        "\u2013": "--",
        "\u03c4": r"$\tau$",
        "\u00b2": r"$^2$",
        "\u03bc": r"$\mu$",
        "\u03c3": r"$\sigma$",
        "\u2265": r"$\geq$",
        "\u2264": r"$\leq$",
        "<": r"$<$",
        ">": r"$>$",
        "\u00d7": r"$\times$",
        "\u221e": r"$\infty$",
        "\u03c7": r"$\chi$",
        "*": "",
    }
    return "".join(replacements.get(ch, ch) for ch in text)
