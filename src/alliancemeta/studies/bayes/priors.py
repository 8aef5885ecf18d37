r"""Prior distributions for the Bayesian meta-analysis, parsed from the config and usable in both paths.

A :class:`Prior` knows its log-density on the parameter's own scale (for the quadrature path,
:mod:`alliancemeta.studies.bayes.quadrature`) and how to create itself inside a PyMC model (for the MCMC
path, :mod:`alliancemeta.studies.bayes.models`), so the two paths cannot drift apart.

Effects are on the Fisher-z scale.  The overall effect :math:`\mu` takes a normal prior (the
quadrature path integrates :math:`\mu` analytically, which needs conjugacy).  The heterogeneity SD
:math:`\tau` takes one of

============== ======================== ====================================================
``dist``        parameters               density on :math:`\tau > 0`
============== ======================== ====================================================
halfnormal      sigma                    :math:`2\,\phi(\tau/\sigma)/\sigma`
halfcauchy      beta                     :math:`2 / (\pi\beta(1 + \tau^2/\beta^2))`
halfstudent_t   nu, sigma                :math:`2\, t_\nu(\tau/\sigma)/\sigma`
inversegamma    alpha, beta              :math:`\beta^\alpha \tau^{-\alpha-1} e^{-\beta/\tau}/\Gamma(\alpha)`
uniform         lower (0), upper         :math:`1/(\text{upper} - \text{lower})` on [lower, upper]
============== ======================== ====================================================

Every scale prior accepts ``on: tau2`` to place the density on :math:`\tau^2` instead (then
:math:`p(\tau) = 2\tau\, p_{\tau^2}(\tau^2)`).  The inverse-gamma prior is on :math:`\tau` by
default, as in RoBMA and metaBMA (Gronau et al. 2017; Bartoš et al. 2021), whose default
InvGamma(1, 0.15) on Cohen's d is InvGamma(1, 0.075) on Fisher z (:math:`d \approx 2z`; metaBMA's
``meta_default(effect = "z")`` halves the scale the same way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from alliancemeta.core.errors import ConfigError

#: Distribution families allowed for each parameter.
MU_DISTS = ("normal",)
TAU_DISTS = ("halfnormal", "halfcauchy", "halfstudent_t", "inversegamma", "uniform")

#: Parameter names of each family, with defaults (None = required), in PyMC's naming.
PARAMS: dict[str, dict[str, float | None]] = {
    "normal": {"mu": 0.0, "sigma": None},
    "halfnormal": {"sigma": None},
    "halfcauchy": {"beta": None},
    "halfstudent_t": {"nu": None, "sigma": None},
    "inversegamma": {"alpha": None, "beta": None},
    "uniform": {"lower": 0.0, "upper": None},
}
_POSITIVE = ("sigma", "beta", "alpha", "nu")
_DISPLAY = {
    "normal": "Normal",
    "halfnormal": "HalfNormal",
    "halfcauchy": "HalfCauchy",
    "halfstudent_t": "HalfStudentT",
    "inversegamma": "InvGamma",
    "uniform": "Uniform",
}


class PriorError(ConfigError):
    """A prior specification in the config is invalid; the message names the config key."""


@dataclass(frozen=True)
class Prior:
    """One prior distribution: family ``dist``, its parameters and the scale it is placed on.

    ``on`` is ``"tau"`` or ``"tau2"`` for scale priors (see module docstring) and ``"mu"`` for the
    location prior.
    """

    dist: str
    params: tuple[tuple[str, float], ...]
    on: str = "tau"

    @property
    def kw(self) -> dict[str, float]:
        return dict(self.params)

    def __getitem__(self, name: str) -> float:
        return self.kw[name]

    @property
    def label(self) -> str:
        """Human-readable form, e.g. ``HalfNormal(0.5)`` or ``tau2 ~ InvGamma(1, 0.15)``."""
        body = f"{_DISPLAY[self.dist]}({', '.join(f'{v:g}' for _, v in self.params)})"
        return f"tau2 ~ {body}" if self.on == "tau2" else body

    def as_config(self) -> dict:
        out = {"dist": self.dist, **self.kw}
        if self.on == "tau2":
            out["on"] = "tau2"
        return out

    # -- numpy side ----------------------------------------------------------------------------

    def _base_logpdf(self, x: np.ndarray) -> np.ndarray:
        p = self.kw
        d = self.dist
        with np.errstate(divide="ignore", invalid="ignore"):
            if d == "normal":
                return stats.norm.logpdf(x, p["mu"], p["sigma"])
            if d == "halfnormal":
                return np.where(x >= 0, np.log(2.0) + stats.norm.logpdf(x, 0.0, p["sigma"]), -np.inf)
            if d == "halfcauchy":
                return np.where(x >= 0, np.log(2.0) + stats.cauchy.logpdf(x, 0.0, p["beta"]), -np.inf)
            if d == "halfstudent_t":
                return np.where(x >= 0, np.log(2.0) + stats.t.logpdf(x, p["nu"], 0.0, p["sigma"]), -np.inf)
            if d == "inversegamma":
                a, b = p["alpha"], p["beta"]
                safe = np.where(x > 0, x, 1.0)
                val = a * np.log(b) - special.gammaln(a) - (a + 1.0) * np.log(safe) - b / safe
                return np.where(x > 0, val, -np.inf)
            if d == "uniform":
                lo, hi = p["lower"], p["upper"]
                return np.where((x >= lo) & (x <= hi), -np.log(hi - lo), -np.inf)
        raise PriorError(f"unknown prior distribution {d!r}")  # unreachable after parse_prior

    def logpdf(self, x) -> np.ndarray:
        """Log-density on the parameter's own scale (tau, not tau2, for ``on: tau2``)."""
        x = np.asarray(x, dtype=float)
        if self.on == "tau2":
            with np.errstate(divide="ignore"):
                return self._base_logpdf(x * x) + np.log(2.0) + np.log(x)
        return self._base_logpdf(x)

    def support(self) -> tuple[float, float]:
        """Closed support of the parameter (tau for ``on: tau2``)."""
        if self.dist == "normal":
            return (-np.inf, np.inf)
        if self.dist == "uniform":
            lo, hi = self["lower"], self["upper"]
            return (np.sqrt(lo), np.sqrt(hi)) if self.on == "tau2" else (lo, hi)
        return (0.0, np.inf)

    def rvs(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Draws from the prior (on the parameter's own scale), for plots and simulation."""
        p = self.kw
        d = self.dist
        if d == "normal":
            x = rng.normal(p["mu"], p["sigma"], size)
        elif d == "halfnormal":
            x = np.abs(rng.normal(0.0, p["sigma"], size))
        elif d == "halfcauchy":
            x = np.abs(p["beta"] * rng.standard_cauchy(size))
        elif d == "halfstudent_t":
            x = np.abs(p["sigma"] * rng.standard_t(p["nu"], size))
        elif d == "inversegamma":
            x = p["beta"] / rng.gamma(p["alpha"], 1.0, size)
        else:
            x = rng.uniform(p["lower"], p["upper"], size)
        return np.sqrt(x) if self.on == "tau2" else x

    # -- PyMC side -----------------------------------------------------------------------------

    def pymc(self, name: str, dims=None):
        """Create this prior as a PyMC random variable ``name`` (call inside a model context).

        For ``on: tau2`` the variable ``{name}2`` is the random variable and ``name`` its square root
        (a deterministic), so downstream code always sees the SD.
        """
        import pymc as pm

        p = self.kw
        rv_name = f"{name}2" if self.on == "tau2" else name
        d = self.dist
        if d == "normal":
            rv = pm.Normal(rv_name, mu=p["mu"], sigma=p["sigma"], dims=dims)
        elif d == "halfnormal":
            rv = pm.HalfNormal(rv_name, sigma=p["sigma"], dims=dims)
        elif d == "halfcauchy":
            rv = pm.HalfCauchy(rv_name, beta=p["beta"], dims=dims)
        elif d == "halfstudent_t":
            rv = pm.HalfStudentT(rv_name, nu=p["nu"], sigma=p["sigma"], dims=dims)
        elif d == "inversegamma":
            rv = pm.InverseGamma(rv_name, alpha=p["alpha"], beta=p["beta"], dims=dims)
        else:
            rv = pm.Uniform(rv_name, lower=p["lower"], upper=p["upper"], dims=dims)
        if self.on == "tau2":
            return pm.Deterministic(name, pm.math.sqrt(rv), dims=dims)
        return rv


def parse_prior(spec, key: str, allowed: Sequence[str]) -> Prior:
    """Validate one prior specification from the config, e.g. ``{dist: halfnormal, sigma: 0.5}``.

    Parameters
    ----------
    spec : mapping or Prior
        The config entry (or an already parsed prior, returned unchanged after the family check).
    key : str
        Config key used in error messages, e.g. ``"bayes.prior_tau"``.
    allowed : sequence of str
        Families allowed for this parameter (:data:`MU_DISTS` or :data:`TAU_DISTS`).

    Raises
    ------
    PriorError
        With a message naming ``key``, the bad value and what was expected.
    """
    if isinstance(spec, Prior):
        if spec.dist not in allowed:
            raise PriorError(f"{key}: prior {spec.label} is not allowed here; expected one of {', '.join(allowed)}")
        return spec
    if not isinstance(spec, Mapping) or "dist" not in spec:
        raise PriorError(f"{key}: expected a mapping with a 'dist' entry, e.g. {{dist: halfnormal, sigma: 0.5}}; "
                         f"got {spec!r}")
    dist = str(spec["dist"]).lower()
    if dist not in allowed:
        extra = ""
        if dist in PARAMS:
            extra = " (the exact quadrature path integrates mu analytically, which needs a normal prior)" \
                if allowed == MU_DISTS else " (tau must be positive)"
        raise PriorError(f"{key}: unknown prior distribution {spec['dist']!r}{extra}; "
                         f"expected one of {', '.join(allowed)}")
    names = PARAMS[dist]
    on = str(spec.get("on", "mu" if allowed == MU_DISTS else "tau"))
    valid_on = ("mu",) if allowed == MU_DISTS else ("tau", "tau2")
    if on not in valid_on:
        raise PriorError(f"{key}.on: {on!r} is not valid; expected one of {', '.join(valid_on)}")
    unknown = sorted(set(spec) - set(names) - {"dist", "on"})
    if unknown:
        raise PriorError(f"{key}: unknown parameter(s) {', '.join(unknown)} for dist {dist}; "
                         f"expected {', '.join(names)}")
    values = []
    for name, default in names.items():
        if name not in spec:
            if default is None:
                raise PriorError(f"{key}.{name}: missing; dist {dist} needs {', '.join(names)}")
            value = default
        else:
            value = spec[name]
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise PriorError(f"{key}.{name}: {value!r} is not a number")
        value = float(value)
        if not np.isfinite(value):
            raise PriorError(f"{key}.{name}: {value!r} is not finite")
        if name in _POSITIVE and value <= 0:
            raise PriorError(f"{key}.{name}: {value:g} must be > 0")
        values.append((name, value))
    prior = Prior(dist, tuple(values), on)
    if dist == "uniform":
        lo, hi = prior["lower"], prior["upper"]
        if lo < 0 or hi <= lo:
            raise PriorError(f"{key}: uniform bounds [{lo:g}, {hi:g}] must satisfy 0 <= lower < upper")
    return prior


@dataclass(frozen=True)
class MetaPriors:
    r"""Priors of a meta-analytic model on the Fisher-z scale.

    ``mu`` is the prior of the intercept (the overall effect); slopes of a meta-regression get
    :math:`N(0, \sigma_\beta^2)` with :math:`\sigma_\beta` = ``slope_sigma`` (default: the intercept
    prior's SD); ``tau`` is the prior of every heterogeneity SD (tau, and both SDs of the
    three-level model).
    """

    mu: Prior
    tau: Prior
    slope_sigma: float | None = None

    @property
    def beta_sigma(self) -> float:
        return self.mu["sigma"] if self.slope_sigma is None else float(self.slope_sigma)

    @property
    def label(self) -> str:
        return f"mu ~ {self.mu.label}; tau ~ {self.tau.label}"

    def with_tau(self, tau: Prior) -> MetaPriors:
        return MetaPriors(self.mu, tau, self.slope_sigma)

    def with_mu(self, mu: Prior) -> MetaPriors:
        return MetaPriors(mu, self.tau, self.slope_sigma)

    @classmethod
    def from_config(cls, bayes: Mapping) -> MetaPriors:
        """Priors from the ``bayes`` config section (keys ``prior_mu`` and ``prior_tau``, both required)."""
        mu = parse_prior(bayes["prior_mu"], "bayes.prior_mu", MU_DISTS)
        tau = parse_prior(bayes["prior_tau"], "bayes.prior_tau", TAU_DISTS)
        return cls(mu, tau)


def as_priors(priors) -> MetaPriors:
    """Accept a :class:`MetaPriors` or a config-style mapping with ``prior_mu``/``prior_tau``."""
    if isinstance(priors, MetaPriors):
        return priors
    if isinstance(priors, Mapping):
        return MetaPriors.from_config(priors)
    raise PriorError(f"priors: expected MetaPriors or a mapping with prior_mu/prior_tau, got {type(priors).__name__}")


def normal_prior_from_pooled(r: float, ci_lb: float, ci_ub: float, earlier_r: Sequence[float] = (),
                             level: float = 0.95) -> Prior:
    r"""Normal prior for :math:`\mu` (Fisher z) from a published pooled correlation and its CI.

    .. math::

        m = \operatorname{atanh}(r), \quad
        s_{\text{CI}} = \frac{\operatorname{atanh}(u) - \operatorname{atanh}(l)}{2 z_{1-\alpha/2}}, \quad
        \sigma = \sqrt{s_{\text{CI}}^2 + s_{\text{between}}^2}

    where :math:`s_{\text{between}}` is the SD (n - 1 denominator) of the Fisher-z pooled estimates
    of earlier meta-analyses (``earlier_r``, including ``r``).  The CI alone describes the
    uncertainty of one meta-analysis's mean; successive meta-analyses of the alliance differ by
    more than that (inclusion criteria, measures, eras), and a prior for a new analysis should carry
    that spread.  The bundled informative prior (config ``bayes.informative_mu``) is Flückiger et al.
    (2018) r = .278 [.256, .299] with Horvath & Symonds (1991) .26, Martin, Garske & Davis (2000)
    .22, Horvath et al. (2011) .275: m = 0.2855, s_CI = 0.0119, s_between = 0.0284, sigma = 0.0308.
    """
    m = float(np.arctanh(r))
    crit = float(stats.norm.ppf(0.5 + level / 2.0))
    s_ci = (float(np.arctanh(ci_ub)) - float(np.arctanh(ci_lb))) / (2.0 * crit)
    between = float(np.std(np.arctanh(np.asarray(earlier_r, dtype=float)), ddof=1)) if len(earlier_r) > 1 else 0.0
    sigma = float(np.hypot(s_ci, between))
    return Prior("normal", (("mu", m), ("sigma", sigma)), "mu")


#: Published pooled alliance-outcome correlations used for the informative prior (see
#: :func:`normal_prior_from_pooled`): Horvath & Symonds 1991; Martin et al. 2000; Horvath et al. 2011;
#: Flückiger et al. 2018 (the last with its 95% CI).
EARLIER_ALLIANCE_R = (0.26, 0.22, 0.275, 0.278)
#: The most recent pooled estimate with its 95% CI (Flückiger et al. 2018, three-level REML).
POOLED_2018 = (0.278, 0.256, 0.299)


