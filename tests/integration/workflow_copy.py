"""A runnable copy of the workflow with the multiverse rules included (used by the integration tests and the
benchmarks until the Snakefile includes ``workflow/rules/multiverse.smk`` and the config schema has the
``multiverse`` section of ``tests/integration/multiverse/config_schema.yaml``).

The copy links the repository's scripts, environments and captions and copies its rule files; the Snakefile gets
one more ``include`` and the config schema one more section.  When the repository already has both, the
repository's own Snakefile is used as it is.
"""

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
INCLUDE = 'include: "workflow/rules/multiverse.smk"'


def _wired() -> bool:
    snakefile = (ROOT / "Snakefile").read_text()
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    return "multiverse.smk" in snakefile and "multiverse" in schema["properties"]


def workflow_with_multiverse(dest: Path) -> Path:
    """The Snakefile of a workflow that includes the multiverse rules (a copy under ``dest`` when needed)."""
    if _wired():
        return ROOT / "Snakefile"
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "workflow").mkdir(parents=True)
    for part in ("envs", "report", "scripts", "profiles"):
        (dest / "workflow" / part).symlink_to(ROOT / "workflow" / part, target_is_directory=True)
    # rule files are copied: Snakemake resolves a linked file's relative paths (../schemas) from its target
    shutil.copytree(ROOT / "workflow" / "rules", dest / "workflow" / "rules")
    schemas = dest / "workflow" / "schemas"
    schemas.mkdir()
    for path in (ROOT / "workflow" / "schemas").iterdir():
        if path.name != "config.schema.yaml":
            (schemas / path.name).symlink_to(path)
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    schema["properties"].update(yaml.safe_load((HERE / "multiverse" / "config_schema.yaml").read_text()))
    (schemas / "config.schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    lines = (ROOT / "Snakefile").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("include:"))
    lines.insert(last + 1, INCLUDE)
    (dest / "Snakefile").write_text("\n".join(lines) + "\n")
    return dest / "Snakefile"


def config_with_multiverse(config_path: Path, dest: Path, multiverse: dict) -> None:
    """Write ``config_path`` with a ``multiverse`` section to ``dest``."""
    config = yaml.safe_load(Path(config_path).read_text())
    config["multiverse"] = multiverse
    Path(dest).write_text(yaml.safe_dump(config, sort_keys=False))


# --------------------------------------------------------------------------------------------------
# the integration run with the multiverse, shared by the test modules of one pytest session
# --------------------------------------------------------------------------------------------------

#: The multiverse of the tiny integration config: 2 subsets x (33 + 33 + 9) = 150 specifications in 3 batches.
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
    snakefile = workflow_with_multiverse(root / "workflow")
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
