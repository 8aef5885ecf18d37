"""The integration run with the multiverse, shared by test_pipeline.py, test_multiverse_workflow.py and
test_slurm.py (and the working-directory helpers that benchmarks/rule_resources.py uses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import yaml
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNAKEFILE = ROOT / "Snakefile"


def config_with_multiverse(config_path: Path, dest: Path, multiverse: dict) -> None:
    """Write ``config_path`` with a ``multiverse`` section to ``dest``."""
    config = yaml.safe_load(Path(config_path).read_text())
    config["multiverse"] = multiverse
    Path(dest).write_text(yaml.safe_dump(config, sort_keys=False))


# --------------------------------------------------------------------------------------------------
# the integration run with the multiverse, shared by the test modules of one pytest session
# --------------------------------------------------------------------------------------------------

#: The multiverse of the tiny integration config: 2 subsets x (33 + 33 + 9 + 9) = 168 specifications in 3 batches.
INTEGRATION_MULTIVERSE = {"estimators": ["REML", "DL"], "subsets": ["rater"], "min_k": 4, "batch_size": 60}
#: Targets of the integration run: the whole pipeline and the multiverse.
TARGETS = ("all", "multiverse_all")


def prepare_workdir(work: Path) -> Path:
    """A working directory with the tiny integration config (plus the multiverse section) and data."""
    work = Path(work)
    (work / "config").mkdir(parents=True, exist_ok=True)
    shutil.copytree(HERE / "data", work / "data", dirs_exist_ok=True)
    config_with_multiverse(HERE / "config" / "config.yaml", work / "config" / "config.yaml", INTEGRATION_MULTIVERSE)
    return work


def snakemake_command(snakefile: Path, work: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("snakemake")), "-s", str(snakefile), "--directory", str(work), *args]


def quiet_env() -> dict[str, str]:
    """The environment of a run: one BLAS thread per job, as the Makefile exports."""
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Run(NamedTuple):
    """A finished integration run: the Snakefile used, the working directory and the wall time in seconds."""

    snakefile: Path
    work: Path
    seconds: float


def local_run(root: Path) -> Run:
    """Run the integration config with the multiverse locally on 2 cores, once per test session.

    ``root`` is a folder shared by every process of the session (the pytest-xdist workers too): the first caller
    runs the pipeline in ``root/local`` under a file lock and records the outcome; later callers, in any process,
    wait for the lock and reuse the run.  Raises with the end of Snakemake's output when the run failed.
    """
    root = Path(root)
    record = root / "integration_run.json"
    with FileLock(str(root / "integration_run.lock")):
        if not record.exists():
            work = prepare_workdir(root / "local")
            start = time.perf_counter()
            proc = subprocess.run(
                snakemake_command(SNAKEFILE, work, "--cores", "2", *TARGETS),
                capture_output=True, text=True, check=False, timeout=3000, env=quiet_env(),
            )  # fmt: skip
            outcome = {"work": str(work), "seconds": time.perf_counter() - start}
            if proc.returncode != 0:
                outcome["error"] = f"local integration run failed:\n{proc.stderr[-4000:]}"
            record.write_text(json.dumps(outcome))
        outcome = json.loads(record.read_text())
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    return Run(SNAKEFILE, Path(outcome["work"]), float(outcome["seconds"]))


def tables(work: Path) -> dict[str, bytes]:
    """Every CSV the run wrote (results/ and data/processed/), by path relative to the working directory."""
    paths = [*Path(work, "results").rglob("*.csv"), *Path(work, "data", "processed").rglob("*.csv")]
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(paths)}
