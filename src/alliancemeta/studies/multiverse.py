r"""Multiverse (specification-curve) analysis of the pooled alliance-outcome correlation.

Every combination of the analytic choices that alliance meta-analysts argue about is one
*specification* (Steegen, Tuerlinckx, Gelman & Vanpaemel 2016, *Perspect Psychol Sci* 11, 702-712;
Simonsohn, Simmons & Nelson 2020, *Nat Hum Behav* 4, 1208-1214; for meta-analysis Voracek, Kossmeier &
Tran 2019, *Z Psychol* 227, 64-82):

============== ================================================================================
choice          options
============== ================================================================================
``subset``      ``all`` or one level of a moderator (``rater=client``); levels with fewer than
                ``min_k`` effect sizes are left out
``dependence``  ``ignore`` (every effect size independent, ``rma.uni``), ``aggregate`` (effects of
                one study combined under a sampling correlation ``rho``, then ``rma.uni``;
                ``metafor::aggregate``), ``three_level`` (``rma.mv(yi, vi, random = ~ 1 | study/es)``),
                ``che`` (correlated and hierarchical effects, Pustejovsky & Tipton 2022:
                ``rma.mv(yi, vcalc(vi, study, rho = rho), random = ~ 1 | study/es)``)
``estimator``   the tau^2 estimators of :func:`~alliancemeta.studies.random_effects.estimate_tau2`
                for ``rma.uni`` models; REML for the three-level and CHE models
``test``        ``z``, ``t``, ``knha`` (Knapp-Hartung) for ``rma.uni``; ``z``, ``t`` and ``cr2``
                (cluster-robust CR2 with Satterthwaite df) for the three-level and CHE models
``outliers``    ``none``; ``studentized``: drop units whose studentized deleted residual exceeds
                ``rstudent_threshold`` in absolute value; ``cooks``: drop units whose Cook's distance
                exceeds the ``cooks_quantile`` quantile of :math:`\chi^2_p` (metafor's rule)
``prior``       for Bayesian rows (``estimator = "bayes"``, ``test = "eti"``): the priors of the
                normal-normal model, solved exactly by quadrature over tau
============== ================================================================================

Combinations a model does not support (``knha`` for the three-level model, ``cr2`` for ``rma.uni``,
a prior for the three-level model) are not enumerated.  Without nested effects (no ``study_id``, or
one effect per study) ``aggregate``, ``three_level`` and ``che`` equal ``ignore`` and are left out too.

The outlier rules act on each model's own deletion units, with its own diagnostics and the
specification's estimator and test: effect sizes for ``ignore`` and studies for ``aggregate``
(``metafor::rstudent``/``cooks.distance`` of the ``rma.uni`` fit, computed by the O(k) deletion sweep of
:mod:`alliancemeta.studies.influence`); whole studies for ``three_level`` (``rstudent(res, cluster =
study)``, ``cooks.distance(res, cluster = study)`` of :mod:`alliancemeta.studies.multilevel.influence`).
A study's studentized residual is multivariate, :math:`X^2_j \sim \chi^2_{k_j}`; it is flagged when
:math:`P(\chi^2_{k_j} > X^2_j) < 2\Phi(-c)` for the threshold c, which for a study with one effect is
exactly :math:`|z_j| > c`.  Cook's distance uses the full-data covariance, so it is the same for the
``z`` and ``t`` tests of a model and for the three-level model's ``cr2`` rows (whose point estimate and
deletion refits are the model-based ones).  Bayesian rows take the outliers flagged by the REML
``rma.uni`` model with z-test diagnostics of the same data.  The rule is applied once: flagged units
are removed and the model refitted.

Every specification is summarised on the Fisher-z scale (``estimate, se, ci_lb, ci_ub, pval``) and as
a correlation (``r = tanh(estimate)`` with back-transformed bounds; for Bayesian rows the posterior
mean of :math:`\tanh\mu` and the equal-tailed interval).  The row ``REML, knha, ignore, none, all``
is the same computation as the REML/knha row of ``random_effects.csv`` and equals it bit for bit.

Batches of specifications are evaluated together: fits, tau^2 estimates, deletion diagnostics and
posteriors shared by several specifications are computed once (the enumeration order keeps those
specifications next to each other), and a model that cannot be estimated gives a row of NaN with a
note naming the model and what to try.  No function here reads or writes files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.bayes.priors import MU_DISTS, TAU_DISTS, MetaPriors, PriorError, parse_prior
from alliancemeta.studies.bayes.quadrature import QuadratureError, exact_posterior
from alliancemeta.studies.influence.diagnostics import influence
from alliancemeta.studies.multilevel.aggregate import aggregate_within_studies
from alliancemeta.studies.multilevel.che import che_fit, robust_cr2_che
from alliancemeta.studies.multilevel.clusters import group_clusters
from alliancemeta.studies.multilevel.influence import multilevel_influence
from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2
from alliancemeta.studies.random_effects import ESTIMATORS, estimate_tau2, random_effects

#: SPEC §5 columns of ``multiverse.csv``.
MULTIVERSE_COLUMNS = (
    "spec_id", "estimator", "test", "dependence", "outliers", "subset", "prior", "k", "estimate", "se",
    "ci_lb", "ci_ub", "pval", "r", "r_ci_lb", "r_ci_ub",
)  # fmt: skip
#: Trailing columns: the heterogeneity variance of the fitted model (tau^2; sigma^2_study + sigma^2_within
#: for the three-level model; the posterior mean of tau^2 for Bayesian rows), the units removed by the
#: outlier rule, and caveats in words.
EXTRA_COLUMNS = ("tau2", "n_excluded", "note")
CHOICES = ("estimator", "test", "dependence", "outliers", "subset", "prior")

DEPENDENCE = ("ignore", "aggregate", "three_level", "che")
OUTLIER_RULES = ("none", "studentized", "cooks")
TESTS = ("z", "t", "knha", "cr2")
ALL = "all"
BAYES_ESTIMATOR = "bayes"
BAYES_TEST = "eti"
#: Estimator and test whose deletion diagnostics flag the outliers of the Bayesian rows.
BAYES_OUTLIER_MODEL = ("REML", "z")

#: Errors that mean "this model cannot be estimated on these data"; anything else is a bug and propagates.
_FIT_ERRORS = (ConvergenceError, QuadratureError, ValueError, np.linalg.LinAlgError, FloatingPointError)


# --------------------------------------------------------------------------------------------------
# settings and specifications
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiverseSettings:
    """Validated settings of the multiverse (config ``multiverse.*``; defaults live in the config schema).

    ``priors`` are the Bayesian prior combinations (empty: no Bayesian rows); ``level`` is ``meta.level``;
    ``rho`` the within-study sampling correlation of ``aggregate`` (and of the CHE working model).
    """

    estimators: tuple[str, ...]
    tests: tuple[str, ...]
    dependence: tuple[str, ...]
    outliers: tuple[str, ...]
    subsets: tuple[str, ...]
    priors: tuple[MetaPriors, ...]
    level: float
    rho: float
    rstudent_threshold: float
    cooks_quantile: float
    min_k: int
    batch_size: int

    def __post_init__(self):
        def check(name, values, allowed):
            bad = [v for v in values if v not in allowed]
            if bad or len(set(values)) != len(values):
                raise ValueError(
                    f"multiverse.{name}: {list(values)!r} must list distinct values from {', '.join(allowed)}"
                )

        check("estimators", self.estimators, ESTIMATORS)
        check("tests", self.tests, TESTS)
        check("dependence", self.dependence, DEPENDENCE)
        for name in self.dependence:
            if name in UNAVAILABLE:
                raise ValueError(f"multiverse.dependence: {UNAVAILABLE[name]}")
        check("outliers", self.outliers, OUTLIER_RULES)
        if len({p.label for p in self.priors}) != len(self.priors):
            raise ValueError("multiverse.priors: the same prior combination is listed twice")
        if not 0.5 < self.level < 1.0:
            raise ValueError(f"meta.level must lie in (0.5, 1); got {self.level!r}")
        if not 0.0 <= self.rho <= 0.99:
            raise ValueError(f"multiverse.rho must lie in [0, 0.99]; got {self.rho!r}")
        if not self.rstudent_threshold > 0:
            raise ValueError(f"multiverse.rstudent_threshold must be > 0; got {self.rstudent_threshold!r}")
        if not 0.0 < self.cooks_quantile < 1.0:
            raise ValueError(f"multiverse.cooks_quantile must lie in (0, 1); got {self.cooks_quantile!r}")
        if self.min_k < 2 or self.batch_size < 1:
            raise ValueError("multiverse.min_k must be >= 2 and multiverse.batch_size >= 1")

    @property
    def priors_by_label(self) -> dict[str, MetaPriors]:
        return {p.label: p for p in self.priors}

    @classmethod
    def from_config(cls, multiverse: Mapping, level: float, rho: float, priors: Sequence[MetaPriors]):
        """Settings from the validated ``multiverse`` config section (every key present), ``meta.level``,
        the sampling correlation and the prior combinations (:func:`prior_combinations`)."""
        return cls(
            estimators=tuple(str(m).upper() for m in multiverse["estimators"]),
            tests=tuple(multiverse["tests"]),
            dependence=tuple(multiverse["dependence"]),
            outliers=tuple(multiverse["outliers"]),
            subsets=tuple(multiverse["subsets"]),
            priors=tuple(priors),
            level=float(level),
            rho=float(rho),
            rstudent_threshold=float(multiverse["rstudent_threshold"]),
            cooks_quantile=float(multiverse["cooks_quantile"]),
            min_k=int(multiverse["min_k"]),
            batch_size=int(multiverse["batch_size"]),
        )


def prior_combinations(bayes: Mapping, priors: Sequence[Mapping] | None = None) -> tuple[MetaPriors, ...]:
    """The prior combinations of the Bayesian rows.

    ``priors`` (config ``multiverse.priors``) lists ``{prior_mu, prior_tau}`` mappings; when it is
    ``None`` the combinations are those of ``prior_sensitivity.csv``: the configured priors, each
    ``bayes.sensitivity_priors`` tau prior with the configured mu prior, and ``bayes.informative_mu``
    (when set) with the configured tau prior, each combination once.
    """
    base = MetaPriors.from_config(bayes)
    if priors is not None:
        out = []
        for i, entry in enumerate(priors):
            key = f"multiverse.priors[{i}]"
            if not isinstance(entry, Mapping) or set(entry) - {"prior_mu", "prior_tau"}:
                raise PriorError(f"{key}: expected a mapping with keys prior_mu and prior_tau; got {entry!r}")
            mu = parse_prior(entry.get("prior_mu", base.mu), f"{key}.prior_mu", MU_DISTS)
            tau = parse_prior(entry.get("prior_tau", base.tau), f"{key}.prior_tau", TAU_DISTS)
            out.append(MetaPriors(mu, tau))
        return tuple(out)
    combos = [base]
    for i, spec in enumerate(bayes.get("sensitivity_priors", ())):
        combos.append(base.with_tau(parse_prior(spec, f"bayes.sensitivity_priors[{i}]", TAU_DISTS)))
    if bayes.get("informative_mu") is not None:
        combos.append(base.with_mu(parse_prior(bayes["informative_mu"], "bayes.informative_mu", MU_DISTS)))
    unique = {}
    for pri in combos:
        unique.setdefault(pri.label, pri)
    return tuple(unique.values())


@dataclass(frozen=True)
class Specification:
    """One analysis: a row of ``multiverse.csv`` before it is computed (``prior`` blank: frequentist)."""

    spec_id: int
    estimator: str
    test: str
    dependence: str
    outliers: str
    subset: str
    prior: str = ""

    @property
    def is_bayes(self) -> bool:
        return self.prior != ""


# --------------------------------------------------------------------------------------------------
# the data of one model: deletion units and how to remove them
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Units:
    """Effect sizes as one dependence option models them.

    ``yi, vi`` are the model's outcomes (aggregated per study for ``aggregate``), ``cluster`` the study of
    each row (for models that need it), ``unit`` the deletion unit of each row (0..n_units-1): the rows
    themselves, or their study for the three-level model.
    """

    yi: np.ndarray
    vi: np.ndarray
    cluster: np.ndarray | None
    unit: np.ndarray
    n_units: int

    @property
    def k(self) -> int:
        return int(self.yi.size)

    def without(self, drop_units: np.ndarray) -> _Units:
        """The data without the units flagged in the boolean array ``drop_units`` (length n_units)."""
        keep_rows = ~drop_units[self.unit]
        kept = np.flatnonzero(~drop_units)
        renumber = np.full(self.n_units, -1)
        renumber[kept] = np.arange(kept.size)
        return _Units(
            self.yi[keep_rows], self.vi[keep_rows], None if self.cluster is None else self.cluster[keep_rows],
            renumber[self.unit[keep_rows]], int(kept.size),
        )  # fmt: skip


def _effect_units(yi, vi, cluster, rho) -> _Units:
    return _Units(yi, vi, cluster, np.arange(yi.size), int(yi.size))


def _aggregated_units(yi, vi, cluster, rho) -> _Units:
    agg = aggregate_within_studies(yi, vi, cluster, rho)
    n = int(agg.yi.size)
    return _Units(np.asarray(agg.yi), np.asarray(agg.vi), None, np.arange(n), n)


def _study_units(yi, vi, cluster, rho) -> _Units:
    # numbered as the three-level fit and its deletion diagnostics number studies: by first appearance
    groups = group_clusters(cluster)
    return _Units(yi, vi, np.asarray(cluster, dtype=object), groups.codes, groups.n)


# --------------------------------------------------------------------------------------------------
# one fitted specification and the per-dependence model functions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Estimate:
    k: int
    estimate: float
    se: float
    ci_lb: float
    ci_ub: float
    pval: float
    tau2: float
    r: float | None = None  # when not tanh(estimate) (Bayesian rows)
    r_ci_lb: float | None = None
    r_ci_ub: float | None = None


@dataclass(frozen=True)
class _Flags:
    """Per deletion unit: flagged by the studentized-residual rule and by the Cook's distance rule."""

    studentized: np.ndarray
    cooks: np.ndarray


def _fit_uni(engine: _Engine, key: tuple, units: _Units, estimator: str, test: str) -> _Estimate:
    """``rma.uni`` (ignore, aggregate): tau^2 once per data set and estimator, shared by every test."""
    tau2 = engine.memo(("tau2", *key, estimator), lambda: estimate_tau2(units.yi, units.vi, method=estimator).tau2)
    fit = random_effects(units.yi, units.vi, method=estimator, test=test, level=engine.settings.level, tau2=tau2)
    return _Estimate(fit.k, fit.estimate, float(fit.se[0]), float(fit.ci_lbs[0]), float(fit.ci_ubs[0]),
                     float(fit.pvals[0]), fit.tau2)  # fmt: skip


def _flags_uni(engine: _Engine, key: tuple, units: _Units, estimator: str, test: str) -> _Flags:
    r"""metafor's ``rstudent`` and ``cooks.distance`` of the ``rma.uni`` fit, one unit per row.

    Only Knapp-Hartung changes the diagnostics (through :math:`s^2_w`); z and t share them.
    """
    kind = "knha" if test == "knha" else "z"

    def compute():
        s = engine.settings
        fit = random_effects(units.yi, units.vi, method=estimator, test=kind, level=s.level)
        inf = influence(fit)
        with np.errstate(invalid="ignore"):
            studentized = np.abs(inf.rstudent) > s.rstudent_threshold
            cooks = inf.cooks_distance > stats.chi2.ppf(s.cooks_quantile, fit.p)
        return _Flags(studentized, cooks)

    return engine.memo(("flags", *key, estimator, kind), compute, "outlier diagnostics")


def _three_level_fit(engine: _Engine, key: tuple, units: _Units):
    return engine.memo(
        ("three_level", *key),
        lambda: three_level(units.yi, units.vi, units.cluster, test="z", level=engine.settings.level),
    )


def _fit_three_level(engine: _Engine, key: tuple, units: _Units, estimator: str, test: str) -> _Estimate:
    """``rma.mv(yi, vi, random = ~ 1 | study/es)`` by REML: z, t (k - p df) or CR2 (``robust``, clubSandwich)."""
    if test == "t":
        fit = engine.memo(
            ("three_level_t", *key),
            lambda: three_level(units.yi, units.vi, units.cluster, test="t", level=engine.settings.level),
        )
    else:
        fit = _three_level_fit(engine, key, units)
    total = float(np.sum(fit.sigma2))
    if test == "cr2":
        rob = engine.memo(("cr2", *key), lambda: robust_cr2(fit))
        return _Estimate(fit.k, rob.estimate, float(rob.se[0]), float(rob.ci_lb[0]), float(rob.ci_ub[0]),
                         float(rob.pval[0]), total)  # fmt: skip
    return _Estimate(fit.k, fit.estimate, float(fit.se[0]), float(fit.ci_lb[0]), float(fit.ci_ub[0]),
                     float(fit.pval[0]), total)  # fmt: skip


def _flags_three_level(engine: _Engine, key: tuple, units: _Units, estimator: str, test: str) -> _Flags:
    r"""Leave-one-study-out diagnostics of the three-level fit (``rstudent``/``cooks.distance`` with
    ``cluster = study``); one set for every test (see the module docstring)."""

    def compute():
        s = engine.settings
        fit = _three_level_fit(engine, key, units)
        inf = multilevel_influence(fit, level="study")
        alpha = 2.0 * stats.norm.sf(s.rstudent_threshold)
        with np.errstate(invalid="ignore"):
            studentized = stats.chi2.sf(inf.rstudent_X2, inf.rstudent_df) < alpha
            cooks = inf.cooks_distance > stats.chi2.ppf(s.cooks_quantile, fit.p)
        # the influence table lists studies in order of first appearance, as _study_units numbers them
        return _Flags(np.asarray(studentized, dtype=bool), np.asarray(cooks, dtype=bool))

    return engine.memo(("flags3", *key), compute, "outlier diagnostics")


def _che(engine: _Engine, key: tuple, units: _Units, test: str):
    """The CHE working model (``rma.mv(yi, vcalc(vi, study, rho), random = ~ 1 | study/es)``) by REML with the
    assumed within-study correlation ``engine.settings.rho`` (``meta.aggregate_rho``, as for aggregation)."""
    s = engine.settings
    return engine.memo(("che", *key, test), lambda: che_fit(units.yi, units.vi, units.cluster, s.rho, test=test,
                                                            level=s.level))  # fmt: skip


def _fit_che(engine: _Engine, key: tuple, units: _Units, estimator: str, test: str) -> _Estimate:
    """CHE working model (Pustejovsky & Tipton 2022): z, t (k - p df) or CR2 (clubSandwich) inference."""
    fit = _che(engine, key, units, "t" if test == "t" else "z")
    total = float(np.sum(fit.sigma2))
    if test == "cr2":
        rob = engine.memo(("che_cr2", *key), lambda: robust_cr2_che(fit))
        return _Estimate(fit.k, float(rob.beta[0]), float(rob.se[0]), float(rob.ci_lb[0]), float(rob.ci_ub[0]),
                         float(rob.pval[0]), total)  # fmt: skip
    return _Estimate(fit.k, float(fit.beta[0]), float(fit.se[0]), float(fit.ci_lb[0]), float(fit.ci_ub[0]),
                     float(fit.pval[0]), total)  # fmt: skip


@dataclass(frozen=True)
class DependenceModel:
    """How one ``dependence`` option prepares the data, fits a specification and flags outliers.

    ``estimators`` is None when every ``rma.uni`` estimator applies, else the fixed list of the model;
    ``tests`` the tests it supports; ``bayes`` whether the exact normal-normal posterior applies to its
    data (Bayesian rows); ``nested`` whether it needs effects nested in studies to differ from ``ignore``.
    """

    units: Callable[..., _Units]
    fit: Callable[..., _Estimate]
    flags: Callable[..., _Flags]
    tests: tuple[str, ...]
    estimators: tuple[str, ...] | None
    bayes: bool
    nested: bool


#: The dependence options.  The CHE working model (``che``) has no leave-one-study-out diagnostics of its own:
#: its outlier rules drop the studies that the three-level model's study-level diagnostics flag (the same
#: units, studies, and the same random-effects structure without the correlated sampling errors).
DEPENDENCE_MODELS: dict[str, DependenceModel] = {
    "ignore": DependenceModel(_effect_units, _fit_uni, _flags_uni, ("z", "t", "knha"), None, True, False),
    "aggregate": DependenceModel(_aggregated_units, _fit_uni, _flags_uni, ("z", "t", "knha"), None, True, True),
    "three_level": DependenceModel(
        _study_units, _fit_three_level, _flags_three_level, ("z", "t", "cr2"), ("REML",), False, True
    ),
    "che": DependenceModel(_study_units, _fit_che, _flags_three_level, ("z", "t", "cr2"), ("REML",), False, True),
}
#: Options the schema knows but this version cannot fit (none at present), with the message that says so.
UNAVAILABLE: dict[str, str] = {}


# --------------------------------------------------------------------------------------------------
# enumeration
# --------------------------------------------------------------------------------------------------


def _level_label(value) -> str:
    """A moderator level as text, the same whether the column was read as integers or floats."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def subset_levels(frame: pd.DataFrame, settings: MultiverseSettings) -> list[tuple[str, str, np.ndarray]]:
    """``(label, moderator, row mask)`` of every subset: ``all``, then each level (as text, sorted) of each
    moderator in ``settings.subsets`` that the table has, when it holds at least ``min_k`` effect sizes."""
    out = [(ALL, "", np.ones(len(frame), dtype=bool))]
    for moderator in settings.subsets:
        if moderator not in frame.columns:
            continue
        values = frame[moderator]
        labels = np.array([_level_label(v) if pd.notna(v) else "" for v in values], dtype=object)
        present = values.notna().to_numpy()
        for level in sorted(set(labels[present])):
            mask = present & (labels == level)
            if mask.sum() >= settings.min_k:
                out.append((f"{moderator}={level}", moderator, mask))
    return out


def _is_nested(frame: pd.DataFrame) -> bool:
    return "study_id" in frame.columns and frame["study_id"].nunique() < len(frame)


def enumerate_specifications(frame: pd.DataFrame, settings: MultiverseSettings) -> list[Specification]:
    """Every specification for a processed study table (``yi, vi``, ``study_id`` when nested, moderators).

    Order (and so ``spec_id``, from 1): subset, dependence, then the frequentist rows by estimator, test,
    outlier rule, then the Bayesian rows by prior and outlier rule.  Specifications that share data, fits
    and deletion diagnostics are neighbours, so a batch of consecutive specifications computes each once.
    """
    nested = _is_nested(frame)
    specs: list[Specification] = []
    for subset, _, _ in subset_levels(frame, settings):
        for dep in settings.dependence:
            model = DEPENDENCE_MODELS[dep]
            if model.nested and not nested:
                continue
            estimators = settings.estimators if model.estimators is None else model.estimators
            tests = [t for t in settings.tests if t in model.tests]
            for est in estimators:
                for test in tests:
                    for rule in settings.outliers:
                        specs.append(Specification(len(specs) + 1, est, test, dep, rule, subset))
            if model.bayes:
                for pri in settings.priors:
                    for rule in settings.outliers:
                        specs.append(Specification(len(specs) + 1, BAYES_ESTIMATOR, BAYES_TEST, dep, rule, subset,
                                                   pri.label))  # fmt: skip
    return specs


def batch_bounds(n_specs: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` positions of consecutive batches of at most ``batch_size`` specifications."""
    return [(start, min(start + batch_size, n_specs)) for start in range(0, n_specs, batch_size)]


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------


class _Failure(Exception):
    """A model or outlier rule could not be computed; the message is the row's note."""


@dataclass
class _Memo:
    value: Any
    error: str | None
    messages: tuple[str, ...]


@dataclass
class _Engine:
    """Evaluates specifications of one study table, computing every shared piece once.

    ``memo`` stores each computed piece with the warnings it raised (and its error, if it failed), so
    every specification that uses the piece gets the same notes, whichever batch it falls in.
    """

    frame: pd.DataFrame
    settings: MultiverseSettings
    _store: dict = field(default_factory=dict)
    _notes: list = field(default_factory=list)

    def __post_init__(self):
        self.yi = self.frame["yi"].to_numpy(dtype=float)
        self.vi = self.frame["vi"].to_numpy(dtype=float)
        self.cluster = self.frame["study_id"].to_numpy(dtype=object) if "study_id" in self.frame else None
        self.subsets = {label: mask for label, _, mask in subset_levels(self.frame, self.settings)}

    def memo(self, key: tuple, compute: Callable[[], Any], label: str = ""):
        """The value of ``compute()`` stored under ``key``; its warnings join the notes (prefixed by ``label``)."""
        if key not in self._store:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    value, error = compute(), None
                except _FIT_ERRORS as err:
                    value, error = None, str(err)
            messages = (f"{label}: {w.message}" if label else str(w.message) for w in caught)
            self._store[key] = _Memo(value, error, tuple(dict.fromkeys(messages)))
        entry = self._store[key]
        self._notes.extend(entry.messages)
        if entry.error is not None:
            raise _Failure(entry.error)
        return entry.value

    # -- data ----------------------------------------------------------------------------------------

    def units(self, subset: str, dependence: str) -> _Units:
        def compute():
            if subset not in self.subsets:
                raise ValueError(f"subset {subset!r} is not one of this table's subsets")
            rows = self.subsets[subset]
            cluster = None if self.cluster is None else self.cluster[rows]
            return DEPENDENCE_MODELS[dependence].units(self.yi[rows], self.vi[rows], cluster, self.settings.rho)

        return self.memo(("units", subset, dependence), compute)

    def excluded(self, spec: Specification, units: _Units) -> np.ndarray:
        """Boolean per deletion unit: removed by the specification's outlier rule."""
        if spec.outliers == "none":
            return np.zeros(units.n_units, dtype=bool)
        model = DEPENDENCE_MODELS[spec.dependence]
        est, test = BAYES_OUTLIER_MODEL if spec.is_bayes else (spec.estimator, spec.test)
        try:
            flags = model.flags(self, (spec.subset, spec.dependence), units, est, test)
        except _Failure as err:
            raise _Failure(
                f"outlier rule {spec.outliers!r} could not be applied (deletion diagnostics of "
                f"the {spec.dependence} model failed: {err}); use outliers 'none'"
            ) from None
        return getattr(flags, spec.outliers)

    # -- one specification ---------------------------------------------------------------------------

    def estimate(self, spec: Specification) -> tuple[_Estimate, int]:
        units = self.units(spec.subset, spec.dependence)
        drop = self.excluded(spec, units)
        data = units.without(drop) if drop.any() else units
        key = (spec.subset, spec.dependence, drop.tobytes())  # the data are fixed by the units kept
        if data.k < 2:
            raise _Failure(
                f"only {data.k} effect size(s) left after the outlier rule; the model needs at least 2 "
                "(use outliers 'none' or a larger subset)"
            )
        if spec.is_bayes:
            return self._posterior(key, data, self.settings.priors_by_label[spec.prior]), int(drop.sum())
        try:
            return DEPENDENCE_MODELS[spec.dependence].fit(self, key, data, spec.estimator, spec.test), int(drop.sum())
        except _FIT_ERRORS as err:
            raise _Failure(str(err)) from None

    def _posterior(self, key: tuple, data: _Units, priors: MetaPriors) -> _Estimate:
        r"""Exact posterior of the normal-normal model (quadrature over tau): mu's mean, SD and equal-tailed
        interval; r as the posterior mean of tanh(mu) with tanh of mu's interval bounds."""

        def compute():
            post = exact_posterior(data.yi, data.vi, priors)
            summary = post.summary(self.settings.level).set_index("parameter")
            mu, r = summary.loc["mu"], summary.loc["r"]
            tau2 = float(np.dot(post.weight, post.tau**2))
            return _Estimate(data.k, float(mu["mean"]), float(mu["sd"]), float(mu["eti_lb"]), float(mu["eti_ub"]),
                             np.nan, tau2, float(r["mean"]), float(r["eti_lb"]), float(r["eti_ub"]))  # fmt: skip

        return self.memo(("posterior", *key, priors.label), compute)

    def row(self, spec: Specification) -> dict:
        self._notes = []
        failure = None
        with warnings.catch_warnings(record=True) as caught:  # warnings of pieces not shared via memo
            warnings.simplefilter("always")
            try:
                est, n_excluded = self.estimate(spec)
            except _Failure as err:
                failure = err
        self._notes.extend(str(w.message) for w in caught)
        if failure is not None:
            model = "Bayesian normal-normal model" if spec.is_bayes else f"{spec.dependence} model"
            self._notes.append(f"{model} ({spec.estimator}, {spec.test}) could not be estimated: {failure}")
            nan = np.nan
            est, n_excluded = _Estimate(0, nan, nan, nan, nan, nan, nan), 0
        r = float(np.tanh(est.estimate)) if est.r is None else est.r
        r_lb = float(np.tanh(est.ci_lb)) if est.r_ci_lb is None else est.r_ci_lb
        r_ub = float(np.tanh(est.ci_ub)) if est.r_ci_ub is None else est.r_ci_ub
        return {
            "spec_id": spec.spec_id,
            "estimator": spec.estimator,
            "test": spec.test,
            "dependence": spec.dependence,
            "outliers": spec.outliers,
            "subset": spec.subset,
            "prior": spec.prior,
            "k": est.k,
            "estimate": est.estimate,
            "se": est.se,
            "ci_lb": est.ci_lb,
            "ci_ub": est.ci_ub,
            "pval": est.pval,
            "r": r,
            "r_ci_lb": r_lb,
            "r_ci_ub": r_ub,
            "tau2": est.tau2,
            "n_excluded": n_excluded,
            "note": "; ".join(dict.fromkeys(self._notes)),
        }


def evaluate_specifications(
    frame: pd.DataFrame, specs: Iterable[Specification], settings: MultiverseSettings
) -> pd.DataFrame:
    """Compute a batch of specifications of one processed study table: the ``multiverse.csv`` rows.

    Columns :data:`MULTIVERSE_COLUMNS` then :data:`EXTRA_COLUMNS`.  Every row depends only on its
    specification and the data, never on which other specifications share the batch.
    """
    missing = [c for c in ("yi", "vi") if c not in frame.columns]
    if missing:
        raise ValueError(f"the study table lacks column(s) {', '.join(missing)}")
    engine = _Engine(frame.reset_index(drop=True), settings)
    rows = [engine.row(spec) for spec in specs]
    out = pd.DataFrame(rows, columns=[*MULTIVERSE_COLUMNS, *EXTRA_COLUMNS])
    return out.astype({"spec_id": "int64", "k": "int64", "n_excluded": "int64"})


def run_multiverse(frame: pd.DataFrame, settings: MultiverseSettings) -> pd.DataFrame:
    """Every specification of ``frame`` in one call (the workflow splits them into batch jobs instead)."""
    return evaluate_specifications(frame, enumerate_specifications(frame, settings), settings)


# --------------------------------------------------------------------------------------------------
# gathering and the descriptive summary
# --------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = (
    "choice", "option", "n_specs", "n_estimated", "share_significant", "share_significant_positive",
    "share_significant_negative", "r_median", "r_q25", "r_q75", "r_min", "r_max",
)  # fmt: skip


def gather_batches(batches: Sequence[pd.DataFrame], n_specs: int) -> pd.DataFrame:
    """Concatenate batch tables into ``multiverse.csv``, checking that specifications 1..n_specs are all
    there exactly once (a missing or repeated batch is an error, never a silently short table)."""
    table = pd.concat(list(batches), ignore_index=True).sort_values("spec_id", kind="stable", ignore_index=True)
    ids = table["spec_id"].to_numpy()
    if ids.size != n_specs or not np.array_equal(ids, np.arange(1, n_specs + 1)):
        raise ValueError(f"the multiverse batches hold {ids.size} specifications, expected ids 1..{n_specs} once each")
    return table


def significant(table: pd.DataFrame) -> pd.Series:
    """A specification is significant when its interval (confidence, or equal-tailed posterior) excludes 0.

    For the frequentist rows this is the same as ``pval < 1 - level``: every test's interval and p-value
    come from one statistic and one reference distribution.
    """
    return (table["ci_lb"] > 0) | (table["ci_ub"] < 0)


def multiverse_summary(table: pd.DataFrame) -> pd.DataFrame:
    r"""Descriptive summary of the specification curve: how robust is the pooled r?

    One row for all specifications (``choice = option = "all"``), then one per option of every choice:
    the number of specifications and of estimable ones, the share whose interval excludes 0 (overall,
    above and below 0), and the median, quartiles and range of r over the estimable ones (Steegen et al.
    2016; Voracek et al. 2019, descriptive specification curve).  Shares are of the estimable rows.
    """
    rows = []

    def describe(choice: str, option: str, part: pd.DataFrame) -> None:
        ok = part[np.isfinite(part["r"])]
        sig = significant(ok)
        n = len(ok)
        r = ok["r"].to_numpy()
        q = np.quantile(r, [0.0, 0.25, 0.5, 0.75, 1.0]) if n else np.full(5, np.nan)
        rows.append({
            "choice": choice, "option": option, "n_specs": len(part), "n_estimated": n,
            "share_significant": sig.mean() if n else np.nan,
            "share_significant_positive": (sig & (ok["ci_lb"] > 0)).mean() if n else np.nan,
            "share_significant_negative": (sig & (ok["ci_ub"] < 0)).mean() if n else np.nan,
            "r_median": q[2], "r_q25": q[1], "r_q75": q[3], "r_min": q[0], "r_max": q[4],
        })  # fmt: skip

    describe(ALL, ALL, table)
    for choice in CHOICES:
        values = table[choice].fillna("").astype(str)
        for option in dict.fromkeys(values):
            if choice == "prior" and option == "":
                continue  # frequentist rows: the estimator row 'bayes' already separates them
            describe(choice, option, table[values == option])
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def headline_text(summary: pd.DataFrame) -> str:
    """One sentence on the robustness of the pooled r, from the ``all`` row of :func:`multiverse_summary`."""
    row = summary.iloc[0]
    if not row["n_estimated"]:
        return "no specification could be estimated"
    return (
        f"{int(row['n_estimated'])} of {int(row['n_specs'])} specifications estimable; "
        f"{100 * row['share_significant']:.1f}% significant (interval excludes 0); "
        f"median r = {row['r_median']:.3f} (IQR {row['r_q25']:.3f} to {row['r_q75']:.3f}; "
        f"range {row['r_min']:.3f} to {row['r_max']:.3f})"
    )


def n_batches(n_specs: int, batch_size: int) -> int:
    return math.ceil(n_specs / batch_size) if n_specs else 0
