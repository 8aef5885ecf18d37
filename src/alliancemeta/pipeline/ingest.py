"""Stage ``ingest`` (workflow/rules/ingest.smk): validated inputs, with Fisher-z effect sizes, to data/processed/."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from alliancemeta.core.inputs import read_sessions, read_studies
from alliancemeta.core.tables import write_csv


def write_processed_studies(raw, out, *, moderators: Sequence[str]) -> None:
    """Validate a raw study table and write it with Fisher-z ``yi``/``vi`` (data/processed/)."""
    write_csv(read_studies(raw, moderators), out)


def write_processed_sessions(raw, out, *, groups: Sequence[str]) -> None:
    """Validate a raw session table and write it sorted by client and session (data/processed/)."""
    data = read_sessions(raw, groups)
    for note in data.notes:
        print(f"note: {note}", file=sys.stderr)
    write_csv(data.frame, out)

