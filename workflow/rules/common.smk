# Shared helpers and parse-time validation: a bad config or input stops the run here, before any job.
import functools
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from snakemake.utils import validate

from alliancemeta.core.contract import check_contract
from alliancemeta.core.errors import ConfigError, InputError
from alliancemeta.core.inputs import read_sessions, read_studies
from alliancemeta.core.settings import Settings, code_fingerprint, validate_config
from alliancemeta.pipeline.multiverse import multiverse_settings as _multiverse_settings
from alliancemeta.pipeline.multiverse import planned_batches, planned_specifications
from alliancemeta.pipeline.report import apa_tables_of, write_provenance
from alliancemeta.report.provenance import git_state
from alliancemeta.report.apa import BUILDERS

RUN_STARTED = datetime.now(timezone.utc).isoformat(timespec="seconds")
#: Fingerprint of the package's code: a parameter of every rule, so that results are recomputed when the
#: code that makes them changes (Snakemake itself tracks only the rule's script).
CODE = code_fingerprint()
#: The report's landing page (written by rule summary into this run's results/; the report directive needs
#: an absolute path, as relative ones are read from the Snakefile's folder).
LANDING = str(Path.cwd() / "results" / "report" / "landing.rst")
#: Static text of the landing page, shipped with the workflow.
FRONT = str(Path(workflow.basedir, "workflow", "report", "workflow.rst"))

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
    table="|".join(BUILDERS),


def _check_path(kind, name, path):
    if not Path(path).is_file():
        _stop(f"config {kind}.{name}.path: {path} does not exist; expected a CSV file")


def _check_contract(frame, kind, path):
    """The schema of an ingested table (workflow/schemas/{kind}.schema.yaml), checked column by column."""
    try:
        check_contract(
            frame,
            Path(workflow.basedir, "workflow", "schemas", f"{kind}.schema.yaml"),
            path,
        )
    except InputError as err:
        _stop(str(err))


def _validated_studies():
    frames = {}
    for name, entry in SETTINGS.studies.items():
        _check_path("studies", name, entry.path)
        try:
            frames[name] = read_studies(entry.path, entry.moderators)
        except InputError as err:
            _stop(str(err))
        _check_contract(frames[name], "studies", entry.path)
    return frames


def _validated_sessions():
    frames = {}
    for name, entry in SETTINGS.sessions.items():
        _check_path("sessions", name, entry.path)
        try:
            frames[name] = read_sessions(entry.path, entry.groups).frame
        except InputError as err:
            _stop(str(err))
        _check_contract(frames[name], "sessions", entry.path)
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


def has_scale_moderators(dataset):
    return bool(SETTINGS.studies[dataset].scale_moderators)


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
#: Heavier studies that are their own make targets (SPEC §3): study name by rule. Their rules are left out of
#: rule all and of the report; a run that builds only them writes results/provenance_<study>.json.
OWN_TARGETS = {}


def only_when(rule_name, predicate):
    """Build the outputs of ``rule_name`` only for the datasets where ``predicate(dataset)`` holds."""
    ONLY_WHEN[rule_name] = predicate


def own_target(rule_name, study):
    """Keep ``rule_name`` (part of the separate ``study``) out of ``make run``: it runs only when one of its
    outputs is asked for."""
    OWN_TARGETS[rule_name] = study


def _outputs(kind=None, name=None):
    """(rule name, template) of every output under results/ (wildcard constraints removed), optionally only
    those of one dataset kind (studies/sessions) and name, with the rule's ONLY_WHEN condition applied.
    """
    for step in workflow.rules:
        if step.name == "all" or step.name in OWN_TARGETS:
            continue
        for output in map(str, step.output):
            template = re.sub(
                r"\{(\w+),[^}]*\}", r"{\1}", output
            )  # drop wildcard constraints
            if not template.startswith("results/"):
                continue
            if kind is None:
                yield step.name, template
            elif template.startswith(f"results/{kind}/{{dataset}}/"):
                predicate = ONLY_WHEN.get(step.name)
                if predicate is None or predicate(name):
                    yield step.name, template.replace("{dataset}", name)


def _tables(kind, name):
    """The CSV tables that the rules write for one dataset."""
    return sorted(
        t
        for _, t in _outputs(kind, name)
        if Path(t).parent.name == "tables" and t.endswith(".csv") and "{" not in t
    )


def study_tables(wildcards):
    return _tables("studies", wildcards.dataset)


def session_tables(wildcards):
    return _tables("sessions", wildcards.dataset)


def _apa_inputs(kind, wildcards):
    _, extra = BUILDERS[wildcards.table]
    folder = f"results/{kind}/{wildcards.dataset}/tables"
    return [f"{folder}/{wildcards.table}.csv", *(f"{folder}/{e}.csv" for e in extra)]


def apa_inputs_studies(wildcards):
    return _apa_inputs("studies", wildcards)


def apa_inputs_sessions(wildcards):
    return _apa_inputs("sessions", wildcards)


def _apa_targets(kind, name):
    stems = [Path(t).stem for t in _tables(kind, name)]
    return [
        f"results/{kind}/{name}/report/{table}.{ext}"
        for table in apa_tables_of(stems)
        for ext in ("md", "tex")
    ]


def all_headlines():
    """Every dataset's headline paragraph, studies first."""
    return [f"results/studies/{n}/report/headline.md" for n in STUDY_DATASETS] + [
        f"results/sessions/{n}/report/headline.md" for n in SESSION_DATASETS
    ]


def all_datasets():
    """Dataset settings by headline path (names and SYNTHETIC flags for results/summary.md)."""
    out = {}
    for kind, entries in (
        ("studies", SETTINGS.studies),
        ("sessions", SETTINGS.sessions),
    ):
        for name, entry in entries.items():
            out[f"results/{kind}/{name}/report/headline.md"] = entry.dataset
    return out


def all_targets():
    """The outputs of every rule that writes to results/, expanded over the datasets they apply to."""
    targets = [t for _, t in _outputs() if "{" not in t]
    for kind, names in (("studies", STUDY_DATASETS), ("sessions", SESSION_DATASETS)):
        for name in names:
            targets += [t for _, t in _outputs(kind, name) if "{" not in t]
            targets += _apa_targets(kind, name)
    return sorted(set(targets))


def _own_target_study():
    """The separate study this run built, when every target asked for belongs to it (None for make run and
    for any run that builds the main results)."""
    studies = set()
    for target in workflow.dag_settings.targets:
        owners = {
            study
            for step in workflow.rules
            if (study := OWN_TARGETS.get(step.name))
            and (target == step.name or any(o.match(target) for o in step.output))
        }
        if not owners:
            return None
        studies |= owners
    return studies.pop() if len(studies) == 1 else None


def finish_run():
    """After a successful run: provenance.json for this run, and where the results are."""
    if any(arg in sys.argv for arg in ("--report", "-n", "--dry-run", "--lint")):
        return
    run = {
        "command": " ".join(sys.argv),
        "started": RUN_STARTED,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workdir": str(Path.cwd()),
        **git_state(workflow.basedir),
    }
    study = _own_target_study()
    if study is not None:
        path = f"results/provenance_{study}.json"
        write_provenance([], path, SETTINGS.config, run)
        print(f"\nalliancemeta: {study} written; provenance in {path}", file=sys.stderr)
        return
    write_provenance(all_inputs(), "results/provenance.json", SETTINGS.config, run)
    print("\nalliancemeta: results written", file=sys.stderr)
    for path in ("results/summary.md", "results/provenance.json"):
        if Path(path).exists():
            print(f"  {path}", file=sys.stderr)
    for kind, names in (("studies", STUDY_DATASETS), ("sessions", SESSION_DATASETS)):
        for name in names:
            print(
                f"  results/{kind}/{name}/  (report/summary.md, tables/, figures/)",
                file=sys.stderr,
            )


# --------------------------------------------------------------------------------------------------
# multiverse (workflow/rules/multiverse.smk): the frozen settings and the batch plan of each dataset
# --------------------------------------------------------------------------------------------------


@functools.cache
def multiverse_settings():
    """The frozen multiverse settings, built once from the validated config."""
    return _multiverse_settings(
        config["multiverse"],
        SETTINGS.meta.level,
        SETTINGS.meta.aggregate_rho,
        config["bayes"],
    )


@functools.cache
def _multiverse_plan(dataset):
    frame = STUDY_FRAMES[dataset]
    settings = multiverse_settings()
    return planned_specifications(frame, settings), planned_batches(frame, settings)


def multiverse_n_specs(wildcards):
    return _multiverse_plan(wildcards.dataset)[0]


def multiverse_batch_tables(wildcards):
    return expand(
        "results/studies/{dataset}/multiverse/batch_{batch}.csv",
        dataset=wildcards.dataset,
        batch=_multiverse_plan(wildcards.dataset)[1],
    )


def multiverse_batch_params(wildcards):
    return {
        "batch": int(wildcards.batch),
        "n_specs": _multiverse_plan(wildcards.dataset)[0],
        "settings": multiverse_settings(),
    }


def multiverse_targets():
    return expand(
        "results/studies/{dataset}/{path}",
        dataset=STUDY_DATASETS,
        path=[
            "tables/multiverse.csv",
            "tables/multiverse_summary.csv",
            "figures/specification_curve.pdf",
            "figures/specification_curve.png",
        ],
    )
