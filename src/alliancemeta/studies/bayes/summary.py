r"""Posterior summaries, pointwise marginal log-likelihoods and LOO model comparison.

:func:`summarise` gives one row per reported parameter with the columns of SPEC §5
(``parameter, mean, sd, eti_lb, eti_ub, ess_bulk, ess_tail, r_hat``) followed by the Monte-Carlo
SE of the mean, the number of divergent transitions and :math:`P(\cdot > 0)`,
:math:`P(\cdot > 0.1)` on the parameter's own scale (for ``r``: :math:`P(r > 0)`, :math:`P(r > .1)`).

LOO uses the *marginal* likelihood of each left-out unit, with the unit's own random effect
integrated out analytically, because the conditional likelihood :math:`N(y_i \mid \theta_i, v_i)` of
a hierarchical model with one observation per effect gives unreliable importance-sampling LOO
(Pareto k > 0.7 for most points; Vehtari, Gelman & Gabry 2017, sec. 4; Merkle, Furr &
Rabe-Hesketh 2019).  Effect level: :math:`\log N(y_i \mid x_i'\beta, v_i + \tau^2)`.  Study level
(three-level model; effects in one study are dependent): for study :math:`j` with
:math:`d_i = v_i + \sigma^2_{\text{within}}`, :math:`S_1 = \sum 1/d_i`, :math:`S_2 = \sum e_i/d_i`,
:math:`S_3 = \sum e_i^2/d_i` and :math:`c = 1 + \sigma^2_{\text{study}} S_1`,

.. math::

    \log p(y_j) = -\tfrac12\Big[n_j \log 2\pi + \sum_i \log d_i + \log c
        + S_3 - \sigma^2_{\text{study}} S_2^2 / c\Big]

(Sherman–Morrison on the compound-symmetric covariance).  Two-level models are evaluated at the
study level by summing their independent effect-level terms, so the three-level and two-level
models are compared on the same units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from alliancemeta.studies.bayes.models import REPORTED

SUMMARY_COLUMNS = ("parameter", "mean", "sd", "eti_lb", "eti_ub", "ess_bulk", "ess_tail", "r_hat",
                   "mcse_mean", "n_divergent", "p_gt_0", "p_gt_0.1")
#: Pareto k above which a LOO importance ratio is unreliable (Vehtari et al. 2024, *JMLR* 25(72)).
PARETO_K_BAD = 0.7
LOG_2PI = float(np.log(2.0 * np.pi))


def _draws(da: xr.DataArray) -> np.ndarray:
    return np.asarray(da.values, dtype=float).reshape(-1)


def summarise(idata, level: float = 0.95, thresholds: Sequence[float] = (0.0, 0.1)) -> pd.DataFrame:
    """One row per reported parameter of ``idata`` (see module docstring for the columns).

    Intervals are equal-tailed (quantiles ``(1 - level)/2`` and ``(1 + level)/2`` of the pooled
    draws, numpy's default linear interpolation); ESS and r_hat are the rank-normalised versions of
    Vehtari et al. (2021) as computed by ArviZ.
    """
    post = idata.posterior
    names = [v for v in REPORTED if v in post]
    sub = post[names]
    ess_bulk = az.ess(sub, method="bulk")
    ess_tail = az.ess(sub, method="tail")
    rhat = az.rhat(sub)
    mcse = az.mcse(sub, method="mean")
    n_div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    rows = []
    for name in names:
        da = post[name]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        if extra:
            dim = extra[0]
            items = [(str(label), {dim: label}) for label in da[dim].values]
        else:
            items = [(name, {})]
        for label, sel in items:
            x = _draws(da.sel(sel))
            row = {
                "parameter": label,
                "mean": float(np.mean(x)),
                "sd": float(np.std(x, ddof=1)),
                "eti_lb": float(np.quantile(x, lo_q)),
                "eti_ub": float(np.quantile(x, hi_q)),
                "ess_bulk": float(ess_bulk[name].sel(sel)),
                "ess_tail": float(ess_tail[name].sel(sel)),
                "r_hat": float(rhat[name].sel(sel)),
                "mcse_mean": float(mcse[name].sel(sel)),
                "n_divergent": n_div,
            }
            for c in thresholds:
                row[f"p_gt_{c:g}"] = float(np.mean(x > c))
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# pointwise marginal log-likelihood
# --------------------------------------------------------------------------------------------------


def _observed(idata) -> np.ndarray:
    """The effect sizes: the observed ``y``, or the ``yi`` data of a model with a marginal potential."""
    if "observed_data" in idata.groups() and "y" in idata.observed_data:
        return np.asarray(idata.observed_data["y"].values, dtype=float)
    return np.asarray(idata.constant_data["yi"].values, dtype=float)


def _location(idata) -> np.ndarray:
    """x_i'beta for every draw: (chain, draw, k)."""
    post = idata.posterior
    if "mu" in post:
        k = _observed(idata).size
        return np.repeat(post["mu"].values[..., None], k, axis=-1)
    X = np.asarray(idata.constant_data["X"].values, dtype=float)
    return np.einsum("cdp,kp->cdk", post["b"].values, X)


def pointwise_log_likelihood(idata, unit: str = "effect") -> xr.DataArray:
    """Marginal log-likelihood of each effect (``unit="effect"``) or study (``unit="study"``).

    Returns a DataArray with dims ``(chain, draw, study)`` or ``(chain, draw, cluster)``.  The
    three-level model has no effect-level version (its effects are dependent within a study).
    """
    post = idata.posterior
    y = _observed(idata)
    v = np.asarray(idata.constant_data["vi"].values, dtype=float)
    resid = y - _location(idata)
    three_level = "sigma_study" in post
    if unit == "effect":
        if three_level:
            raise ValueError("the three-level model has dependent effects: compare it at unit='study'")
        total = v + (post["tau"].values[..., None] ** 2 if "tau" in post else 0.0)
        ll = -0.5 * (LOG_2PI + np.log(total) + resid**2 / total)
        coords = {"study": idata.constant_data["study"].values}
        return xr.DataArray(ll, dims=("chain", "draw", "study"),
                            coords={**coords, "chain": post["chain"].values, "draw": post["draw"].values})
    if unit != "study":
        raise ValueError(f"unit must be 'effect' or 'study', not {unit!r}")
    if "cluster_idx" not in idata.constant_data:
        raise ValueError("unit='study' needs the study identifiers (cluster_idx) in constant_data")
    idx = np.asarray(idata.constant_data["cluster_idx"].values)
    if "cluster" in idata.constant_data.coords:
        clusters = np.asarray(idata.constant_data["cluster"].values)
    elif "cluster" in post.coords:
        clusters = np.asarray(post["cluster"].values)
    else:
        clusters = np.arange(int(idx.max()) + 1)
    order = np.argsort(idx, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(idx[order]) != 0])
    if three_level:
        s2w = post["sigma_within"].values[..., None] ** 2
        s2s = post["sigma_study"].values[..., None] ** 2
    else:
        s2w = post["tau"].values[..., None] ** 2 if "tau" in post else np.zeros((*resid.shape[:2], 1))
        s2s = np.zeros_like(s2w)
    d = v[order] + s2w
    e = resid[..., order]

    def seg(a):
        return np.add.reduceat(a, starts, axis=-1)

    n = np.add.reduceat(np.ones(idx.size), starts)
    S1, S2, S3 = seg(1.0 / d), seg(e / d), seg(e * e / d)
    c = 1.0 + s2s * S1
    ll = -0.5 * (n * LOG_2PI + seg(np.log(d)) + np.log(c) + S3 - s2s * S2**2 / c)
    return xr.DataArray(ll, dims=("chain", "draw", "cluster"),
                        coords={"cluster": clusters[np.unique(idx[order])],
                                "chain": post["chain"].values, "draw": post["draw"].values})


def with_log_likelihood(idata, unit: str = "effect", cluster_idx=None, clusters=None):
    """A copy of ``idata`` with the marginal log-likelihood as ``log_likelihood["y"]``.

    For a two-level model at ``unit="study"`` pass the study identifiers (``cluster_idx``, integer
    codes, and their ``clusters`` labels) when the model itself has none.
    """
    out = idata.copy()
    if cluster_idx is not None:
        const = out.constant_data.assign(cluster_idx=("study", np.asarray(cluster_idx)))
        if clusters is not None:
            const = const.assign_coords(cluster=np.asarray(clusters))
        out.constant_data = const
    ll = pointwise_log_likelihood(out, unit)
    if "log_likelihood" in out.groups():
        del out.log_likelihood
    out.add_groups(log_likelihood=xr.Dataset({"y": ll}))
    return out


def with_study_effects(idata, seed: int):
    r"""Add exact draws of the study effects :math:`\theta_i` to a marginal random-effects posterior.

    Given :math:`\mu` and :math:`\tau`, each study effect is conjugate (Gelman et al. 2013,
    *Bayesian Data Analysis*, eq. 5.17):

    .. math::

        \theta_i \mid \mu, \tau, y \sim N\!\left(\frac{y_i/v_i + \mu/\tau^2}{1/v_i + 1/\tau^2},\;
        \frac{1}{1/v_i + 1/\tau^2}\right),

    so one normal draw per posterior draw gives the same joint posterior as the latent
    (non-centred) model, with the hyperparameters sampled in two dimensions instead of k + 2.
    ``seed`` fixes the normal draws.
    """
    post = idata.posterior
    y = _observed(idata)
    v = np.asarray(idata.constant_data["vi"].values, dtype=float)
    tau2 = post["tau"].values[..., None] ** 2
    prec = 1.0 / v + 1.0 / tau2
    mean = (y / v + post["mu"].values[..., None] / tau2) / prec
    noise = np.random.default_rng(int(seed)).standard_normal(mean.shape)
    theta = xr.DataArray(mean + noise / np.sqrt(prec), dims=("chain", "draw", "study"),
                         coords={"chain": post["chain"].values, "draw": post["draw"].values,
                                 "study": idata.constant_data["study"].values})
    out = idata.copy()
    out.posterior = out.posterior.assign(theta=theta)
    return out


COMPARISON_COLUMNS = ("unit", "model", "rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight",
                      "pareto_k_max", "n_pareto_k_bad", "k")


def compare_models(models: Mapping[str, object], unit: str) -> pd.DataFrame:
    r"""PSIS-LOO comparison (ArviZ ``compare``, stacking weights) of models fitted to the same units.

    Each value must carry ``log_likelihood["y"]`` on the same units (see :func:`with_log_likelihood`).
    ``elpd_diff``/``dse`` are relative to the best model; ``n_pareto_k_bad`` counts units with
    Pareto :math:`\hat k >` :data:`PARETO_K_BAD`.
    """
    loos = {name: az.loo(idata, pointwise=True) for name, idata in models.items()}
    table = az.compare(loos, ic="loo", method="stacking", scale="log")
    rows = []
    for name, row in table.iterrows():
        kk = np.asarray(loos[name].pareto_k.values, dtype=float)
        rows.append({
            "unit": unit,
            "model": str(name),
            "rank": int(row["rank"]),
            "elpd_loo": float(row["elpd_loo"]),
            "se": float(row["se"]),
            "p_loo": float(row["p_loo"]),
            "elpd_diff": float(row["elpd_diff"]),
            "dse": float(row["dse"]),
            "weight": float(row["weight"]),
            "pareto_k_max": float(np.max(kk)),
            "n_pareto_k_bad": int(np.sum(kk > PARETO_K_BAD)),
            "k": int(kk.size),
        })
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
