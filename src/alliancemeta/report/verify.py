"""``make verify``: rerun the whole pipeline into a temporary folder and list every output that differs.

Two runs of the same inputs with the same config and seed must give the same bytes: tables (17 significant
digits, fixed order), written summaries, APA tables and figures (PDF without timestamps, PNG without
metadata).  The rerun uses the same Snakefile and config in a fresh working directory (the configured input
files are copied into it), so nothing of the existing results can leak into it.  ``results/provenance.json``
is compared without its ``run`` section (command, times, working directory), which describes the run rather
than the results; ``results/report.html`` (made by ``snakemake --report``, with its creation time) is not
rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from alliancemeta.core.settings import load_settings
from alliancemeta.report.provenance import RUN_FIELDS

#: Files that are not results of the analysis and are not compared.
IGNORED = ("report.html",)


def _digest(path: Path) -> str:
    if path.name == "provenance.json":
        record = json.loads(path.read_text())
        for key in RUN_FIELDS:
            record.pop(key, None)
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(results: Path) -> dict[str, str]:
    """SHA-256 of every file under ``results`` (relative path -> digest), hidden and ignored files left out."""
    return {
        str(p.relative_to(results)): _digest(p)
        for p in sorted(results.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(results).parts)
        and p.name not in IGNORED
    }


def compare(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Human-readable differences between two snapshots."""
    lines = [f"only in the existing results: {k}" for k in sorted(a.keys() - b.keys())]
    lines += [f"only in the rerun: {k}" for k in sorted(b.keys() - a.keys())]
    lines += [f"differs: {k}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return lines


def rerun(root: Path, configfiles: Sequence[Path], workdir: Path, snakemake: str, cores: str = "all") -> None:
    """Run the workflow at ``root`` with ``configfiles`` in ``workdir`` (inputs copied there)."""
    settings = load_settings(_merged(configfiles))
    paths = [e.path for e in settings.studies.values()] + [e.path for e in settings.sessions.values()]
    for rel in paths:
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    cmd = [snakemake, "-s", str(root / "Snakefile"), "--directory", str(workdir), "--cores", cores,
           "--rerun-incomplete", "--quiet", "rules"]
    for c in configfiles:
        cmd += ["--configfile", str(Path(c).resolve())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the rerun failed:\n{done.stderr[-4000:]}")


def _merged(configfiles: Sequence[Path]) -> dict:
    import yaml

    merged: dict = {}
    for c in configfiles:
        _update(merged, yaml.safe_load(Path(c).read_text()) or {})
    return merged


def _update(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _update(base[key], value)
        else:
            base[key] = value


def verify(root: Path, results: Path, configfiles: Sequence[Path], snakemake: str, keep: bool = False) -> int:
    """Rerun into a temporary folder, print every difference from ``results``; 0 when there is none."""
    if not results.exists():
        print(f"alliancemeta verify: {results}/ does not exist; run `make run` first", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="alliancemeta-verify-"))
    try:
        print(f"alliancemeta verify: rerunning the pipeline in {workdir} ...", flush=True)
        try:
            rerun(root, configfiles, workdir, snakemake)
        except RuntimeError as err:
            print(f"alliancemeta verify: {err}", file=sys.stderr)
            return 2
        existing, rerun_files = snapshot(results), snapshot(workdir / "results")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    # files a `make run` does not write (the separate targets: make multiverse, make simulate,
    # make robma-sensitivity; or files left from an older version) are listed, not compared
    extra = sorted(existing.keys() - rerun_files.keys())
    differences = compare({k: v for k, v in existing.items() if k in rerun_files}, rerun_files)
    if extra:
        print(f"alliancemeta verify: {len(extra)} file(s) under {results}/ are not written by `make run` (separate "
              "targets such as make multiverse, or left from an older run); not compared:")
        for path in extra:
            print(f"  {path}")
    if differences:
        print(f"alliancemeta verify: {len(differences)} difference(s) from {results}/:")
        for line in differences:
            print(f"  {line}")
        return 1
    print(f"alliancemeta verify: no difference: every file `make run` writes under {results}/ was reproduced byte "
          "for byte (provenance compared without its run section).")
    return 0
