"""Bad configs and inputs stop `snakemake` at parse time with one clear message and no output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    shutil.copytree(HERE / "data", tmp_path / "data", dirs_exist_ok=True)
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1", "-n"],
        capture_output=True, text=True, check=False, timeout=300,
    )


def base() -> dict:
    return yaml.safe_load((HERE / "config/config.yaml").read_text())


def test_tiny_config_parses(tmp_path):
    proc = dry_run(tmp_path, base())
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["studies"].update({"Bad-Name": {"path": "data/tiny_synthetic.csv"}}), "Bad-Name"),
        (lambda c: c["studies"]["tiny_synthetic"].update({"path": "data/nope.csv"}),
         "config studies.tiny_synthetic.path: data/nope.csv does not exist; expected a CSV file"),
        (lambda c: c["meta"].update({"estimators": ["REML", "XYZ"]}), "XYZ"),
        (lambda c: c.update({"bayes": {"prior_tau": {"dist": "gamma", "sigma": 1}}}), "gamma"),
        (lambda c: c["studies"]["tiny_synthetic"].update({"moderators": ["ratr"]}),
         "moderator column 'ratr' named in the config is missing (did you mean 'rater'?)"),
    ],
)
def test_bad_config_is_refused(tmp_path, change, expected):
    config = base()
    change(config)
    proc = dry_run(tmp_path, config)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "data/processed").exists()
