"""``make simulate``'s target through the real Snakemake workflow on a tiny design: the study stays out of the
main run, its batches gather into the contract table, and the run records its own provenance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alliancemeta.pipeline.simulation import SIMULATION_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TARGET = "results/simulation/simulation.csv"

#: Two small conditions (one with selection and non-normal true effects), three replicates in batches of two.
TINY = {
    "replicates": 3,
    "batch_size": 2,
    "methods": ["z", "three_level", "bayes"],
    "conditions": {
        "tiny": {"k": 5},
        "selected": {"k": 5, "selection": [1.0, 0.3, 0.3], "true_effects": "mixture"},
    },
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    import shutil

    work = tmp_path_factory.mktemp("simulate")
    shutil.copytree(HERE / "config", work / "config")
    shutil.copytree(HERE / "data", work / "data")
    path = work / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["simulation"] = {**config.get("simulation", {}), **TINY}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return work


def test_the_simulation_is_not_part_of_the_main_run(workdir):
    proc = snakemake(workdir, "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "simulation" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_simulate_target_gathers_batches_and_records_provenance(workdir):
    proc = snakemake(workdir, TARGET)
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = pd.read_csv(workdir / TARGET)
    assert list(table.columns[: len(SIMULATION_COLUMNS)]) == list(SIMULATION_COLUMNS)
    assert set(table["condition"]) == {"tiny", "selected"}
    assert set(table["method"]) == {"z", "three_level", "bayes"}
    assert (table["n_replicates"] == TINY["replicates"]).all()
    assert (workdir / "results/simulation/figures/coverage.png").stat().st_size > 0
    assert (workdir / "results/provenance_simulation.json").exists()
    assert not (workdir / "results/provenance.json").exists()  # the main run's record is not overwritten
