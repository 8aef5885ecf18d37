r"""Bayesian multilevel session models (PyMC, sampled with nutpie through :func:`alliancemeta.core.mcmc.fit`).

Three models mirror the REML models of :mod:`alliancemeta.sessions.models`: ``within_between``, ``components``
(Bordin subscales) and ``split`` (couples and families).  Each is

.. math::

    y_{it} \sim N\Bigl(\alpha_i + \textstyle\sum_k \beta_k x_{k,it} + (s_i + \beta_S)\, t_{it}
                       + \sum_m b_{mi}\, x_{m,it},\; \sigma^2\Bigr), \qquad
    \alpha_i \sim N\Bigl(\alpha_{g(i)} + \textstyle\sum_l \beta_l c_{l,i},\; \sigma_C^2\Bigr),

with session-level predictors :math:`x_k` (the within-client alliance terms), centred session :math:`t`
(``session_c``) with random client slopes :math:`s_i \sim N(0, \sigma_{CS}^2)`, optional random client slopes
:math:`b_{mi} \sim N(0, \sigma_{m}^2)` of the within-client alliance terms (``BayesSpec.slopes``), client-level
predictors :math:`c_l` (alliance between-client components, ``alliance_own_between``, covariates) and the
client's parent intercept :math:`\alpha_{g(i)}`: the therapist's (``within_between``, ``components``), the
case's (``split``: case intercept :math:`\beta_0 + \beta_{\text{split}} S_k + \beta_T A^T_{j(k)} + \sigma_K z_k`;
like the REML model, the split model has the case, not the therapist, as its upper level: with 57 couples and
families under 30-odd therapists a therapist and a case variance are barely separable, and a three-level
version mixed too slowly, ess_bulk 157-307 for their SDs in 4 x 1,000 draws) or the overall intercept without an
upper level; therapist intercepts are :math:`\beta_0 + \beta_T A^T_j + \sigma_T z_j`.  The random slopes are
independent of each other and of the intercepts (the REML models estimate their correlations; here the fixed
effects are the object of comparison, and correlated slopes with hierarchically centred intercepts sample poorly).

**No random alliance slopes in the pipeline's Bayesian models.**  Their SD is weakly identified with about ten
sessions per client (on the bundled data a client's own alliance slope has a standard error of about 2.4 against
an SD of about 0.9), and its chains mix slowly: with the default 4 x 500 draws the SD of the ``alliance_within``
slope reached ess_bulk 250-340 (r_hat up to 1.011), and 180-390 after the automatic retry with twice the draws,
with or without the imputation of blank alliance cells, so the run would stop.  The pipeline therefore samples the
Bayesian models with random session slopes only (:func:`spec_from_model`'s default), and their ``alliance_within``
interval is comparable with the REML model with ``random_slopes: false`` (the REML models carry the random
alliance slopes by default, and their tables say whether the slope variance is at the boundary).  A random slope
can still be requested with ``spec_from_model(..., slopes=...)`` given more draws.

Variables are standardised, :math:`\tilde y = (y - \bar y)/s_y`, :math:`\tilde x = (x - \bar x)/s_x`, and the
priors are weakly informative on that scale (in the spirit of the rstanarm/brms defaults; Gelman et al. 2008):
:math:`\tilde\beta \sim N(0, 1)`, :math:`\tilde\sigma, \tilde\sigma_T, \tilde\sigma_K, \tilde\sigma_C \sim
\text{Half-}N(1)`, :math:`\tilde\sigma_{CS} \sim \text{Half-}N(0.1)` per session, :math:`\tilde\sigma_m \sim
\text{Half-}N(0.5)`.  Coefficients and SDs are reported on the data scale as deterministic nodes (``beta`` with
dims ``term``; ``sd_*``, ``sigma``).

Parameterisation (Gelfand, Sahu & Carlin 1995; Papaspiliopoulos, Roberts & Sköld 2007): client intercepts are
hierarchically *centred* on their parent (about ten sessions per client pin each one down, the regime in which
centring samples far better: the fully non-centred form left the between-level coefficients with ess_bulk near
200 in 2000 draws), upper levels and random slopes are non-centred (few therapists with a modest variance).

**Missing cells.**  A blank outcome is a latent variable; under missingness at random, given the predictors, it
has no influence on the parameters' posterior, so it is integrated out exactly (the row is left out of the
likelihood: its imputation would only add draws of the posterior predictive).  Blank alliance cells are imputed:
the session-level alliance terms of the model, :math:`x_{it}`, follow :math:`N(0, \Sigma_x)` (a normal for one
term, a multivariate normal with an LKJ(2) correlation prior for the three subscales; standardised SDs
:math:`\text{Half-}N(1)`), fitted to the observed rows, and a row whose outcome is observed but whose alliance
terms are blank gets latent values ``x_missing`` from that distribution, so its outcome still informs its
client's intercept and slope.  Rows with some but not all subscales blank, rows with neither alliance nor outcome,
and clients without any observed alliance (no between-client value) are left out, and the note says how many.

Every model is sampled through the package's one MCMC path (:func:`alliancemeta.core.mcmc.fit`): r_hat <= 1.01,
ess_bulk >= 400 and no divergences for every coefficient and standard deviation, one automatic retry, then a
:class:`~alliancemeta.core.errors.SamplingError` that stops the rule before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from alliancemeta.core.errors import ModelError
from alliancemeta.core.inference import upper_quantile
from alliancemeta.core.mcmc import ESS_BULK_MIN, R_HAT_MAX

#: Prior scales on the standardised scale (see the module docstring).
PRIOR_BETA_SD = 1.0
PRIOR_SD = 1.0
PRIOR_SESSION_SLOPE_SD = 0.1
PRIOR_ALLIANCE_SLOPE_SD = 0.1
LKJ_ETA = 2.0


@dataclass(frozen=True)
class BayesSpec:
    """A Bayesian session model: its rows and the level of every predictor.

    ``obs_terms`` are session-level (imputed where blank), ``client_terms`` constant within clients,
    ``case_terms`` within cases (``split``), ``therapist_terms`` within therapists; ``slopes`` are the
    session-level terms with random client slopes; ``case`` and ``therapist`` say whether those levels exist."""

    model: str
    data: pd.DataFrame = field(repr=False)
    obs_terms: tuple[str, ...]
    client_terms: tuple[str, ...]
    case_terms: tuple[str, ...] = ()
    therapist_terms: tuple[str, ...] = ()
    slopes: tuple[str, ...] = ()
    session_slope: bool = True
    case: bool = False
    therapist: bool = False
    order: tuple[str, ...] = ()

    @property
    def terms(self) -> tuple[str, ...]:
        """Every coefficient in report order: ``order`` (the REML model's) when given, else session level, session,
        client, case, therapist."""
        default = (*self.obs_terms, "session_c", *self.client_terms, *self.case_terms, *self.therapist_terms)
        if self.order:
            if sorted(self.order) != sorted(default):
                raise ValueError(f"order {self.order} does not list the model's terms {default}")
            return self.order
        return default


def spec_from_model(model: str, data: pd.DataFrame, fixed: Sequence[str], *, case: bool, therapist: bool,
                    slopes: Sequence[str] = ()) -> BayesSpec:
    """The Bayesian counterpart of a REML model with fixed effects ``fixed``: terms ending in ``_within`` are
    session-level, ``alliance_therapist`` therapist-level (case-level without a therapist level, as in ``split``,
    whose cases are nested in therapists), ``alliance_split`` case-level, the rest (except ``session_c``)
    client-level.  ``slopes`` (default none; see the module docstring) are the session-level terms with random
    client slopes."""
    obs = tuple(t for t in fixed if t.endswith("_within"))
    th = tuple(t for t in fixed if t == "alliance_therapist")
    cs = tuple(t for t in fixed if t == "alliance_split")
    client = tuple(t for t in fixed if t not in (*obs, *th, *cs, "session_c"))
    if not therapist:
        cs, client, th = (cs + th, client, ()) if case else (cs, client + th, ())
    return BayesSpec(model, data, obs, client, cs, th, tuple(s for s in slopes if s in obs), True, case, therapist,
                     tuple(fixed))


@dataclass(frozen=True)
class PreparedData:
    """Rows kept for sampling and what was left out (for the note)."""

    data: pd.DataFrame = field(repr=False)
    n_rows: int
    n_outcome_missing: int
    n_alliance_imputed: int
    dropped: Mapping[str, int]

    def note(self) -> str:
        parts = [f"{self.n_rows} rows"]
        if self.n_outcome_missing:
            parts.append(f"{self.n_outcome_missing} blank outcomes integrated out")
        if self.n_alliance_imputed:
            parts.append(f"{self.n_alliance_imputed} blank alliance rows imputed")
        parts += [f"{n} rows left out ({why})" for why, n in self.dropped.items() if n]
        return "; ".join(parts)


def prepare(spec: BayesSpec) -> PreparedData:
    """Rows usable by the model (see the module docstring) and the counts of what is imputed or left out."""
    d = spec.data
    upper = [t for t in (*spec.client_terms, *spec.case_terms, *spec.therapist_terms)]
    dropped: dict[str, int] = {}
    keep = d[upper].notna().all(axis=1).to_numpy().copy() if upper else np.ones(len(d), dtype=bool)
    dropped["client without an alliance mean or with a blank covariate"] = int((~keep).sum())
    x_na = d[list(spec.obs_terms)].isna().to_numpy()
    partial = x_na.any(axis=1) & ~x_na.all(axis=1)
    dropped["some subscales blank"] = int((keep & partial).sum())
    keep &= ~partial
    x_missing = x_na.all(axis=1)
    y_missing = d["y"].isna().to_numpy()
    both = x_missing & y_missing
    dropped["alliance and outcome blank"] = int((keep & both).sum())
    keep &= ~both
    out = d.loc[keep].reset_index(drop=True)
    return PreparedData(out, len(out), int((keep & y_missing).sum()), int((keep & x_missing).sum()), dropped)


def _standardise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(values - mean) / sd over the finite values (sd with ddof = 0; 1 when constant)."""
    finite = values[np.isfinite(values)]
    mean, sd = float(finite.mean()), float(finite.std())
    sd = sd if sd > 0 else 1.0
    return (values - mean) / sd, mean, sd


def _mvnormal_logp(X: np.ndarray, chol, k: int):
    r"""Log density (up to :math:`-\tfrac{nk}{2}\log 2\pi`) of the rows of ``X`` under :math:`N(0, LL')`, by forward
    substitution column by column: :math:`z = L^{-1}x`, :math:`\log p = -\tfrac12\sum z^2 - n\sum_a \log L_{aa}`.
    Elementwise on the (n, k) data: on the bundled data (3,600 rows, three subscales) a draw of the ``components``
    model took about 20 times less time than with PyMC's ``MvNormal`` (cheaper gradients and fewer leapfrog steps)."""
    z = []
    for a in range(k):
        acc = pt.as_tensor_variable(X[:, a])
        for b in range(a):
            acc = acc - chol[a, b] * z[b]
        z.append(acc / chol[a, a])
    return -0.5 * sum(pt.sum(za**2) for za in z) - X.shape[0] * sum(pt.log(chol[a, a]) for a in range(k))


def build_session_model(spec: BayesSpec) -> tuple[pm.Model, PreparedData]:
    """The PyMC model of the module docstring for ``spec`` (data from :func:`prepare`)."""
    prepared = prepare(spec)
    d = prepared.data
    if d["y"].notna().sum() < 3 or d["client"].nunique() < 2:
        raise ModelError(f"Bayesian session model {spec.model!r}: {d['y'].notna().sum()} observed outcomes in "
                         f"{d['client'].nunique()} clients are too few (check the data)")  # fmt: skip
    terms = spec.terms
    y_raw = d["y"].to_numpy(dtype=float)
    y_std, _, y_sd = _standardise(y_raw)
    std = {}
    x_sd = {}
    for t in terms:
        std[t], _, x_sd[t] = _standardise(d[t].to_numpy(dtype=float))
    client_idx, clients = pd.factorize(d["client"], sort=True)
    coords = {"term": list(terms), "client": list(clients)}

    def per_group(term: str, idx: np.ndarray, n: int) -> np.ndarray:
        out = np.zeros(n)
        out[idx] = std[term]  # constant within the group, so any row will do
        return out

    with pm.Model(coords=coords) as model:
        beta0 = pm.Normal("beta0_std", 0.0, PRIOR_BETA_SD)
        beta_std = pm.Normal("beta_std", 0.0, PRIOR_BETA_SD, dims="term")
        b = {t: beta_std[k] for k, t in enumerate(terms)}
        sigma = pm.HalfNormal("sigma_std", PRIOR_SD)
        sd_client = pm.HalfNormal("sd_client_std", PRIOR_SD)
        parent = beta0
        client_parent = np.zeros(len(clients), dtype=int)
        if spec.therapist:
            t_idx, therapists = pd.factorize(d["therapist"], sort=True)
            model.add_coord("therapist", list(therapists))
            sd_t = pm.HalfNormal("sd_therapist_std", PRIOR_SD)
            z_t = pm.Normal("z_therapist", 0.0, 1.0, dims="therapist")
            mu_t = beta0 + sum(b[t] * per_group(t, t_idx, len(therapists)) for t in spec.therapist_terms)
            parent = mu_t + sd_t * z_t
            pm.Deterministic("sd_therapist", sd_t * y_sd)
            row_parent = t_idx
        if spec.case:
            k_idx, cases = pd.factorize(d["case"], sort=True)
            model.add_coord("case", list(cases))
            sd_k = pm.HalfNormal("sd_case_std", PRIOR_SD)
            z_k = pm.Normal("z_case", 0.0, 1.0, dims="case")
            case_parent = np.zeros(len(cases), dtype=int)
            if spec.therapist:
                case_parent[k_idx] = row_parent
                base = parent[case_parent]
            else:
                base = parent
            mu_k = base + sum(b[t] * per_group(t, k_idx, len(cases)) for t in spec.case_terms)
            parent = mu_k + sd_k * z_k
            pm.Deterministic("sd_case", sd_k * y_sd)
            row_parent = k_idx
        if spec.therapist or spec.case:
            client_parent[client_idx] = row_parent
            mu_c = parent[client_parent]
        else:
            mu_c = parent
        mu_c = mu_c + sum(b[t] * per_group(t, client_idx, len(clients)) for t in spec.client_terms)
        alpha = pm.Normal("r_client", mu_c, sd_client, dims="client")
        # session-level alliance terms: observed rows as data, blank rows latent (imputed)
        k = len(spec.obs_terms)
        X = np.column_stack([std[t] for t in spec.obs_terms]) if k else np.zeros((len(d), 0))
        missing = ~np.isfinite(X).all(axis=1) if k else np.zeros(len(d), dtype=bool)
        if k and missing.any():
            model.add_coord("obs_term", list(spec.obs_terms))
            model.add_coord("missing_row", np.flatnonzero(missing))
            if k == 1:
                sd_x = pm.HalfNormal("sd_x_std", PRIOR_SD)
                pm.Normal("x_observed", 0.0, sd_x, observed=X[~missing, 0])
                x_mis = pm.Normal("x_missing", 0.0, sd_x, dims="missing_row")[:, None]
            else:
                chol, _, _ = pm.LKJCholeskyCov("x_chol", n=k, eta=LKJ_ETA, sd_dist=pm.HalfNormal.dist(PRIOR_SD),
                                               compute_corr=True)  # fmt: skip
                pm.Potential("x_observed", _mvnormal_logp(X[~missing], chol, k))
                z_mis = pm.Normal("z_x_missing", 0.0, 1.0, dims=("missing_row", "obs_term"))
                x_mis = pm.Deterministic("x_missing", pt.dot(z_mis, chol.T), dims=("missing_row", "obs_term"))
            X_full = pt.set_subtensor(pt.as_tensor_variable(np.nan_to_num(X))[np.flatnonzero(missing)], x_mis)
        else:
            X_full = pt.as_tensor_variable(X)
        y_obs = np.isfinite(y_std)
        rows = np.flatnonzero(y_obs)
        mu = alpha[client_idx[rows]]
        if k:
            beta_obs = pm.math.stack([b[t] for t in spec.obs_terms])
            mu = mu + pm.math.dot(X_full[rows], beta_obs)
        session = std["session_c"][rows]
        mu = mu + b["session_c"] * session
        if spec.session_slope:
            sd_s = pm.HalfNormal("sd_client_session_std", PRIOR_SESSION_SLOPE_SD)
            z_s = pm.Normal("z_client_session", 0.0, 1.0, dims="client")
            mu = mu + (sd_s * z_s)[client_idx[rows]] * session
            pm.Deterministic("sd_client_session", sd_s * y_sd / x_sd["session_c"])
        for m, term in enumerate(spec.obs_terms):
            if term not in spec.slopes:
                continue
            sd_m = pm.HalfNormal(f"sd_client_{term}_std", PRIOR_ALLIANCE_SLOPE_SD)
            z_m = pm.Normal(f"z_client_{term}", 0.0, 1.0, dims="client")
            mu = mu + (sd_m * z_m)[client_idx[rows]] * X_full[rows, m]
            pm.Deterministic(f"sd_client_{term}", sd_m * y_sd / x_sd[term])
        pm.Normal("y_std", mu, sigma, observed=y_std[rows])
        scale = np.array([y_sd / x_sd[t] for t in terms])
        pm.Deterministic("beta", beta_std * scale, dims="term")
        pm.Deterministic("sigma", sigma * y_sd)
        pm.Deterministic("sd_client", sd_client * y_sd)
    return model, prepared


def sd_parameters(posterior) -> tuple[str, ...]:
    """The data-scale standard deviations in a posterior, in a fixed order: therapist, case, client, client
    slopes (session first), residual."""
    names = [str(v) for v in posterior.data_vars]
    slopes = sorted(n for n in names if n.startswith("sd_client_") and not n.endswith("_std"))
    slopes = [n for n in slopes if n == "sd_client_session"] + [n for n in slopes if n != "sd_client_session"]
    order = [n for n in ("sd_therapist", "sd_case", "sd_client") if n in names] + slopes + ["sigma"]
    return tuple(order)


def diagnosed(model: pm.Model) -> tuple[str, ...]:
    """Parameters whose convergence is checked: the coefficients and the data-scale standard deviations."""
    names = [v.name for v in model.deterministics]
    return ("beta", *(n for n in names if n.startswith("sd_") or n == "sigma"))


@dataclass(frozen=True)
class BayesSummary:
    """Posterior summaries (data scale) of ``parameters``: the coefficients (``beta`` per term, named by the term)
    followed by the standard deviations (:func:`sd_parameters`); ``n_terms`` says how many of the leading
    parameters are coefficients."""

    parameters: tuple[str, ...]
    n_terms: int
    mean: np.ndarray
    sd: np.ndarray
    eti_lb: np.ndarray
    eti_ub: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    r_hat: np.ndarray
    divergences: int
    level: float
    variance: np.ndarray  # posterior mean of the square of each SD (NaN for coefficients)

    @property
    def terms(self) -> tuple[str, ...]:
        return self.parameters[: self.n_terms]

    @property
    def passed(self) -> np.ndarray:
        """Per parameter: r_hat, bulk ESS and (for all) the divergence count within the limits of
        :mod:`alliancemeta.core.mcmc`."""
        return (self.r_hat <= R_HAT_MAX) & (self.ess_bulk >= ESS_BULK_MIN) & (self.divergences == 0)


def summarise_posterior(idata: az.InferenceData, level: float) -> BayesSummary:
    """Posterior mean, SD, equal-tailed interval at ``level`` and diagnostics (ess_bulk, ess_tail,
    rank-normalised r_hat; Vehtari et al. 2021) of every coefficient and standard deviation."""
    post = idata.posterior
    names = [str(t) for t in post["beta"].coords["term"].values]
    sds = list(sd_parameters(post))
    draws = [post["beta"].sel(term=t) for t in names] + [post[v] for v in sds]
    flat = np.stack([d.to_numpy().reshape(-1) for d in draws])
    alpha = 1.0 - upper_quantile(level)
    ds = post[["beta", *sds]]
    ess_bulk, ess_tail, r_hat = (az.ess(ds, method="bulk"), az.ess(ds, method="tail"), az.rhat(ds))

    def collect(result):
        return np.concatenate([result["beta"].to_numpy(), [float(result[v]) for v in sds]])

    stats_ = idata.sample_stats
    divergences = int(stats_["diverging"].sum()) if "diverging" in stats_ else 0
    variance = np.concatenate([np.full(len(names), np.nan), [float((post[v] ** 2).mean()) for v in sds]])
    return BayesSummary(
        parameters=(*names, *sds),
        n_terms=len(names),
        mean=flat.mean(axis=1),
        sd=flat.std(axis=1, ddof=1),
        eti_lb=np.quantile(flat, alpha, axis=1),
        eti_ub=np.quantile(flat, 1 - alpha, axis=1),
        ess_bulk=collect(ess_bulk),
        ess_tail=collect(ess_tail),
        r_hat=collect(r_hat),
        divergences=divergences,
        level=level,
        variance=variance,
    )
