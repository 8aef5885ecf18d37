r"""Simulated meta-analyses of dependent effect sizes under p-value selection (for simulation studies).

The evidence-generating process follows the correlated-and-hierarchical effects model of
Pustejovsky & Tipton (2022) on the Fisher-z scale, as in the simulations of Pustejovsky, Citkowicz
& Joshi (2025) and metaselection's ``r_meta()``:

.. math::

    y_{ij} = \mu + u_j + w_{ij} + e_{ij}, \quad u_j \sim N(0, \tau_B^2),\; w_{ij} \sim N(0, \tau_W^2),\;
    \operatorname{cov}(e_{ij}, e_{i'j}) = v_j\,[\rho + (1-\rho)1_{i=i'}],\; v_j = 1/(n_j - 3),

with sample sizes :math:`n_j` log-normal around ``n_median`` (at least ``n_min``) and
:math:`1 + \text{Poisson}(\text{mean\_effects} - 1)` candidate effects per study (the effects of
one study share its sample, hence the correlated sampling errors).  Each effect is then reported
with probability :math:`\lambda_h` when its one-sided p-value :math:`1-\Phi(y_{ij}/\sqrt{v_j})` lies
in :math:`(\alpha_h, \alpha_{h+1}]` (:math:`\lambda_0 = 1`), independently of the other effects
(the "univariate" selection process of the paper); a study with no reported effect is not
observed, and studies are generated until ``n_studies`` are observed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def simulate_dependent_selection(
    n_studies: int,
    mu: float,
    tau_between: float,
    tau_within: float,
    rho: float,
    lambdas=(1.0,),
    steps=(0.025,),
    mean_effects: float = 4.0,
    effects_per_study: int | None = None,
    n_median: float = 75.0,
    n_sdlog: float = 0.6,
    n_min: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Observed effects of ``n_studies`` studies: columns ``study_id`` (0..n_studies-1), ``yi``, ``vi``, ``ni``.

    ``effects_per_study`` (optional) makes every study report exactly that many effects (candidate
    effects are drawn until as many are reported; used by the benchmark to get a fixed k), instead
    of the Poisson number of candidates.  Same ``seed``, same data.
    """
    lambdas = np.concatenate([[1.0], np.asarray(lambdas, dtype=float)])
    steps = np.asarray(steps, dtype=float)
    if lambdas.size != steps.size + 1:
        raise ValueError("lambdas needs one weight per step")
    if np.any(lambdas < 0) or np.any(lambdas > 1):
        raise ValueError("selection probabilities must lie in [0, 1]")
    if not 0 <= rho < 1:
        raise ValueError("rho must lie in [0, 1)")
    rng = np.random.default_rng(seed)
    rows = []
    study = 0
    while study < n_studies:
        n = max(n_min, round(float(n_median * np.exp(n_sdlog * rng.standard_normal()))))
        v = 1.0 / (n - 3.0)
        theta_j = mu + tau_between * rng.standard_normal()
        target = effects_per_study
        n_cand = target if target is not None else 1 + rng.poisson(mean_effects - 1.0)
        kept: list[float] = []
        shared = np.sqrt(rho * v) * rng.standard_normal()  # the sample's common sampling error
        while True:
            y = theta_j + tau_within * rng.standard_normal(n_cand) + shared
            y = y + np.sqrt((1 - rho) * v) * rng.standard_normal(n_cand)
            p = stats.norm.sf(y / np.sqrt(v))
            h = np.searchsorted(np.append(steps, 1.0), p, side="left")
            report = rng.random(n_cand) < lambdas[h]
            kept.extend(y[report].tolist())
            if target is None or len(kept) >= target:
                break
            n_cand = target - len(kept)
        if target is not None:
            kept = kept[:target]
        if kept:
            rows.extend((study, yi, v, n) for yi in kept)
            study += 1
    return pd.DataFrame(rows, columns=["study_id", "yi", "vi", "ni"])
