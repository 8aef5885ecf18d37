# Shared helpers and parse-time validation: a bad config or input stops the run here, before any job.
import re
import sys
from pathlib import Path

from snakemake.utils import validate

from alliancemeta.core.errors import ConfigError, InputError
from alliancemeta.core.inputs import read_sessions, read_studies
from alliancemeta.core.settings import Settings, validate_config

SCHEMA = Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml")


def _stop(message):
    """Print one clear message and stop before any job runs (SPEC §7)."""
    print(f"alliancemeta: input error: {message}", file=sys.stderr)
    sys.exit(1)


# One line naming the key for a schema error, then Snakemake's own validation, which fills in the
# defaults; every default is written once, in the schema.
try:
    validate_config(config, SCHEMA)
except ConfigError as err:
    _stop(str(err))
validate(config, "../schemas/config.schema.yaml")
SETTINGS = Settings.from_config(config)
STUDY_DATASETS = list(SETTINGS.studies)
SESSION_DATASETS = list(SETTINGS.sessions)


wildcard_constraints:
    dataset="|".join([*STUDY_DATASETS, *SESSION_DATASETS]) or "(?!)",


def _check_path(kind, name, path):
    if not Path(path).is_file():
        _stop(f"config {kind}.{name}.path: {path} does not exist; expected a CSV file")


def _validated_studies():
    frames = {}
    for name, entry in SETTINGS.studies.items():
        _check_path("studies", name, entry.path)
        try:
            frames[name] = read_studies(entry.path, entry.moderators)
        except InputError as err:
            _stop(str(err))
        validate(frames[name], "../schemas/studies.schema.yaml")
    return frames


def _validated_sessions():
    frames = {}
    for name, entry in SETTINGS.sessions.items():
        _check_path("sessions", name, entry.path)
        try:
            frames[name] = read_sessions(entry.path, entry.groups).frame
        except InputError as err:
            _stop(str(err))
        validate(frames[name], "../schemas/sessions.schema.yaml")
    return frames


STUDY_FRAMES = _validated_studies()
SESSION_FRAMES = _validated_sessions()


# --- dataset properties: which optional outputs a dataset gets ----------------------------------


def has_study_id(dataset):
    """True when rows share a study_id, i.e. effects are nested in studies."""
    frame = STUDY_FRAMES[dataset]
    return "study_id" in frame and frame["study_id"].nunique() < len(frame)


def has_moderators(dataset):
    return bool(SETTINGS.studies[dataset].moderators)


def has_site(dataset):
    """Two-stage pooling over sites needs a site column with at least two sites."""
    frame = SESSION_FRAMES[dataset]
    return "site" in frame and frame["site"].nunique() >= 2


# --- parameters: the frozen settings of each stage ----------------------------------------------


def raw_studies(wildcards):
    return SETTINGS.studies[wildcards.dataset].path


def raw_sessions(wildcards):
    return SETTINGS.sessions[wildcards.dataset].path


def study(wildcards):
    """The settings of one study-level dataset (path, moderators, name and SYNTHETIC flag)."""
    return SETTINGS.studies[wildcards.dataset]


def session(wildcards):
    """The settings of one session-level dataset (with its sampler and interval level)."""
    return SETTINGS.sessions[wildcards.dataset]


def about_study(wildcards):
    """What a study-level caption says: data (SYNTHETIC marked), headline model and interval level."""
    meta = SETTINGS.meta
    return {
        "data": SETTINGS.studies[wildcards.dataset].dataset.label,
        "synthetic": SETTINGS.studies[wildcards.dataset].dataset.synthetic,
        "estimator": meta.method,
        "test": meta.test,
        "estimators": ", ".join(meta.estimators),
        "tests": ", ".join(meta.tests),
        "level": f"{100 * meta.level:g}%",
    }


def about_session(wildcards):
    """What a session-level caption says: data (SYNTHETIC marked) and interval level."""
    entry = SETTINGS.sessions[wildcards.dataset]
    return {
        "data": entry.dataset.label,
        "synthetic": entry.dataset.synthetic,
        "level": f"{100 * entry.level:g}%",
        "estimator": SETTINGS.meta.method,
        "test": SETTINGS.meta.test,
    }


def all_inputs():
    """Every raw input file named in the config (for provenance)."""
    paths = [e.path for e in SETTINGS.studies.values()] + [
        e.path for e in SETTINGS.sessions.values()
    ]
    return sorted(set(paths))


# --- targets: every output path is written once, in its rule ------------------------------------

ONLY_WHEN = {}


def only_when(rule_name, predicate):
    """Build the outputs of ``rule_name`` only for the datasets where ``predicate(dataset)`` holds."""
    ONLY_WHEN[rule_name] = predicate


def all_targets():
    """The outputs of every rule that writes to results/, expanded over the datasets they apply to."""
    targets = []
    for step in workflow.rules:
        if step.name == "all":
            continue
        for output in map(str, step.output):
            template = re.sub(
                r"\{(\w+),[^}]*\}", r"{\1}", output
            )  # drop wildcard constraints
            if not template.startswith("results/"):
                continue
            if "{dataset}" not in template:
                targets.append(template)
                continue
            names = (
                STUDY_DATASETS
                if template.startswith("results/studies/")
                else SESSION_DATASETS
            )
            predicate = ONLY_WHEN.get(step.name)
            targets += [
                template.format(dataset=n)
                for n in names
                if predicate is None or predicate(n)
            ]
    return sorted(set(targets))
