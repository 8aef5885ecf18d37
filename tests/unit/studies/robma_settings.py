"""RoBMA settings for the tests, completed from the schema as the workflow does (no defaults in code)."""

from alliancemeta.core.settings import BayesSettings, validate_config
from alliancemeta.studies.bayes.robma import RobmaSettings


def robma_settings(bayes: dict | None = None, **robma) -> RobmaSettings:
    """``RobmaSettings`` with the given ``bayes.robma`` keys (and ``bayes`` sampler keys), the rest at the schema's
    defaults."""
    config = validate_config({"bayes": {**(bayes or {}), "robma": robma}})
    return RobmaSettings.from_bayes(BayesSettings.from_config(config))


def psma_weightfunctions():
    """RoBMA-PSMA's six weight functions, as the schema's default."""
    return robma_settings().priors.weightfunctions
