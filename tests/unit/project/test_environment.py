"""The pins for pip users (requirements.lock) and conda users (environment.yml, workflow/envs) agree."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def lock_pins() -> set[str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def conda_pins(path: Path) -> set[str]:
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {p for p in pip if not p.startswith("-e")}


def test_lock_is_fully_pinned():
    assert all("==" in pin for pin in lock_pins())


def test_environment_yml_mirrors_lock():
    assert conda_pins(ROOT / "environment.yml") == lock_pins()


def test_workflow_env_mirrors_lock():
    assert conda_pins(ROOT / "workflow/envs/alliancemeta.yaml") == lock_pins()


def test_core_dependencies_are_pinned():
    names = {pin.split("==")[0].lower() for pin in lock_pins()}
    for dep in ("snakemake", "pandas", "numpy", "scipy", "statsmodels", "pymc", "nutpie", "arviz", "matplotlib",
                "pytest", "hypothesis", "ruff", "snakefmt"):
        assert dep in names, dep
