"""The integration run with the multiverse, shared by test_multiverse_workflow.py and test_slurm.py (and the
working-directory helpers that benchmarks/rule_resources.py uses)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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


@functools.cache
def local_run() -> tuple[Path, Path, float]:
    """Run the integration config with the multiverse locally on 2 cores, once per test session.

    Returns the Snakefile used, the working directory and the wall time in seconds; raises with the end of
    Snakemake's output when the run fails.
    """
    root = Path(tempfile.mkdtemp(prefix="alliancemeta-integration-"))
    atexit.register(shutil.rmtree, root, True)
    snakefile = SNAKEFILE
    work = prepare_workdir(root / "local")
    start = time.perf_counter()
    proc = subprocess.run(
        snakemake_command(snakefile, work, "--cores", "2", *TARGETS),
        capture_output=True, text=True, check=False, timeout=3000, env=quiet_env(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"local integration run failed:\n{proc.stderr[-4000:]}")
    return snakefile, work, time.perf_counter() - start


def tables(work: Path) -> dict[str, bytes]:
    """Every CSV the run wrote (results/ and data/processed/), by path relative to the working directory."""
    paths = [*Path(work, "results").rglob("*.csv"), *Path(work, "data", "processed").rglob("*.csv")]
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(paths)}
