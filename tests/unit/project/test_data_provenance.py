"""Every raw data file is described in data/raw/README.md with its current SHA-256, and the synthetic
study-level file is exactly what its committed generator produces."""

import hashlib
import re
from pathlib import Path

import pandas as pd

from alliancemeta.studies.synthetic import simulate_studies

RAW = Path(__file__).resolve().parents[3] / "data" / "raw"


def test_readme_checksums_match_files():
    readme = (RAW / "README.md").read_text()
    sections = re.findall(r"^## (\S+\.csv).*?SHA-256: `([0-9a-f]{64})`", readme, flags=re.M | re.S)
    listed = dict(sections)
    assert set(listed) == {p.name for p in RAW.glob("*.csv")}
    for name, checksum in listed.items():
        assert hashlib.sha256((RAW / name).read_bytes()).hexdigest() == checksum, name


def test_synthetic_studies_regenerate_identically(tmp_path):
    frame, truth = simulate_studies(20261121)
    out = tmp_path / "s.csv"
    frame.to_csv(out, index=False, lineterminator="\n")
    assert out.read_bytes() == (RAW / "alliance_synthetic.csv").read_bytes()
    assert truth["realised"]["n_studies"] == 295
    assert truth["realised"]["total_N"] > 30_000


def test_synthetic_studies_are_labelled():
    frame = pd.read_csv(RAW / "alliance_synthetic.csv")
    assert frame["study"].str.startswith("Synthetic ").all()
    assert frame["study"].is_unique
