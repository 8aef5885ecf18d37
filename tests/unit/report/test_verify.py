"""`make verify`: what counts as a difference (the rerun itself is exercised by the integration tests)."""

from __future__ import annotations

from pathlib import Path

from alliancemeta.report import verify as V


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _fake_rerun(files):
    def rerun(root, configfiles, workdir, snakemake, cores="all"):
        _write(Path(workdir) / "results", files)

    return rerun


def test_files_of_separate_targets_are_listed_not_compared(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    made = {"studies/x/tables/random_effects.csv": "a,b\n1,2\n", "summary.md": "text\n"}
    _write(results, {**made, "studies/x/tables/multiverse.csv": "spec\n1\n", "provenance_multiverse.json": "{}"})
    monkeypatch.setattr(V, "rerun", _fake_rerun(made))
    assert V.verify(tmp_path, results, [], "snakemake") == 0
    out = capsys.readouterr().out
    assert "2 file(s)" in out and "multiverse.csv" in out and "no difference" in out


def test_a_changed_or_missing_file_is_a_difference(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    _write(results, {"a.csv": "1\n", "b.csv": "2\n"})
    monkeypatch.setattr(V, "rerun", _fake_rerun({"a.csv": "1\n", "b.csv": "3\n", "c.csv": "new\n"}))
    assert V.verify(tmp_path, results, [], "snakemake") == 1
    out = capsys.readouterr().out
    assert "differs: b.csv" in out and "only in the rerun: c.csv" in out
