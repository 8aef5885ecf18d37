"""Benchmark: the seven selection models of selection_models.csv on k = 401, and the selection model for
dependent effects with 1,999 cluster-bootstrap replicates on 1,828 effects in 457 studies.

Prints markdown tables of wall time (median over repeats).  Goals: all seven metafor-type models on
k = 401 in under 2 s together; the dependent-effects model with 1,999 two-stage bootstrap replicates
(studentised and BCa intervals included) in under 60 s.  Data: data/raw/alliance_synthetic.csv (k = 401,
SYNTHETIC) and a simulated meta-analysis of 457 studies with 4 effects each
(:func:`~alliancemeta.studies.bias.selection_sim.simulate_dependent_selection`, seed 20261121).

With ALLIANCEMETA_BENCH_R=1 and Rscript on PATH, metafor's ``selmodel()`` (default settings) is timed
on the same k = 401 data, one call per type; and, when the R package metaselection can be loaded (from
METASELECTION_LIB if set), ``selection_model(..., bootstrap = "two-stage", R = 99)`` on the 1,828 effects,
extrapolated to 1,999 replicates (marked "extrapolated").
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alliancemeta.studies.bias.clustered_selection import bootstrap_clustered_selmodel, clustered_selmodel
from alliancemeta.studies.bias.selection_sim import simulate_dependent_selection
from alliancemeta.studies.bias.selection_table import TYPES
from alliancemeta.studies.bias.selmodels import selmodel

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261121
N_BOOT = 1999
R_META_BOOT = 99

R_TYPE_ARGS = {
    "stepfun_3psm": 'type="stepfun", steps=0.025',
    "stepfun_4psm": 'type="stepfun", steps=c(0.025, 0.5)',
    "beta": 'type="beta"',
    "halfnorm": 'type="halfnorm"',
    "negexp": 'type="negexp"',
    "logistic": 'type="logistic"',
    "power": 'type="power"',
}


def synthetic_k401() -> tuple[np.ndarray, np.ndarray]:
    path = ROOT / "data/raw/alliance_synthetic.csv"
    if path.exists():
        d = pd.read_csv(path)
        return np.arctanh(d["r"].to_numpy()), 1.0 / (d["n"].to_numpy() - 3.0)
    d = simulate_dependent_selection(401, 0.28, 0.1, 0.0, 0.0, effects_per_study=1, seed=SEED)
    return d["yi"].to_numpy(), d["vi"].to_numpy()


def dependent_1828() -> pd.DataFrame:
    return simulate_dependent_selection(457, 0.25, 0.1, 0.05, 0.6, lambdas=(0.5,), effects_per_study=4, seed=SEED)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def r_available() -> bool:
    return os.environ.get("ALLIANCEMETA_BENCH_R") == "1" and shutil.which("Rscript") is not None


def run_r(script: str) -> str:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=True, env=env).stdout


def time_metafor(yi, vi) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as handle:
        pd.DataFrame({"yi": yi, "vi": vi}).to_csv(handle, index=False, float_format="%.17g")
    lines = ["suppressMessages(library(metafor))", f"d <- read.csv('{handle.name}')",
             "res <- rma(yi, vi, data=d, method='ML')"]  # fmt: skip
    for name, args in R_TYPE_ARGS.items():
        lines.append(
            f"t <- system.time(try(suppressWarnings(selmodel(res, {args})), silent=TRUE)); "
            f"cat('{name}', t[['elapsed']], '\\n')"
        )
    out = run_r("; ".join(lines))
    os.unlink(handle.name)
    return {line.split()[0]: float(line.split()[1]) for line in out.strip().splitlines()}


def time_metaselection(d: pd.DataFrame) -> float | None:
    lib = os.environ.get("METASELECTION_LIB", "")
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as handle:
        d.to_csv(handle, index=False, float_format="%.17g")
    script = (
        (f".libPaths(c('{lib}', .libPaths())); " if lib else "")
        + "if (!requireNamespace('metaselection', quietly=TRUE)) quit(status=0); "
        + f"d <- read.csv('{handle.name}'); set.seed(1); "
        + "t <- system.time(metaselection::selection_model(data=d, yi=yi, vi=vi, cluster=study_id, "
        + f"selection_type='step', steps=.025, CI_type='percentile', bootstrap='two-stage', R={R_META_BOOT})); "
        + "cat(t[['elapsed']])"
    )
    out = run_r(script).strip()
    os.unlink(handle.name)
    return float(out) if out else None


def main() -> None:
    yi, vi = synthetic_k401()
    print(f"## Selection models (metafor selmodel types), k = {yi.size}\n")
    r_times = time_metafor(yi, vi) if r_available() else {}
    print("| type | alliancemeta (ms) | metafor selmodel (s) | speed-up |")
    print("|---|---:|---:|---:|")
    total = 0.0
    for name, (kind, steps) in TYPES.items():
        seconds = timed(lambda kind=kind, steps=steps: selmodel(yi, vi, kind, steps=steps), repeats=5)
        total += seconds
        r = r_times.get(name)
        r_text = f"{r:.2f}" if r is not None else "–"
        speed = f"{r / seconds:.0f}x" if r is not None else "–"
        print(f"| {name} | {1e3 * seconds:.1f} | {r_text} | {speed} |")
    r_total = sum(r_times.values()) if r_times else None
    print(
        f"| **all seven** | **{1e3 * total:.0f}** (goal < 2,000) | {f'{r_total:.1f}' if r_total else '–'} | "
        f"{f'{r_total / total:.0f}x' if r_total else '–'} |"
    )

    d = dependent_1828()
    print(f"\n## Selection model for dependent effects: {len(d):,} effects in {d['study_id'].nunique()} studies\n")
    yi_d, vi_d, cl = d["yi"].to_numpy(), d["vi"].to_numpy(), d["study_id"].to_numpy()
    fit_s = timed(lambda: clustered_selmodel(yi_d, vi_d, cl), repeats=5)
    fit = clustered_selmodel(yi_d, vi_d, cl)
    rows = [("fit + cluster-robust sandwich", fit_s)]
    for label, kwargs in [
        (f"{N_BOOT:,} two-stage bootstrap refits (percentile)", {"studentized": False, "bca": False}),
        (f"{N_BOOT:,} two-stage bootstrap refits + studentised SEs + jackknife (BCa)", {}),
    ]:
        start = time.perf_counter()
        boot = bootstrap_clustered_selmodel(fit, n_boot=N_BOOT, seed=SEED, **kwargs)
        rows.append((f"{label}; {boot.n_ok} converged", time.perf_counter() - start))
    ms_seconds = time_metaselection(d) if r_available() else None
    print("| step | alliancemeta (s) | metaselection (s) |")
    print("|---|---:|---:|")
    for label, seconds in rows:
        r_text = "–"
        if ms_seconds is not None and "percentile)" in label:
            r_text = f"{ms_seconds * N_BOOT / R_META_BOOT:.0f} (extrapolated from R = {R_META_BOOT})"
        print(f"| {label} | {seconds:.3f} | {r_text} |")
    print("\nGoal: the bootstrap with 1,999 replicates in under 60 s.")


if __name__ == "__main__":
    main()
