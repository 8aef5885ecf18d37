"""config/README.md's table of keys is the schema rendered, so no default is written a second time by hand."""

from pathlib import Path

from alliancemeta.cli import main
from alliancemeta.core.settings import config_reference, validate_config

ROOT = Path(__file__).resolve().parents[3]


def test_readme_table_is_generated_from_the_schema():
    readme = (ROOT / "config" / "README.md").read_text()
    start = readme.index("-->\n", readme.index("<!-- config-reference:")) + len("-->\n")
    end = readme.index("<!-- end config-reference -->")
    assert readme[start:end] == config_reference(), "regenerate with: .venv/bin/alliancemeta config-reference"


def test_every_default_in_the_table_is_the_schema_default():
    defaults = validate_config({})
    table = config_reference()
    assert f"| `meta.level` | `{defaults['meta']['level']}` |" in table
    assert f"| `seed` | `{defaults['seed']}` |" in table
    assert "| `studies.NAME.path` | required |" in table


def test_cli_prints_the_reference(capsys):
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == config_reference()
