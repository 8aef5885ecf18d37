"""Benchmark: REML + Knapp-Hartung + Q-profile CI + prediction interval, as one table row per k.

Prints a markdown table: median wall time over repeats and peak traced memory of the Python side.
Targets (issue 3): < 5 ms at k = 300, < 50 ms at k = 30,000, linear to k = 1,000,000 in < 2 s and
< 1 GiB. With ALLIANCEMETA_BENCH_R=1 and Rscript on PATH, metafor's rma(method="REML", test="knha")
+ confint + predict is timed on the same data (skipped above k = 1,000: its REML is cubic in k and
confint refits many times).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
import tracemalloc

import numpy as np

from alliancemeta.studies.random_effects import confint_tau2, random_effects

SIZES = (300, 3_000, 30_000, 300_000, 1_000_000)
R_MAX_K = 1_000


def simulate(k: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = rng.integers(20, 500, k)
    vi = 1.0 / (n - 3.0)
    return rng.normal(0.28, np.sqrt(vi + 0.01)), vi


def full_analysis(yi, vi):
    fit = random_effects(yi, vi, method="REML", test="knha")
    return fit, confint_tau2(fit), fit.predict()


def time_python(k: int) -> tuple[float, float]:
    yi, vi = simulate(k)
    full_analysis(yi, vi)  # warm-up
    repeats = 20 if k <= 30_000 else 3
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        full_analysis(yi, vi)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    full_analysis(yi, vi)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def time_r(k: int) -> float | None:
    if os.environ.get("ALLIANCEMETA_BENCH_R") != "1" or not shutil.which("Rscript") or k > R_MAX_K:
        return None
    yi, vi = simulate(k)
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as handle:
        np.savetxt(handle, np.column_stack([yi, vi]), delimiter=",", header="yi,vi", comments="")
    script = (
        f"suppressMessages(library(metafor)); d <- read.csv('{handle.name}'); "
        "t <- system.time(for (i in 1:3) { r <- rma(yi, vi, data=d, method='REML', test='knha'); "
        "confint(r); predict(r) }); cat(t[['elapsed']] / 3)"
    )
    out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=True)
    os.unlink(handle.name)
    return float(out.stdout.strip())


def main() -> None:
    print("## REML + Knapp-Hartung + Q-profile tau^2 CI + prediction interval\n")
    print("| k | alliancemeta (ms) | peak memory (MiB) | metafor (ms) | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for k in SIZES:
        seconds, mib = time_python(k)
        r_seconds = time_r(k)
        r_text = f"{1e3 * r_seconds:.1f}" if r_seconds is not None else "–"
        speed = f"{r_seconds / seconds:.0f}x" if r_seconds is not None else "–"
        print(f"| {k:,} | {1e3 * seconds:.2f} | {mib:.1f} | {r_text} | {speed} |")


if __name__ == "__main__":
    main()
