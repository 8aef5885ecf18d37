"""Benchmark of the CHE working model (``che_table``: three working correlations, each with z, t and CR2
inference) and of location-scale models (``location_scale`` + ``scale_lrt``).

Run ``python benchmarks/bench_che.py``; it prints Markdown tables.  With ``Rscript`` on the PATH and
``ALLIANCEMETA_BENCH_R=1`` in the environment it also times R on the same data, each under a time limit:
``vcalc`` + ``rma.mv(yi, V, random = ~ 1 | study/es, sparse = TRUE)`` + ``robust(..., clubSandwich = TRUE)``
for rho = 0.2, 0.5, 0.8, and ``rma(yi, vi, scale = ~ x)`` + ``anova`` against ``scale = ~ 1``.

Data are simulated with a fixed seed.  CHE: J studies with at least one effect each and the remaining
k - J spread over them at random (the first size, 1,828 effects in 457 studies, is the speed goal of the
CHE table: under 2 s), Fisher-z sampling variances 1/(n - 3) with n in [20, 300), sampling errors
correlated at 0.5 within studies, sigma2_study = 0.01, sigma2_within = 0.0025.  Location-scale: k
effects with log tau^2 = -4.5 + 0.5 x for a standard normal moderator x.

Not a test: timings depend on the machine and its load; the table notes the BLAS thread setting.
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

from alliancemeta.studies.location_scale import location_scale, scale_lrt
from alliancemeta.studies.multilevel.che import che_table

CHE_SIZES = ((1_828, 457), (10_000, 2_500), (50_000, 12_500))
LS_SIZES = (401, 5_000, 50_000)
RHOS = (0.2, 0.5, 0.8)
SEED = 20261121
REPEATS = 3
R_TIMEOUT_S = 600

R_CHE = r"""
suppressPackageStartupMessages({library(metafor); library(clubSandwich)})
args <- commandArgs(trailingOnly = TRUE)
dat <- read.csv(args[1])
out <- c()
t <- system.time(for (rho in c(0.2, 0.5, 0.8)) {
  V <- vcalc(vi, cluster = study, obs = es, rho = rho, data = dat, sparse = TRUE)
  res <- rma.mv(yi, V, random = ~ 1 | study/es, data = dat, sparse = TRUE)
  rob <- robust(res, cluster = dat$study, clubSandwich = TRUE)
  out <- c(out, res$sigma2, rob$se)
})[["elapsed"]]
cat(sprintf("che %.6f %s\n", t, paste(sprintf("%.17g", out), collapse = " ")))
"""

R_LS = r"""
suppressPackageStartupMessages(library(metafor))
args <- commandArgs(trailingOnly = TRUE)
dat <- read.csv(args[1])
t <- system.time({
  res <- rma(yi, vi, scale = ~ x, data = dat)
  red <- rma(yi, vi, scale = ~ 1, data = dat)
  a <- anova(res, red)
})[["elapsed"]]
cat(sprintf("ls %.6f %.17g %.17g %.17g\n", t, res$alpha[1], res$alpha[2], a$LRT))
"""


def simulate_che(k: int, n_clusters: int, seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    study = np.sort(np.concatenate([np.arange(n_clusters), rng.integers(0, n_clusters, k - n_clusters)]))
    es = np.arange(k) - np.searchsorted(study, study) + 1  # 1-based: vcalc indexes its rho matrix by obs
    vi = 1.0 / (rng.integers(20, 300, k) - 3.0)
    s = np.sqrt(vi)
    # sampling errors correlated at 0.5 within studies: shared + specific parts
    shared = rng.normal(size=n_clusters)[study]
    err = s * (np.sqrt(0.5) * shared + np.sqrt(0.5) * rng.normal(size=k))
    yi = 0.28 + rng.normal(0.0, 0.1, n_clusters)[study] + rng.normal(0.0, 0.05, k) + err
    return pd.DataFrame({"study": study, "es": es, "study_id": study, "yi": yi, "vi": vi})


def simulate_ls(k: int, seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vi = 1.0 / (rng.integers(20, 300, k) - 3.0)
    x = rng.normal(size=k)
    yi = 0.28 + rng.normal(0.0, np.sqrt(np.exp(-4.5 + 0.5 * x))) + rng.normal(0.0, np.sqrt(vi))
    return pd.DataFrame({"yi": yi, "vi": vi, "x": x})


def best_of(fn, repeats: int = REPEATS):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def run_r(script: str, frame: pd.DataFrame) -> list[str] | str:
    with tempfile.TemporaryDirectory() as tmp:
        data, path = Path(tmp) / "data.csv", Path(tmp) / "bench.R"
        frame.to_csv(data, index=False, float_format="%.17g")
        path.write_text(script)
        try:
            out = subprocess.run(["Rscript", str(path), str(data)], capture_output=True, text=True,
                                 timeout=R_TIMEOUT_S, check=True).stdout  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"> {R_TIMEOUT_S} s"
        except subprocess.CalledProcessError as err:
            return "failed: " + (err.stderr.strip().splitlines() or ["?"])[-1]
    return out.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-k", type=int, default=50_000, help="skip sizes with more effects")
    args = parser.parse_args()
    with_r = os.environ.get("ALLIANCEMETA_BENCH_R") == "1" and shutil.which("Rscript") is not None
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    print(f"CHE table (rho = 0.2, 0.5, 0.8; tests z, t, cr2), best of {REPEATS} runs "
          f"(BLAS threads: {threads}; {os.cpu_count()} CPUs)\n")  # fmt: skip
    header, rule = "| k | studies | che_table (s) | sigma2 at rho 0.5 |", "|---:|---:|---:|---:|"
    if with_r:
        header += " metafor vcalc + rma.mv + robust, 3 rho (s) | max rel. diff sigma2 | max rel. diff CR2 se |"
        rule += "---:|---:|---:|"
    print(header)
    print(rule)
    for k, J in CHE_SIZES:
        if k > args.max_k:
            continue
        frame = simulate_che(k, J)
        t_py, table = best_of(lambda f=frame: che_table(f, rhos=RHOS))
        mid = table[(table["rho"] == 0.5) & (table["test"] == "z")].iloc[0]
        row = f"| {k:,} | {J:,} | {t_py:.3f} | ({mid['sigma2_study']:.5g}, {mid['sigma2_within']:.5g}) |"
        if with_r:
            out = run_r(R_CHE, frame) if k <= 10_000 else "not run"
            if isinstance(out, list):
                vals = np.array(out[2:], dtype=float).reshape(3, 3)  # per rho: sigma2 (2), CR2 se
                ours = np.array([[*table[(table["rho"] == r) & (table["test"] == "cr2")][
                    ["sigma2_study", "sigma2_within", "se"]].to_numpy(float)[0]] for r in RHOS])  # fmt: skip
                diff = np.abs(ours - vals) / np.abs(vals)
                row += f" {float(out[1]):.2f} | {diff[:, :2].max():.1e} | {diff[:, 2].max():.1e} |"
            else:
                row += f" {out} | - | - |"
        print(row, flush=True)

    print(f"\nLocation-scale model (scale = ~ x) and its LRT, best of {REPEATS} runs\n")
    header, rule = "| k | location_scale + scale_lrt (s) | iterations | alpha |", "|---:|---:|---:|---:|"
    if with_r:
        header += " metafor rma(scale) + anova (s) | max rel. diff alpha | LRT (R) |"
        rule += "---:|---:|---:|"
    print(header)
    print(rule)
    for k in LS_SIZES:
        if k > args.max_k:
            continue
        frame = simulate_ls(k)
        Z = np.column_stack([np.ones(k), frame["x"]])

        def fit(frame=frame, Z=Z):
            f = location_scale(frame["yi"], frame["vi"], Z=Z)
            return f, scale_lrt(f)

        t_py, (ls, lrt) = best_of(fit)
        row = f"| {k:,} | {t_py:.4f} | {ls.iterations} | ({ls.alpha[0]:.5g}, {ls.alpha[1]:.5g}) |"
        if with_r:
            out = run_r(R_LS, frame) if k <= 5_000 else "not run"
            if isinstance(out, list):
                alpha_r = np.array(out[2:4], dtype=float)
                row += f" {float(out[1]):.3f} | {np.max(np.abs(ls.alpha - alpha_r) / np.abs(alpha_r)):.1e} |"
                row += f" {float(out[4]):.4f} (ours {lrt.LRT:.4f}) |"
            else:
                row += f" {out} | - | - |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
