"""Benchmark of the mixed model engine (alliancemeta.sessions.lmm) against lme4/lmerTest.

Run ``python benchmarks/bench_lmm.py`` (``--sizes`` numbers of clients).  For each size it fits the session models
on SYNTHETIC data and prints a Markdown table of wall times (median over repeats; the fit includes the Satterthwaite
df of every coefficient):

- ``within_between``: ``y ~ alliance_within + alliance_between + alliance_therapist + session + (1 | therapist) +
  (1 + session || client)`` (today's session model) and
- ``random_slope``: the same with ``(1 + alliance_within | client)`` (a correlated random alliance slope).

Data: up to 5,000 clients from :func:`alliancemeta.sessions.synthetic.simulate_sessions` (seed 1, 10 clients per
therapist, 4 sites: 1,000 clients give about 11,000 rows and 3,000 about 34,000); above that from the vectorised
generator :func:`simulate_large` here (same design in outline: 8-20 sessions per client, therapist and client
alliance components, random intercepts and session slopes; seed 1), since the session simulator loops over
clients.  Both go through :func:`alliancemeta.sessions.data.decompose_alliance`; rows with a blank alliance or
outcome cell are left out (complete cases, as the pipeline fits them).

With ``ALLIANCEMETA_BENCH_R=1`` and ``Rscript`` on the PATH, the same data (written to CSV) are fitted in R:
``lme4::lmer`` with its default control (the time a user sees), ``lmerTest::lmer`` (adds the Satterthwaite
Hessian and Jacobian) and ``lmerTest::lmer`` with BOBYQA to rhoend = 1e-12, whose estimates, SEs, df and
log-likelihood are compared with ours (max relative difference; log-likelihood absolute).  R runs only up to
``ALLIANCEMETA_BENCH_R_MAX_ROWS`` rows (default 100,000).

Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from alliancemeta.sessions.data import decompose_alliance
from alliancemeta.sessions.lmm import RandomTerm, fit_lmm
from alliancemeta.sessions.synthetic import simulate_sessions

SIZES = (1_000, 3_000, 73_000)  # clients: about 11k, 34k and 1.0 million rows
SEED = 1
SIMULATE_SESSIONS_MAX = 5_000
FIXED = ("alliance_within", "alliance_between", "alliance_therapist", "session")
MODELS = {
    "within_between": (RandomTerm("client", ("session",), correlated=False), RandomTerm("therapist")),
    "random_slope": (RandomTerm("client", ("alliance_within",)), RandomTerm("therapist")),
}
R_FORMULA = {
    "within_between": "y ~ alliance_within + alliance_between + alliance_therapist + session + (1 | therapist) + "
    "(1 + session || client)",
    "random_slope": "y ~ alliance_within + alliance_between + alliance_therapist + session + (1 | therapist) + "
    "(1 + alliance_within | client)",
}
R_SCRIPT = """
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)})
a <- commandArgs(TRUE)
d <- read.csv(a[1], colClasses = c(client = "character", therapist = "character"))
form <- as.formula(a[2])
t_lme4 <- system.time(m0 <- lme4::lmer(form, data = d, REML = TRUE))[["elapsed"]]
t_lmertest <- system.time(m1 <- lmerTest::lmer(form, data = d, REML = TRUE))[["elapsed"]]
tight <- lmerControl(optimizer = "bobyqa", calc.derivs = FALSE, optCtrl = list(rhoend = 1e-12, maxfun = 1e6))
t_tight <- system.time(m2 <- lmerTest::lmer(form, data = d, REML = TRUE, control = tight))[["elapsed"]]
s <- summary(m2)$coefficients
out <- list(t_lme4 = t_lme4, t_lmertest = t_lmertest, t_tight = t_tight, estimate = unname(fixef(m2)),
            se = unname(s[, "Std. Error"]), df = unname(s[, "df"]), loglik = as.numeric(logLik(m2)),
            default_estimate = unname(fixef(m0)), default_loglik = as.numeric(logLik(m0)))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE), a[3])
"""


def simulate_large(n_clients: int, seed: int = SEED) -> pd.DataFrame:
    """SYNTHETIC sessions for large benchmarks, vectorised: 10 clients per therapist on average, 8-20 sessions,
    alliance = 11.2 + therapist (SD 0.5) + client (SD 1.1) + session noise (SD 0.8); outcome (lower is better) =
    70 + therapist (SD 4) + client (SD 12) - (1.5 + client slope, SD 0.35) (session - 1) - 3 (alliance - 11.2) +
    noise (SD 7)."""
    rng = np.random.default_rng(seed)
    n_therapists = max(5, n_clients // 10)
    t_of_c = np.sort(rng.integers(0, n_therapists, n_clients))
    n_sessions = rng.integers(8, 21, n_clients)
    client = np.repeat(np.arange(n_clients), n_sessions)
    starts = np.repeat(np.cumsum(n_sessions) - n_sessions, n_sessions)
    session = np.arange(client.size) - starts + 1
    therapist = t_of_c[client]
    alliance = (11.2 + rng.normal(0, 0.5, n_therapists)[therapist] + rng.normal(0, 1.1, n_clients)[client]
                + rng.normal(0, 0.8, client.size))  # fmt: skip
    slope = 1.5 + rng.normal(0, 0.35, n_clients)[client]
    outcome = (70 + rng.normal(0, 4, n_therapists)[therapist] + rng.normal(0, 12, n_clients)[client]
               - slope * (session - 1) - 3 * (alliance - 11.2) + rng.normal(0, 7, client.size))  # fmt: skip
    width = len(str(n_clients))
    return pd.DataFrame(
        {
            "therapist": pd.Series(therapist).map(lambda j: f"t{j:0{width}d}"),
            "client": pd.Series(client).map(lambda i: f"c{i:0{width}d}"),
            "session": session,
            "alliance": alliance,
            "outcome": outcome,
        }
    )


def make_data(n_clients: int) -> pd.DataFrame:
    if n_clients <= SIMULATE_SESSIONS_MAX:
        frame, _ = simulate_sessions(SEED, n_sites=4, n_therapists=max(4, n_clients // 10), n_clients=n_clients)
    else:
        frame = simulate_large(n_clients)
    # the session generator leaves blank alliance and outcome cells, as real data have: complete cases, as the
    # pipeline's models use them
    return decompose_alliance(frame, True).dropna(subset=["y", *FIXED]).reset_index(drop=True)


def time_python(data: pd.DataFrame, model: str, repeats: int):
    client, therapist = MODELS[model]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit = fit_lmm(data, "y", FIXED, client, therapist, label=model)
        times.append(time.perf_counter() - start)
    return fit, statistics.median(times)


def run_r(data: pd.DataFrame, model: str) -> dict | None:
    max_rows = int(os.environ.get("ALLIANCEMETA_BENCH_R_MAX_ROWS", "100000"))
    if os.environ.get("ALLIANCEMETA_BENCH_R") != "1" or not shutil.which("Rscript") or len(data) > max_rows:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "d.csv")
        cols = ["therapist", "client", *FIXED, "y"]
        data[cols].to_csv(csv, index=False, float_format="%.17g")
        script = os.path.join(tmp, "fit.R")
        with open(script, "w") as fh:
            fh.write(R_SCRIPT)
        out = os.path.join(tmp, "out.json")
        done = subprocess.run(["Rscript", script, csv, R_FORMULA[model], out], capture_output=True, text=True,
                              check=False, timeout=3600)  # fmt: skip
        if done.returncode != 0:
            print(f"R failed: {done.stderr.strip()[-300:]}")
            return None
        with open(out) as fh:
            return json.load(fh)


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="numbers of clients")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    header = ["rows", "clients", "therapists", "model", "alliancemeta s", "evaluations", "lme4 s", "lmerTest s",
              "lmerTest tight s", "max rel diff beta", "se", "df", "loglik diff", "lme4 default beta"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for n_clients in args.sizes:
        data = make_data(n_clients)
        for model in args.models:
            with threadpool_limits(limits=1, user_api="blas"):
                fit, seconds = time_python(data, model, repeats=3 if len(data) < 200_000 else 1)
            row = [len(data), fit.n_groups["client"], fit.n_groups["therapist"], model, f"{seconds:.3f}",
                   fit.evaluations]  # fmt: skip
            r = run_r(data, model)
            if r is None:
                row += ["–"] * 8
            else:
                row += [f"{r['t_lme4']:.2f}", f"{r['t_lmertest']:.2f}", f"{r['t_tight']:.2f}",
                        f"{rel(fit.estimate, r['estimate']):.1e}", f"{rel(fit.se, r['se']):.1e}",
                        f"{rel(fit.df, r['df']):.1e}", f"{fit.loglik - r['loglik']:.1e}",
                        f"{rel(fit.estimate, r['default_estimate']):.1e}"]  # fmt: skip
            print("| " + " | ".join(str(v) for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
