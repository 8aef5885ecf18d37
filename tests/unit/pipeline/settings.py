"""Stage settings for the pipeline tests, completed from the schema as the workflow does (no defaults in code)."""

from alliancemeta.core.settings import MetaSettings, validate_config


def meta_settings(method: str = "REML", test: str = "knha", level: float = 0.95) -> MetaSettings:
    """``MetaSettings`` with one estimator and test, every other key at its schema default."""
    config = validate_config({"meta": {"estimators": [method], "tests": [test], "level": level}})
    return MetaSettings.from_config(config)
