"""Stage ``report`` (workflow/rules/report.smk): the written summaries, APA tables, checklist, the report's
landing page and the provenance record of a run."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from alliancemeta.core.settings import BayesSettings, Dataset, MetaSettings, SessionDataset, StudyDataset, thaw
from alliancemeta.core.tables import atomic_path
from alliancemeta.report.apa import BUILDERS, build_tables
from alliancemeta.report.checklist import checklist
from alliancemeta.report.provenance import provenance
from alliancemeta.report.summary import session_summary, study_summary


def _write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _read_tables(paths: Sequence[str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """Contract tables by name (the CSV's stem)."""
    return {Path(p).stem: pd.read_csv(p) for p in paths}


def write_study_report(studies, tables: Sequence, summary, checklist_md, headline, *, study: StudyDataset,
                       meta: MetaSettings, bayes: BayesSettings) -> None:
    """``report/summary.md`` (methods and results), ``report/checklist.md`` and the one-paragraph headline."""
    frames = _read_tables(tables)
    dataset = study.dataset
    text = study_summary(frames, pd.read_csv(studies), dataset, meta, bayes, study.predictor, study.outcome)
    _write_text(summary, text.markdown)
    _write_text(checklist_md, checklist(frames, dataset.label))
    _write_text(headline, text.headline + "\n")


def write_session_report(sessions, tables: Sequence, summary, headline, *, settings: SessionDataset) -> None:
    """``report/summary.md`` of a session-level dataset and its headline."""
    frames = _read_tables(tables)
    text = session_summary(frames, pd.read_csv(sessions, dtype={"client": str}), settings.dataset, settings.level)
    _write_text(summary, text.markdown)
    _write_text(headline, text.headline + "\n")


def write_apa_table(tables: Sequence, markdown, latex, *, table: str, dataset: Dataset, level: float) -> None:
    """One APA table (``report/<table>.md`` and ``.tex``) from its CSV (and the CSVs it also needs)."""
    frames = _read_tables(tables)
    apa = build_tables(frames, level, dataset.label, order=(table,))[table]
    _write_text(markdown, apa.markdown())
    _write_text(latex, apa.latex(label=f"tab:{dataset.name}:{table}"))


def apa_tables_of(names: Sequence[str]) -> list[str]:
    """The APA tables a dataset gets, given the names of its CSV tables."""
    present = set(names)
    return [name for name, (_, extra) in BUILDERS.items() if name in present and all(e in present for e in extra)]


def _rst(markdown: str) -> str:
    """The few Markdown marks the summaries use, in reStructuredText (inline code needs double backticks)."""
    return markdown.replace("`", "``")


def write_summary_index(headlines: Sequence[str | os.PathLike], datasets: Mapping[str, Dataset], front,
                        summary, landing, metadata, *, seed: int) -> None:
    """``results/summary.md`` (every dataset's headline), the report's landing page and its metadata.

    ``landing`` (reStructuredText, rendered by Snakemake's report) opens with the headline findings and
    continues with ``front`` (``workflow/report/workflow.rst``); ``metadata`` (YAML) makes the report open
    on that page instead of the rule graph.
    """
    lines = ["# alliancemeta: headline findings", ""]
    rst = ["Headline findings", "=================", ""]
    synthetic = [d.name for d in datasets.values() if d.synthetic]
    if synthetic:
        warning = f"**SYNTHETIC data**: {', '.join(synthetic)} are simulated by committed generators, not evidence."
        lines += [warning, ""]
        rst += [warning, ""]
    for path in map(str, headlines):
        dataset = datasets[path]
        text = Path(path).read_text(encoding="utf-8").strip()
        full = str(Path(path).with_name("summary.md"))
        lines += [f"## {dataset.label}", "", text, "", f"Methods and results: `{full}`", ""]
        title = dataset.label
        rst += [title, "-" * len(title), "", _rst(text), "", f"Methods and results: ``{full}``.", ""]
    _write_text(summary, "\n".join(lines))
    _write_text(landing, "\n".join(rst) + "\n" + Path(front).read_text(encoding="utf-8"))
    counts = {
        "Study-level datasets": sum(1 for p in map(str, headlines) if p.startswith("results/studies/")),
        "Session-level datasets": sum(1 for p in map(str, headlines) if p.startswith("results/sessions/")),
        "Seed": int(seed),
    }
    _write_text(metadata, "".join(f'"{k}": {v}\n' for k, v in counts.items()))


def write_provenance(inputs, out, config: Mapping, run: Mapping) -> None:
    """Write ``results/provenance.json``: versions, the complete config and seed, SHA-256 of every input, and
    under ``run`` the command, start and end times and the git commit with its dirty flag."""
    record = provenance(inputs, thaw(config), dict(run))
    _write_text(out, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
