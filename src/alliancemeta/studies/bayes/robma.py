r"""RoBMA-PSMA: Bayesian model averaging over effect x heterogeneity x publication bias, single- and three-level.

The ensemble of Bartoš, Maier, Wagenmakers, Doucouliagos & Stanley (2023, *Res Synth Methods* 14,
99-116; the R package ``RoBMA``, function ``RoBMA()`` with its default ``priors_*`` arguments): every
combination of

- effect: :math:`\mu = 0` or :math:`\mu \sim N(0, 1)` on Cohen's d;
- heterogeneity: :math:`\tau = 0` or :math:`\tau \sim \text{InvGamma}(1, 0.15)` on Cohen's d;
- publication bias: none; one of six weight functions (two-sided steps .05 and (.05, .10);
  one-sided steps .05, (.025, .05), (.05, .5) and (.025, .05, .5); cumulative Dirichlet weights
  with :math:`\alpha = 1`, see :mod:`.weightfunctions`); PET,
  :math:`y_i \sim N(\mu + \beta_{\text{PET}}\,\text{se}_i, v_i + \tau^2)` with
  :math:`\beta_{\text{PET}} \sim \text{Cauchy}(0, 1)` truncated to :math:`[0, \infty)`; or PEESE,
  :math:`y_i \sim N(\mu + \beta_{\text{PEESE}}\,v_i, v_i + \tau^2)` with
  :math:`\beta_{\text{PEESE}} \sim \text{Cauchy}(0, 5)` truncated to :math:`[0, \infty)` (on d),

36 models.  Prior model probabilities are products over components: 1/2 for effect and 1/2 for
heterogeneity; for bias 1/2 on "none", and the other 1/2 split into 1/4 for the six selection
models (1/24 each) and 1/8 each for PET and PEESE (``RoBMA()``'s ``prior_weights`` 1/12 per
weight function and 1/4 for PET and for PEESE, relative to weight 1 of ``prior_none()``).

**Scale.**  RoBMA states its default priors on Cohen's d and rescales them to the analysis scale
with the linear approximation of ``metaBMA`` (RoBMA's ``scale_d2z``: :math:`z \approx d/2`).  On
Fisher's z, as here: :math:`\mu \sim N(0, 0.5)`, :math:`\tau \sim \text{InvGamma}(1, 0.075)`;
:math:`\beta_{\text{PET}}` multiplies a standard error in the effect's own units, so it is
scale-free (Cauchy(0, 1)); :math:`\beta_{\text{PEESE}}` multiplies a variance, so
:math:`y_z = y_d/2` and :math:`v_z = v_d/4` give :math:`\beta_z = 2\beta_d` (Cauchy(0, 10)); the
weight functions act on p-values and do not change.

**Three-level data** (``cluster`` given; effects nested in studies).  As RoBMA's hierarchical
extension (``priors_hierarchical``; Bartoš et al. 2025, *Psychol Methods*, doi 10.1037/met0000737),
the total heterogeneity :math:`\tau` keeps its prior and the share of it between studies,
:math:`\rho \sim \text{Beta}(1, 1)`, is the correlation of true effects within a study:
:math:`\sigma^2_{\text{study}} = \rho\tau^2`, :math:`\sigma^2_{\text{within}} = (1-\rho)\tau^2`.
Without selection (no bias, PET, PEESE) study :math:`j`'s effects are multivariate normal with
compound-symmetric covariance, evaluated in O(k) by Sherman–Morrison.  With selection there are
two likelihoods (``selection_likelihood``):

- ``joint`` (default): the study's effects follow the compound-symmetric normal
  :math:`y_j = \mu + u_j + e_j`, :math:`u_j \sim N(0, \sigma^2_{\text{study}})`,
  :math:`e_{ji} \sim N(0, v_{ji} + \sigma^2_{\text{within}})`, and the study is published with
  probability proportional to :math:`\prod_i w(p_{ji})` — the multivariate form of the weighted
  normal of Vevea & Hedges (1995):

  .. math::

      p(y_j) = \frac{N_{\text{CS}}(y_j; \mu, \Sigma_j)\prod_i w(p_{ji})}
                    {E_{u}\big[\prod_i A_{ji}(\mu + u, v_{ji} + \sigma^2_{\text{within}})\big]} .

  For a study with one effect the normaliser is :math:`A(\mu, v + \tau^2)` in closed form (the
  single-level model); for a study with several it is a one-dimensional expectation over
  :math:`u \sim N(0, \sigma^2_{\text{study}})` of a smooth bounded function, taken by Gauss–Hermite
  quadrature with ``gh_nodes`` nodes.  Each evaluation costs k + (effects in multi-effect studies)
  x ``gh_nodes`` normal CDFs, so every model stays in the reach of quadrature.  With
  :math:`\rho = 0` it is the single-level selection model with independent effects.  (The cheaper
  product of univariate normalisers :math:`\prod_i A_{ji}(\mu, v_{ji} + \tau^2)` is not used: for
  :math:`\rho \to 1` it over-counts the normaliser of a study with :math:`n_j` effects
  :math:`n_j` times and the posterior becomes improper.)
- ``conditional``: each effect is published independently given its study's true mean
  :math:`\theta_j \sim N(\mu, \sigma^2_{\text{study}})`, with the weighted normal of
  :mod:`.weightfunctions` around :math:`\theta_j` with variance :math:`s_{ji}^2 = v_{ji} + \sigma^2_{\text{within}}`:

  .. math::

      p(y_j) = \int N(\theta; \mu, \sigma^2_{\text{study}})
          \prod_i \frac{w(p_{ji})\,\phi\big((y_{ji} - \theta)/s_{ji}\big)/s_{ji}}{A_{ji}(\theta)}\, d\theta
        = \prod_i w(p_{ji}) \; N_{\text{CS}}(y_j) \; E\Big[\prod_i A_{ji}(\theta)^{-1}\Big],
        \quad \theta \sim N(m_j, V_j),

  with :math:`N(m_j, V_j)` the conditional posterior of :math:`\theta_j` without selection
  (:math:`V_j = \sigma^2_{\text{study}}/(1 + \sigma^2_{\text{study}}S_{1j})`,
  :math:`m_j = \mu + V_j S_{2j}`, :math:`S_{1j} = \sum_i 1/s_{ji}^2`, :math:`S_{2j} = \sum_i (y_{ji}-\mu)/s^2_{ji}`);
  the expectation of the smooth, bounded :math:`\prod_i A^{-1}` is taken by Gauss–Hermite
  quadrature with ``gh_nodes`` nodes.  A proper likelihood of the selected data (selection
  conditional on the study's true effect), but each evaluation costs k x ``gh_nodes`` normal CDFs,
  so these models go to MCMC and bridge sampling (about 3 minutes per model at k = 401).
  Selection then does not change the distribution of the study's true effect, only which of its
  effects are reported.

Without heterogeneity all versions coincide with the equal-effects selection model.

**Marginal likelihoods.**  Every model is integrated over its unconstrained parameters
(:math:`\mu`, :math:`\log\tau`, :math:`\operatorname{logit}\rho`, the additive log-ratio coordinates
of the Dirichlet weights, :math:`\log\beta`), densities including their Jacobians:

- no parameters (no effect, no heterogeneity, no bias): closed form;
- selection models whose normalisers are cheap (single-level, and all equal-effects ones): the
  weights are integrated by tensor Gauss–Legendre in the ratio coordinates
  :math:`r_j = \omega_{j+1}/\omega_j \in (0, 1)` over a box found by profile scans (a posterior
  piled against :math:`\omega = 1`, i.e. little selection, is a smooth density with mass at the end of
  an interval there, which Gauss–Legendre integrates exactly where any Gaussian-based rule
  converges slowly); given :math:`(\mu, \tau)` the normal CDFs of every effect are computed once and
  combined with all weight nodes by one matrix product, since :math:`A_i` is linear in the weights.
  The remaining :math:`(\mu, \log\tau)` integral uses the adaptive rule below.  PET and PEESE
  models treat their coefficient the same way (Gauss–Legendre in :math:`b/(s + b)`, which has
  posterior mass at 0 when there is little small-study effect).  When this rule's
  error estimate exceeds :data:`STRUCTURED_OK` the rotated rule over all coordinates is run as
  well and the result with the smaller error estimate is kept (sharply identified interior
  posteriors, e.g. strong apparent selection in a no-effect model);
- up to :data:`MAX_QUADRATURE_DIM` dimensions and cheap likelihood: adaptive Gauss quadrature —
  the grid is centred at the posterior mode and rotated/scaled by the Cholesky factor of the inverse
  Hessian (Naylor & Smith 1982, *Appl Stat* 31, 214-225; Liu & Pierce 1994, *Biometrika* 81,
  624-629): composite Gauss–Legendre panels along the coordinate of the reported parameter
  (:math:`\mu`, or :math:`\log\tau` in a second pass), which yields its marginal posterior density
  at the nodes, and Gauss–Hermite in the conditional directions.  The error estimate is the
  largest change of :math:`\log p(y)` between this rule, a coarser one and the pass in the other
  ordering, and a pass on a grid widened by :data:`INFLATE` (so that mass in tails wider than the
  Laplace approximation shows up in the error instead of being missed silently).
- three-level selection models with heterogeneity under the ``conditional`` likelihood (4-6
  dimensions, each evaluation costing k x gh_nodes normal CDFs), or any model with
  ``method: mcmc``: MCMC (nutpie, :mod:`alliancemeta.core.mcmc`, r_hat, bulk ESS and divergences
  checked, one retry) and bridge sampling (:mod:`.bridge`) with its relative-MSE error.

Posterior model probabilities :math:`P(M \mid y) \propto P(M)\,p(y \mid M)`; the inclusion Bayes
factor of a component is the ratio of its posterior to prior inclusion odds.  The model-averaged
posterior of :math:`\mu` mixes all models (atoms at 0 from the no-effect models); it is the
bias-adjusted estimate, since every bias model's :math:`\mu` is its adjusted mean.  The
unadjusted estimate averages the four no-bias models only (:mod:`.averaging`), and the
conditional estimate the effect models only (RoBMA's "conditional" summaries).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import interpolate, optimize, special

from alliancemeta.core.errors import ModelError
from alliancemeta.core.settings import BayesSettings, SamplerSettings
from alliancemeta.studies.bayes.averaging import AVERAGING_COLUMNS
from alliancemeta.studies.bayes.bridge import BridgeResult, bridge_sampling
from alliancemeta.studies.bayes.priors import MU_DISTS, TAU_DISTS, Prior, parse_prior
from alliancemeta.studies.bayes.quadrature import as_arrays
from alliancemeta.studies.bayes.weightfunctions import (
    WeightFunction,
    log_selection_normalizer,
    selection_loglik,
)

LOG_2PI = float(np.log(2.0 * np.pi))
#: Linear scaling of Cohen's d to Fisher's z used for RoBMA's default priors (RoBMA ``scale_d2z``).
D_TO_Z = 0.5
BIAS_KINDS = ("none", "selection", "pet", "peese")
#: Quadrature is used up to this many unconstrained dimensions when the likelihood is cheap
#: (everything single-level; three-level models without selection); beyond, MCMC + bridge sampling.
MAX_QUADRATURE_DIM = 6
#: Gauss–Hermite nodes per conditional dimension, by the number of conditional dimensions, and the
#: coarser rule used for the error estimate.  The posterior on the rotated coordinates is close to
#: standard normal, where n Gauss–Hermite nodes are exact for polynomials of degree 2n - 1.
GH_INNER = {0: 1, 1: 32, 2: 16, 3: 8, 4: 5, 5: 4, 6: 3}
GH_INNER_COARSE = {0: 1, 1: 24, 2: 12, 3: 6, 4: 4, 5: 3, 6: 2}
#: Composite Gauss–Legendre along the reported parameter: panels x nodes over [-R, R] standard units.
GL_PANELS, GL_PANELS_COARSE, GL_NODES = 8, 6, 8
GL_HALF_WIDTH = 9.0
#: The marginal density at the ends of the Gauss–Legendre range must be this far (log units) below
#: its maximum, else the range is widened (at most MAX_WIDEN times).
LOG_DROP_EDGE = 25.0
MAX_WIDEN = 3
#: Points evaluated together (bounds memory).
EVAL_CHUNK = 2048
#: Scale factor of the widened grid whose estimate enters the error of the rotated rule.
INFLATE = 1.5
#: Points per gap between consecutive quadrature nodes of the CDF grid of a marginal posterior.
FINE_PER_NODE = 64
#: Fine grid (points) on which the marginal posteriors of mu and tau are mixed and integrated.
FINE_GRID = 8001
#: Finite-difference step (unconstrained units, relative to the posterior SD once known) for the Hessian.
FD_STEP = 1e-3

_GL_X, _GL_W = np.polynomial.legendre.leggauss(GL_NODES)


class RobmaError(ModelError):
    """A RoBMA model could not be fitted; the message names the model and what to try."""


# --------------------------------------------------------------------------------------------------
# priors and model set
# --------------------------------------------------------------------------------------------------


#: Keys of ``bayes.robma`` that are priors (a prior-sensitivity alternative may change any of them).
PRIOR_KEYS = ("prior_mu", "prior_tau", "prior_pet", "prior_peese", "prior_rho", "weightfunctions")
#: Keys of ``bayes.robma.prior_prob``.
PROB_KEYS = ("effect", "heterogeneity", "bias", "selection", "pet", "peese")


@dataclass(frozen=True)
class RobmaPriors:
    """Priors of the alternative components (Fisher-z scale) and the prior model probabilities."""

    mu: Prior
    tau: Prior
    pet: Prior
    peese: Prior
    rho: tuple[float, float]
    weightfunctions: tuple[WeightFunction, ...]
    prior_prob: tuple[tuple[str, float], ...]
    components: tuple[str, ...]

    @property
    def prob(self) -> dict[str, float]:
        return dict(self.prior_prob)

    @classmethod
    def from_config(cls, robma: Mapping) -> RobmaPriors:
        """From the validated config section ``bayes.robma`` (every key present: the schema holds the defaults,
        RoBMA's own rescaled to Fisher z)."""
        mu = parse_prior(robma["prior_mu"], "bayes.robma.prior_mu", MU_DISTS)
        tau = parse_prior(robma["prior_tau"], "bayes.robma.prior_tau", TAU_DISTS)
        pet = parse_prior(robma["prior_pet"], "bayes.robma.prior_pet", TAU_DISTS)
        peese = parse_prior(robma["prior_peese"], "bayes.robma.prior_peese", TAU_DISTS)
        rho = robma["prior_rho"]
        try:
            rho = (float(rho["alpha"]), float(rho["beta"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"bayes.robma.prior_rho: expected {{alpha: a, beta: b}}, got {rho!r}") from None
        if min(rho) <= 0:
            raise ValueError(f"bayes.robma.prior_rho: alpha and beta must be > 0, got {rho}")
        wfs = tuple(WeightFunction.from_config(spec, f"bayes.robma.weightfunctions[{i}]")
                    for i, spec in enumerate(robma["weightfunctions"]))
        prob = dict(robma["prior_prob"])
        if sorted(prob) != sorted(PROB_KEYS):
            raise ValueError(f"bayes.robma.prior_prob: keys {', '.join(sorted(prob))}; expected "
                             f"{', '.join(PROB_KEYS)}")
        for key in ("effect", "heterogeneity", "bias"):
            if not 0.0 < float(prob[key]) < 1.0:
                raise ValueError(f"bayes.robma.prior_prob.{key}: {prob[key]!r} must lie strictly between 0 and 1")
        comps = tuple(robma["components"])
        bad = sorted(set(comps) - {"selection", "pet", "peese"})
        if bad or not comps:
            raise ValueError(f"bayes.robma.components: {list(comps)!r}; expected a non-empty subset of "
                             "selection, pet, peese")
        if "selection" in comps and not wfs:
            raise ValueError("bayes.robma.weightfunctions: empty while the selection component is on")
        return cls(mu, tau, pet, peese, rho, wfs, tuple((k, float(prob[k])) for k in PROB_KEYS), comps)

    def as_config(self) -> dict:
        """The prior keys of ``bayes.robma`` that reproduce these priors."""
        return {"prior_mu": self.mu.as_config(), "prior_tau": self.tau.as_config(),
                "prior_pet": self.pet.as_config(), "prior_peese": self.peese.as_config(),
                "prior_rho": {"alpha": self.rho[0], "beta": self.rho[1]},
                "weightfunctions": [w.as_config() for w in self.weightfunctions],
                "prior_prob": self.prob, "components": list(self.components)}

    def uses(self, spec: ModelSpec) -> tuple:
        """What the marginal likelihood of ``spec`` depends on among these priors (the key of a refit cache)."""
        return (spec.name,
                self.mu if spec.effect else None,
                (self.tau, self.rho) if spec.heterogeneity else None,
                {"selection": spec.wf, "pet": self.pet, "peese": self.peese}.get(spec.bias))

    def with_(self, **kw) -> RobmaPriors:
        return replace(self, **kw)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the ensemble: components, the weight function (selection) and its prior probability."""

    effect: bool
    heterogeneity: bool
    bias: str
    wf: WeightFunction | None
    prior_prob: float

    @property
    def base(self) -> str:
        return ("random" if self.heterogeneity else "fixed") + ("" if self.effect else "_null")

    @property
    def bias_label(self) -> str:
        return self.wf.label if self.bias == "selection" else self.bias

    @property
    def name(self) -> str:
        """E.g. ``random:none``, ``fixed_null:1s(.025,.05)``, ``random:peese``."""
        return f"{self.base}:{self.bias_label}"


def model_set(priors: RobmaPriors) -> list[ModelSpec]:
    """The ensemble (36 models with the defaults), ordered effect x heterogeneity x bias."""
    p = priors.prob
    comps = priors.components
    share = {c: float(p[c]) for c in comps}
    total = sum(share.values())
    if total <= 0:
        raise ValueError("bayes.robma.prior_prob: the enabled bias components have zero total probability")
    bias_models: list[tuple[str, WeightFunction | None, float]] = [("none", None, 1.0 - p["bias"])]
    if "selection" in comps:
        for wf in priors.weightfunctions:
            bias_models.append(("selection", wf, p["bias"] * share["selection"] / total / len(priors.weightfunctions)))
    for c in ("pet", "peese"):
        if c in comps:
            bias_models.append((c, None, p["bias"] * share[c] / total))
    out = []
    for effect in (False, True):
        for het in (False, True):
            pe = p["effect"] if effect else 1.0 - p["effect"]
            ph = p["heterogeneity"] if het else 1.0 - p["heterogeneity"]
            for kind, wf, pb in bias_models:
                out.append(ModelSpec(effect, het, kind, wf, pe * ph * pb))
    return out


# --------------------------------------------------------------------------------------------------
# data and log densities on unconstrained coordinates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobmaData:
    """Effects sorted by study (three-level) with per-study segment starts; ``cluster`` None = single level."""

    yi: np.ndarray
    vi: np.ndarray
    sei: np.ndarray
    codes: np.ndarray | None  # study index of each (sorted) effect
    starts: np.ndarray | None  # first position of each study
    order: np.ndarray  # sorted position -> input position

    @property
    def k(self) -> int:
        return self.yi.size

    @property
    def three_level(self) -> bool:
        return self.codes is not None

    @property
    def n_studies(self) -> int:
        return self.k if self.starts is None else self.starts.size

    @classmethod
    def build(cls, yi, vi, cluster=None) -> RobmaData:
        yi, vi, _ = as_arrays(yi, vi, None)
        if cluster is None:
            return cls(yi, vi, np.sqrt(vi), None, None, np.arange(yi.size))
        cluster = np.asarray(cluster)
        if cluster.shape != yi.shape:
            raise ValueError("cluster must give one study identifier per effect size")
        codes, _ = pd.factorize(pd.Series(cluster).astype(str), sort=False)
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        y, v = yi[order], vi[order]
        return cls(y, v, np.sqrt(v), codes.astype(np.int64), starts, order)


@dataclass(frozen=True)
class _Layout:
    """Positions of the parameters in the unconstrained vector of one model."""

    names: tuple[str, ...]
    mu: int | None
    log_tau: int | None
    logit_rho: int | None
    u: slice | None
    log_b: int | None

    @property
    def d(self) -> int:
        return len(self.names)


def _layout(spec: ModelSpec, three_level: bool) -> _Layout:
    names: list[str] = []
    idx: dict[str, int | slice | None] = {"mu": None, "log_tau": None, "logit_rho": None, "u": None, "log_b": None}
    if spec.effect:
        idx["mu"] = len(names)
        names.append("mu")
    if spec.heterogeneity:
        idx["log_tau"] = len(names)
        names.append("log_tau")
        if three_level:
            idx["logit_rho"] = len(names)
            names.append("probit_rho")
    if spec.bias == "selection":
        n_u = spec.wf.J - 1
        idx["u"] = slice(len(names), len(names) + n_u)
        names.extend(f"probit_ratio{i + 1}" for i in range(n_u))
    elif spec.bias in ("pet", "peese"):
        idx["log_b"] = len(names)
        names.append(f"probit_odds_{spec.bias}")
    return _Layout(tuple(names), idx["mu"], idx["log_tau"], idx["logit_rho"], idx["u"], idx["log_b"])


def _odds_probit(z: np.ndarray) -> np.ndarray:
    r""":math:`\Phi(z)/\Phi(-z)`: the positive coordinate of PET/PEESE (Gaussian tails at both ends)."""
    return np.exp(special.log_ndtr(z) - special.log_ndtr(-z))


def _gh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to sum to 1 (expectations under N(0, 1))."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / np.sqrt(2.0 * np.pi)


def _segment_sum(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums over studies along axis 1 (effects sorted by study)."""
    return np.add.reduceat(a, starts, axis=1)


def three_level_normal_loglik(data: RobmaData, resid: np.ndarray, sigma2_study: np.ndarray,
                              sigma2_within: np.ndarray) -> np.ndarray:
    r"""Compound-symmetric normal log-likelihood per parameter point (rows of ``resid``, shape (N, k)).

    .. math::

        \log p(y) = -\tfrac12\Big[k\log 2\pi + \sum_i \log d_i + \sum_j \log(1 + \sigma^2_s S_{1j})
            + \sum_i r_i^2/d_i - \sigma^2_s \sum_j S_{2j}^2/(1 + \sigma^2_s S_{1j})\Big]

    with :math:`d_i = v_i + \sigma^2_w`, :math:`S_{1j} = \sum_{i \in j} 1/d_i`, :math:`S_{2j} = \sum_{i\in j} r_i/d_i`.
    """
    return _three_level_parts(data, resid, sigma2_study, sigma2_within)[0]


def _three_level_parts(data: RobmaData, resid, sigma2_study, sigma2_within):
    """:func:`three_level_normal_loglik` and the sums it is built from, ``(loglik, d, S1, S2)``, for callers that
    need the study-level posterior of the true effects as well (mean ``mu + V S2``, ``V = s2 / (1 + s2 S1)``)."""
    d = data.vi[None, :] + sigma2_within[:, None]
    s1 = _segment_sum(1.0 / d, data.starts)
    s2 = _segment_sum(resid / d, data.starts)
    c = 1.0 + sigma2_study[:, None] * s1
    ll = -0.5 * (data.k * LOG_2PI + np.log(d).sum(1) + np.log(c).sum(1) + (resid**2 / d).sum(1)
                 - sigma2_study * (s2**2 / c).sum(1))
    return ll, d, s1, s2


def three_level_selection_loglik(data: RobmaData, mu: np.ndarray, sigma2_study: np.ndarray,
                                 sigma2_within: np.ndarray, omega: np.ndarray, wf: WeightFunction,
                                 gh_nodes: int) -> np.ndarray:
    """Log-likelihood of the three-level selection model (module docstring), shape (N,)."""
    x, w = _gh(gh_nodes)
    log_w = np.log(w)
    cuts, index = wf.z_cuts()
    obs = wf.interval_of(data.yi, data.sei)
    n = mu.size
    out = np.empty(n)
    step = max(1, 4_000_000 // (data.k * gh_nodes * (cuts.size + 1)))
    for s in range(0, n, step):
        m0, ss, sw, om = mu[s : s + step], sigma2_study[s : s + step], sigma2_within[s : s + step], omega[s : s + step]
        resid = data.yi[None, :] - m0[:, None]
        gauss, d, s1, s2 = _three_level_parts(data, resid, ss, sw)
        V = ss[:, None] / (1.0 + ss[:, None] * s1)
        m = m0[:, None] + V * s2
        theta = m[:, data.codes, None] + np.sqrt(V)[:, data.codes, None] * x[None, None, :]  # (n, k, Q)
        log_a = log_selection_normalizer(theta, np.sqrt(d)[:, :, None], data.sei[None, :, None], cuts,
                                         om[:, None, None, index])
        S = _segment_sum(log_a, data.starts)  # (n, studies, Q)
        sel = special.logsumexp(log_w[None, None, :] - S, axis=2).sum(axis=1)
        out[s : s + step] = gauss + np.log(om[:, obs]).sum(axis=1) + sel
    return out


def three_level_joint_selection_loglik(data: RobmaData, mu: np.ndarray, sigma2_study: np.ndarray,
                                       sigma2_within: np.ndarray, omega: np.ndarray, wf: WeightFunction,
                                       gh_nodes: int) -> np.ndarray:
    """Log-likelihood of the three-level selection model with joint (study-level) normalisation, shape (N,)."""
    x, w = _gh(gh_nodes)
    log_w = np.log(w)
    cuts, index = wf.z_cuts()
    obs = wf.interval_of(data.yi, data.sei)
    sizes = np.diff(np.r_[data.starts, data.k])
    multi_study = np.flatnonzero(sizes > 1)
    in_multi = np.isin(data.codes, multi_study)
    single = ~in_multi
    m_starts = np.flatnonzero(np.r_[True, data.codes[in_multi][1:] != data.codes[in_multi][:-1]]) if in_multi.any() \
        else np.zeros(0, dtype=int)
    v_m, se_m = data.vi[in_multi], data.sei[in_multi]
    v_s, se_s = data.vi[single], data.sei[single]
    n = mu.size
    out = np.empty(n)
    step = max(1, 4_000_000 // (max(int(in_multi.sum()), 1) * gh_nodes * (cuts.size + 1)))
    for s in range(0, n, step):
        m0, ss, sw, om = mu[s : s + step], sigma2_study[s : s + step], sigma2_within[s : s + step], omega[s : s + step]
        resid = data.yi[None, :] - m0[:, None]
        ll = three_level_normal_loglik(data, resid, ss, sw) + np.log(om[:, obs]).sum(axis=1)
        wr = om[:, None, index]
        if single.any():
            sd = np.sqrt(v_s[None, :] + (ss + sw)[:, None])
            ll -= log_selection_normalizer(m0[:, None], sd, se_s[None, :], cuts, wr).sum(axis=1)
        if in_multi.any():
            centre = m0[:, None] + np.sqrt(ss)[:, None] * x[None, :]  # (n, Q)
            sd = np.sqrt(v_m[None, :] + sw[:, None])[:, :, None]  # (n, km, 1)
            log_a = log_selection_normalizer(centre[:, None, :], sd, se_m[None, :, None], cuts, wr[:, :, None, :])
            S = _segment_sum(log_a, m_starts)  # (n, multi studies, Q)
            ll -= special.logsumexp(log_w[None, None, :] + S, axis=2).sum(axis=1)
        out[s : s + step] = ll
    return out


@dataclass(frozen=True)
class RobmaModel:
    """A model of the ensemble bound to data: its log joint density on unconstrained coordinates."""

    spec: ModelSpec
    data: RobmaData
    priors: RobmaPriors
    layout: _Layout
    gh_nodes: int = 12
    selection_likelihood: str = "joint"

    @property
    def d(self) -> int:
        return self.layout.d

    @property
    def uses_mcmc(self) -> bool:
        """Three-level selection models with heterogeneity under the conditional likelihood (costly, 4-6 dimensions)."""
        return (self.data.three_level and self.spec.bias == "selection" and self.spec.heterogeneity
                and self.selection_likelihood == "conditional")

    def constrained(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """mu, tau, rho, omega, b at unconstrained points ``X`` (N, d) (zeros / ones where absent)."""
        X = np.atleast_2d(X)
        n = X.shape[0]
        L = self.layout
        out = {
            "mu": X[:, L.mu] if L.mu is not None else np.zeros(n),
            "tau": np.exp(X[:, L.log_tau]) if L.log_tau is not None else np.zeros(n),
            "rho": special.ndtr(X[:, L.logit_rho]) if L.logit_rho is not None else np.zeros(n),
            "b": self._b_scale * _odds_probit(X[:, L.log_b]) if L.log_b is not None else np.zeros(n),
        }
        if L.u is not None:
            out["omega"] = WeightFunction.omega_from_x(X[:, L.u])
        return out

    def log_prior(self, X: np.ndarray) -> np.ndarray:
        """Log prior density on the unconstrained coordinates (Jacobians included)."""
        X = np.atleast_2d(X)
        L, P = self.layout, self.priors
        lp = np.zeros(X.shape[0])
        if L.mu is not None:
            lp += P.mu.logpdf(X[:, L.mu])
        if L.log_tau is not None:
            t = X[:, L.log_tau]
            lp += P.tau.logpdf(np.exp(t)) + t
        if L.logit_rho is not None:
            z = X[:, L.logit_rho]
            a, b = P.rho
            # Beta(a, b) on rho = Phi(z), times d rho / d z = phi(z)
            lp += ((a - 1.0) * special.log_ndtr(z) + (b - 1.0) * special.log_ndtr(-z) - special.betaln(a, b)
                   - 0.5 * z**2 - 0.5 * LOG_2PI)
        if L.u is not None:
            lp += self.spec.wf.log_prior_x(X[:, L.u])
        if L.log_b is not None:
            z = X[:, L.log_b]
            prior = P.pet if self.spec.bias == "pet" else P.peese
            # b = s Phi(z) / Phi(-z): d b / d z = s phi(z) / Phi(-z)^2
            lp += (prior.logpdf(self._b_scale * _odds_probit(z)) + np.log(self._b_scale) - 0.5 * z**2
                   - 0.5 * LOG_2PI - 2.0 * special.log_ndtr(-z))
        return lp

    def log_likelihood(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        c = self.constrained(X)
        D = self.data
        spec = self.spec
        mu, tau = c["mu"], c["tau"]
        if spec.bias == "selection":
            if D.three_level and spec.heterogeneity:
                t2 = tau**2
                if self.selection_likelihood == "conditional":
                    return three_level_selection_loglik(D, mu, c["rho"] * t2, (1.0 - c["rho"]) * t2, c["omega"],
                                                        spec.wf, self.gh_nodes)
                return three_level_joint_selection_loglik(D, mu, c["rho"] * t2, (1.0 - c["rho"]) * t2, c["omega"],
                                                          spec.wf, self.gh_nodes)
            return selection_loglik(D.yi, D.vi, mu, tau, c["omega"], spec.wf)
        shift = 0.0
        if spec.bias == "pet":
            shift = c["b"][:, None] * D.sei[None, :]
        elif spec.bias == "peese":
            shift = c["b"][:, None] * D.vi[None, :]
        resid = D.yi[None, :] - mu[:, None] - shift
        if D.three_level and spec.heterogeneity:
            t2 = tau**2
            return three_level_normal_loglik(D, resid, c["rho"] * t2, (1.0 - c["rho"]) * t2)
        total = D.vi[None, :] + tau[:, None] ** 2
        return -0.5 * (D.k * LOG_2PI + np.log(total).sum(1) + (resid**2 / total).sum(1))

    def log_joint(self, X: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior on unconstrained coordinates; its integral is p(y | model)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        out = np.empty(X.shape[0])
        for s in range(0, X.shape[0], EVAL_CHUNK):
            part = X[s : s + EVAL_CHUNK]
            lp = self.log_prior(part)
            ok = np.isfinite(lp)
            val = np.full(part.shape[0], -np.inf)
            if ok.any():
                with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
                    ll = self.log_likelihood(part[ok])
                val[ok] = lp[ok] + np.where(np.isfinite(ll), ll, -np.inf)
            out[s : s + EVAL_CHUNK] = val
        return out

    def start(self) -> np.ndarray:
        """A starting point for the mode search: inverse-variance mean, DerSimonian-Laird-like tau, flat weights."""
        D, L = self.data, self.layout
        w = 1.0 / D.vi
        ybar = float(np.sum(w * D.yi) / w.sum())
        x = np.zeros(self.d)
        if L.mu is not None:
            x[L.mu] = ybar
        if L.log_tau is not None:
            q = float(np.sum(w * (D.yi - ybar) ** 2))
            t2 = max((q - (D.k - 1)) / (w.sum() - np.sum(w**2) / w.sum()), 0.0)
            x[L.log_tau] = 0.5 * np.log(max(t2, 0.25 * float(np.median(D.vi))))
        return x

    def starts(self) -> list[np.ndarray]:
        """:meth:`start` and two variants with the bounded parameters' probit coordinates at -1 and +1."""
        x = self.start()
        L = self.layout
        bounded = [i for i, n in enumerate(L.names) if n.startswith("probit")]
        out = [x]
        for value in (1.0, -1.0):
            if bounded:
                y = x.copy()
                y[bounded] = value
                out.append(y)
        return out

    @property
    def _b_scale(self) -> float:
        """Scale of the PET/PEESE coordinate: the prior's scale parameter (b = scale at z = 0)."""
        prior = self.priors.pet if self.spec.bias == "pet" else self.priors.peese
        kw = prior.kw
        return float(kw.get("beta", kw.get("sigma", kw.get("upper", 1.0))))


# --------------------------------------------------------------------------------------------------
# adaptive quadrature
# --------------------------------------------------------------------------------------------------


def _fd_grad_hess(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: np.ndarray):
    """Central finite-difference gradient and Hessian of scalar ``f`` (vectorised over a stencil)."""
    d = x.size
    E = np.diag(h)
    pts = [x]
    for i in range(d):
        pts += [x + E[i], x - E[i]]
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    for i, j in pairs:
        pts += [x + E[i] + E[j], x + E[i] - E[j], x - E[i] + E[j], x - E[i] - E[j]]
    vals = f(np.array(pts))
    f0 = vals[0]
    g = np.empty(d)
    H = np.empty((d, d))
    for i in range(d):
        fp, fm = vals[1 + 2 * i], vals[2 + 2 * i]
        g[i] = (fp - fm) / (2 * h[i])
        H[i, i] = (fp - 2 * f0 + fm) / h[i] ** 2
    base = 1 + 2 * d
    for n, (i, j) in enumerate(pairs):
        a, b, c, e = vals[base + 4 * n : base + 4 * n + 4]
        H[i, j] = H[j, i] = (a - b - c + e) / (4 * h[i] * h[j])
    return f0, g, H


def _refine_mode(f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray):
    """BFGS from ``x0``, then damped Newton steps with a finite-difference Hessian; (mode, log f, cov) or None."""
    d = x0.size

    def neg(x):
        v = f(x[None, :])[0]
        return -v if np.isfinite(v) else 1e300

    def grad(x):
        h = np.full(d, 1e-5)
        v = f(np.concatenate([x + np.diag(h), x - np.diag(h)]))
        if not np.all(np.isfinite(v)):
            return np.zeros(d)
        return -(v[:d] - v[d:]) / (2 * h)

    res = optimize.minimize(neg, x0, jac=grad, method="BFGS", options={"gtol": 1e-7, "maxiter": 2000})
    x = res.x
    h = np.full(d, FD_STEP)
    cov = None
    f0 = -res.fun
    for _ in range(30):
        f0, g, H = _fd_grad_hess(f, x, h)
        if not (np.isfinite(f0) and np.all(np.isfinite(H))):
            return None
        try:
            cov = np.linalg.inv(-H)
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            return None
        step = cov @ g
        sd = np.sqrt(np.diag(cov))
        if np.all(np.abs(step) < 1e-9 * np.maximum(sd, 1e-12)):
            break
        t = 1.0
        while t > 1e-4:
            if f((x + t * step)[None, :])[0] >= f0 - 1e-12:
                break
            t /= 2
        x = x + t * step
        h = np.clip(0.05 * sd, 1e-6, FD_STEP * 10)
    return x, float(f0), cov


def find_mode(f: Callable[[np.ndarray], np.ndarray], starts: Sequence[np.ndarray], label: str):
    r"""Mode and curvature of the log density ``f`` (vectorised), the best over several starting points.

    Returns ``(mode, cov)`` with ``cov`` the inverse of the negative Hessian at the mode.  Raises
    :class:`RobmaError` when no finite mode with a negative-definite Hessian is found.
    """
    best = None
    for x0 in starts:
        out = _refine_mode(f, np.asarray(x0, dtype=float))
        if out is not None and (best is None or out[1] > best[1]):
            best = out
    if best is None:
        raise RobmaError(f"{label}: the posterior mode could not be located (Hessian not negative definite); "
                         "the data may not identify this model — try a more informative prior or leave the "
                         "component out (bayes.robma.components)")
    return best[0], best[2]


@dataclass(frozen=True)
class Marginal1D:
    """Marginal posterior of one scalar on a fine grid (``x``, cumulative ``cdf``) or an atom at ``atom``."""

    x: np.ndarray | None
    cdf: np.ndarray | None
    atom: float | None = None
    draws: np.ndarray | None = None
    node_x: np.ndarray | None = None
    node_mass: np.ndarray | None = None

    @classmethod
    def point(cls, value: float) -> Marginal1D:
        return cls(None, None, float(value))

    @classmethod
    def from_draws(cls, draws: np.ndarray) -> Marginal1D:
        return cls(None, None, None, np.sort(np.asarray(draws, dtype=float).ravel()))

    @classmethod
    def from_log_density(cls, nodes: np.ndarray, log_dens: np.ndarray, log_mass: np.ndarray) -> Marginal1D:
        """From quadrature nodes: the log density there and each node's normalised quadrature mass.

        Expectations are the quadrature sums over the nodes (exact to the rule's accuracy); the CDF for
        quantiles integrates a shape-preserving (PCHIP) interpolant of the log density by the trapezoid rule on
        a grid refined between consecutive nodes (dense where the nodes are, i.e. near the mode; sparse in far tails).
        """
        keep = np.isfinite(log_dens) & np.isfinite(log_mass)
        nodes, log_dens, log_mass = nodes[keep], log_dens[keep], log_mass[keep]
        # PCHIP, not a cubic spline: shape-preserving, so the interpolated log density never overshoots the
        # nodes' values; a cubic spline through sparse far-tail nodes can bulge to the mode's height there and
        # put spurious mass (and quantiles) far in the tail.
        spline = interpolate.PchipInterpolator(nodes, log_dens - log_dens.max())
        t = np.linspace(0.0, 1.0, FINE_PER_NODE, endpoint=False)
        x = np.concatenate([(nodes[:-1, None] + np.diff(nodes)[:, None] * t[None, :]).ravel(), nodes[-1:]])
        dens = np.exp(np.minimum(spline(x), 0.0))
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(x))])
        mass = np.exp(log_mass - special.logsumexp(log_mass))
        return cls(x, cdf / cdf[-1], node_x=nodes, node_mass=mass)

    def cdf_at(self, xs: np.ndarray) -> np.ndarray:
        xs = np.asarray(xs, dtype=float)
        if self.atom is not None:
            return (xs >= self.atom).astype(float)
        if self.draws is not None:
            return np.searchsorted(self.draws, xs, side="right") / self.draws.size
        return np.interp(xs, self.x, self.cdf, left=0.0, right=1.0)

    def support(self) -> tuple[float, float]:
        if self.atom is not None:
            return self.atom, self.atom
        if self.draws is not None:
            return float(self.draws[0]), float(self.draws[-1])
        return float(self.x[0]), float(self.x[-1])

    def expect(self, fn: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> float:
        if self.atom is not None:
            return float(fn(np.array([self.atom]))[0])
        if self.draws is not None:
            return float(np.mean(fn(self.draws)))
        if self.node_x is not None:
            return float(np.dot(self.node_mass, fn(self.node_x)))
        mid = 0.5 * (self.x[1:] + self.x[:-1])
        return float(np.sum(fn(mid) * np.diff(self.cdf)))


@dataclass(frozen=True)
class QuadratureResult:
    log_evidence: float
    error: float
    marginals: dict[str, Marginal1D]
    n_points: int


def _grid_pass(f, mode, cov, target: int, n_inner: int, panels: int, label: str):
    """One adaptive pass with ``target`` as the Gauss–Legendre coordinate.

    Returns ``(log_evidence, target_values, log_marginal_density, n_points)``.
    """
    d = mode.size
    perm = [target] + [i for i in range(d) if i != target]
    C = cov[np.ix_(perm, perm)]
    L = np.linalg.cholesky(C)
    log_det = float(np.sum(np.log(np.diag(L))))
    if d > 1:
        gx, gw = _gh(n_inner)
        inner = np.stack(np.meshgrid(*([gx] * (d - 1)), indexing="ij"), axis=-1).reshape(-1, d - 1)
        log_gw = np.sum(np.log(np.stack(np.meshgrid(*([gw] * (d - 1)), indexing="ij"), axis=-1)
                               .reshape(-1, d - 1)), axis=1)
        # Gauss–Hermite computes E_phi[f/phi]: add -log phi(z) of the inner nodes
        log_gw = log_gw + 0.5 * np.sum(inner**2, axis=1) + 0.5 * (d - 1) * LOG_2PI
    else:
        inner = np.zeros((1, 0))
        log_gw = np.zeros(1)
    half = GL_HALF_WIDTH
    for _ in range(MAX_WIDEN + 1):
        # Gauss–Legendre in s with z1 = sinh(s): near-uniform spacing close to the mode, geometric
        # spacing in the tails, so that heavy (polynomial) tails of the marginal — e.g. mu when tau
        # is weakly identified at small k — are covered by a few panels.
        edges = np.linspace(-np.arcsinh(half), np.arcsinh(half), panels + 1)
        hw = 0.5 * np.diff(edges)
        s_nodes = (edges[:-1, None] + hw[:, None] * (_GL_X[None, :] + 1.0)).ravel()
        z1 = np.sinh(s_nodes)
        w1 = (hw[:, None] * _GL_W[None, :]).ravel() * np.cosh(s_nodes)
        Z = np.concatenate([np.repeat(z1, inner.shape[0])[:, None], np.tile(inner, (z1.size, 1))], axis=1)
        Xp = Z @ L.T
        X = np.empty_like(Xp)
        X[:, perm] = Xp
        X += mode
        lf = f(X).reshape(z1.size, inner.shape[0])
        log_m = special.logsumexp(lf + log_gw[None, :], axis=1) + log_det
        if not np.any(np.isfinite(log_m)):
            raise RobmaError(f"{label}: the posterior is zero on the whole quadrature grid")
        top = np.nanmax(log_m)
        if log_m[0] < top - LOG_DROP_EDGE and log_m[-1] < top - LOG_DROP_EDGE:
            break
        half *= 4.0
    else:
        raise RobmaError(f"{label}: the marginal posterior of {target=} does not decay within "
                         f"{half:.0f} posterior SDs of the mode; the posterior may be improper or multimodal")
    log_ev = float(special.logsumexp(log_m + np.log(w1)))
    values = mode[target] + L[0, 0] * z1
    log_dens = log_m - np.log(L[0, 0]) - log_ev
    log_mass = log_m + np.log(w1) - log_ev
    return log_ev, values, log_dens, log_mass, int(X.shape[0])


#: Gauss–Legendre nodes per weight coordinate (panels, nodes per panel) by the number of weight
#: coordinates (J - 1), for the fine rule and the coarse rule of the error estimate.
OMEGA_GL = {1: (3, 8), 2: (3, 6), 3: (2, 6)}
OMEGA_GL_COARSE = {1: (2, 8), 2: (2, 6), 3: (2, 5)}
#: A weight coordinate's range keeps every ratio whose conditional log density is within this of the maximum.
OMEGA_LOG_DROP = 40.0
#: Error estimate above which the rotated rule is tried as well for a selection model (the smaller error wins).
STRUCTURED_OK = 1e-6
#: Outer parameter points per block of the structured evaluation (bounds memory to points x nodes x k).
STRUCT_CHUNK_CELLS = 3_000_000


def _inner_index(model: RobmaModel) -> list[int]:
    """Coordinates integrated by Gauss–Legendre in r = Phi(x): the weights, or the PET/PEESE coefficient."""
    L = model.layout
    return list(range(L.u.start, L.u.stop)) if L.u is not None else [L.log_b]


def _omega_ranges(model: RobmaModel, mode: np.ndarray) -> list[tuple[float, float]]:
    """Box in the coordinates r = Phi(x) (weight ratios; b/(s + b) for PET/PEESE) holding the posterior."""
    idx = _inner_index(model)
    grid = np.concatenate([np.geomspace(1e-12, 1e-3, 40), np.linspace(1e-3, 1 - 1e-3, 400),
                           1 - np.geomspace(1e-3, 1e-12, 40)])
    out = []

    def scan(j, r):
        X = np.tile(mode, (r.size, 1))
        x = special.ndtri(r)
        X[:, j] = x
        return model.log_joint(X) + 0.5 * x**2  # log density in r (divide by phi(x))

    def extent(r, lf):
        keep = np.flatnonzero(lf > np.max(lf) - OMEGA_LOG_DROP)
        lo = 0.0 if keep[0] == 0 else r[keep[0] - 1]
        hi = 1.0 if keep[-1] == r.size - 1 else r[keep[-1] + 1]
        return lo, hi

    for j in idx:
        lo, hi = extent(grid, scan(j, grid))
        # refine on a fine grid inside the coarse range (a narrow posterior can fall between coarse points)
        fine = np.linspace(max(lo, 1e-15), min(hi, 1 - 1e-15), 801)
        lo2, hi2 = extent(fine, scan(j, fine))
        lo = 0.0 if lo == 0.0 and lo2 <= fine[0] else lo2
        hi = 1.0 if hi == 1.0 and hi2 >= fine[-1] else hi2
        pad = 0.15 * (hi - lo)
        out.append((max(lo - pad, 0.0), min(hi + pad, 1.0)))
    return out


def _omega_nodes(ranges, rule) -> tuple[np.ndarray, np.ndarray]:
    r"""Tensor Gauss–Legendre nodes in r over ``ranges``, returned as probit coordinates x and log weights in x.

    The weight of a node is the Gauss–Legendre weight in r divided by :math:`\phi(x)` (d r = phi(x) d x), so
    that :math:`\sum_m e^{\log w_m + \ell(x_m)}` integrates a log density :math:`\ell` given on x.
    """
    panels, per = rule
    gx, gw = np.polynomial.legendre.leggauss(per)
    axes_x, axes_lw = [], []
    for lo, hi in ranges:
        edges = np.linspace(lo, hi, panels + 1)
        hw = 0.5 * np.diff(edges)
        r = (edges[:-1, None] + hw[:, None] * (gx[None, :] + 1.0)).ravel()
        w = (hw[:, None] * gw[None, :]).ravel()
        x = special.ndtri(r)
        axes_x.append(x)
        axes_lw.append(np.log(w) + 0.5 * x**2 + 0.5 * LOG_2PI)
    X = np.stack(np.meshgrid(*axes_x, indexing="ij"), -1).reshape(-1, len(ranges))
    LW = np.sum(np.stack(np.meshgrid(*axes_lw, indexing="ij"), -1).reshape(-1, len(ranges)), axis=1)
    return X, LW


def _selection_block(model: RobmaModel, omega_x: np.ndarray, omega_lw: np.ndarray):
    r"""log of the integral over the weights (fixed nodes) of the joint density, as a function of the other coordinates.

    Single-level (and equal-effects) selection models: given (mu, tau) the normalisers are
    :math:`A_i = w_R + \sum_c (w_c - w_{c+1})\Phi(z_{ic})`, linear in the weights, so the normal CDFs are
    computed once per outer point and combined with every weight node by a matrix product.
    """
    L, D, wf = model.layout, model.data, model.spec.wf
    outer = [i for i in range(L.d) if not (L.u.start <= i < L.u.stop)]
    cuts, index = wf.z_cuts()
    obs = wf.interval_of(D.yi, D.sei)
    omega = WeightFunction.omega_from_x(omega_x)  # (M, J)
    W = omega[:, index]  # (M, R)
    dW = W[:, :-1] - W[:, 1:]  # (M, C)
    counts = np.bincount(obs, minlength=wf.J)
    fixed_m = np.log(omega) @ counts + wf.log_prior_x(omega_x) + omega_lw  # (M,)
    M = omega_x.shape[0]

    def g(Xo: np.ndarray) -> np.ndarray:
        Xo = np.atleast_2d(Xo)
        n = Xo.shape[0]
        full = np.zeros((n, L.d))
        full[:, outer] = Xo
        full[:, L.u] = 0.0
        c = model.constrained(full)
        mu, tau = c["mu"], c["tau"]
        # outer prior (the weights' prior is in fixed_m): log_prior at u = 0 minus the weights' part there
        lp = model.log_prior(full) - wf.log_prior_x(np.zeros((1, wf.J - 1)))[0]
        out = np.full(n, -np.inf)
        step = max(1, STRUCT_CHUNK_CELLS // (M * D.k))
        for s in range(0, n, step):
            sl = slice(s, s + step)
            sd = np.sqrt(D.vi[None, :] + tau[sl, None] ** 2)  # (b, k)
            resid = (D.yi[None, :] - mu[sl, None]) / sd
            normal = np.sum(-0.5 * resid**2 - np.log(sd), axis=1) - 0.5 * D.k * LOG_2PI
            z = (D.sei[None, :, None] * cuts[None, None, :] - mu[sl, None, None]) / sd[:, :, None]
            A = W[None, None, :, -1] + np.einsum("bkc,mc->bkm", special.ndtr(z), dW)  # (b, k, M)
            total = normal[:, None] - np.log(A).sum(axis=1) + fixed_m[None, :]
            out[sl] = lp[sl] + special.logsumexp(total, axis=1)
        return out

    return g, outer


def _generic_block(model: RobmaModel, x_nodes: np.ndarray, lw: np.ndarray):
    """log of the Gauss–Legendre integral over the inner coordinates of the joint density (any model)."""
    inner = _inner_index(model)
    outer = [i for i in range(model.d) if i not in inner]
    M = x_nodes.shape[0]

    def g(Xo: np.ndarray) -> np.ndarray:
        Xo = np.atleast_2d(Xo)
        n = Xo.shape[0]
        full = np.zeros((n * M, model.d))
        full[:, outer] = np.repeat(Xo, M, axis=0)
        full[:, inner] = np.tile(x_nodes, (n, 1))
        return special.logsumexp(model.log_joint(full).reshape(n, M) + lw[None, :], axis=1)

    return g, outer


def _quadrature_structured(model: RobmaModel, targets: Sequence[str], label: str) -> QuadratureResult:
    """Selection models with cheap normalisers: Gauss–Legendre over the weights, adaptive quadrature over the rest."""
    mode, cov = find_mode(model.log_joint, model.starts(), label)
    names = model.layout.names
    ranges = _omega_ranges(model, mode)
    n_w = len(ranges)
    results = []
    for rule, fine in ((OMEGA_GL[n_w], True), (OMEGA_GL_COARSE[n_w], False)):
        ox, olw = _omega_nodes(ranges, rule)
        if model.spec.bias == "selection":
            g, outer = _selection_block(model, ox, olw)
        else:
            g, outer = _generic_block(model, ox, olw)
        d_o = len(outer)
        if d_o == 0:
            results.append((float(g(np.zeros((1, 0)))[0]), {}, ox.shape[0]))
            continue
        m_o, c_o = mode[outer], cov[np.ix_(outer, outer)]
        onames = [names[i] for i in outer]
        present = [onames.index(t) for t in targets if t in onames] or [0]
        n_in = GH_INNER[d_o - 1] if fine else GH_INNER_COARSE[d_o - 1]
        panels = GL_PANELS if fine else GL_PANELS_COARSE
        marg, evs, npts = {}, [], 0
        for t in (present if fine else present[:1]):
            log_ev, vals, log_dens, log_mass, n = _grid_pass(g, m_o, c_o, t, n_in, panels, label)
            evs.append(log_ev)
            npts += n * ox.shape[0]
            if onames[t] in targets:
                marg[onames[t]] = Marginal1D.from_log_density(vals, log_dens, log_mass)
        results.append((evs, marg, npts))
    fine_res, coarse_res = results
    if isinstance(fine_res[0], float):
        return QuadratureResult(fine_res[0], abs(fine_res[0] - coarse_res[0]), {}, fine_res[2] + coarse_res[2])
    evs = fine_res[0]
    err = max([abs(e - evs[0]) for e in evs[1:]] + [abs(coarse_res[0][0] - evs[0])])
    return QuadratureResult(evs[0], float(err), fine_res[1], fine_res[2] + coarse_res[2])


def quadrature(model: RobmaModel, targets: Sequence[str] = ("mu", "log_tau")) -> QuadratureResult:
    """Log marginal likelihood and marginal posteriors of mu and tau by adaptive quadrature (module docstring)."""
    label = f"RoBMA model {model.spec.name}"
    d = model.d
    if d == 0:
        ll = float(model.log_likelihood(np.zeros((1, 0)))[0])
        return QuadratureResult(ll, 0.0, {}, 1)
    structured = (model.spec.bias == "selection" and not (model.data.three_level and model.spec.heterogeneity)) \
        or model.spec.bias in ("pet", "peese")
    if structured:
        res = _quadrature_structured(model, targets, label)
        if res.error > STRUCTURED_OK:
            # a well-identified interior posterior (e.g. strong selection without effect) is better served by
            # the rotated Gauss–Hermite rule; keep whichever reports the smaller error
            alt = _quadrature_rotated(model, targets, label)
            if alt.error < res.error:
                return alt
        return res
    return _quadrature_rotated(model, targets, label)


def _quadrature_rotated(model: RobmaModel, targets: Sequence[str], label: str) -> QuadratureResult:
    """Rotated adaptive rule over all unconstrained coordinates (see module docstring)."""
    d = model.d
    mode, cov = find_mode(model.log_joint, model.starts(), label)
    names = model.layout.names
    present = [names.index(t) for t in targets if t in names] or [0]
    n_in, n_co = GH_INNER[d - 1], GH_INNER_COARSE[d - 1]
    estimates, marginals, n_pts = [], {}, 0
    for j, t in enumerate(present):
        log_ev, vals, log_dens, log_mass, n = _grid_pass(model.log_joint, mode, cov, t, n_in, GL_PANELS, label)
        n_pts += n
        estimates.append(log_ev)
        if j == 0:
            log_ev0 = log_ev
        if names[t] in targets:
            marginals[names[t]] = Marginal1D.from_log_density(vals, log_dens, log_mass)
    coarse, _, _, _, n = _grid_pass(model.log_joint, mode, cov, present[0], n_co, GL_PANELS_COARSE, label)
    n_pts += n
    estimates.append(coarse)
    # the same rule on a grid widened by INFLATE: posterior mass in tails wider than the Laplace
    # approximation (weights piled against a boundary) moves this estimate, so the error reflects it
    wide, _, _, _, n = _grid_pass(model.log_joint, mode, cov * INFLATE**2, present[0], n_in, GL_PANELS, label)
    n_pts += n
    estimates.append(wide)
    err = float(max(abs(e - log_ev0) for e in estimates))
    return QuadratureResult(log_ev0, err, marginals, n_pts)


# --------------------------------------------------------------------------------------------------
# MCMC + bridge sampling (PyMC model mirrors RobmaModel.log_joint)
# --------------------------------------------------------------------------------------------------


def build_pymc_model(model: RobmaModel):
    """The same model in PyMC (parameters mu, tau, rho, eta, b; likelihood as a ``pm.Potential``)."""
    import pymc as pm
    import pytensor.tensor as pt

    D, spec, P = model.data, model.spec, model.priors
    with pm.Model() as m:
        mu = P.mu.pymc("mu") if spec.effect else pt.constant(0.0)
        tau = P.tau.pymc("tau") if spec.heterogeneity else None
        three = D.three_level and spec.heterogeneity
        rho = pm.Beta("rho", alpha=P.rho[0], beta=P.rho[1]) if three else None
        y = pt.constant(D.yi)
        v = pt.constant(D.vi)
        se = pt.constant(D.sei)
        if spec.bias in ("pet", "peese"):
            b = (P.pet if spec.bias == "pet" else P.peese).pymc(spec.bias)
            mean = mu + b * (se if spec.bias == "pet" else v)
        else:
            mean = mu + pt.zeros(D.k)
        if spec.bias == "selection":
            wf = spec.wf
            eta = pm.Dirichlet("eta", a=np.asarray(wf.alpha))
            omega = pt.cumsum(eta[::-1])[::-1]
            cuts, index = wf.z_cuts()
            obs = wf.interval_of(D.yi, D.sei)
            w = omega[index]
            diff = w[:-1] - w[1:]
            if three and model.selection_likelihood == "joint":
                from alliancemeta.studies.bayes.models import _three_level_loglik

                ss, sw = rho * tau**2, (1.0 - rho) * tau**2
                cs = _three_level_loglik(y - mean, v, pt.constant(D.codes), D.n_studies, pt.sqrt(ss), pt.sqrt(sw))
                sizes = np.diff(np.r_[D.starts, D.k])
                multi = np.isin(D.codes, np.flatnonzero(sizes > 1))
                ll = cs + pt.sum(pt.log(omega[obs]))
                if (~multi).any():
                    sd1 = pt.sqrt(v[~multi] + ss + sw)
                    z1 = (se[~multi][:, None] * cuts[None, :] - mu) / sd1[:, None]
                    A1 = w[-1] + pt.sum(diff * 0.5 * pt.erfc(-z1 / np.sqrt(2.0)), axis=1)
                    ll = ll - pt.sum(pt.log(A1))
                if multi.any():
                    gx, gw = _gh(model.gh_nodes)
                    codes_m = pd.factorize(D.codes[multi])[0]
                    centre = mu + pt.sqrt(ss) * gx  # (Q,)
                    sdm = pt.sqrt(v[multi] + sw)
                    zm = (se[multi][:, None, None] * cuts[None, None, :] - centre[None, :, None]) / sdm[:, None, None]
                    Am = w[-1] + pt.sum(diff * 0.5 * pt.erfc(-zm / np.sqrt(2.0)), axis=2)  # (km, Q)
                    S = pt.inc_subtensor(pt.zeros((int(codes_m.max()) + 1, model.gh_nodes))[pt.constant(codes_m)],
                                         pt.log(Am))
                    ll = ll - pt.sum(pt.logsumexp(np.log(gw)[None, :] + S, axis=1))
                pm.Potential("loglik", ll)
            elif three:
                idx = pt.constant(D.codes)
                ss, sw = rho * tau**2, (1.0 - rho) * tau**2
                d = v + sw
                zeros = pt.zeros(D.n_studies)
                s1 = pt.inc_subtensor(zeros[idx], 1.0 / d)
                s2 = pt.inc_subtensor(zeros[idx], (y - mean) / d)
                c = 1.0 + ss * s1
                gauss = -0.5 * (D.k * LOG_2PI + pt.sum(pt.log(d)) + pt.sum(pt.log(c)) + pt.sum((y - mean) ** 2 / d)
                                - ss * pt.sum(s2**2 / c))
                V = ss / c
                mj = mu + V * s2
                gx, gw = _gh(model.gh_nodes)
                theta = mj[idx][:, None] + pt.sqrt(V)[idx][:, None] * gx[None, :]  # (k, Q)
                z = (se[:, None, None] * cuts[None, None, :] - theta[:, :, None]) / pt.sqrt(d)[:, None, None]
                A = w[-1] + pt.sum(diff * 0.5 * pt.erfc(-z / np.sqrt(2.0)), axis=2)
                S = pt.inc_subtensor(pt.zeros((D.n_studies, model.gh_nodes))[idx], pt.log(A))
                sel = pt.sum(pt.logsumexp(np.log(gw)[None, :] - S, axis=1))
                pm.Potential("loglik", gauss + pt.sum(pt.log(omega[obs])) + sel)
            else:
                sd = pt.sqrt(v + (tau**2 if tau is not None else 0.0))
                z = (se[:, None] * cuts[None, :] - mean[:, None]) / sd[:, None]
                A = w[-1] + pt.sum(diff * 0.5 * pt.erfc(-z / np.sqrt(2.0)), axis=1)
                ll = pt.sum(pt.log(omega[obs]) - 0.5 * ((y - mean) / sd) ** 2 - pt.log(sd) - 0.5 * LOG_2PI - pt.log(A))
                pm.Potential("loglik", ll)
        elif three:
            from alliancemeta.studies.bayes.models import _three_level_loglik

            pm.Potential("loglik", _three_level_loglik(y - mean, v, pt.constant(D.codes), D.n_studies,
                                                       pt.sqrt(rho) * tau, pt.sqrt(1.0 - rho) * tau))
        else:
            sd = pt.sqrt(v + (tau**2 if tau is not None else 0.0))
            pm.Potential("loglik", pt.sum(-0.5 * ((y - mean) / sd) ** 2 - pt.log(sd) - 0.5 * LOG_2PI))
    return m


def _to_unconstrained(model: RobmaModel, post) -> np.ndarray:
    """Posterior draws (xarray, chain x draw) on the model's unconstrained coordinates, (chains, draws, d)."""
    L, spec = model.layout, model.spec
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    X = np.empty((chains, draws, L.d))
    if L.mu is not None:
        X[..., L.mu] = post["mu"].values
    if L.log_tau is not None:
        X[..., L.log_tau] = np.log(post["tau"].values)
    if L.logit_rho is not None:
        X[..., L.logit_rho] = special.ndtri(post["rho"].values)
    if L.u is not None:
        X[..., L.u] = WeightFunction.x_from_omega(WeightFunction.omega_from_eta(post["eta"].values))
    if L.log_b is not None:
        b = post[spec.bias].values / model._b_scale
        X[..., L.log_b] = special.ndtri(b / (1.0 + b))
    return X


@dataclass(frozen=True)
class McmcResult:
    log_evidence: float
    error: float
    marginals: dict[str, Marginal1D]
    bridge: BridgeResult
    max_r_hat: float
    min_ess_bulk: float
    n_divergent: int
    attempts: int
    seconds: float


def mcmc_bridge(model: RobmaModel, settings: SamplerSettings, seed: int) -> McmcResult:
    """Sample through the package's one MCMC path (:func:`alliancemeta.core.mcmc.fit`: r_hat, bulk ESS and
    divergences checked on every free variable, one retry, then :class:`SamplingError`) and bridge-sample the
    evidence."""
    from alliancemeta.core.mcmc import fit

    t0 = time.perf_counter()
    pm_model = build_pymc_model(model)
    names = [v.name for v in pm_model.free_RVs]
    result = fit(pm_model, settings, seed, f"RoBMA model {model.spec.name}", names)
    X = _to_unconstrained(model, result.idata.posterior)
    br = bridge_sampling(X, model.log_joint, seed=(seed + 1) % 2**32)
    post = result.idata.posterior
    marg = {}
    if "mu" in post:
        marg["mu"] = Marginal1D.from_draws(post["mu"].values)
    if "tau" in post:
        marg["log_tau"] = Marginal1D.from_draws(np.log(post["tau"].values))
    diag = result.diagnostics
    return McmcResult(br.log_evidence, br.error, marg, br, diag.max_r_hat, diag.min_ess_bulk, diag.n_divergent,
                      result.attempts, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# the ensemble
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobmaSettings:
    """Settings of a RoBMA run: config ``bayes.robma`` and, where MCMC is used, the sampler of ``bayes``."""

    priors: RobmaPriors
    gh_nodes: int
    selection_likelihood: str  # joint | conditional (three-level selection models)
    method: str  # auto | quadrature | mcmc
    sampler: SamplerSettings
    sensitivity: Mapping[str, Mapping]  # label -> the prior keys an alternative changes

    @classmethod
    def from_config(cls, robma: Mapping, sampler: SamplerSettings) -> RobmaSettings:
        """From the validated section ``bayes.robma`` (every key present) and the ``bayes`` sampler settings;
        ``ValueError`` names the offending key."""
        out = cls(RobmaPriors.from_config(robma), robma["gh_nodes"], robma["selection_likelihood"],
                  robma["method"], sampler, dict(robma["sensitivity"]))
        if out.selection_likelihood not in ("joint", "conditional"):
            raise ValueError(f"bayes.robma.selection_likelihood: {out.selection_likelihood!r}; expected joint "
                             "or conditional")
        if out.method not in ("auto", "quadrature", "mcmc"):
            raise ValueError(f"bayes.robma.method: {out.method!r}; expected auto, quadrature or mcmc")
        if isinstance(out.gh_nodes, bool) or not isinstance(out.gh_nodes, int) or out.gh_nodes < 4:
            raise ValueError(f"bayes.robma.gh_nodes: {out.gh_nodes!r} must be an integer >= 4")
        for label, over in out.sensitivity.items():
            unknown = sorted(set(over) - set(PRIOR_KEYS))
            if unknown:
                raise ValueError(f"bayes.robma.sensitivity.{label}: unknown key(s) {', '.join(unknown)}; "
                                 f"expected some of {', '.join(PRIOR_KEYS)}")
            out.alternative(label)  # every alternative's priors parse
        return out

    @classmethod
    def from_bayes(cls, bayes: BayesSettings) -> RobmaSettings:
        """From the study-level Bayesian settings (``bayes.robma`` and the ``bayes`` sampler)."""
        return cls.from_config(bayes.robma, bayes.sampler)

    def alternative(self, label: str) -> RobmaSettings:
        """These settings with the priors of sensitivity alternative ``label``."""
        try:
            priors = RobmaPriors.from_config({**self.priors.as_config(), **dict(self.sensitivity[label])})
        except ValueError as err:
            raise ValueError(f"bayes.robma.sensitivity.{label}: {err}") from None
        return replace(self, priors=priors)


@dataclass(frozen=True)
class ModelFit:
    """One fitted model: evidence with its error and method, marginal posteriors, diagnostics."""

    spec: ModelSpec
    log_evidence: float
    error: float
    method: str
    marginals: dict[str, Marginal1D]
    seconds: float
    r_hat: float = np.nan
    ess_bulk: float = np.nan

    def marginal(self, name: str) -> Marginal1D:
        """``mu`` or ``log_tau`` (an atom at 0 / -inf when the model fixes the parameter)."""
        if name in self.marginals:
            return self.marginals[name]
        return Marginal1D.point(0.0 if name == "mu" else -np.inf)


@dataclass(frozen=True)
class RobmaFit:
    """The fitted ensemble: per-model fits, posterior model probabilities, k and whether three-level."""

    models: tuple[ModelFit, ...]
    post_prob: np.ndarray
    k: int
    n_studies: int
    three_level: bool
    seconds: float

    @property
    def prior_prob(self) -> np.ndarray:
        return np.array([m.spec.prior_prob for m in self.models])

    @property
    def log_evidence(self) -> np.ndarray:
        return np.array([m.log_evidence for m in self.models])

    def inclusion(self, mask: np.ndarray) -> tuple[float, float, float]:
        """(prior inclusion probability, posterior inclusion probability, log inclusion BF) of a component."""
        pp = self.prior_prob
        le = self.log_evidence
        prior_in = float(pp[mask].sum())
        log_bf = float(special.logsumexp(le[mask], b=pp[mask] / prior_in)
                       - special.logsumexp(le[~mask], b=pp[~mask] / (1.0 - prior_in)))
        return prior_in, float(self.post_prob[mask].sum()), log_bf

    def masks(self) -> dict[str, np.ndarray]:
        specs = [m.spec for m in self.models]
        out = {
            "effect": np.array([s.effect for s in specs]),
            "heterogeneity": np.array([s.heterogeneity for s in specs]),
            "bias": np.array([s.bias != "none" for s in specs]),
        }
        for kind in ("selection", "pet", "peese"):
            m = np.array([s.bias == kind for s in specs])
            if m.any():
                out[kind] = m
        return out


def _uses_mcmc(model: RobmaModel, settings: RobmaSettings) -> bool:
    if settings.method == "mcmc":
        return model.d > 0
    if settings.method == "auto":
        return model.uses_mcmc or model.d > MAX_QUADRATURE_DIM
    return False


def fit_model(model: RobmaModel, settings: RobmaSettings, seed: int) -> ModelFit:
    """The marginal likelihood and marginal posteriors of one model (quadrature, or MCMC + bridge sampling)."""
    t0 = time.perf_counter()
    if _uses_mcmc(model, settings):
        res = mcmc_bridge(model, settings.sampler, (seed + zlib.crc32(model.spec.name.encode())) % 2**32)
        return ModelFit(model.spec, res.log_evidence, res.error, "bridge", res.marginals, time.perf_counter() - t0,
                        res.max_r_hat, res.min_ess_bulk)
    res = quadrature(model)
    method = "closed_form" if model.d == 0 else "quadrature"
    return ModelFit(model.spec, res.log_evidence, res.error, method, res.marginals, time.perf_counter() - t0)


#: Worker state of :func:`_fit_in_worker` (set once per worker process by :func:`_init_worker`).
_WORKER: dict = {}


def _init_worker(data: RobmaData, settings: RobmaSettings, seed: int) -> None:
    _WORKER.update(data=data, settings=settings, seed=seed)


def _fit_in_worker(spec: ModelSpec) -> ModelFit:
    data, settings = _WORKER["data"], _WORKER["settings"]
    model = RobmaModel(spec, data, settings.priors, _layout(spec, data.three_level), settings.gh_nodes,
                       settings.selection_likelihood)
    return fit_model(model, settings, _WORKER["seed"])


def fit_robma(yi, vi, cluster, settings: RobmaSettings, seed: int, *, workers: int = 1,
              progress: Callable[[str], None] | None = None, cache: dict | None = None) -> RobmaFit:
    """Fit every model of the ensemble (single-level, or three-level when ``cluster`` is given).

    Parameters
    ----------
    yi, vi : array_like
        Fisher-z effects and sampling variances.
    cluster : array_like or None
        Study identifier of each effect: the three-level version of every component.
    settings : RobmaSettings
    seed : int
        Base seed; each MCMC model gets ``seed + crc32(model name)``.
    workers : int
        Processes fitting quadrature models side by side (the models are independent; results do not depend
        on the number of workers). MCMC models are sampled in this process.
    cache : dict, optional
        Fitted models by :meth:`RobmaPriors.uses`: a model whose priors did not change is not refitted
        (prior sensitivity).
    """
    t0 = time.perf_counter()
    data = RobmaData.build(yi, vi, cluster)
    cache = {} if cache is None else cache
    specs = model_set(settings.priors)
    keys = [settings.priors.uses(spec) for spec in specs]
    todo = [spec for spec, key in zip(specs, keys, strict=True) if key not in cache]

    def record(spec: ModelSpec, fitted: ModelFit) -> None:
        cache[settings.priors.uses(spec)] = fitted
        if progress is not None:
            progress(f"{spec.name}: log p(y) = {fitted.log_evidence:.6f} ± {fitted.error:.1e} "
                     f"({fitted.method}, {fitted.seconds:.1f} s)")

    def model_of(spec: ModelSpec) -> RobmaModel:
        return RobmaModel(spec, data, settings.priors, _layout(spec, data.three_level), settings.gh_nodes,
                          settings.selection_likelihood)

    parallel = [s for s in todo if not _uses_mcmc(model_of(s), settings)] if workers > 1 else []
    if len(parallel) > 1:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        with context.Pool(min(workers, len(parallel)), _init_worker, (data, settings, seed)) as pool:
            for spec, fitted in zip(parallel, pool.imap(_fit_in_worker, parallel), strict=True):
                record(spec, fitted)
    for spec in todo:
        if settings.priors.uses(spec) not in cache:
            record(spec, fit_model(model_of(spec), settings, seed))
    fits = [replace(cache[key], spec=spec) for spec, key in zip(specs, keys, strict=True)]
    prior = np.array([f.spec.prior_prob for f in fits])
    le = np.array([f.log_evidence for f in fits])
    lp = np.log(prior) + le
    post = np.exp(lp - special.logsumexp(lp))
    return RobmaFit(tuple(fits), post, data.k, data.n_studies, data.three_level, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# summaries and the table
# --------------------------------------------------------------------------------------------------

#: Extra (trailing) columns of the RoBMA rows of ``bayes_model_averaging.csv``.
ROBMA_EXTRA_COLUMNS = ("bias", "log_evidence_error", "method", "mu_median", "r_mean", "r_eti_lb", "r_eti_ub",
                       "tau_sd", "tau_eti_lb", "tau_eti_ub", "r_hat", "ess_bulk")
ROBMA_COLUMNS = (*AVERAGING_COLUMNS, *ROBMA_EXTRA_COLUMNS)
#: Prefix of every RoBMA row name (the exact no-bias rows of the same table are ``random``, ``model_averaged``,
#: ``inclusion:effect`` ...).
ROW_PREFIX = "robma:"


class _Mixture:
    """Mixture of one-dimensional marginals with weights, evaluated on a common fine grid."""

    def __init__(self, parts: Sequence[Marginal1D], weights: np.ndarray):
        keep = weights > 1e-14
        self.parts = [p for p, k in zip(parts, keep, strict=True) if k]
        self.weights = weights[keep] / weights[keep].sum()
        lo = min(p.support()[0] for p in self.parts)
        hi = max(p.support()[1] for p in self.parts)
        finite_lo = [p.support()[0] for p in self.parts if np.isfinite(p.support()[0])]
        lo = lo if np.isfinite(lo) else min(finite_lo, default=0.0)
        if hi <= lo:
            hi = lo + 1e-9
        # the union of the parts' own grids (dense where each part has its mass) and a uniform grid
        own = [p.x for p in self.parts if p.x is not None] + [p.draws for p in self.parts if p.draws is not None]
        grid = np.concatenate([np.linspace(lo, hi, FINE_GRID), *own])
        atoms = sorted({p.atom for p in self.parts if p.atom is not None and np.isfinite(p.atom)})
        self.grid = np.unique(np.concatenate([grid, atoms, np.nextafter(np.array(atoms, dtype=float), -np.inf)]))
        self.cdf = np.zeros_like(self.grid)
        for p, w in zip(self.parts, self.weights, strict=True):
            self.cdf += w * p.cdf_at(self.grid)
        self.cdf = np.maximum.accumulate(np.clip(self.cdf, 0.0, 1.0))
        self.neg_inf_mass = float(sum(w for p, w in zip(self.parts, self.weights, strict=True)
                                      if p.atom is not None and np.isneginf(p.atom)))

    def quantile(self, q: float) -> float:
        if q <= self.neg_inf_mass:
            return -np.inf
        i = int(np.searchsorted(self.cdf, q, side="left"))
        if i == 0:
            return float(self.grid[0])
        if i >= self.grid.size:
            return float(self.grid[-1])
        c0, c1 = self.cdf[i - 1], self.cdf[i]
        if c1 - c0 <= 0 or self.grid[i - 1] == np.nextafter(self.grid[i], -np.inf):
            # no mass to interpolate in, or the jump of an atom (a point-null's 0): the quantile is the atom
            return float(self.grid[i])
        return float(self.grid[i - 1] + (q - c0) / (c1 - c0) * (self.grid[i] - self.grid[i - 1]))

    def prob_gt(self, x: float) -> float:
        return float(1.0 - sum(w * p.cdf_at(np.array([x]))[0] for p, w in zip(self.parts, self.weights, strict=True)))

    def expect(self, fn=lambda v: v) -> float:
        return float(sum(w * p.expect(fn) for p, w in zip(self.parts, self.weights, strict=True)))


def _summary(parts_mu, parts_t, weights, level: float) -> dict:
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    mu = _Mixture(parts_mu, weights)
    mean = mu.expect()
    sd = float(np.sqrt(max(mu.expect(lambda v: v * v) - mean**2, 0.0)))
    lb, ub = mu.quantile(lo_q), mu.quantile(hi_q)
    t = _Mixture(parts_t, weights)
    tau_mean = t.expect(np.exp)
    tau_sd = float(np.sqrt(max(t.expect(lambda v: np.exp(2 * v)) - tau_mean**2, 0.0)))
    t_lb, t_ub = t.quantile(lo_q), t.quantile(hi_q)
    return {
        "mu_mean": mean, "mu_sd": sd, "mu_eti_lb": lb, "mu_eti_ub": ub, "mu_median": mu.quantile(0.5),
        "tau_mean": tau_mean, "tau_sd": tau_sd, "tau_eti_lb": float(np.exp(t_lb)), "tau_eti_ub": float(np.exp(t_ub)),
        "p_r_gt_0": mu.prob_gt(0.0), "p_r_gt_0.1": mu.prob_gt(float(np.arctanh(0.1))),
        "r_mean": mu.expect(np.tanh), "r_eti_lb": float(np.tanh(lb)), "r_eti_ub": float(np.tanh(ub)),
    }


def robma_summary(fit: RobmaFit, level: float = 0.95) -> pd.DataFrame:
    """The RoBMA rows of ``bayes_model_averaging.csv`` (columns :data:`ROBMA_COLUMNS`).

    One row per model (conditional posterior of mu, r and tau; prior and posterior probability; log
    marginal likelihood with its error and method), then ``model_averaged`` (all models: the
    bias-adjusted estimate), ``model_averaged_unadjusted`` (no-bias models only),
    ``conditional_effect`` (effect models only), and ``inclusion:<component>`` rows for effect,
    heterogeneity, bias, selection, pet and peese with the inclusion Bayes factor (its log in
    ``log_evidence``) and the prior/posterior inclusion probabilities.
    """
    rows = []
    one = np.ones(1)
    for m, post in zip(fit.models, fit.post_prob, strict=True):
        row = {"model": f"{ROW_PREFIX}{m.spec.name}", "effect": m.spec.effect, "heterogeneity": m.spec.heterogeneity,
               "prior_prob": m.spec.prior_prob, "log_evidence": m.log_evidence, "post_prob": float(post),
               "bf_inclusion": np.nan, "bias": m.spec.bias_label, "log_evidence_error": m.error,
               "method": m.method, "r_hat": m.r_hat, "ess_bulk": m.ess_bulk}
        row.update(_summary([m.marginal("mu")], [m.marginal("log_tau")], one, level))
        rows.append(row)
    masks = fit.masks()
    all_mask = np.ones(len(fit.models), dtype=bool)
    for label, mask in (("model_averaged", all_mask), ("model_averaged_unadjusted", ~masks["bias"]),
                        ("conditional_effect", masks["effect"])):
        w = fit.post_prob * mask
        if w.sum() <= 0:
            continue
        sel = [m for m, k in zip(fit.models, mask, strict=True) if k]
        row = {"model": f"{ROW_PREFIX}{label}", "effect": np.nan, "heterogeneity": np.nan,
               "prior_prob": float(fit.prior_prob[mask].sum()),
               "log_evidence": float(special.logsumexp(fit.log_evidence[mask], b=fit.prior_prob[mask]
                                                       / fit.prior_prob[mask].sum())),
               "post_prob": float(fit.post_prob[mask].sum()), "bf_inclusion": np.nan, "bias": "",
               "log_evidence_error": np.nan, "method": ""}
        row.update(_summary([m.marginal("mu") for m in sel], [m.marginal("log_tau") for m in sel], w[mask], level))
        rows.append(row)
    for label, mask in masks.items():
        prior_in, post_in, log_bf = fit.inclusion(mask)
        rows.append({"model": f"{ROW_PREFIX}inclusion:{label}", "prior_prob": prior_in, "post_prob": post_in,
                     "log_evidence": log_bf, "bf_inclusion": float(np.exp(log_bf)), "bias": ""})
    return pd.DataFrame(rows).reindex(columns=list(ROBMA_COLUMNS))


def robma_table(fit: RobmaFit, level: float, exact_rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """``bayes_model_averaging.csv`` extended with the RoBMA-PSMA ensemble.

    ``exact_rows`` are the existing rows of :func:`~alliancemeta.studies.bayes.averaging.model_averaging`
    (the four no-bias models with the project's own priors); they come first, with empty RoBMA
    columns, followed by :func:`robma_summary` of the fitted ensemble (model names ``base:bias``,
    e.g. ``random:1s(.025,.05)``).  Columns :data:`ROBMA_COLUMNS`.
    """
    table = robma_summary(fit, level)
    if exact_rows is not None:
        table = pd.concat([exact_rows.reindex(columns=list(ROBMA_COLUMNS)), table], ignore_index=True)
    return table


#: Columns of ``prior_sensitivity_robma.csv``.
ROBMA_SENSITIVITY_COLUMNS = ("prior", "BF_effect", "BF_heterogeneity", "BF_bias", "mu_mean", "mu_eti_lb", "mu_eti_ub",
                       "r_mean", "r_eti_lb", "r_eti_ub", "tau_mean", "models_refitted")


def prior_sensitivity_robma(yi, vi, cluster, settings: RobmaSettings, seed: int, level: float, *,
                            workers: int = 1, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Inclusion Bayes factors and the model-averaged (bias-adjusted) estimate under the configured priors and
    under each alternative of ``settings.sensitivity`` (priors of every component, bias included).

    Models whose priors an alternative does not change are not refitted (``models_refitted`` counts the
    others).  Columns :data:`ROBMA_SENSITIVITY_COLUMNS`, one row per prior set, ``default`` first.
    """
    cache: dict = {}
    rows = []
    for label in ("default", *settings.sensitivity):
        current = settings if label == "default" else settings.alternative(label)
        before = len(cache)
        fit = fit_robma(yi, vi, cluster, current, seed, workers=workers, progress=progress, cache=cache)
        table = robma_summary(fit, level).set_index("model")
        table.index = table.index.str.removeprefix(ROW_PREFIX)
        avg = table.loc["model_averaged"]
        rows.append({"prior": label, "BF_effect": table.loc["inclusion:effect", "bf_inclusion"],
                     "BF_heterogeneity": table.loc["inclusion:heterogeneity", "bf_inclusion"],
                     "BF_bias": table.loc["inclusion:bias", "bf_inclusion"], "mu_mean": avg["mu_mean"],
                     "mu_eti_lb": avg["mu_eti_lb"], "mu_eti_ub": avg["mu_eti_ub"], "r_mean": avg["r_mean"],
                     "r_eti_lb": avg["r_eti_lb"], "r_eti_ub": avg["r_eti_ub"], "tau_mean": avg["tau_mean"],
                     "models_refitted": len(cache) - before})
    return pd.DataFrame(rows, columns=list(ROBMA_SENSITIVITY_COLUMNS))
