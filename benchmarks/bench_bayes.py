"""Benchmark: the exact quadrature path and MCMC for the Bayesian random-effects model.

Prints two markdown tables:

1. quadrature (``exact_posterior(...).summary()``: mu, tau, r, theta_new with quantiles and
   P(r > 0), P(r > .1)) at k = 300 and 3,000, median wall time over repeats.  Target: < 1 s at k = 300.
2. MCMC for the random-effects model at k = 300, 4 chains x 1,000 draws (1,000 tuning steps):
   nutpie (numba backend) and PyMC's NUTS, for the non-centred latent model (the pipeline's
   headline model) and the marginal one (study effects integrated out).  Columns: compile and
   sampling time, bulk ESS of mu and tau, and ESS per second of total time.  Target: ess_bulk >=
   1,000 for mu and tau in < 10 s.  Agreement with the exact posterior is shown as the mean
   difference in Monte-Carlo SEs.

Run ``python benchmarks/bench_bayes.py`` (or ``make bench``); ``--quick`` skips PyMC's NUTS.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import numpy as np

from alliancemeta.studies.bayes.priors import MetaPriors
from alliancemeta.studies.bayes.quadrature import exact_posterior

PRIORS = MetaPriors.from_config({})
SEED = 20261121


def simulate(k: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    vi = 1.0 / (rng.integers(20, 500, k) - 3.0)
    return rng.normal(np.arctanh(0.28), np.sqrt(vi + 0.01)), vi


def bench_quadrature(sizes=(300, 3_000), repeats=7) -> None:
    print("| k | quadrature summary (s) | mu mean | tau mean | P(r > .1) |")
    print("|---:|---:|---:|---:|---:|")
    for k in sizes:
        yi, vi = simulate(k)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            table = exact_posterior(yi, vi, PRIORS).summary().set_index("parameter")
            times.append(time.perf_counter() - start)
        print(f"| {k:,} | {statistics.median(times):.3f} | {table.loc['mu', 'mean']:.4f} | "
              f"{table.loc['tau', 'mean']:.4f} | {table.loc['r', 'p_gt_0.1']:.4f} |")


def bench_mcmc(k: int = 300, samplers=("nutpie", "pymc")) -> None:
    from alliancemeta.core.mcmc import CompiledModel, SamplerSettings
    from alliancemeta.studies.bayes.models import build_meta_model
    from alliancemeta.studies.bayes.summary import summarise

    yi, vi = simulate(k)
    exact = exact_posterior(yi, vi, PRIORS).summary().set_index("parameter")
    print(f"\nRandom-effects model, k = {k}, 4 chains x 1,000 draws (+1,000 tuning)\n")
    print("| sampler | model | compile (s) | sample (s) | total (s) | ESS mu | ESS tau | min ESS/s | "
          "target met | (mean - exact)/MCSE mu, tau |")
    print("|---|---|---:|---:|---:|---:|---:|---:|:---:|---:|")
    for sampler in samplers:
        for marginal in (False, True):
            settings = SamplerSettings(1000, 1000, 4, sampler, 0.9, 0.99, "bayes")
            model = build_meta_model(yi, vi, PRIORS, marginal=marginal)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compiled = CompiledModel(model, settings)
                compiled_at = time.perf_counter()
                idata = compiled.sample(SEED)
            done = time.perf_counter()
            table = summarise(idata).set_index("parameter")
            ess = table.loc[["mu", "tau"], "ess_bulk"]
            total = done - start
            z = ((table.loc[["mu", "tau"], "mean"] - exact.loc[["mu", "tau"], "mean"])
                 / table.loc[["mu", "tau"], "mcse_mean"])
            met = "yes" if ess.min() >= 1000 and total < 10 else "no"
            print(f"| {compiled.backend} | {'marginal' if marginal else 'non-centred'} | "
                  f"{compiled_at - start:.1f} | {done - compiled_at:.1f} | {total:.1f} | {ess['mu']:.0f} | "
                  f"{ess['tau']:.0f} | {ess.min() / total:.0f} | {met} | {z['mu']:+.1f}, {z['tau']:+.1f} |")


if __name__ == "__main__":
    bench_quadrature()
    bench_mcmc(samplers=("nutpie",) if "--quick" in sys.argv else ("nutpie", "pymc"))
