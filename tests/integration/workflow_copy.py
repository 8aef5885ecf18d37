"""A runnable copy of the workflow with the multiverse rules included (used by the integration tests and the
benchmarks until the Snakefile includes ``workflow/rules/multiverse.smk`` and the config schema has the
``multiverse`` section of ``tests/integration/multiverse/config_schema.yaml``).

The copy links the repository's scripts, environments and captions and copies its rule files; the Snakefile gets
one more ``include`` and the config schema one more section.  When the repository already has both, the
repository's own Snakefile is used as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
INCLUDE = 'include: "workflow/rules/multiverse.smk"'


def _wired() -> bool:
    snakefile = (ROOT / "Snakefile").read_text()
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    return "multiverse.smk" in snakefile and "multiverse" in schema["properties"]


def workflow_with_multiverse(dest: Path) -> Path:
    """The Snakefile of a workflow that includes the multiverse rules (a copy under ``dest`` when needed)."""
    if _wired():
        return ROOT / "Snakefile"
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "workflow").mkdir(parents=True)
    for part in ("envs", "report", "scripts", "profiles"):
        (dest / "workflow" / part).symlink_to(ROOT / "workflow" / part, target_is_directory=True)
    # rule files are copied: Snakemake resolves a linked file's relative paths (../schemas) from its target
    shutil.copytree(ROOT / "workflow" / "rules", dest / "workflow" / "rules")
    schemas = dest / "workflow" / "schemas"
    schemas.mkdir()
    for path in (ROOT / "workflow" / "schemas").iterdir():
        if path.name != "config.schema.yaml":
            (schemas / path.name).symlink_to(path)
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    schema["properties"].update(yaml.safe_load((HERE / "multiverse" / "config_schema.yaml").read_text()))
    (schemas / "config.schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    lines = (ROOT / "Snakefile").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("include:"))
    lines.insert(last + 1, INCLUDE)
    (dest / "Snakefile").write_text("\n".join(lines) + "\n")
    return dest / "Snakefile"


def config_with_multiverse(config_path: Path, dest: Path, multiverse: dict) -> None:
    """Write ``config_path`` with a ``multiverse`` section to ``dest``."""
    config = yaml.safe_load(Path(config_path).read_text())
    config["multiverse"] = multiverse
    Path(dest).write_text(yaml.safe_dump(config, sort_keys=False))
