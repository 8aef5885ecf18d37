"""Provenance of a pipeline run: what went in (SHA-256 of every input), with which code and settings."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

#: Distributions whose versions decide the numbers in results/.
PACKAGES = (
    "alliancemeta", "numpy", "scipy", "pandas", "statsmodels", "pymc", "pytensor", "nutpie", "arviz",
    "matplotlib", "snakemake",
)  # fmt: skip


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


def provenance(inputs, config: dict) -> dict:
    """A JSON-ready record: Python and package versions, the full config, its seed, input checksums.

    No timestamps or host names are recorded, so two runs on the same inputs give identical files.
    """
    return {
        "python": platform.python_version(),
        "packages": package_versions(),
        "seed": config.get("seed"),
        "config": config,
        "inputs": {str(p): {"sha256": sha256(p), "bytes": Path(p).stat().st_size} for p in sorted(map(str, inputs))},
    }


