r"""REML linear mixed models of session-level alliance and outcome (engine :mod:`alliancemeta.sessions.lmm`).

Every model is fitted by profiled REML at lme4 parity, with lmerTest's Satterthwaite degrees of freedom, t tests
and t intervals for the fixed effects (:func:`alliancemeta.sessions.lmm.fit_lmm`), on the aligned outcome *y*
(higher = better; :mod:`alliancemeta.sessions.data`), with time ``session_c`` centred at the dataset's mean
session.  In lme4 notation, with :math:`A^W, A^B, A^T` the within-client, between-client and therapist alliance
components, *C* the client-level covariates of the config (``covariates``) and *[..]* the parts that depend on
the settings ``random_slopes`` (RS) and ``detrend`` (DT) or on the data (therapists, cases):

``within_between`` (Falkenström et al. 2013; Zilcha-Mano 2017; the three-level decomposition of Baldwin,
Wampold & Imel 2007)::

    y ~ A^W + A^B [+ A^T] + session_c + C + (1 + session_c [+ A^W if RS] | client) [+ (1 | therapist)]

``lagged`` (Falkenström, Granström & Holmqvist 2013; Falkenström et al. 2017)::

    y ~ A^W_lag + ylag_c + session_c + C + (1 [+ session_c if DT] [+ A^W_lag if RS] | client) [+ (1 | therapist)]

on the sessions whose previous session has a row (:func:`alliancemeta.sessions.data.lag_frame`):
:math:`A^W_{i,t-1}` is the previous session's within-client alliance deviation (reported as ``alliance_within``)
and ``ylag_c`` the previous outcome minus the client's mean outcome (``outcome_lag``).  *Detrending*: with DT
(the default) every client has a linear outcome trend, modelled as the fixed ``session_c`` effect plus a random
client slope correlated with the client intercept; the series are not detrended beforehand, because removing a
per-client regression from short series biases lagged effects (the Nickell 1981 bias grows with the number of
parameters removed per client).  Both lagged predictors are person-mean centred, so their coefficients are
within-client effects; an uncentred lagged outcome would carry the random intercept into a regressor, which
biases its coefficient upward and, through the correlation of the lagged alliance with the lagged outcome, the
alliance effect.  Measured on 20 seeded replicates of the bundled generator
(``benchmarks/bench_sessions.py --lagged-bias 20``: :func:`alliancemeta.sessions.synthetic.simulate_sessions`,
seeds 1000-1019; true lagged effect 1.6 with random slopes of SD 0.6, outcome autoregression 0.35, symptom
feedback and correlated client trends), mean estimate (empirical SD, mean SE):

==============================================  ======================  ==================
specification                                   alliance_within         outcome_lag (0.35)
==============================================  ======================  ==================
DT + RS (the default)                           1.488 (0.153, 0.148)    0.206
DT only                                         1.504 (0.146, 0.137)    0.209
RS only                                         1.509 (0.154, 0.150)    0.258
neither                                         1.526 (0.145, 0.136)    0.265
DT + RS with the lagged outcome uncentred       1.101 (0.166, 0.143)    0.494
==============================================  ======================  ==================

so centring the lagged outcome is what matters for the alliance effect; the random alliance slope makes its
standard error match the spread of the estimates (without it the SE is about 7 % too small, because the slopes
vary); modelling the trends changes the estimates by less than their Monte-Carlo error on these data (where the
trends enter the lagged model only through their correlation) but keeps the session slope's SE honest when
clients improve at different rates.  The remaining downward bias of about one SE (and the autoregression
estimated at about 0.21) is the Nickell bias of person-mean centring in series of about 11 sessions together with
the symptom feedback; the ``lagged_latent`` (DSEM-type) model estimates latent client means and trends instead.

``therapist`` (Baldwin, Wampold & Imel 2007): therapist mean and client deviation, with their contrast
``therapist_minus_between`` :math:`\beta_T - \beta_B`::

    y ~ A^T + A^B + session_c + C + (1 + session_c | client) + (1 | therapist)

It has no session-level alliance term, so no random alliance slope.  It needs :data:`~.data.MIN_THERAPISTS`
therapists; with a therapist column but fewer therapists its rows are NaN with a note.

``components`` (Bordin 1979; the goal, task and bond subscales in place of the total score; only when all three
subscale columns are present)::

    y ~ G^W + K^W + B^W + G^B + K^B + B^B [+ A^T] + session_c + C
        + (1 + session_c [+ G^W + K^W + B^W if RS] | client) [+ (1 | therapist)]

Terms ``alliance_goal_within``, ``alliance_goal_between``, ..., each subscale decomposed like the total score.
The subscales are collinear (they share most of their variance), so the three are estimated together and each
coefficient is the *unique* effect of its subscale with the other two held fixed; the variance inflation factor
of every term is computed and written to the table's ``note`` (a VIF above :data:`VIF_WARN` is flagged).  One
model per subscale would instead credit each subscale with the shared variance (all three would "predict" the
outcome for the same reason), which answers a different question.  Therapist differences enter through the
total score's therapist component ``alliance_therapist``: the three therapist means of the subscales are nearly
collinear (VIF up to 10 on the bundled data, with 35 therapists) and their unique effects are not estimable.

``split`` (couple and family therapy; only members of cases with two or more clients, when at least
:data:`~.data.MIN_SPLIT_CASES` such cases exist)::

    y ~ A^W_own + A^B_own + S [+ A^T] + session_c + C + (1 + session_c [+ A^W_own if RS] | client) + (1 | case)

with ``alliance_split`` *S* the within-case spread of the members' client means (absolute difference for two
members, SD for more; :func:`alliancemeta.sessions.data.split_frame`).  The upper level is the *case*, whose
spread is the predictor and whose members share the therapy; the engine has two nested levels, so therapists
enter only through the fixed ``alliance_therapist`` (the case intercept absorbs the therapist's outcome
variance, so the standard error of ``alliance_therapist`` in this model ignores the clustering of cases in
therapists: read it as a control).

**Missing cells.**  Each model uses the complete cases of its own columns (response, fixed effects, random
slopes); the number of rows used and available is reported (``n_obs``, notes).

**Failures.**  A :class:`~alliancemeta.sessions.lmm.MixedModelError` in ``within_between`` or ``lagged`` (every
dataset must support them) raises :class:`SessionModelError` naming the model, what failed and what to try, and
the stage writes nothing.  The optional models (``therapist``, ``components``, ``split``) give rows with NaN
estimates and the message in their note instead, so a degenerate optional structure does not hide the main
results.  Boundary (singular) fits are kept, as lme4 users keep them, and reported (``singular``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from alliancemeta.core.errors import ModelError
from alliancemeta.sessions.data import (
    MIN_SPLIT_CASES,
    MIN_THERAPISTS,
    SUBSCALES,
    has_subscales,
    has_therapist,
    lag_frame,
    multi_client_cases,
    split_frame,
)
from alliancemeta.sessions.lmm import LmmFit, MixedModelError, RandomTerm, fit_lmm

MODELS = ("within_between", "lagged", "therapist", "components", "split")
#: Models that every dataset must support: their failure stops the stage.
REQUIRED_MODELS = ("within_between", "lagged")
#: A variance inflation factor above this is flagged in the note (the usual rule of thumb; O'Brien 2007).
VIF_WARN = 10.0
#: Names under which model columns are reported (the lag is implied by the model name).
REPORTED_TERM = {"alliance_within_lag": "alliance_within"}
#: Contrasts reported after the coefficients: model -> name -> {term: weight}.
CONTRASTS = {"therapist": {"therapist_minus_between": {"alliance_therapist": 1.0, "alliance_between": -1.0}}}


class SessionModelError(ModelError):
    """A required session model could not be fitted; the message names the model, what failed and what to try."""


@dataclass(frozen=True)
class ModelSpec:
    """One mixed model: its data (all candidate rows), response, fixed effects and random terms."""

    model: str
    data: pd.DataFrame = field(repr=False)
    fixed: tuple[str, ...]
    client: RandomTerm
    upper: RandomTerm | None
    note: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        """Every numeric column the model needs (complete cases are taken over these)."""
        slopes = (*self.client.slopes, *(self.upper.slopes if self.upper is not None else ()))
        return tuple(dict.fromkeys(("y", *self.fixed, *slopes)))


@dataclass(frozen=True)
class SessionModelFit:
    """A fitted session model (``fit``), or the reason it could not be fitted (``error``; ``fit`` is None).

    ``n_available`` rows were candidates, ``n_obs`` of them complete; ``vif`` maps fixed effects to their variance
    inflation factors (``components`` only); ``terms`` are the fixed effects as reported (intercept left out)."""

    model: str
    spec: ModelSpec = field(repr=False)
    fit: LmmFit | None
    n_available: int
    n_obs: int
    error: str = ""
    vif: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(REPORTED_TERM.get(t, t) for t in self.spec.fixed)

    @property
    def contrasts(self) -> Mapping[str, Mapping[str, float]]:
        return CONTRASTS.get(self.model, {})


@dataclass(frozen=True)
class Unavailable:
    """A model the data do not support at all (its columns are absent): not fitted, not reported."""

    model: str
    reason: str


def _client_term(*slopes: str) -> RandomTerm:
    return RandomTerm("client", tuple(s for s in slopes if s))


def model_specs(decomposed: pd.DataFrame, *, detrend: bool = True, random_slopes: bool = True,
                covariates: Sequence[str] = ()) -> dict[str, ModelSpec | Unavailable]:
    """The session models for a decomposed table (:func:`alliancemeta.sessions.data.decompose_alliance`, with
    covariate design columns ``covariates`` added by :func:`~alliancemeta.sessions.data.add_covariates`)."""
    covariates = tuple(covariates)
    nested = has_therapist(decomposed)
    therapist = RandomTerm("therapist") if nested else None
    at = ("alliance_therapist",) if nested else ()
    rs = random_slopes
    specs: dict[str, ModelSpec | Unavailable] = {}
    specs["within_between"] = ModelSpec(
        "within_between", decomposed, ("alliance_within", "alliance_between", *at, "session_c", *covariates),
        _client_term("session_c", "alliance_within" if rs else ""), therapist,
    )  # fmt: skip
    specs["lagged"] = ModelSpec(
        "lagged", lag_frame(decomposed), ("alliance_within_lag", "outcome_lag", "session_c", *covariates),
        _client_term("session_c" if detrend else "", "alliance_within_lag" if rs else ""), therapist,
    )  # fmt: skip
    th_fixed = ("alliance_therapist", "alliance_between", "session_c", *covariates)
    if nested:
        specs["therapist"] = ModelSpec("therapist", decomposed, th_fixed, _client_term("session_c"), therapist)
    elif "therapist" in decomposed.columns:
        n = decomposed["therapist"].nunique()
        specs["therapist"] = ModelSpec(
            "therapist", decomposed, th_fixed, _client_term("session_c"), None,
            note=f"not estimable: {n} therapist(s), at least {MIN_THERAPISTS} are needed for a therapist level",
        )  # fmt: skip
    else:
        specs["therapist"] = Unavailable("therapist", "no therapist column")
    if has_subscales(decomposed):
        within = tuple(f"{s}_within" for s in SUBSCALES)
        between = tuple(f"{s}_between" for s in SUBSCALES)
        specs["components"] = ModelSpec(
            "components", decomposed, (*within, *between, *at, "session_c", *covariates),
            _client_term("session_c", *(within if rs else ())), therapist,
        )  # fmt: skip
    else:
        specs["components"] = Unavailable("components", "the subscale columns " + ", ".join(SUBSCALES) + " are "
                                          "not all present")  # fmt: skip
    if "case" in decomposed.columns:
        n_cases = multi_client_cases(decomposed)
        split_fixed = ("alliance_own_within", "alliance_own_between", "alliance_split", *at, "session_c", *covariates)
        client = _client_term("session_c", "alliance_own_within" if rs else "")
        note = ""
        if n_cases < MIN_SPLIT_CASES:
            note = (f"not estimable: {n_cases} case(s) group two or more clients, at least {MIN_SPLIT_CASES} are "
                    "needed for the split-alliance model")  # fmt: skip
        data = split_frame(decomposed) if n_cases else decomposed.iloc[:0]
        specs["split"] = ModelSpec("split", data, split_fixed, client, RandomTerm("case"), note=note)
    else:
        specs["split"] = Unavailable("split", "no case column")
    return specs


def variance_inflation(data: pd.DataFrame, columns: Sequence[str]) -> dict[str, float]:
    r"""Variance inflation factors of the fixed-effect columns: :math:`\operatorname{VIF}_k = (R^{-1})_{kk}` with
    :math:`R` the correlation matrix of the columns over the rows used (Belsley, Kuh & Welsch 1980); infinite for
    an exactly collinear column."""
    X = data[list(columns)].to_numpy(dtype=float)
    R = np.corrcoef(X, rowvar=False)
    try:
        vif = np.diag(np.linalg.inv(np.atleast_2d(R)))
    except np.linalg.LinAlgError:
        vif = np.full(len(columns), np.inf)
    return {c: float(v) for c, v in zip(columns, vif, strict=True)}


def fit_model(spec: ModelSpec, level: float = 0.95) -> SessionModelFit:
    """Fit one model on the complete cases of its columns; a failure of an optional model gives an unfitted
    result with the message as ``error``, of a required model (:data:`REQUIRED_MODELS`) a :class:`SessionModelError`.
    """
    available = len(spec.data)
    if spec.note:
        return SessionModelFit(spec.model, spec, None, available, 0, error=spec.note)
    complete = spec.data.dropna(subset=list(spec.columns))
    notes = []
    if len(complete) < available:
        notes.append(f"{len(complete)} of {available} rows complete (blank alliance/outcome cells, missing lags or "
                     "covariates): complete cases used")  # fmt: skip
    vif = {}
    if spec.model == "components" and len(complete) > len(spec.fixed) + 1:
        alliance = [t for t in spec.fixed if t.startswith("alliance_")]
        vif = variance_inflation(complete, alliance)
        high = [t for t in alliance if vif[t] > VIF_WARN]
        if high:
            notes.append(f"collinear subscales: VIF above {VIF_WARN:g} for {', '.join(high)}")
    try:
        fit = fit_lmm(complete, "y", spec.fixed, spec.client, spec.upper, reml=True, level=level, label=spec.model)
    except MixedModelError as err:
        message = str(err)
        if spec.model in REQUIRED_MODELS:
            raise SessionModelError(
                f"{message} [model {spec.model!r} on {len(complete)} complete rows of {available}; try "
                "random_slopes: false or detrend: false in sessions.NAME, or check the grouping columns]"
            ) from None
        return SessionModelFit(spec.model, spec, None, available, len(complete), error=message, vif=vif,
                               notes=tuple(notes))  # fmt: skip
    return SessionModelFit(spec.model, spec, fit, available, fit.n_obs, vif=vif, notes=tuple(notes) + fit.notes)


def fit_session_models(decomposed: pd.DataFrame, *, detrend: bool = True, random_slopes: bool = True,
                       covariates: Sequence[str] = (), level: float = 0.95
                       ) -> tuple[dict[str, SessionModelFit], list[Unavailable]]:
    """Fit every session model the data support (module docstring); returns the fits (failed optional models
    included, with their error) and the models the data do not support at all."""
    fits, unavailable = {}, []
    specs = model_specs(decomposed, detrend=detrend, random_slopes=random_slopes, covariates=covariates)
    for name in MODELS:
        spec = specs[name]
        if isinstance(spec, Unavailable):
            unavailable.append(spec)
            continue
        fits[name] = fit_model(spec, level=level)
    return fits, unavailable
