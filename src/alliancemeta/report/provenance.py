"""Provenance of a pipeline run: what went in (SHA-256 of every input), with which code, settings and command.

The record is written when a run ends successfully (the workflow's ``onsuccess`` handler), so it describes
that run: when it started and ended, the command, the git commit of the pipeline and whether the working tree
had uncommitted changes.  Those run-specific fields are the only part that differs between two runs on the
same inputs; everything that decides the numbers (versions, the complete config, the seed, the input
checksums) is recorded alongside and is identical.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

#: Distributions whose versions decide the numbers in results/.
PACKAGES = (
    "alliancemeta", "numpy", "scipy", "pandas", "statsmodels", "pymc", "pytensor", "nutpie", "arviz",
    "matplotlib", "snakemake",
)  # fmt: skip
#: Fields that describe the run rather than the results; ``make verify`` ignores them.
RUN_FIELDS = ("run",)


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state(repo: str | Path) -> dict:
    """The commit of ``repo`` and whether tracked files differ from it; ``null`` when it is not a git checkout."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False,
                                  timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def provenance(inputs, config: dict, run: dict | None = None) -> dict:
    """A JSON-ready record: Python and package versions, the complete config, its seed, input checksums, and
    under ``run`` what describes this run (command, start and end times, git commit and dirty flag)."""
    record = {
        "python": platform.python_version(),
        "packages": package_versions(),
        "seed": config.get("seed"),
        "config": config,
        "inputs": {str(p): {"sha256": sha256(p), "bytes": Path(p).stat().st_size} for p in sorted(map(str, inputs))},
    }
    if run is not None:
        record["run"] = run
    return record
