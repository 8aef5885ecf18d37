"""Benchmark: the ``lagged_latent`` model on 5,000 session rows (400 clients, 40 therapists), nutpie vs PyMC NUTS.

Target (SPEC §5, issue): under 60 s wall on 2 cores including compilation, with r_hat <= 1.01 and
ess_bulk >= 400 for every reported coefficient and variance parameter
(:func:`alliancemeta.sessions.dsem.reported_names`).  The same model is sampled with nutpie (numba,
the package default) and with PyMC's own NUTS (C backend), both through
:class:`alliancemeta.core.mcmc.CompiledModel` with the pipeline's default settings for this model (the schema's
``sessions_bayes`` defaults times ``lagged_latent_scale``: 4 chains x (2,000 tuning + 2,000 draws), 2 cores).
Prints the machine's load average, wall and CPU times (CPU includes PyMC's worker processes), the worst
diagnostics, and the posterior of every term next to the value it was simulated with.

With ALLIANCEMETA_BENCH_R=1 and Rscript on PATH, lme4 fits the classical and the detrended lagged
models on the same data next to the pipeline's ``lagged`` REML model without and with detrending
(:func:`alliancemeta.sessions.models.model_specs`; R has no DSEM; Mplus, which has, is commercial).

    python benchmarks/bench_dsem.py            # both samplers
    python benchmarks/bench_dsem.py --nutpie   # nutpie only

Not a test: timings depend on the machine and its load (the development machine is shared).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import arviz as az
import numpy as np

from alliancemeta.core.mcmc import CompiledModel, diagnose
from alliancemeta.core.settings import SamplerSettings, scaled, validate_config
from alliancemeta.core.tables import write_csv
from alliancemeta.sessions.data import decompose_alliance
from alliancemeta.sessions.dsem import TERMS, build_lagged_latent_model, reported_names, session_grid
from alliancemeta.sessions.models import fit_model, model_specs
from alliancemeta.sessions.simulation import TRUTH_KEY
from alliancemeta.sessions.synthetic import SessionSimulationParameters, simulate_sessions

SEED = 20261121
#: 400 clients with 11-22 planned sessions give 5,136 rows after missed sessions and dropout (seed SEED).
PARAMS = SessionSimulationParameters(n_clients=400, n_therapists=40, n_sites=4, planned_sessions=(11, 22))
#: lme4 on the pipeline's complete-case frame of the ``lagged`` model (same columns, same formula; time in seconds).
R_SCRIPT = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1], colClasses = c(client = "character", therapist = "character"))
t0 <- proc.time()[["elapsed"]]
f <- lmer(as.formula(args[2]), data = d, REML = TRUE)
cat(proc.time()[["elapsed"]] - t0, fixef(f)[["alliance_within_lag"]], "\n")
"""


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def default_settings() -> SamplerSettings:
    """The pipeline's settings for ``lagged_latent`` when the config says nothing (schema defaults)."""
    bayes = validate_config({"sessions": {"bench": {"path": "bench.csv"}}})["sessions_bayes"]
    return scaled(SamplerSettings.from_config(bayes, "sessions_bayes"), bayes["lagged_latent_scale"])


def run(frame, sampler: str) -> dict:
    settings = default_settings()._replace(sampler=sampler)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    grid = session_grid(frame, outcome_lower_is_better=True, time_centre=PARAMS.session_centre)
    model = build_lagged_latent_model(grid)
    compiled = CompiledModel(model, settings)
    wall1, cpu1 = time.perf_counter(), cpu_seconds()
    idata = compiled.sample(SEED)
    wall2, cpu2 = time.perf_counter(), cpu_seconds()
    diag = diagnose(idata, var_names=reported_names(model))
    stats = idata.sample_stats
    steps = float(stats["n_steps"].mean()) if "n_steps" in stats else float(stats["tree_size"].mean())
    return {"sampler": sampler, "backend": compiled.backend, "compile": wall1 - wall0, "sample": wall2 - wall1,
            "total": wall2 - wall0, "cpu_compile": cpu1 - cpu0, "cpu_sample": cpu2 - cpu1, "diag": diag,
            "idata": idata, "steps": steps}  # fmt: skip


def r_fit(data, formula: str) -> tuple[float, float] | None:
    """lme4's wall time and lagged alliance estimate on ``data`` (None unless ALLIANCEMETA_BENCH_R=1)."""
    if os.environ.get("ALLIANCEMETA_BENCH_R") != "1" or not shutil.which("Rscript"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.csv")
        write_csv(data, path)
        script = os.path.join(tmp, "fit.R")
        with open(script, "w") as handle:
            handle.write(R_SCRIPT)
        out = subprocess.run(["Rscript", script, path, formula], capture_output=True, text=True, check=True)
    seconds, estimate = (float(x) for x in out.stdout.split())
    return seconds, estimate


def lme4_formula(spec) -> str:
    """The lme4 formula of a :class:`~alliancemeta.sessions.models.ModelSpec` (correlated random effects)."""
    client = " + ".join(("1", *spec.client.slopes))
    upper = f" + (1 | {spec.upper.group})" if spec.upper is not None else ""
    return f"y ~ {' + '.join(spec.fixed)} + ({client} | client){upper}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nutpie", action="store_true", help="skip PyMC's NUTS")
    args = parser.parse_args(argv)
    frame, truth = simulate_sessions(SEED, params=PARAMS)
    grid = session_grid(frame, outcome_lower_is_better=True)
    print(f"## lagged_latent: {len(frame):,} rows, {frame['client'].nunique()} clients, "
          f"{frame['therapist'].nunique()} therapists, {grid.n_cells:,} grid cells "
          f"({grid.n_missed_sessions} missed sessions; {int(np.isnan(grid.alliance).sum())} alliance and "
          f"{int(np.isnan(grid.outcome).sum())} outcome values imputed)\n")  # fmt: skip
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)\n")
    runs = [run(frame, "nutpie")] + ([] if args.nutpie else [run(frame, "pymc")])
    print("Wall times depend on the machine's load; CPU times much less.  'Idle 2-core wall' is what the run "
          "would take on two otherwise idle cores: compilation (one thread) + sampling CPU / 2 (two chains at a "
          "time).  PyMC compiles inside its sampling call.\n")  # fmt: skip
    print("| sampler | build + compile wall (s) | sampling wall (s) | total wall (s) | compile CPU (s) "
          "| sampling CPU (s) | idle 2-core wall (s) | leapfrog steps/draw | min ess_bulk | max r_hat "
          "| divergences |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        d = r["diag"]
        idle = r["cpu_compile"] + r["cpu_sample"] / 2
        print(f"| {r['backend']} | {r['compile']:.1f} | {r['sample']:.1f} | {r['total']:.1f} | {r['cpu_compile']:.1f} "
              f"| {r['cpu_sample']:.1f} | {idle:.1f} | {r['steps']:.1f} | {d.min_ess_bulk:.0f} ({d.min_ess_bulk_at}) "
              f"| {d.max_r_hat:.4f} ({d.max_r_hat_at}) | {d.n_divergent} |")  # fmt: skip
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}\n")
    idata = runs[0]["idata"]
    names = reported_names(idata)
    summary = az.summary(idata, var_names=names, kind="all", hdi_prob=0.95)
    print("| parameter | truth | mean | sd | ess_bulk | ess_tail | r_hat |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        row = summary.loc[name]
        true = truth["reported"][TRUTH_KEY[name]] if name in TERMS else np.nan
        print(f"| {name} | {'' if np.isnan(true) else f'{true:g}'} | {row['mean']:.4g} | {row['sd']:.3g} | "
              f"{row['ess_bulk']:.0f} | {row['ess_tail']:.0f} | {row['r_hat']:.3f} |")  # fmt: skip
    decomposed = decompose_alliance(frame, True)
    print("\n| `lagged` REML model (same rows) | alliancemeta (s) | alliance_within | lme4 (s) "
          "| lme4 alliance_within |")
    print("|---|---:|---:|---:|---:|")
    for detrend, random_slopes in ((False, False), (True, True)):
        spec = model_specs(decomposed, detrend=detrend, random_slopes=random_slopes)["lagged"]
        start = time.perf_counter()
        fit = fit_model(spec).fit
        seconds = time.perf_counter() - start
        estimate = fit.estimate[fit.terms.index("alliance_within_lag")]
        data = spec.data.dropna(subset=list(spec.columns))[["client", "therapist", *spec.columns]]
        r = r_fit(data, lme4_formula(spec))
        label = "detrended, random slopes (default)" if detrend else "classical (neither)"
        r_text = f"{r[0]:.2f} | {r[1]:.6f}" if r else "– | –"
        print(f"| {label} | {seconds:.2f} | {estimate:.6f} | {r_text} |")

if __name__ == "__main__":
    main()
