import pandas as pd
import pytest

from alliancemeta.core.tables import atomic_path, write_csv


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "t.csv"
    write_csv(pd.DataFrame({"a": [1.0]}), target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a tab")
        raise RuntimeError("job failed half-way")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_contract_columns_are_enforced(tmp_path):
    with pytest.raises(ValueError, match="lacks contract columns: b"):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "x.csv", columns=["a", "b"])
    assert not (tmp_path / "x.csv").exists()


def test_floats_round_trip_exactly(tmp_path):
    values = [0.1, 1 / 3, 2.0**-1074, 1e308]
    write_csv(pd.DataFrame({"x": values}), tmp_path / "f.csv")
    assert pd.read_csv(tmp_path / "f.csv")["x"].tolist() == values
