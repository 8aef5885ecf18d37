"""Selection-model settings for the tests, completed from the schema as the workflow does."""

from alliancemeta.core.settings import MetaSettings, validate_config


def selection_kwargs(**over):
    """Keyword arguments of ``selection_models_table``: ``meta.selection_models`` at its schema defaults, level .95,
    seed 0, overridden by ``over``."""
    settings = MetaSettings.from_config(validate_config({}))
    return {"level": 0.95, "seed": 0, **settings.selection_models, **over}
