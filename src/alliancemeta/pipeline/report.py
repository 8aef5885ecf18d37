"""Stage ``report`` (workflow/rules/report.smk): the provenance record of a run."""

from __future__ import annotations

import json
from collections.abc import Mapping

from alliancemeta.core.settings import thaw
from alliancemeta.core.tables import atomic_path
from alliancemeta.report.provenance import provenance


def write_provenance(inputs, out, config: Mapping) -> None:
    """Write ``results/provenance.json``: versions, the complete config and seed, SHA-256 of every input."""
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(provenance(inputs, thaw(config)), indent=2, sort_keys=True, default=str) + "\n")
