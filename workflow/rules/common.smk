# Shared helpers and parse-time validation: a bad config or input stops the run here, before any job.
import sys
import zlib
from pathlib import Path

from snakemake.utils import validate

from alliancemeta.core.inputs import InputError, read_sessions, read_studies


def _stop(message):
    """Print one clear message and stop before any job runs (SPEC §7)."""
    print(f"alliancemeta: input error: {message}", file=sys.stderr)
    sys.exit(1)


def _check_config():
    """Schema errors as one line naming the key, before snakemake's validate fills in defaults."""
    import jsonschema
    import yaml

    schema_path = Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
    schema = yaml.safe_load(schema_path.read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config),
        key=lambda e: [str(p) for p in e.path],
    )
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        _stop(f"config {key}: {err.message}")


_check_config()
validate(config, "../schemas/config.schema.yaml")

STUDY_DATASETS = list(config["studies"])
SESSION_DATASETS = list(config["sessions"])


wildcard_constraints:
    dataset="[a-z0-9_]+",


def _check_path(kind, name, entry):
    path = Path(entry["path"])
    if not path.is_file():
        _stop(
            f"config {kind}.{name}.path: {entry['path']} does not exist; expected a CSV file"
        )
    return path


def _validated_studies():
    frames = {}
    for name, entry in config["studies"].items():
        path = _check_path("studies", name, entry)
        try:
            frames[name] = read_studies(path, entry["moderators"])
        except InputError as err:
            _stop(str(err))
        validate(frames[name], "../schemas/studies.schema.yaml")
    return frames


def _validated_sessions():
    frames = {}
    for name, entry in config["sessions"].items():
        path = _check_path("sessions", name, entry)
        try:
            frames[name] = read_sessions(path, entry["groups"]).frame
        except InputError as err:
            _stop(str(err))
        validate(frames[name], "../schemas/sessions.schema.yaml")
    return frames


STUDY_FRAMES = _validated_studies()
SESSION_FRAMES = _validated_sessions()


# --- dataset properties -------------------------------------------------------------------------


def has_study_id(dataset):
    """True when rows share a study_id, i.e. effects are nested in studies."""
    frame = STUDY_FRAMES[dataset]
    return "study_id" in frame and frame["study_id"].nunique() < len(frame)


def has_moderators(dataset):
    return bool(config["studies"][dataset]["moderators"])


def has_site(dataset):
    """Two-stage pooling over sites needs a site column with at least two sites."""
    frame = SESSION_FRAMES[dataset]
    return "site" in frame and frame["site"].nunique() >= 2


def headline_method():
    return config["meta"]["estimators"][0]


def headline_test():
    return config["meta"]["tests"][0]


def bayes_config():
    return config["bayes"]


def seed_for(key):
    """Integer seed for one random step: the config seed combined with a stable key (never hash())."""
    return (config["seed"] + zlib.crc32(key.encode())) % 2**32


# --- paths --------------------------------------------------------------------------------------


def raw_studies(wildcards):
    return config["studies"][wildcards.dataset]["path"]


def raw_sessions(wildcards):
    return config["sessions"][wildcards.dataset]["path"]


def study_moderators(wildcards):
    return config["studies"][wildcards.dataset]["moderators"]


def session_groups(wildcards):
    return config["sessions"][wildcards.dataset]["groups"]


def outcome_lower_is_better(wildcards):
    return config["sessions"][wildcards.dataset]["outcome_lower_is_better"]


def meta_params(wildcards):
    return {
        "estimators": config["meta"]["estimators"],
        "tests": config["meta"]["tests"],
        "level": config["meta"]["level"],
    }


def moderator_params(wildcards):
    return {
        "moderators": config["studies"][wildcards.dataset]["moderators"],
        "method": headline_method(),
        "tests": config["meta"]["tests"],
        "level": config["meta"]["level"],
    }


def aggregate_params(wildcards):
    return {**meta_params(wildcards), "rho": config["meta"]["aggregate_rho"]}


def sessions_seed(wildcards):
    return seed_for(f"sessions/{wildcards.dataset}")


def sessions_bayes_settings(wildcards):
    return config["sessions_bayes"]


def all_inputs():
    """Every raw input file named in the config (for provenance)."""
    entries = [*config["studies"].values(), *config["sessions"].values()]
    return sorted({entry["path"] for entry in entries})


# --- targets ------------------------------------------------------------------------------------

STUDY_OUTPUTS = []
SESSION_OUTPUTS = []


def register_study_output(template, when=None):
    """Add results/studies/<dataset>/<template> to `rule all` (for datasets where `when` holds)."""
    STUDY_OUTPUTS.append((template, when))


def register_session_output(template, when=None):
    """Add results/sessions/<dataset>/<template> to `rule all` (for datasets where `when` holds)."""
    SESSION_OUTPUTS.append((template, when))


def all_targets():
    targets = ["results/provenance.json"]
    for kind, names, outputs in (
        ("studies", STUDY_DATASETS, STUDY_OUTPUTS),
        ("sessions", SESSION_DATASETS, SESSION_OUTPUTS),
    ):
        for name in names:
            for template, when in outputs:
                if when is None or when(name):
                    targets.append(str(Path("results", kind, name, template)))
    return targets
