"""Benchmark: scheduling overhead of the simulation study (``make simulate``) locally and on Slurm.

The simulation study is the workload a cluster is for: independent batch jobs of about a minute each.  This script
runs ``snakemake results/simulation/simulation.csv`` on the default design's first ``--conditions`` conditions with
``--replicates`` replicates per condition in batches of ``--batch-size``, locally on 2 cores and, when a Slurm
cluster answers (SLURM_CONF, e.g. ``tests/integration/slurm/start.sh DIR``), through ``--workflow-profile
workflow/profiles/slurm`` on all of the cluster's CPUs.  It prints the wall time, the job time (the rules'
benchmark files), the scheduling overhead

    overhead = 1 - (sum of batch job times / cores + gather time) / wall time,

and for the Slurm run the number of Slurm jobs and the time inside them (squeue start to end), whose difference
from the job time is the jobs' own start-up (each Slurm job plans the workflow again, twice: the batch script and
its ``srun`` step).  ``benchmarks/bench_multiverse.py`` measures the same for the multiverse, whose batch jobs
take seconds.  Target (issue): overhead under 20% on Slurm.

Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from bench_multiverse import benchmark_seconds, slurm_cells, slurm_cores, slurm_seconds, workflow_run

from alliancemeta.core.settings import validate_config

ROOT = Path(__file__).resolve().parents[1]

TARGET = "results/simulation/simulation.csv"


def design(n_conditions: int, replicates: int, batch_size: int) -> dict:
    """The config: the bundled one with a simulation section of the default design's first conditions."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    defaults = validate_config(config)["simulation"]
    conditions = dict(list(defaults["conditions"].items())[:n_conditions])
    config["simulation"] = {"replicates": replicates, "batch_size": batch_size, "conditions": conditions}
    return config


def run(mode: str, cores: int, config: dict) -> dict:
    with workflow_run(mode, cores, config, TARGET) as done:
        logs = done.work / "logs" / "simulation"
        batches = [benchmark_seconds(p) for p in sorted(logs.glob("*_batch*.benchmark.tsv"))]
        gather = sum(benchmark_seconds(p) for p in logs.glob("simulation.benchmark.tsv"))
    ideal = sum(batches) / cores + gather
    return {"mode": mode, "cores": cores, "wall": done.wall, "jobs": len(batches), "job_s": sum(batches) + gather,
            "mean_batch": sum(batches) / len(batches), "overhead": 1.0 - ideal / done.wall,
            "slurm_jobs": len(done.jobs), "slurm_s": slurm_seconds(done.jobs)}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, default=4)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    config = design(args.conditions, args.replicates, args.batch_size)
    runs = [run("local", 2, config)]
    cores = slurm_cores()
    if cores:
        runs.append(run("slurm", cores, config))
    print(f"## `snakemake {TARGET}`: {args.conditions} conditions x {args.replicates:,} replicates in batches of "
          f"{args.batch_size}\n")  # fmt: skip
    print("| executor | cores | wall (s) | batch jobs | mean batch job (s) | job time (s) | scheduling overhead "
          "| Slurm jobs | time in Slurm jobs (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['mode']} | {r['cores']} | {r['wall']:.1f} | {r['jobs']} | {r['mean_batch']:.1f} | "
              f"{r['job_s']:.1f} | {100 * r['overhead']:.0f}% | {slurm_cells(r)} |")  # fmt: skip
    if not cores:
        print("\n(no Slurm cluster answered: set SLURM_CONF, e.g. after tests/integration/slurm/start.sh DIR)")


if __name__ == "__main__":
    main()
