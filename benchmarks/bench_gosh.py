"""Timing and peak memory of GOSH analyses (all subsets and random subsets), beside metafor's ``gosh()``.

Run: ``.venv/bin/python benchmarks/bench_gosh.py`` (``make bench``); ``bench_gosh.py quick`` runs only
the cases below a million subsets.  Prints one row per case: wall time, CPU time of this process (the
two differ on a shared machine; a target reads "wall over" when only the CPU time meets it), peak
traced memory (numpy's allocations, via ``tracemalloc`` in a second, untimed run), the number of
subsets whose tau^2 needed the slow path or failed, and, with ``ALLIANCEMETA_BENCH_R=1`` and ``Rscript``
on the path, metafor's ``gosh()`` on the same data: in full for FE at k = 16, and on a sample of
random subsets for REML, scaled to the case's number of subsets (labelled "extrapolated"; metafor
refits every subset separately, so its time is linear in their number).

Targets from the project brief: all 1,048,575 subsets of k = 20 with FE and DL in under 5 s; a
million REML subsets in under 60 s; peak memory under 2 GiB.  Earlier measurements of metafor on the
reference machine: 2.6 s for the 65,535 FE subsets at k = 16, 324 s for 100,000 REML subsets at k = 20.

Data: molloy2014 (k = 16, data/raw), simulated correlations at k = 20 (seeded), and the SYNTHETIC
alliance_synthetic data (k = 401, data/raw).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from alliancemeta.core.effects import escalc_cor
from alliancemeta.core.settings import MetaSettings, validate_config
from alliancemeta.studies import gosh as G

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261121
LIMITS = MetaSettings.from_config(validate_config({}))  # meta.gosh_max_k, meta.gosh_subsets at their defaults
#: REML subsets metafor fits for the extrapolated timing (its time is linear in the number of subsets).
R_SAMPLE = 2_000
#: ... and at k = 401, where each of metafor's REML fits works with k x k matrices.
R_SAMPLE_LARGE_K = 100
TARGETS = {"FE+DL k=20 all": 5.0, "REML 1,000,000": 60.0}


def molloy():
    d = pd.read_csv(ROOT / "data/raw/molloy2014.csv")
    es = escalc_cor(d["r"], d["n"])
    return es.yi, es.vi


def simulated(k: int):
    rng = np.random.default_rng(SEED + k)
    n = rng.integers(20, 401, k)
    vi = 1.0 / (n - 3.0)
    return 0.28 + rng.normal(0.0, 0.1, k) + rng.normal(0.0, np.sqrt(vi)), vi


def synthetic():
    d = pd.read_csv(ROOT / "data/raw/alliance_synthetic.csv")
    es = escalc_cor(d["r"], d["n"])
    return es.yi, es.vi


def measure(fn):
    """Wall seconds, CPU seconds, peak traced MiB and the result of ``fn``.  Timed on its own, then run
    again under ``tracemalloc`` for the memory (tracing every allocation doubles the run time)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return wall, cpu, peak, out


def r_gosh_seconds(yi, vi, method: str, subsets: int | None) -> float | None:
    """metafor's gosh() on the same data with its default control, as a user would run it: elapsed
    seconds (None when R is not asked for)."""
    if os.environ.get("ALLIANCEMETA_BENCH_R") != "1" or not shutil.which("Rscript"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as handle:
        np.savetxt(handle, np.column_stack([yi, vi]), delimiter=",", header="yi,vi", comments="", fmt="%.17g")
    sub = "" if subsets is None else f", subsets={subsets}, seed={SEED}"
    script = (
        f"suppressMessages(library(metafor)); d <- read.csv('{handle.name}'); "
        f"res <- rma(yi, vi, data=d, method='{method}'); "
        f"t <- system.time(g <- gosh(res, progbar=FALSE{sub})); cat(t[['elapsed']])"
    )
    try:
        out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=True)
    finally:
        os.unlink(handle.name)
    return float(out.stdout.strip().splitlines()[-1])


def row(label, wall, cpu, peak, fits, r_seconds=None, r_note=""):
    slow = sum(f.n_slow for f in fits)
    failed = sum(f.n_failed for f in fits)
    r_text = "–" if r_seconds is None else f"{r_seconds:.1f}{r_note}"
    speed = "–" if r_seconds is None else f"{r_seconds / wall:.0f}x"
    target = TARGETS.get(label)
    # the target is for a machine of our own; on a shared one the CPU time is what the code costs
    verdict = "" if target is None else ("met" if wall < target else "wall over" if cpu < target else "MISSED")
    ok = "" if target is None else f" (target < {target:g} s: {verdict})"
    print(f"| {label} | {wall:.2f}{ok} | {cpu:.2f} | {peak:.0f} | {slow} / {failed} | {r_text} | {speed} |", flush=True)


def main() -> None:
    quick = "quick" in sys.argv[1:]
    print("## GOSH: fits over all or random subsets\n")
    print("| case | wall (s) | CPU (s) | peak memory (MiB) | slow / failed subsets | metafor (s) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    yi, vi = molloy()
    packed = G.all_subsets(16)
    wall, cpu, peak, fe = measure(lambda: G.fit_subsets(yi, vi, packed, "FE"))
    row("FE k=16 all 65,535 (molloy2014)", wall, cpu, peak, [fe], r_gosh_seconds(yi, vi, "FE", None))
    wall, cpu, peak, reml = measure(lambda: G.fit_subsets(yi, vi, packed, "REML"))
    r = r_gosh_seconds(yi, vi, "REML", R_SAMPLE)
    row(
        "REML k=16 all 65,535 (molloy2014)",
        wall,
        cpu,
        peak,
        [reml],
        None if r is None else r * 65_535 / R_SAMPLE,
        " (extrapolated)",
    )

    yi, vi = simulated(20)
    wall, cpu, peak, pair = measure(
        lambda: (lambda p: (G.fit_subsets(yi, vi, p, "FE"), G.fit_subsets(yi, vi, p, "DL")))(G.all_subsets(20))
    )
    row("FE+DL k=20 all", wall, cpu, peak, list(pair))
    packed = G.random_subsets(20, 100_000, SEED)
    wall, cpu, peak, reml = measure(lambda: G.fit_subsets(yi, vi, packed, "REML"))
    r = r_gosh_seconds(yi, vi, "REML", R_SAMPLE)
    row(
        "REML k=20 100,000 random",
        wall,
        cpu,
        peak,
        [reml],
        None if r is None else r * 100_000 / R_SAMPLE,
        " (extrapolated)",
    )

    yi, vi = synthetic()
    sizes = (100_000,) if quick else (100_000, 1_000_000)
    r = r_gosh_seconds(yi, vi, "REML", R_SAMPLE_LARGE_K)
    for n in sizes:
        wall, cpu, peak, reml = measure(lambda n=n: G.fit_subsets(yi, vi, G.random_subsets(401, n, SEED), "REML"))
        label = f"REML {n:,}" if n == 1_000_000 else f"REML {n:,} random of k=401 (alliance_synthetic)"
        row(label, wall, cpu, peak, [reml], None if r is None else r * n / (R_SAMPLE_LARGE_K), " (extrapolated)")
    if not quick:
        limits = {"max_k": LIMITS.gosh_max_k, "subsets": LIMITS.gosh_subsets}
        wall, cpu, peak, res = measure(lambda: G.gosh(yi, vi, ("FE", "REML"), **limits, seed=SEED))
        row("gosh() FE + REML, 1,000,000 random of k=401 + summary", wall, cpu, peak, [x.fits for x in res])


if __name__ == "__main__":
    main()
