"""Benchmark: the 36-model RoBMA-PSMA ensemble on the bundled alliance data (401 effects, 295 studies).

Prints a markdown table with one row per run: the single-level ensemble (target: < 3 minutes on the
2-core machine) and the three-level ensemble (effects nested in studies; target: < 10 minutes).
Columns: wall-clock and CPU seconds (numpy runs single-threaded here, so on a shared, loaded machine
the CPU time is what the run costs on an idle one), models by method (closed form / quadrature /
bridge sampling), the largest reported log-evidence error, the worst r_hat and smallest bulk ESS
where MCMC is used, the inclusion Bayes factors and the model-averaged r with its 95% interval.

With ``ALLIANCEMETA_BENCH_R=1`` the script also reports whether R's RoBMA can be timed here: it
needs JAGS and the CRAN package RoBMA, which are not installable from this machine's package
sources, so no R time is shown and the reason is printed instead.

Run ``python benchmarks/bench_robma.py`` (``--single`` or ``--three`` for one of the two runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alliancemeta.core.settings import BayesSettings, validate_config
from alliancemeta.studies.bayes.robma import ROW_PREFIX, RobmaSettings, fit_robma, robma_summary

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "raw" / "alliance_synthetic.csv"
SEED = 20261121
#: The schema's defaults (RoBMA's priors on Fisher z) and the bayes sampler settings.
SETTINGS = RobmaSettings.from_bayes(BayesSettings.from_config(validate_config({})))
#: Processes fitting models side by side, as rule robma does (threads: 2).
WORKERS = 2


def load():
    frame = pd.read_csv(DATA)
    yi = np.arctanh(frame["r"].to_numpy(float))
    return yi, 1.0 / (frame["n"].to_numpy(float) - 3.0), frame["study_id"].to_numpy()


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(label: str, cluster) -> dict:
    yi, vi, study = load()
    start, cpu = time.perf_counter(), cpu_seconds()
    fit = fit_robma(yi, vi, study if cluster else None, SETTINGS, SEED, workers=WORKERS)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    table = robma_summary(fit, 0.95).set_index("model")
    table.index = table.index.str.removeprefix(ROW_PREFIX)
    methods = pd.Series([m.method for m in fit.models]).value_counts().to_dict()
    r_hat = [m.r_hat for m in fit.models if m.method == "bridge"]
    ess = [m.ess_bulk for m in fit.models if m.method == "bridge"]
    avg = table.loc["model_averaged"]
    return {
        "run": label, "k": fit.k, "studies": fit.n_studies, "models": len(fit.models), "seconds": seconds, "cpu": cpu,
        "methods": ", ".join(f"{k} {v}" for k, v in sorted(methods.items())),
        "max_error": max(m.error for m in fit.models),
        "r_hat": max(r_hat) if r_hat else float("nan"), "ess": min(ess) if ess else float("nan"),
        "BF_effect": table.loc["inclusion:effect", "bf_inclusion"],
        "BF_het": table.loc["inclusion:heterogeneity", "bf_inclusion"],
        "BF_bias": table.loc["inclusion:bias", "bf_inclusion"],
        "r": f"{avg['r_mean']:.3f} [{avg['r_eti_lb']:.3f}, {avg['r_eti_ub']:.3f}]",
    }


def r_status() -> str:
    try:
        out = subprocess.run(["Rscript", "-e", "cat(requireNamespace('RoBMA', quietly=TRUE))"], capture_output=True,
                             text=True, timeout=60)
        if out.stdout.strip() == "TRUE":
            return "RoBMA is installed: time it with RoBMA(r=, n=, study_ids=) on the same data"
    except (OSError, subprocess.TimeoutExpired):
        return "Rscript not found"
    return "R's RoBMA is not installed (it needs JAGS and CRAN packages absent from this machine's sources)"


def main() -> None:
    which = sys.argv[1:]
    runs = []
    if not which or "--single" in which:
        runs.append(("single-level", False))
    if not which or "--three" in which:
        runs.append(("three-level", True))
    print(f"machine load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| run | k | studies | models | wall (s) | CPU (s) | methods | max log-evidence error | max r_hat | min ESS "
          "| BF effect | BF heterogeneity | BF bias | model-averaged r [95% CrI] |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for label, cluster in runs:
        row = run(label, cluster)
        print(f"| {row['run']} | {row['k']} | {row['studies']} | {row['models']} | {row['seconds']:.1f} | "
              f"{row['cpu']:.1f} | "
              f"{row['methods']} | {row['max_error']:.1e} | {row['r_hat']:.3f} | {row['ess']:.0f} | "
              f"{row['BF_effect']:.3g} | {row['BF_het']:.3g} | {row['BF_bias']:.3g} | {row['r']} |", flush=True)
    if os.environ.get("ALLIANCEMETA_BENCH_R") == "1":
        print(f"\nR: {r_status()}")


if __name__ == "__main__":
    main()
