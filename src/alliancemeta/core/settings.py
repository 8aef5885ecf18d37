"""Validated, frozen settings for every stage, built from the configuration.

Every default value is written once, in ``workflow/schemas/config.schema.yaml``.  The workflow validates
the config against that schema (which fills in the defaults of omitted keys), then builds the
:class:`Settings` here; each rule receives the frozen settings object of its stage, never a raw dict.
The classes below therefore have no defaults of their own and read every key with ``[...]``: a missing
key means the config was not validated, which is a programming error, not a user error.

Outside the workflow (a notebook, a script), :func:`load_settings` validates a config file or mapping
against the same schema, fills in its defaults and returns the same objects.

The settings are named tuples holding tuples and :class:`FrozenDict` mappings: immutable, picklable (the
workflow hands them to its scripts) and with a plain ``repr``, so that Snakemake sees a changed setting as a
changed parameter and reruns the jobs it affects.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from alliancemeta.core.errors import ConfigError

#: The schema shipped with the workflow (the one place where defaults are written).
SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


class FrozenDict(dict):
    """A read-only dict: picklable, with a dict's ``repr`` (Snakemake compares parameters by it)."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("settings are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __hash__(self):  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))


def _frozen(value):
    """Deep read-only copy: mappings become :class:`FrozenDict`, lists become tuples."""
    if isinstance(value, Mapping):
        return FrozenDict({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def thaw(value):
    """The plain (JSON-ready) form of a frozen value: dicts and lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


SAMPLERS = ("nutpie", "pymc")


class _SamplerFields(NamedTuple):
    draws: int
    tune: int
    chains: int
    sampler: str
    target_accept: float
    retry_target_accept: float
    section: str  # the config section the values come from, named in error messages


class SamplerSettings(_SamplerFields):
    """Settings of one MCMC run (config ``bayes`` or ``sessions_bayes``: draws, tune, chains, sampler,
    target_accept, retry_target_accept), checked when created."""

    def __new__(cls, draws, tune, chains, sampler, target_accept, retry_target_accept, section="sampler"):
        for name, value in (("draws", draws), ("tune", tune), ("chains", chains)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config {section}.{name}: {value!r} must be a positive integer")
        if sampler not in SAMPLERS:
            raise ConfigError(f"config {section}.sampler: unknown sampler {sampler!r}; expected one of "
                              f"{', '.join(SAMPLERS)}")
        for name, value in (("target_accept", target_accept), ("retry_target_accept", retry_target_accept)):
            if not 0.0 < float(value) < 1.0:
                raise ConfigError(f"config {section}.{name}: {value!r} must lie strictly between 0 and 1")
        return super().__new__(cls, int(draws), int(tune), int(chains), str(sampler), float(target_accept),
                               float(retry_target_accept), section)

    @classmethod
    def from_config(cls, section: Mapping, name: str) -> SamplerSettings:
        """From a validated config section (every key present), named ``name`` in messages."""
        keys = ("draws", "tune", "chains", "sampler", "target_accept", "retry_target_accept")
        return cls(*(section[key] for key in keys), section=name)

    def n_cores(self) -> int:
        """Chains run in parallel on at most this many cores."""
        return int(min(self.chains, os.cpu_count() or 1))


class Dataset(NamedTuple):
    """What every table and figure says about its data: the configured name and whether it is SYNTHETIC."""

    name: str
    synthetic: bool

    @property
    def label(self) -> str:
        """``name``, followed by a SYNTHETIC warning when the data are simulated (titles, captions, summaries)."""
        return f"{self.name} — SYNTHETIC data" if self.synthetic else self.name


class MetaSettings(NamedTuple):
    """Frequentist study-level settings (config ``meta``): the first estimator and test are the headline."""

    estimators: tuple[str, ...]
    tests: tuple[str, ...]
    level: float
    aggregate_rho: float
    che_rho: tuple[float, ...]
    thresholds: tuple[float, ...]
    distribution_n_boot: int
    gosh_max_k: int
    gosh_subsets: int
    selection_models: Mapping  # n_boot, bootstrap, ci_type, penalty (studies.bias.selection_table)

    @property
    def method(self) -> str:
        """The headline tau^2 estimator."""
        return self.estimators[0]

    @property
    def test(self) -> str:
        """The headline test."""
        return self.tests[0]

    @property
    def multilevel_test(self) -> str:
        """The three-level model's test for the headline: ``z`` stays ``z``, ``t`` and ``knha`` map to ``t``."""
        return "z" if self.test == "z" else "t"

    @classmethod
    def from_config(cls, config: Mapping) -> MetaSettings:
        meta = config["meta"]
        return cls(
            tuple(meta["estimators"]), tuple(meta["tests"]), float(meta["level"]), float(meta["aggregate_rho"]),
            tuple(float(r) for r in meta["che_rho"]), tuple(float(r) for r in meta["thresholds"]),
            int(meta["distribution_n_boot"]), int(meta["gosh_max_k"]), int(meta["gosh_subsets"]),
            _frozen(meta["selection_models"]),
        )


class BayesSettings(NamedTuple):
    """Study-level Bayesian settings (config ``bayes``), with the confidence level of ``meta.level``."""

    prior_mu: Mapping
    prior_tau: Mapping
    sensitivity_priors: tuple[Mapping, ...]
    informative_mu: Mapping | None
    sampler: SamplerSettings
    level: float
    robma: Mapping  # config bayes.robma (RoBMA-PSMA ensemble), read by studies.bayes.robma.RobmaSettings

    @property
    def priors(self) -> Mapping:
        """The ``prior_mu``/``prior_tau`` pair, as :class:`~alliancemeta.studies.bayes.priors.MetaPriors` reads it."""
        return {"prior_mu": self.prior_mu, "prior_tau": self.prior_tau}

    @classmethod
    def from_config(cls, config: Mapping) -> BayesSettings:
        bayes = config["bayes"]
        return cls(
            prior_mu=_frozen(bayes["prior_mu"]),
            prior_tau=_frozen(bayes["prior_tau"]),
            sensitivity_priors=_frozen(bayes["sensitivity_priors"]),
            informative_mu=_frozen(bayes["informative_mu"]),
            sampler=SamplerSettings.from_config(bayes, "bayes"),
            level=float(config["meta"]["level"]),
            robma=_frozen(bayes["robma"]),
        )


class StudyDataset(NamedTuple):
    """One study-level dataset (config ``studies.NAME``); ``predictor`` and ``outcome`` name what is correlated."""

    dataset: Dataset
    path: str
    moderators: tuple[str, ...]
    predictor: str
    outcome: str
    forest_by: str | None
    scale_moderators: tuple[str, ...]


class RuptureSettings(NamedTuple):
    """Rupture-repair rule of one session dataset (config ``sessions.NAME.ruptures``)."""

    reliability: float
    repair_within: int


def scaled(sampler: SamplerSettings, scale: int) -> SamplerSettings:
    """``sampler`` with ``scale`` times the draws and tuning steps."""
    return sampler._replace(draws=sampler.draws * scale, tune=sampler.tune * scale)


class SessionDataset(NamedTuple):
    """One session-level dataset (config ``sessions.NAME``) with the session-level model settings."""

    dataset: Dataset
    path: str
    outcome_lower_is_better: bool
    groups: tuple[str, ...]
    sampler: SamplerSettings
    level: float
    detrend: bool
    random_slopes: bool
    alliance_max: float | None
    covariates: tuple[str, ...]
    ruptures: RuptureSettings
    lagged_latent: bool
    lagged_latent_sampler: SamplerSettings

    @classmethod
    def from_config(cls, name: str, entry: Mapping, sampler: SamplerSettings, level: float,
                    lagged_latent_scale: int) -> SessionDataset:
        """From a validated ``sessions.NAME`` entry (every key present) and the shared sampler and level."""
        alliance_max = entry["alliance_max"]
        return cls(
            Dataset(name, bool(entry["synthetic"])),
            str(entry["path"]),
            bool(entry["outcome_lower_is_better"]),
            tuple(entry["groups"]),
            sampler,
            float(level),
            bool(entry["detrend"]),
            bool(entry["random_slopes"]),
            None if alliance_max is None else float(alliance_max),
            tuple(entry["covariates"]),
            RuptureSettings(float(entry["ruptures"]["reliability"]), int(entry["ruptures"]["repair_within"])),
            bool(entry["lagged_latent"]),
            scaled(sampler, lagged_latent_scale),
        )


class Settings(NamedTuple):
    """Everything a run needs, per stage."""

    seed: int
    meta: MetaSettings
    bayes: BayesSettings
    studies: Mapping[str, StudyDataset]
    sessions: Mapping[str, SessionDataset]
    config: Mapping  # the complete, validated configuration (for provenance)

    @classmethod
    def from_config(cls, config: Mapping) -> Settings:
        """Settings from a config that has been validated against the schema (defaults filled in)."""
        meta = MetaSettings.from_config(config)
        session_sampler = SamplerSettings.from_config(config["sessions_bayes"], "sessions_bayes")
        studies = {
            name: StudyDataset(
                Dataset(name, bool(entry["synthetic"])), str(entry["path"]), tuple(entry["moderators"]),
                str(entry["predictor"]), str(entry["outcome"]), entry["forest_by"],
                tuple(entry["moderators"] if entry["scale_moderators"] is None else entry["scale_moderators"]),
            )
            for name, entry in config["studies"].items()
        }
        sessions = {
            name: SessionDataset.from_config(name, entry, session_sampler, meta.level,
                                             int(config["sessions_bayes"]["lagged_latent_scale"]))
            for name, entry in config["sessions"].items()
        }
        return cls(
            seed=int(config["seed"]),
            meta=meta,
            bayes=BayesSettings.from_config(config),
            studies=FrozenDict(studies),
            sessions=FrozenDict(sessions),
            config=_frozen(config),
        )


def validate_config(config: Mapping, schema_path: str | os.PathLike = SCHEMA) -> dict:
    """Validate ``config`` against the JSON-Schema and return a copy with every default filled in.

    Defaults are applied the way Snakemake's ``validate(..., set_default=True)`` applies them: for every
    object in the instance, each property the schema gives a ``default`` and the instance lacks is added,
    recursively (including the schema of ``additionalProperties``, e.g. each dataset entry).
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    instance = copy.deepcopy(dict(config))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(map(str, e.path)))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"config {key}: {err.message}")
    _fill_defaults(instance, schema, schema)
    return instance


def _resolve(node: Mapping, root: Mapping) -> Mapping:
    while "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ConfigError(f"unsupported schema reference {ref!r}")
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def _fill_defaults(instance, node: Mapping, root: Mapping) -> None:
    node = _resolve(node, root)
    if isinstance(instance, dict):
        for key, sub in node.get("properties", {}).items():
            # a default may sit next to a $ref (the referenced schema then describes the value)
            default = sub.get("default", _resolve(sub, root).get("default"))
            if key not in instance and ("default" in sub or "default" in _resolve(sub, root)):
                instance[key] = copy.deepcopy(default)
            if key in instance:
                _fill_defaults(instance[key], sub, root)
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, value in instance.items():
                if key not in node.get("properties", {}):
                    _fill_defaults(value, extra, root)
    elif isinstance(instance, list) and isinstance(node.get("items"), Mapping):
        for item in instance:
            _fill_defaults(item, node["items"], root)


def load_settings(config: Mapping | str | os.PathLike, schema_path: str | os.PathLike = SCHEMA) -> Settings:
    """Settings from a config mapping or YAML file, validated and completed with the schema's defaults."""
    if not isinstance(config, Mapping):
        import yaml

        config = yaml.safe_load(Path(config).read_text()) or {}
    return Settings.from_config(validate_config(config, schema_path))


# --------------------------------------------------------------------------------------------------
# the configuration reference, rendered from the schema (config/README.md holds its output)
# --------------------------------------------------------------------------------------------------


def _flow(value) -> str:
    """A default in YAML flow style, as it would be written in config.yaml."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _rows(node: Mapping, root: Mapping, prefix: str):
    for key, sub in node.get("properties", {}).items():
        name = f"{prefix}{key}"
        resolved = _resolve(sub, root)
        default = sub.get("default", resolved.get("default"))
        if default is None and "default" not in sub and "default" not in resolved:
            shown = "required" if key in node.get("required", ()) else "none"
        elif default == {} and ("properties" in resolved or "additionalProperties" in resolved):
            shown = "{}"
        else:
            shown = f"`{_flow(default)}`"
        container = default in ({}, None) and (
            "properties" in resolved or isinstance(resolved.get("additionalProperties"), Mapping)
        )
        is_map = isinstance(resolved.get("additionalProperties"), Mapping)  # a map of datasets by name
        if not container or is_map:
            text = " ".join(str(sub.get("description", resolved.get("description", ""))).split())
            yield name, shown, text
        if container:
            extra = resolved.get("additionalProperties")
            if isinstance(extra, Mapping):
                yield from _rows(_resolve(extra, root), root, f"{name}.NAME.")
            else:
                yield from _rows(resolved, root, f"{name}.")


def config_reference(schema_path: str | os.PathLike = SCHEMA) -> str:
    """The Markdown table of every configuration key with its default and meaning, from the schema alone."""
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | {default} | {text.replace('|', '/')} |" for key, default, text in _rows(schema, schema, "")]
    return "\n".join(lines) + "\n"


def code_fingerprint() -> str:
    """SHA-256 (first 16 hex digits) of the package's Python sources, in a fixed order."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
