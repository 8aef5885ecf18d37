r"""Monte-Carlo simulation study of the interval methods under an alliance-like data-generating process.

The generator does **not** mirror any fitted model.  It includes what real alliance–outcome literatures have
and the models ignore or get only approximately right (Flückiger, Del Re, Wampold & Horvath 2018, *Psychotherapy*
55, 316-340, describe the literature it imitates):

- **several effect sizes per study, computed on one sample**: each study correlates one alliance score with
  :math:`m_i` outcome measures, so their sampling errors are correlated (about :math:`\rho`), which the
  random-effects models and the three-level model treat as independent and CHE assumes to equal its working value;
- **heterogeneity between and within studies**: true Fisher-z effects
  :math:`\theta_{ij} = \mu + u_i + w_{ij}` with :math:`\operatorname{Var}(u_i) = \tau^2(1 - s)` and
  :math:`\operatorname{Var}(w_{ij}) = \tau^2 s`, s the within share;
- **non-normal true effects** (optional): :math:`u_i` normal, right-skewed (standardised gamma with shape
  :data:`GAMMA_SHAPE`, skewness :math:`2/\sqrt{2}`) or a two-component mixture (a fifth of the studies with much
  larger effects, :data:`MIXTURE_SHARE`); every version has mean 0 and variance :math:`\tau^2(1 - s)`, so
  :math:`\mu` is the mean of the true effects in every condition;
- **skewed sample sizes**: :math:`n_i` = round(lognormal(log median, sdlog)) clipped to ``[n_min, n_max]``, so the
  median study is small (60-80 clients) and a few are large;
- **real correlations, not normal Fisher-z draws**: the sample correlation matrix of :math:`n_i` clients is drawn
  exactly (Wishart by Bartlett's decomposition) from the population matrix of the alliance score A and the
  outcomes :math:`Y_j = \tanh(\theta_{ij})A + \sqrt{1 - \tanh^2\theta_{ij}}\,E_j` with
  :math:`\operatorname{corr}(E_j, E_l) = \rho`, so :math:`r_{ij}` has its exact finite-sample distribution
  (Fisher z is only approximately normal with variance :math:`1/(n-3)` and mean slightly above
  :math:`\theta`), and the sampling errors of one study's :math:`z_{ij}` correlate at about :math:`\rho`
  (in large samples, and more closely the smaller the true effects; Olkin & Finn 1990, *Psychol Bull* 108, 330-333);
- correlations **rounded to two decimals**, as primary studies report them, then ``yi = atanh(r)``,
  ``vi = 1/(n - 3)`` (metafor's ``escalc("ZCOR")``);
- **selection on significance** (optional): a study is published with a probability that steps down with the
  one-sided p-value of its first (primary) effect, :math:`p = 1 - \Phi(y_{i1}/\sqrt{v_{i1}})`, with steps at
  .025 and .5 (Vevea & Hedges 1995, *Psychometrika* 60, 419-435; metafor's ``selmodel`` step function).
  Studies are generated until ``k`` are published.

The target of every method is :math:`\mu`, the mean of the true Fisher-z effects of the population of studies
*before* selection, and on the correlation scale :math:`\tanh\mu` (the back-transformed estimate and interval
are compared with it; the interval covers :math:`\tanh\mu` exactly when it covers :math:`\mu`).

Methods (:data:`METHODS`), all fitted to the effect sizes of one replicate:

- ``z``, ``knha``: random-effects model of all effect sizes as if independent (``rma.uni``, the headline tau²
  estimator), normal and Knapp–Hartung intervals (:mod:`alliancemeta.studies.random_effects`);
- ``three_level``: three-level REML model, t interval with k − 1 df (:mod:`~alliancemeta.studies.multilevel.model`);
- ``cr2``: the same fit with CR2 cluster-robust SE and Satterthwaite df
  (:mod:`~alliancemeta.studies.multilevel.robust`);
- ``che``: the CHE working model with working correlation ``che_rho`` and CR2 inference
  (:mod:`~alliancemeta.studies.multilevel.che`);
- ``bayes``: the exact posterior of the random-effects model (effects as if independent) by quadrature over
  tau (:mod:`~alliancemeta.studies.bayes.quadrature`), the posterior mean and the equal-tailed credible
  interval; no MCMC is run (the exact posterior is what MCMC would approximate).

A fit that fails (no convergence, a degenerate posterior, a non-finite interval) is recorded as failed with
its reason, never dropped; summaries count failures and compute bias, RMSE and coverage over the others
(Morris, White & Crowther 2019, *Stat Med* 38, 2074-2102, give the Monte-Carlo standard errors used).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
from scipy import special

from alliancemeta.core.errors import AllianceMetaError
from alliancemeta.studies.bayes.priors import MetaPriors, as_priors
from alliancemeta.studies.bayes.quadrature import exact_posterior
from alliancemeta.studies.multilevel.che import che_fit, robust_cr2_che
from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import random_effects

#: The interval methods compared, in the order of every table and figure.
METHODS = ("z", "knha", "three_level", "cr2", "che", "bayes")
#: Distributions of the between-study true effects.
TRUE_EFFECTS = ("normal", "skewed", "mixture")
#: Upper ends of the one-sided p-value intervals of the selection step function (the last ends at 1).
SELECTION_STEPS = (0.025, 0.5)
#: Shape of the gamma distribution of the skewed true effects: skewness 2/sqrt(2) = 1.41.
GAMMA_SHAPE = 2.0
#: Share of studies in the high component of the mixture of true effects.
MIXTURE_SHARE = 0.2
#: Share of the between-study variance that separates the two mixture components (the rest is spread within
#: each component): a bimodal distribution, 80% of studies around -0.43 SD and 20% around +1.73 SD.
MIXTURE_SEPARATION = 0.75
#: Decimals to which primary studies report correlations.
R_DIGITS = 2
#: Largest |r| kept after rounding (atanh(±1) is infinite); never reached in the alliance-like designs.
R_MAX = 0.99
#: Errors that mark a fit as failed (recorded with their message, never raised out of :func:`evaluate`).
FIT_ERRORS = (AllianceMetaError, ValueError, ArithmeticError, np.linalg.LinAlgError)


# --------------------------------------------------------------------------------------------------
# the design of one condition
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One condition of the simulation design (all effect sizes on the Fisher-z scale).

    Attributes
    ----------
    name : str
        Identifier (``[a-z0-9_]+``), used in file names and tables.
    k : int
        Published studies per replicate.
    effects_mean, effects_max : float, int
        Effect sizes per study: :math:`\\min(1 + \\text{Poisson}(\\text{effects\\_mean} - 1), \\text{effects\\_max})`.
    n_median, n_sdlog, n_min, n_max :
        Sample size per study: round(lognormal(log n_median, n_sdlog)) clipped to [n_min, n_max].
    mu_r : float
        True mean correlation; :math:`\\mu = \\operatorname{atanh}(\\mu_r)` is the mean of the true Fisher-z effects.
    tau2 : float
        Total variance of the true effects (between plus within studies).
    within_share : float
        Share of ``tau2`` between effect sizes of one study.
    rho : float
        Correlation of the outcome measures of one study given the alliance score: the sampling correlation of
        the study's effect sizes (approximately, in large samples with small true effects).
    selection : tuple of 3 floats
        Publication probability of a study whose primary effect has one-sided p in [0, .025), [.025, .5),
        [.5, 1]; ``(1, 1, 1)`` is no selection.
    true_effects : str
        Distribution of the between-study effects: ``normal``, ``skewed`` or ``mixture``.
    """

    name: str
    k: int
    effects_mean: float
    effects_max: int
    n_median: float
    n_sdlog: float
    n_min: int
    n_max: int
    mu_r: float
    tau2: float
    within_share: float
    rho: float
    selection: tuple[float, float, float]
    true_effects: str

    def __post_init__(self):
        # canonical types, so that equal conditions print alike (the workflow compares parameters by their repr)
        for name in ("k", "effects_max", "n_min", "n_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"simulation condition {self.name!r}: {name} must be an integer; got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("effects_mean", "n_median", "n_sdlog", "mu_r", "tau2", "within_share", "rho"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "selection", tuple(float(w) for w in self.selection))
        checks = [
            (isinstance(self.name, str) and self.name != "", "name must be a non-empty string"),
            (self.k >= 2, "k must be >= 2"),
            (1.0 <= self.effects_mean <= self.effects_max, "effects_mean must lie in [1, effects_max]"),
            (1 <= self.effects_max <= 20, "effects_max must lie in 1..20"),
            (self.n_median > 0 and self.n_sdlog >= 0, "n_median must be > 0 and n_sdlog >= 0"),
            (4 + self.effects_max <= self.n_min <= self.n_max, "need effects_max + 4 <= n_min <= n_max"),
            (-1.0 < self.mu_r < 1.0, "mu_r must lie in (-1, 1)"),
            (self.tau2 >= 0.0, "tau2 must be >= 0"),
            (0.0 <= self.within_share <= 1.0, "within_share must lie in [0, 1]"),
            (0.0 <= self.rho < 1.0, "rho must lie in [0, 1)"),
            (len(self.selection) == 3 and all(0.0 < w <= 1.0 for w in self.selection),
             "selection must be three publication probabilities in (0, 1]"),
            (self.true_effects in TRUE_EFFECTS, f"true_effects must be one of {', '.join(TRUE_EFFECTS)}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(f"simulation condition {self.name!r}: {message}")

    @property
    def mu(self) -> float:
        """The target: the mean true Fisher-z effect, :math:`\\operatorname{atanh}(\\mu_r)`."""
        return float(np.arctanh(self.mu_r))

    @property
    def tau2_study(self) -> float:
        return self.tau2 * (1.0 - self.within_share)

    @property
    def tau2_within(self) -> float:
        return self.tau2 * self.within_share

    @property
    def selects(self) -> bool:
        return any(w < 1.0 for w in self.selection)

    @classmethod
    def from_mapping(cls, name: str, values: Mapping) -> Condition:
        """A condition from a config-style mapping (every field but ``name``; ``selection`` as a list)."""
        names = [f.name for f in fields(cls) if f.name != "name"]
        missing = [n for n in names if n not in values]
        unknown = [n for n in values if n not in names]
        if missing or unknown:
            raise ValueError(f"simulation condition {name!r}: missing {missing}, unknown {unknown}")
        return cls(name=name, **{n: values[n] for n in names})

    def as_row(self) -> dict:
        """The condition's fields as table columns (``selection`` joined by ``;``, plus ``mu`` on Fisher z)."""
        row = asdict(self)
        row["condition"] = row.pop("name")
        row["selection"] = ";".join(f"{w:g}" for w in self.selection)
        row["mu"] = self.mu
        return row


#: Table columns that describe a condition (:meth:`Condition.as_row`), in order.
CONDITION_COLUMNS = (
    "condition", "k", "effects_mean", "effects_max", "n_median", "n_sdlog", "n_min", "n_max", "mu_r", "mu", "tau2",
    "within_share", "rho", "selection", "true_effects",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the data-generating process
# --------------------------------------------------------------------------------------------------


def standardised_effects(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    r"""Draws with mean 0 and variance 1 from the distribution ``kind`` of the between-study effects.

    .. math::

        \text{normal: } Z, \qquad
        \text{skewed: } (G - a)/\sqrt{a},\; G \sim \text{Gamma}(a),\; a = 2, \qquad
        \text{mixture: } (B - \pi)\,\delta + \sqrt{1 - c}\,Z,\; B \sim \text{Bernoulli}(\pi),\;
        \delta = \sqrt{c / (\pi(1 - \pi))}

    with :math:`\pi` = :data:`MIXTURE_SHARE` and :math:`c` = :data:`MIXTURE_SEPARATION`.
    """
    if kind == "normal":
        return rng.standard_normal(size)
    if kind == "skewed":
        return (rng.gamma(GAMMA_SHAPE, 1.0, size) - GAMMA_SHAPE) / np.sqrt(GAMMA_SHAPE)
    if kind == "mixture":
        pi, c = MIXTURE_SHARE, MIXTURE_SEPARATION
        delta = np.sqrt(c / (pi * (1.0 - pi)))
        high = rng.random(size) < pi
        return (high - pi) * delta + np.sqrt(1.0 - c) * rng.standard_normal(size)
    raise ValueError(f"unknown distribution of true effects {kind!r}; expected one of {', '.join(TRUE_EFFECTS)}")


def sample_correlations(theta: np.ndarray, n: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    r"""Sample correlations of one alliance score with m outcomes, from n clients each, for many studies at once.

    ``theta`` is (studies, m) true Fisher-z effects, ``n`` the studies' sample sizes.  The population
    correlation matrix of :math:`(A, Y_1, \ldots, Y_m)` is :math:`\Sigma = LL'` with

    .. math::

        L = \begin{pmatrix} 1 & 0 \\ \varrho & \operatorname{diag}(s)\,L_\rho \end{pmatrix}, \quad
        \varrho_j = \tanh\theta_j,\; s_j = \sqrt{1 - \varrho_j^2},\; L_\rho L_\rho' = (1-\rho)I + \rho 11'

    (always positive definite).  The cross-product matrix of n normal observations about their mean is
    :math:`W \sim \text{Wishart}(n - 1, \Sigma)`, drawn as :math:`W = (LA)(LA)'` with Bartlett's lower-triangular
    :math:`A`: :math:`A_{ii}^2 \sim \chi^2_{n-1-i}` (i = 0, 1, ...) and standard normal entries below the diagonal
    (Bartlett 1933; Anderson 2003, *An Introduction to Multivariate Statistical Analysis*, section 7.2).  With
    :math:`B = LA` lower triangular, :math:`r_j = W_{0j}/\sqrt{W_{00}W_{jj}} = B_{j0}/\lVert B_{j\cdot}\rVert`.
    """
    theta = np.asarray(theta, dtype=float)
    studies, m = theta.shape
    p = m + 1
    varrho = np.tanh(theta)
    s = np.sqrt(1.0 - varrho**2)
    L_rho = np.linalg.cholesky((1.0 - rho) * np.eye(m) + rho * np.ones((m, m)))
    L = np.zeros((studies, p, p))
    L[:, 0, 0] = 1.0
    L[:, 1:, 0] = varrho
    L[:, 1:, 1:] = s[:, :, None] * L_rho[None, :, :]
    A = np.zeros((studies, p, p))
    df = np.asarray(n, dtype=float)[:, None] - 1.0 - np.arange(p)[None, :]
    A[:, np.arange(p), np.arange(p)] = np.sqrt(rng.chisquare(df))
    below = np.tril_indices(p, -1)
    A[:, below[0], below[1]] = rng.standard_normal((studies, below[0].size))
    B = L @ A
    return B[:, 1:, 0] / np.linalg.norm(B[:, 1:, :], axis=2)


def _candidate_studies(cond: Condition, size: int, rng: np.random.Generator) -> dict:
    """``size`` candidate studies (before selection): sizes, effect counts, true and observed effects."""
    m = np.minimum(1 + rng.poisson(cond.effects_mean - 1.0, size), cond.effects_max)
    n = np.clip(np.round(rng.lognormal(np.log(cond.n_median), cond.n_sdlog, size)), cond.n_min, cond.n_max)
    n = n.astype(np.int64)
    u = np.sqrt(cond.tau2_study) * standardised_effects(cond.true_effects, size, rng)
    m_max = int(m.max())
    theta = cond.mu + u[:, None] + np.sqrt(cond.tau2_within) * rng.standard_normal((size, m_max))
    r = np.full((size, m_max), np.nan)
    for mm in np.unique(m):  # studies with the same number of effects are drawn together
        rows = np.flatnonzero(m == mm)
        r[rows, :mm] = sample_correlations(theta[rows, :mm], n[rows], cond.rho, rng)
    r = np.clip(np.round(r, R_DIGITS), -R_MAX, R_MAX)
    yi = np.arctanh(r)
    vi = 1.0 / (n - 3.0)
    p_one_sided = special.ndtr(-yi[:, 0] * np.sqrt(n - 3.0))
    weight = np.asarray(cond.selection)[np.searchsorted(SELECTION_STEPS, p_one_sided, side="right")]
    published = rng.random(size) < weight
    return {"m": m, "n": n, "theta": theta, "r": r, "yi": yi, "vi": vi, "published": published}


def simulate_meta(condition: Condition, seed: int, replicate: int = 0) -> pd.DataFrame:
    r"""One simulated meta-analytic dataset of ``condition`` (see the module docstring for the process).

    Candidate studies are drawn in blocks and kept with their publication probability until ``condition.k``
    are published (in order of generation).  The random stream is ``numpy.random.default_rng([seed,
    replicate])``: replicates of one seed are independent streams, and replicate i is the same whichever
    batch computes it.

    Returns
    -------
    DataFrame
        One row per effect size: ``study_id`` (1..k), ``yi`` (Fisher z of the rounded r), ``vi`` = 1/(n - 3),
        ``n``, ``r`` and the truth ``theta`` (the effect size's true Fisher-z effect).  ``attrs["n_generated"]``
        is the number of studies generated to publish k (k without selection); the target is ``condition.mu``.
    """
    rng = np.random.default_rng([int(seed), int(replicate)])
    blocks, published = [], 0
    n_generated = 0
    while published < condition.k:
        need = condition.k - published
        size = need if not condition.selects else max(2 * need, 8)
        block = _candidate_studies(condition, size, rng)
        keep = np.flatnonzero(block["published"])[:need]
        n_generated += size if keep.size < need else int(keep[-1]) + 1
        blocks.append({key: value[keep] for key, value in block.items()})
        published += keep.size
    m = np.concatenate([b["m"] for b in blocks])
    mask = np.arange(condition.effects_max)[None, :] < m[:, None]

    def flat(key):
        values = [np.pad(b[key], ((0, 0), (0, condition.effects_max - b[key].shape[1]))) for b in blocks]
        return np.concatenate(values)[mask]

    n = np.concatenate([b["n"] for b in blocks])
    frame = pd.DataFrame(
        {
            "study_id": np.repeat(np.arange(1, condition.k + 1), m),
            "yi": flat("yi"),
            "vi": np.repeat(np.concatenate([b["vi"] for b in blocks]), m),
            "n": np.repeat(n, m),
            "r": flat("r"),
            "theta": flat("theta"),
        }
    )
    frame.attrs["n_generated"] = int(n_generated)
    return frame


# --------------------------------------------------------------------------------------------------
# fitting every method to one replicate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodResult:
    """One method's estimate and interval for one replicate; ``failed`` fits hold NaN and the reason in ``note``."""

    method: str
    estimate: float
    se: float
    ci_lb: float
    ci_ub: float
    failed: bool
    note: str

    def covered(self, mu: float) -> float:
        """1.0 when the interval contains ``mu``, 0.0 when it does not, NaN for a failed fit."""
        if self.failed:
            return np.nan
        return float(self.ci_lb <= mu <= self.ci_ub)

    @property
    def width(self) -> float:
        return self.ci_ub - self.ci_lb


def _failed(method: str, note: str) -> MethodResult:
    return MethodResult(method, np.nan, np.nan, np.nan, np.nan, True, note)


def _fit(method: str, yi, vi, cluster, level: float, estimator: str, che_rho: float, priors: MetaPriors, cache):
    """(estimate, se, ci_lb, ci_ub) of one method; fits shared between methods are kept in ``cache``."""
    if method in ("z", "knha"):
        if "re_z" not in cache:
            cache["re_z"] = random_effects(yi, vi, method=estimator, test="z", level=level)
        fit = cache["re_z"]
        if method == "knha":  # the same tau^2, Knapp-Hartung inference
            fit = random_effects(yi, vi, method=estimator, test="knha", level=level, tau2=fit.tau2)
        return fit.estimate, float(fit.se[0]), float(fit.ci_lbs[0]), float(fit.ci_ubs[0])
    if method in ("three_level", "cr2"):
        if "ml" not in cache:
            cache["ml"] = three_level(yi, vi, cluster, test="t", level=level)
        fit = cache["ml"]
        if method == "cr2":
            fit = robust_cr2(fit)
        return fit.estimate, float(fit.se[0]), float(fit.ci_lb[0]), float(fit.ci_ub[0])
    if method == "che":
        rob = robust_cr2_che(che_fit(yi, vi, cluster, che_rho, test="z", level=level))
        return rob.estimate, float(rob.se[0]), float(rob.ci_lb[0]), float(rob.ci_ub[0])
    if method == "bayes":
        post = exact_posterior(yi, vi, priors)
        mean_tau = post.mean[:, 0]
        estimate = float(post.weight @ mean_tau)
        sd = float(np.sqrt(post.weight @ (post.cov[:, 0, 0] + (mean_tau - estimate) ** 2)))
        lo, hi = (1.0 - level) / 2.0, (1.0 + level) / 2.0
        return estimate, sd, post.mixture_quantile("mu", lo), post.mixture_quantile("mu", hi)
    raise ValueError(f"unknown simulation method {method!r}; expected one of {', '.join(METHODS)}")


def evaluate(
    data: pd.DataFrame, methods: Sequence[str], level: float, *, estimator: str, che_rho: float, priors
) -> list[MethodResult]:
    """Fit every method in ``methods`` (:data:`METHODS`) to one replicate (``study_id``, ``yi``, ``vi``).

    Parameters
    ----------
    data : DataFrame
        A replicate from :func:`simulate_meta` (or any table with those columns).
    methods : sequence of str
    level : float
        Confidence (credible) level of every interval.
    estimator : str
        tau² estimator of the ``z`` and ``knha`` random-effects models (the headline estimator).
    che_rho : float
        Working correlation of the CHE model.
    priors : MetaPriors or mapping
        Priors of the ``bayes`` method (``prior_mu`` normal, any ``prior_tau``).

    Returns
    -------
    list of MethodResult
        One per method, in the order given.  A fit that raises one of :data:`FIT_ERRORS` or returns a non-finite
        estimate or interval is ``failed`` with the reason in ``note``; warnings (e.g. every study with a single
        effect, where the three-level variances are not separately identified) go to ``note`` of a valid fit.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown simulation method(s) {', '.join(map(repr, unknown))}; expected {METHODS}")
    yi, vi = data["yi"].to_numpy(float), data["vi"].to_numpy(float)
    cluster = data["study_id"].to_numpy()
    priors = as_priors(priors)
    cache: dict = {}
    out = []
    for method in methods:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                estimate, se, lb, ub = _fit(method, yi, vi, cluster, level, estimator, che_rho, priors, cache)
            except FIT_ERRORS as err:
                out.append(_failed(method, f"{method} could not be fitted: {type(err).__name__}: {err}"))
                continue
        note = "; ".join(dict.fromkeys(str(w.message) for w in caught))
        values = np.array([estimate, se, lb, ub], dtype=float)
        if not np.all(np.isfinite(values)) or lb > ub:
            reason = f"{method} gave a non-finite estimate or interval {values.tolist()}"
            out.append(_failed(method, reason + (f" ({note})" if note else "")))
            continue
        out.append(MethodResult(method, float(estimate), float(se), float(lb), float(ub), False, note))
    return out


# --------------------------------------------------------------------------------------------------
# performance measures over replicates
# --------------------------------------------------------------------------------------------------

#: Columns of :func:`summarise`, per method.
SUMMARY_COLUMNS = (
    "method", "n_replicates", "n_failed", "bias", "bias_mcse", "rmse", "rmse_mcse", "coverage", "coverage_mcse",
    "width", "bias_r", "rmse_r", "width_r",
)  # fmt: skip


def performance(estimate, ci_lb, ci_ub, failed, mu: float) -> dict:
    r"""Bias, RMSE, coverage and mean width over the replicates that did not fail, with Monte-Carlo SEs.

    With :math:`n` successful replicates, estimates :math:`\hat\theta_b` and coverage indicators :math:`c_b`
    (Morris, White & Crowther 2019, table 6):

    .. math::

        \text{bias} = \bar\theta - \mu, \quad
        \text{MCSE} = \sqrt{\tfrac{1}{n(n-1)}\textstyle\sum_b(\hat\theta_b - \bar\theta)^2}, \qquad
        \text{coverage} = \bar c, \quad \text{MCSE} = \sqrt{\bar c(1 - \bar c)/n},

        \text{MSE} = \tfrac1n\textstyle\sum_b(\hat\theta_b - \mu)^2, \quad
        \text{MCSE(MSE)} = \sqrt{\tfrac{1}{n(n-1)}\textstyle\sum_b\big((\hat\theta_b - \mu)^2 - \text{MSE}\big)^2},
        \quad \text{RMSE} = \sqrt{\text{MSE}}, \quad \text{MCSE(RMSE)} = \frac{\text{MCSE(MSE)}}{2\,\text{RMSE}}

    (the last by the delta method).  ``bias_r``, ``rmse_r`` and ``width_r`` are the same on the correlation
    scale (:math:`\tanh` of estimate and bounds against :math:`\tanh\mu`); coverage is the same on both scales.
    Every measure is NaN when no replicate succeeded, MCSEs when fewer than two did.
    """
    estimate, ci_lb, ci_ub = (np.asarray(x, dtype=float) for x in (estimate, ci_lb, ci_ub))
    failed = np.asarray(failed, dtype=bool)
    ok = ~failed
    est, lb, ub = estimate[ok], ci_lb[ok], ci_ub[ok]
    n = int(ok.sum())
    row = {"n_replicates": int(failed.size), "n_failed": int(failed.sum())}
    if n == 0:
        return row | {c: np.nan for c in SUMMARY_COLUMNS[3:]}
    err = est - mu
    covered = ((lb <= mu) & (mu <= ub)).astype(float)
    mse = float(np.mean(err**2))
    rmse = float(np.sqrt(mse))
    coverage = float(covered.mean())
    if n > 1:
        bias_mcse = float(np.sqrt(np.sum((est - est.mean()) ** 2) / (n * (n - 1))))
        mse_mcse = float(np.sqrt(np.sum((err**2 - mse) ** 2) / (n * (n - 1))))
        rmse_mcse = mse_mcse / (2.0 * rmse) if rmse > 0 else np.nan
        coverage_mcse = float(np.sqrt(coverage * (1.0 - coverage) / n))
    else:
        bias_mcse = rmse_mcse = coverage_mcse = np.nan
    err_r = np.tanh(est) - np.tanh(mu)
    return row | {
        "bias": float(err.mean()),
        "bias_mcse": bias_mcse,
        "rmse": rmse,
        "rmse_mcse": rmse_mcse,
        "coverage": coverage,
        "coverage_mcse": coverage_mcse,
        "width": float(np.mean(ub - lb)),
        "bias_r": float(err_r.mean()),
        "rmse_r": float(np.sqrt(np.mean(err_r**2))),
        "width_r": float(np.mean(np.tanh(ub) - np.tanh(lb))),
    }


def summarise(replicates: pd.DataFrame, mu: float, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`performance` per method of a table of replicate results (``method``, ``estimate``, ``ci_lb``,
    ``ci_ub``, ``failed``) of one condition with target ``mu``; columns :data:`SUMMARY_COLUMNS`, methods in
    :data:`METHODS` order (or ``methods``)."""
    order = [m for m in (methods or METHODS) if m in set(replicates["method"])]
    rows = []
    for method in order:
        part = replicates[replicates["method"] == method]
        rows.append(
            {"method": method}
            | performance(part["estimate"], part["ci_lb"], part["ci_ub"], part["failed"].astype(bool), mu)
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
