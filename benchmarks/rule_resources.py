"""Measure what every rule's jobs need (peak memory, wall time, CPU time) to set the Slurm profile's resources.

Runs the workflow (the whole pipeline and the multiverse) on a configuration, by default the bundled
config/config.yaml, locally into a temporary directory, and samples every job's process tree (the script
process Snakemake starts for the job and its children) every SAMPLE_SECONDS with psutil.  Rules with a
``benchmark:`` directive also get Snakemake's own benchmark file (benchmarks/out/*.tsv), printed beside.  Prints a
Markdown table and the ``set-resources`` block that follows from it (``mem_mb``: peak RSS x MEM_FACTOR rounded up to
MEM_STEP MB; ``runtime`` in minutes: RUNTIME_FACTOR x the longest wall time plus RUNTIME_PAD, rounded up; for the
rules the Slurm profile groups, GROUPED_FACTOR x the longest wall time and at least GROUPED_MIN minutes, because a
group job asks for the sum of its members' run times per layer). Local rules (``localrules:``) are left out.

    .venv/bin/python benchmarks/rule_resources.py [--config FILE] [--cores N]

Not part of ``make bench`` (it runs the whole pipeline); rerun it when rules or data grow.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from workflow_copy import SNAKEFILE, quiet_env  # noqa: E402

SAMPLE_SECONDS = 0.2
MEM_FACTOR = 1.5
MEM_STEP = 256
RUNTIME_FACTOR = 3.0
RUNTIME_PAD = 10
#: Grouped rules (the profile's ``groups``) get no pad: a group job requests the sum of its members' run times per
#: layer of ``cores`` jobs, where a 10-minute pad each would ask for hours; their jobs take seconds.
GROUPED_FACTOR = 4.0
GROUPED_MIN = 3
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
#: ``script:`` jobs run as ``python .snakemake/scripts/tmpXXXX.<script>.py``.
SCRIPT = re.compile(r"\.snakemake/scripts/tmp[^/]*?\.(\w+)\.py$")


@dataclass
class Job:
    script: str
    first: float
    last: float
    peak_rss: int = 0
    cpu: float = 0.0
    pids: set = field(default_factory=set)


def local_rules() -> set[str]:
    """Rules named in the ``localrules:`` blocks of the rule files (they never become cluster jobs)."""
    out = set()
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:    \w+,?\n)+)", path.read_text(), flags=re.M):
            out.update(re.findall(r"\w+", block))
    return out


def runtime_minutes(rule: str, wall_s: float, grouped: Iterable[str]) -> int:
    """The ``runtime`` request (minutes) of ``rule`` from its longest wall time in seconds."""
    if rule in grouped:
        return max(GROUPED_MIN, math.ceil(GROUPED_FACTOR * wall_s / 60))
    return math.ceil(RUNTIME_FACTOR * wall_s / 60 + RUNTIME_PAD)


def script_rules() -> dict[str, str]:
    """Script name -> rule name, read from the rule files (one script per rule)."""
    out = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for block in re.split(r"\n(?=rule \w+:)", text):
            rule = re.match(r"rule (\w+):", block)
            script = re.search(r'script:\s*\n\s*"\.\./scripts/(\w+)\.py"', block)
            if rule and script:
                out[script.group(1)] = rule.group(1)
    return out


def tree_usage(proc: psutil.Process) -> tuple[int, float]:
    """Resident memory and CPU seconds of a process and its descendants."""
    rss, cpu = 0, 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
        except psutil.Error:
            continue
    return rss, cpu


def run_and_sample(cmd: list[str], cwd: Path) -> dict[int, Job]:
    jobs: dict[int, Job] = {}
    main = subprocess.Popen(cmd, cwd=cwd, env=quiet_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    parent = psutil.Process(main.pid)
    while main.poll() is None:
        now = time.perf_counter()
        try:
            children = parent.children(recursive=True)
        except psutil.Error:
            break
        for child in children:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            match = next((SCRIPT.search(a) for a in cmdline if SCRIPT.search(a)), None)
            if match is None:
                continue
            job = jobs.setdefault(child.pid, Job(match.group(1), now, now))
            rss, cpu = tree_usage(child)
            job.last, job.peak_rss, job.cpu = now, max(job.peak_rss, rss), max(job.cpu, cpu)
        time.sleep(SAMPLE_SECONDS)
    _, err = main.communicate()
    if main.returncode != 0:
        raise SystemExit(f"the workflow failed:\n{err[-4000:]}")
    return jobs


def benchmark_files(work: Path, rules: Iterable[str], datasets: Iterable[str]) -> dict[str, list[tuple[float, float]]]:
    """Rule -> [(s, max_rss MB)] from Snakemake's benchmark files, named ``<rule>_<dataset>[_<batch>].tsv``."""
    names = {f"{rule}_{dataset}": rule for rule in rules for dataset in datasets}
    out: dict[str, list[tuple[float, float]]] = {}
    for path in sorted((work / "benchmarks" / "out").glob("*.tsv")):
        rule = names.get(path.stem) or names.get(re.sub(r"_\d+$", "", path.stem))
        if rule is None:
            continue
        with path.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        out.setdefault(rule, []).append((float(row["s"]), float(row["max_rss"])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--cores", default="2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alliancemeta-resources-") as tmp:
        tmp = Path(tmp)
        snakefile = SNAKEFILE
        work = tmp / "work"
        (work / "config").mkdir(parents=True)
        shutil.copy(args.config, work / "config" / "config.yaml")
        shutil.copytree(ROOT / "data" / "raw", work / "data" / "raw")
        start = time.perf_counter()
        jobs = run_and_sample(
            [str(Path(sys.executable).with_name("snakemake")), "-s", str(snakefile), "--cores", args.cores,
             "all", "multiverse_all"], work,
        )  # fmt: skip
        wall = time.perf_counter() - start
        rules = script_rules()
        config = yaml.safe_load((work / "config" / "config.yaml").read_text())
        bench = benchmark_files(work, rules.values(), [*config.get("studies", {}), *config.get("sessions", {})])
    by_rule: dict[str, list[Job]] = {}
    for job in jobs.values():
        by_rule.setdefault(rules.get(job.script, job.script), []).append(job)
    print(f"## Resources per rule (config {args.config}, --cores {args.cores}, whole run {wall:.0f} s)\n")
    print(
        "| rule | jobs | max wall (s) | peak RSS (MiB) | max CPU (s) | benchmark file max s / max_rss (MB) |"
        " mem_mb | runtime (min) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    profile = {}
    grouped = set(yaml.safe_load(PROFILE.read_text()).get("groups", {}))
    skipped = local_rules()
    for rule in sorted(set(by_rule) - skipped):
        js = by_rule[rule]
        wall_s = max(j.last - j.first for j in js) + SAMPLE_SECONDS
        rss = max(j.peak_rss for j in js) / 2**20
        cpu = max(j.cpu for j in js)
        marks = bench.get(rule, [])
        bench_text = f"{max(m[0] for m in marks):.1f} / {max(m[1] for m in marks):.0f}" if marks else "–"
        mem_mb = MEM_STEP * math.ceil(MEM_FACTOR * rss / MEM_STEP)
        runtime = runtime_minutes(rule, wall_s, grouped)
        profile[rule] = (mem_mb, runtime)
        print(f"| {rule} | {len(js)} | {wall_s:.1f} | {rss:.0f} | {cpu:.1f} | {bench_text} | {mem_mb} | {runtime} |")
    print("\nset-resources:")
    for rule, (mem_mb, runtime) in sorted(profile.items()):
        print(f"  {rule}:\n    mem_mb: {mem_mb}\n    runtime: {runtime}")


if __name__ == "__main__":
    main()
