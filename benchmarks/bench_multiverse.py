"""Benchmark: the multiverse (specification curve) on the bundled 401-effect SYNTHETIC dataset.

Two tables.  (1) The engine in one process: every specification of the default multiverse (the defaults of the
``multiverse`` config schema) of ``data/raw/alliance_synthetic.csv``, wall time and specifications per second;
with ALLIANCEMETA_BENCH_R=1, metafor timed per specification on a sample of kinds (a plain R loop of ``rma``,
``rstudent``/``cooks.distance``, ``aggregate``, ``rma.mv``, ``robust``), beside the engine's time for the same
single specification computed alone.  (2) The workflow: ``snakemake multiverse_all`` on the bundled config
(alliance_synthetic and molloy2014) on 1 and 2 local cores and, when a Slurm cluster answers (SLURM_CONF, e.g.
``tests/integration/slurm/start.sh``), through ``--workflow-profile workflow/profiles/slurm``: wall time,
specifications per second and the scheduling overhead

    overhead = 1 - (sum of batch job times / cores + gather time + figure time) / wall time,

the share of the wall time not spent inside the jobs (planning the DAG, submitting, queueing, waiting for
status checks, starting each job).  Job times come from the rules' benchmark files; the processed inputs are
made before the clock starts.  For Slurm runs the jobs' start and end times (squeue) split the overhead into the
job steps' start-up and the main process's planning and polling.  ALLIANCEMETA_BENCH_PARTS=engine or =workflow
runs one of the two tables; ALLIANCEMETA_BENCH_COPIES=N runs the workflow table with alliance_synthetic as N datasets
(a larger workload: N times the batch jobs in flight).  Targets (the issue): >= 1,000 specifications in under
2 minutes locally, overhead under 20% on Slurm.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import yaml

from alliancemeta.core.inputs import read_studies
from alliancemeta.core.settings import validate_config
from alliancemeta.pipeline.multiverse import multiverse_settings
from alliancemeta.studies.multiverse import Specification, enumerate_specifications, evaluate_specifications

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from workflow_copy import SNAKEFILE, quiet_env  # noqa: E402

DATASET = "alliance_synthetic"
CORES = (1, 2)
#: Status checks of the benchmark's Slurm runs (a dedicated local cluster; the profile's 5 s suit a shared one).
SLURM_ARGS = ("--slurm-no-account", "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1")  # fmt: skip
#: Specification kinds timed in R (estimator, test, dependence, outliers, subset).
R_KINDS = (
    ("REML", "knha", "ignore", "none", "all"),
    ("REML", "knha", "ignore", "studentized", "all"),
    ("DL", "z", "ignore", "cooks", "all"),
    ("REML", "z", "aggregate", "studentized", "all"),
    ("REML", "z", "three_level", "none", "all"),
    ("REML", "cr2", "three_level", "none", "all"),
    ("REML", "z", "three_level", "studentized", "format=internet"),
)


def bundled_config(copies: int = 1) -> dict:
    """The bundled config; with ``copies`` > 1, alliance_synthetic also as ``copies - 1`` more datasets (a larger
    workload for the workflow table: as many more batch jobs in flight)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.setdefault("multiverse", {})
    for i in range(2, copies + 1):
        config["studies"][f"{DATASET}_copy{i}"] = dict(config["studies"][DATASET])
    return config


def settings_for(config: dict):
    """The multiverse settings of ``config`` completed from the schema, as the workflow builds them."""
    full = validate_config(config)
    return multiverse_settings(full["multiverse"], full["meta"]["level"], full["meta"]["aggregate_rho"], full["bayes"])


def study_frame(config: dict) -> pd.DataFrame:
    entry = config["studies"][DATASET]
    return read_studies(ROOT / entry["path"], entry["moderators"])


# --------------------------------------------------------------------------------------------------
# (1) the engine
# --------------------------------------------------------------------------------------------------


R_SCRIPT = r"""
suppressPackageStartupMessages({library(metafor); library(clubSandwich)})
raw <- read.csv("%(path)s", stringsAsFactors = FALSE)
dat <- escalc("ZCOR", ri = r, ni = n, data = raw); dat$es <- seq_len(nrow(dat))
one <- function(est, test, dep, out, subset) {
  d <- if (subset == "all") dat else { p <- strsplit(subset, "=")[[1]]; dat[dat[[p[1]]] == p[2], ] }
  if (dep == "aggregate") d <- aggregate(d, cluster = study_id, rho = 0.5)
  if (dep == "three_level") {
    res <- rma.mv(yi, vi, random = ~ 1 | study_id/es, data = d)
    if (out == "studentized") {
      rs <- rstudent(res, cluster = d$study_id)$cluster
      bad <- rownames(rs)[pchisq(rs$X2, rs$k, lower.tail = FALSE) < 2 * pnorm(-1.96)]
      res <- rma.mv(yi, vi, random = ~ 1 | study_id/es, data = d[!(d$study_id %%in%% bad), ])
    }
    if (test == "cr2") res <- robust(res, cluster = res$data$study_id, clubSandwich = TRUE)
    return(res)
  }
  res <- rma(yi, vi, data = d, method = est, test = if (test == "knha") "knha" else "z")
  if (out == "studentized") d <- d[abs(rstudent(res)$z) <= 1.96, ]
  if (out == "cooks") d <- d[cooks.distance(res) <= qchisq(0.5, 1), ]
  rma(yi, vi, data = d, method = est, test = test)
}
kinds <- read.csv("%(kinds)s", stringsAsFactors = FALSE)
for (i in seq_len(nrow(kinds))) {
  k <- kinds[i, ]
  t <- system.time(one(k$estimator, k$test, k$dependence, k$outliers, k$subset))[["elapsed"]]
  cat(i, t, "\n")
}
"""


def time_r_kinds() -> list[float] | None:
    if os.environ.get("ALLIANCEMETA_BENCH_R") != "1" or not shutil.which("Rscript"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        kinds = Path(tmp, "kinds.csv")
        pd.DataFrame(R_KINDS, columns=["estimator", "test", "dependence", "outliers", "subset"]).to_csv(
            kinds, index=False
        )
        script = R_SCRIPT % {"path": ROOT / "data/raw/alliance_synthetic.csv", "kinds": kinds}
        out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=True)
    return [float(line.split()[1]) for line in out.stdout.strip().splitlines()]


def bench_engine() -> None:
    config = bundled_config()
    settings = settings_for(config)
    frame = study_frame(config)
    specs = enumerate_specifications(frame, settings)
    start = time.perf_counter()
    evaluate_specifications(frame, specs, settings)
    seconds = time.perf_counter() - start
    print(f"## Multiverse engine, {DATASET} (k = {len(frame)}), default multiverse, one process\n")
    print("| specifications | wall (s) | specifications / s |")
    print("|---:|---:|---:|")
    print(f"| {len(specs):,} | {seconds:.1f} | {len(specs) / seconds:.0f} |\n")

    r_times = time_r_kinds()
    print("### One specification alone (no shared work): alliancemeta vs metafor\n")
    print("| specification | alliancemeta (s) | metafor (s) | speed-up |")
    print("|---|---:|---:|---:|")
    for i, kind in enumerate(R_KINDS):
        spec = Specification(1, *kind)
        start = time.perf_counter()
        evaluate_specifications(frame, [spec], settings)
        py = time.perf_counter() - start
        r_text = f"{r_times[i]:.2f}" if r_times else "–"
        speed = f"{r_times[i] / py:.0f}x" if r_times else "–"
        print(f"| {' / '.join(kind)} | {py:.3f} | {r_text} | {speed} |")
    print()


# --------------------------------------------------------------------------------------------------
# (2) the workflow
# --------------------------------------------------------------------------------------------------


def benchmark_seconds(path: Path) -> float:
    """The wall seconds a Snakemake benchmark file records."""
    with path.open() as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def _job_seconds(work: Path) -> tuple[list[float], float]:
    out = work / "benchmarks" / "out"
    batches = [benchmark_seconds(p) for p in sorted(out.glob("multiverse_batch_*.tsv"))]
    gathers = [p for p in out.glob("multiverse_*.tsv") if not p.name.startswith("multiverse_batch_")]
    serial = sum(benchmark_seconds(p) for p in [*gathers, *out.glob("specification_curve_*.tsv")])
    return batches, serial


def _ideal(batches: list[float], serial: float, cores: int) -> float:
    """Wall time if the jobs ran back to back: the batches spread over the cores (per dataset the gather and
    figure jobs follow them), counted as the batch time divided by the cores plus the serial jobs."""
    return sum(batches) / cores + serial


def slurm_jobs_since(start: datetime.datetime) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """(start, end) of the Slurm jobs that started at or after ``start`` (squeue keeps finished jobs for MinJobAge)."""
    proc = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%S|%e"], capture_output=True, text=True, check=True)
    out = []
    for line in proc.stdout.split():
        begin, end = (datetime.datetime.fromisoformat(t) for t in line.split("|"))
        if begin >= start:
            out.append((begin, end))
    return out


class WorkflowRun(NamedTuple):
    """A finished benchmark run: its working directory (removed on leaving :func:`workflow_run`), its wall time
    and the (start, end) of the Slurm jobs it started (none for a local run)."""

    work: Path
    wall: float
    jobs: list[tuple[datetime.datetime, datetime.datetime]]


@contextmanager
def workflow_run(mode: str, cores: int, config: dict, target: str, before: Sequence[str] = ()):
    """Run ``snakemake target`` on ``config`` (with the bundled data) in a temporary working directory, locally on
    ``cores`` or through the Slurm profile (``mode`` "slurm"); ``before`` are made first, off the clock."""
    with tempfile.TemporaryDirectory(prefix="alliancemeta-bench-") as tmp:
        work = Path(tmp) / "work"
        (work / "config").mkdir(parents=True)
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        shutil.copytree(ROOT / "data" / "raw", work / "data" / "raw")
        base = [str(Path(sys.executable).with_name("snakemake")), "-s", str(SNAKEFILE), "--directory", str(work)]
        env = quiet_env()
        if before:
            subprocess.run([*base, "--cores", "2", *before], check=True, capture_output=True, env=env)
        args = ["--cores", str(cores)] if mode == "local" else [
            "--workflow-profile", str(ROOT / "workflow/profiles/slurm"), *SLURM_ARGS]  # fmt: skip
        started = datetime.datetime.now().replace(microsecond=0)
        start = time.perf_counter()
        proc = subprocess.run([*base, *args, target], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
        yield WorkflowRun(work, wall, slurm_jobs_since(started) if mode == "slurm" else [])


def slurm_seconds(jobs: list[tuple[datetime.datetime, datetime.datetime]]) -> float:
    """The time inside the Slurm jobs, summed."""
    return sum((end - begin).total_seconds() for begin, end in jobs)


def run_workflow(mode: str, cores: int, n_specs: int, config: dict) -> dict:
    processed = [f"data/processed/studies/{name}.csv" for name in config["studies"]]
    with workflow_run(mode, cores, config, "multiverse_all", before=processed) as run:
        batches, serial = _job_seconds(run.work)
    ideal = _ideal(batches, serial, cores)
    return {"mode": mode, "cores": cores, "jobs": len(batches), "wall": run.wall, "specs_per_s": n_specs / run.wall,
            "job_s": sum(batches) + serial, "overhead": 1.0 - ideal / run.wall, "slurm_jobs": len(run.jobs),
            "slurm_s": slurm_seconds(run.jobs)}  # fmt: skip


def slurm_cells(run: dict) -> str:
    """The Slurm columns of a table row: number of Slurm jobs and time inside them ("– | –" for a local run)."""
    return f"{run['slurm_jobs']} | {run['slurm_s']:.1f}" if run["mode"] == "slurm" else "– | –"


def slurm_cores() -> int | None:
    if not os.environ.get("SLURM_CONF") or not shutil.which("sinfo"):
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return int(proc.stdout.split()[0].split("/")[-1])  # allocated/idle/other/total


def bench_workflow(copies: int) -> None:
    config = bundled_config(copies)
    settings = settings_for(config)
    counts = [
        len(enumerate_specifications(read_studies(ROOT / entry["path"], entry["moderators"]), settings))
        for entry in config["studies"].values()
    ]
    n_specs = sum(counts)
    n_batches = sum(math.ceil(n / settings.batch_size) for n in counts)
    runs = [run_workflow("local", cores, n_specs, config) for cores in CORES]
    cores = slurm_cores()
    if cores:
        runs.append(run_workflow("slurm", cores, n_specs, config))
    extra = f" (alliance_synthetic {copies} times)" if copies > 1 else ""
    print(f"## `snakemake multiverse_all`, bundled config{extra}: {n_specs:,} specifications in {n_batches} batch "
          f"jobs of {settings.batch_size}\n")  # fmt: skip
    print("| executor | cores | wall (s) | specifications / s | job time (s) | scheduling overhead "
          "| Slurm jobs | time in Slurm jobs (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r['mode']} | {r['cores']} | {r['wall']:.1f} | {r['specs_per_s']:.0f} | {r['job_s']:.1f} | "
            f"{100 * r['overhead']:.0f}% | {slurm_cells(r)} |"
        )
    if cores:
        print("\nTime in Slurm jobs (squeue start to end, summed) minus job time is the jobs' own start-up (the job "
              "step plans the workflow again); the rest of the overhead is the main process planning, submitting "
              "and waiting for status checks.")  # fmt: skip
    if not cores:
        print("\n(no Slurm cluster answered: set SLURM_CONF, e.g. after tests/integration/slurm/start.sh DIR)")
    print()


def main() -> None:
    """ALLIANCEMETA_BENCH_PARTS (default ``engine,workflow``) selects the tables; ALLIANCEMETA_BENCH_COPIES (default
    1) runs the workflow table on that many copies of alliance_synthetic."""
    parts = os.environ.get("ALLIANCEMETA_BENCH_PARTS", "engine,workflow").split(",")
    if "engine" in parts:
        bench_engine()
    if "workflow" in parts:
        bench_workflow(int(os.environ.get("ALLIANCEMETA_BENCH_COPIES", "1")))


if __name__ == "__main__":
    main()
