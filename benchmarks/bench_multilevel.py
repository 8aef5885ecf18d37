"""Benchmark of the three-level engine: REML fit (``three_level``) and CR2 inference (``robust_cr2``).

Run ``python benchmarks/bench_multilevel.py``; it prints a Markdown table.  With ``Rscript`` on the
PATH and ``ALLIANCEMETA_BENCH_R=1`` in the environment it also times metafor on the same data
(``rma.mv(yi, vi, random = ~ 1 | study/es, sparse = TRUE)`` and ``robust(..., clubSandwich = TRUE)``),
each under a time limit.  Data are simulated with a fixed seed: J studies with at least one effect
each and the remaining k - J effects spread over them at random, Fisher-z sampling variances
1/(n - 3) with n in [20, 300), sigma2_study = 0.01 and sigma2_within = 0.0025.

Not a test: timings depend on the machine and its load.  Numerical BLAS threads matter for the
long thin products of the likelihood; the table notes the thread setting it ran with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alliancemeta.studies.multilevel.model import three_level
from alliancemeta.studies.multilevel.robust import robust_cr2

SIZES = ((1_000, 300), (10_000, 3_000), (100_000, 30_000))
SEED = 20261121
REPEATS = 3
R_TIMEOUT_S = 600

R_SCRIPT = r"""
suppressPackageStartupMessages({library(metafor); library(clubSandwich)})
args <- commandArgs(trailingOnly = TRUE)
dat <- read.csv(args[1])
t_fit <- system.time(res <- rma.mv(yi, vi, random = ~ 1 | study/es, data = dat, sparse = TRUE))[["elapsed"]]
cat(sprintf("fit %.6f %.17g %.17g\n", t_fit, res$sigma2[1], res$sigma2[2]))
if (args[2] == "1") {
  t_rob <- system.time(rob <- robust(res, cluster = dat$study, clubSandwich = TRUE))[["elapsed"]]
  cat(sprintf("robust %.6f\n", t_rob))
}
"""


def simulate(k: int, n_clusters: int, seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    study = np.sort(np.concatenate([np.arange(n_clusters), rng.integers(0, n_clusters, k - n_clusters)]))
    es = np.arange(k) - np.searchsorted(study, study)  # 0, 1, ... within each study
    n = rng.integers(20, 300, k)
    vi = 1.0 / (n - 3.0)
    u = rng.normal(0.0, 0.1, n_clusters)
    yi = 0.28 + u[study] + rng.normal(0.0, 0.05, k) + rng.normal(0.0, np.sqrt(vi))
    return pd.DataFrame({"study": study, "es": es, "yi": yi, "vi": vi})


def best_of(fn, repeats: int = REPEATS):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def time_r(frame: pd.DataFrame, with_robust: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.csv"
        script = Path(tmp) / "bench.R"
        frame.to_csv(data, index=False, float_format="%.17g")
        script.write_text(R_SCRIPT)
        try:
            out = subprocess.run(
                ["Rscript", str(script), str(data), "1" if with_robust else "0"],
                capture_output=True,
                text=True,
                timeout=R_TIMEOUT_S,
                check=True,
            ).stdout
        except subprocess.TimeoutExpired:
            return {"r_fit": f"> {R_TIMEOUT_S} s"}
        except subprocess.CalledProcessError as err:
            return {"r_fit": "failed: " + (err.stderr.strip().splitlines() or ["?"])[-1]}
    res = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[0] == "fit":
            res["r_fit"] = f"{float(parts[1]):.3f}"
            res["r_sigma2"] = (float(parts[2]), float(parts[3]))
        elif parts[0] == "robust":
            res["r_robust"] = f"{float(parts[1]):.3f}"
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-k", type=int, default=SIZES[-1][0], help="skip sizes with more effects")
    args = parser.parse_args()
    with_r = os.environ.get("ALLIANCEMETA_BENCH_R") == "1" and shutil.which("Rscript") is not None
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    header = "| k | studies | three_level (s) | iterations | robust_cr2 (s) | sigma2_study | sigma2_within |"
    rule = "|---:|---:|---:|---:|---:|---:|---:|"
    if with_r:
        header += " metafor rma.mv (s) | clubSandwich robust (s) | max rel. diff sigma2 |"
        rule += "---:|---:|---:|"
    print(f"Three-level engine, best of {REPEATS} runs (BLAS threads: {threads}; {os.cpu_count()} CPUs)\n")
    print(header)
    print(rule)
    for k, J in SIZES:
        if k > args.max_k:
            continue
        frame = simulate(k, J)
        t_fit, fit = best_of(lambda f=frame: three_level(f["yi"], f["vi"], f["study"]))
        t_rob, _ = best_of(lambda fit=fit: robust_cr2(fit))
        row = (
            f"| {k:,} | {J:,} | {t_fit:.4f} | {fit.iterations} | {t_rob:.4f} | "
            f"{fit.sigma2_study:.6g} | {fit.sigma2_within:.6g} |"
        )
        if with_r:
            r = time_r(frame, with_robust=k <= 10_000)
            diff = (
                f"{np.max(np.abs(np.asarray(r['r_sigma2']) - fit.sigma2) / fit.sigma2):.1e}" if "r_sigma2" in r else "-"
            )
            row += f" {r.get('r_fit', '-')} | {r.get('r_robust', 'not run')} | {diff} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
