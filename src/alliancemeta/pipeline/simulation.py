"""Stage ``simulate`` (workflow/rules/simulate.smk): the Monte-Carlo simulation study of the interval methods.

``make simulate`` (not part of ``make run``) fans the study out as Snakemake jobs: rule ``simulation_batch``
runs one block of replicates of one condition (:func:`write_simulation_batch`, one CSV per batch under
``results/simulation/batches/``) and rule ``simulation`` gathers them (:func:`write_simulation`) into
``results/simulation/simulation.csv``, the APA-style ``simulation.md`` and ``figures/coverage.{pdf,png}``.

Seeds: condition NAME uses ``derive_seed(seed, "simulation/NAME")`` and replicate i the independent stream
``default_rng([that seed, i])``, so a replicate's numbers depend neither on the batch size nor on the other
conditions, and raising ``simulation.replicates`` only adds batches.  This module knows the output columns; the
generator and the methods live in :mod:`alliancemeta.studies.simulation`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import pandas as pd

from alliancemeta.core.errors import ConfigError
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import BayesSettings, FrozenDict, MetaSettings
from alliancemeta.core.tables import atomic_path, write_csv
from alliancemeta.report.simulation import design_table, method_label, results_table
from alliancemeta.studies.simulation import (
    CONDITION_COLUMNS,
    Condition,
    evaluate,
    simulate_meta,
    summarise,
)

log = logging.getLogger(__name__)

#: Columns of a batch file: one row per replicate and method.
BATCH_COLUMNS = (
    "condition", "replicate", "method", "estimate", "se", "ci_lb", "ci_ub", "covered", "width", "failed", "k",
    "n_studies", "n_generated", "note",
)  # fmt: skip
#: Contract columns of ``simulation.csv``: the condition, then the method's performance.
SIMULATION_COLUMNS = (
    *CONDITION_COLUMNS, "method", "n_replicates", "n_failed", "bias", "rmse", "coverage", "coverage_mcse", "width",
)  # fmt: skip
#: Trailing columns: Monte-Carlo SEs of bias and RMSE, the same measures on the r scale, the interval level, the
#: mean number of effect sizes and of generated studies per replicate, and the distinct failure reasons.
SIMULATION_EXTRA_COLUMNS = (
    "bias_mcse", "rmse_mcse", "bias_r", "rmse_r", "width_r", "level", "mean_k", "mean_generated", "note",
)  # fmt: skip
#: Distinct failure reasons kept in the note of a summary row.
MAX_REASONS = 3


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------


class SimulationFit(NamedTuple):
    """How every replicate is analysed: methods, interval level, tau² estimator, CHE working rho and priors."""

    methods: tuple[str, ...]
    level: float
    estimator: str
    che_rho: float
    priors: Mapping  # {"prior_mu": ..., "prior_tau": ...} as in the ``bayes`` config section

    @classmethod
    def from_config(cls, config: Mapping) -> SimulationFit:
        """From a validated config: ``simulation.methods``, ``meta.level``, the headline estimator (first of
        ``meta.estimators``), the middle value of the sorted ``meta.che_rho`` and the ``bayes`` priors."""
        meta = MetaSettings.from_config(config)
        bayes = BayesSettings.from_config(config)
        rhos = sorted(meta.che_rho)
        return cls(tuple(config["simulation"]["methods"]), meta.level, meta.method, rhos[(len(rhos) - 1) // 2],
                   FrozenDict(bayes.priors))  # fmt: skip


class SimulationSettings(NamedTuple):
    """Config ``simulation`` (conditions = ``base`` updated by each entry of ``conditions``) and the config seed."""

    conditions: Mapping[str, Condition]
    replicates: int
    batch_size: int
    fit: SimulationFit
    seed: int

    @classmethod
    def from_config(cls, config: Mapping) -> SimulationSettings:
        section = config["simulation"]
        base = dict(section["base"])
        conditions = {}
        for name, overrides in section["conditions"].items():
            try:
                conditions[name] = Condition.from_mapping(name, {**base, **dict(overrides)})
            except (TypeError, ValueError) as err:
                raise ConfigError(f"config simulation.conditions.{name}: {err}") from None
        if not conditions:
            raise ConfigError("config simulation.conditions: name at least one condition")
        return cls(FrozenDict(conditions), int(section["replicates"]), int(section["batch_size"]),
                   SimulationFit.from_config(config), int(config["seed"]))  # fmt: skip

    @property
    def n_batches(self) -> int:
        return -(-self.replicates // self.batch_size)

    def batch_range(self, batch: int) -> tuple[int, int]:
        """Replicates ``[first, stop)`` of batch ``batch`` (0-based)."""
        batch = int(batch)
        if not 0 <= batch < self.n_batches:
            raise ValueError(f"batch {batch} is outside 0..{self.n_batches - 1}")
        return batch * self.batch_size, min((batch + 1) * self.batch_size, self.replicates)

    def condition_seed(self, name: str) -> int:
        return derive_seed(self.seed, f"simulation/{name}")

    # -- what rule simulation_batch needs from its wildcards (parameter functions of the workflow) --------------

    def batch_condition(self, wildcards) -> Condition:
        """The condition of the batch named by ``wildcards.condition``."""
        return self.conditions[wildcards.condition]

    def batch_replicates(self, wildcards) -> tuple[int, int]:
        """The replicates ``[first, stop)`` of the batch ``wildcards.batch``."""
        return self.batch_range(int(wildcards.batch))

    def about(self) -> dict:
        """What the captions say: replicates, conditions, interval level and how the methods were set up."""
        return {
            "replicates": self.replicates,
            "conditions": len(self.conditions),
            "level": f"{100 * self.fit.level:g}%",
            "estimator": self.fit.estimator,
            "che_rho": f"{self.fit.che_rho:g}",
            "methods": ", ".join(self.fit.methods),
        }


# --------------------------------------------------------------------------------------------------
# one batch of replicates
# --------------------------------------------------------------------------------------------------


def simulate_batch(condition: Condition, replicates: Sequence[int], fit: SimulationFit, seed: int) -> pd.DataFrame:
    """Simulate and analyse the replicates ``replicates`` of ``condition`` (``seed``: the condition's seed).

    Returns one row per replicate and method, columns :data:`BATCH_COLUMNS` (``covered`` is NaN for a
    failed fit).
    """
    rows = []
    started = time.perf_counter()
    for i, replicate in enumerate(replicates):
        data = simulate_meta(condition, seed, replicate)
        results = evaluate(data, fit.methods, fit.level, estimator=fit.estimator, che_rho=fit.che_rho,
                           priors=fit.priors)  # fmt: skip
        common = {"condition": condition.name, "replicate": int(replicate), "k": len(data),
                  "n_studies": condition.k, "n_generated": data.attrs["n_generated"]}  # fmt: skip
        for res in results:
            rows.append(common | {
                "method": res.method, "estimate": res.estimate, "se": res.se, "ci_lb": res.ci_lb, "ci_ub": res.ci_ub,
                "covered": res.covered(condition.mu), "width": res.width, "failed": res.failed, "note": res.note,
            })  # fmt: skip
        if (i + 1) % 50 == 0:
            log.info("%s: %d of %d replicates in %.1f s", condition.name, i + 1, len(replicates),
                     time.perf_counter() - started)  # fmt: skip
    return pd.DataFrame(rows, columns=list(BATCH_COLUMNS))


def write_simulation_batch(table, *, condition: Condition, replicates: tuple[int, int], fit: SimulationFit,
                           seed: int) -> None:  # fmt: skip
    """One batch file: replicates ``range(*replicates)`` of ``condition``; ``seed`` is the config seed."""
    frame = simulate_batch(condition, range(*replicates), fit, derive_seed(seed, f"simulation/{condition.name}"))
    failed = frame.groupby("method", sort=False)["failed"].sum()
    log.info("%s replicates %d-%d: failed fits per method: %s", condition.name, replicates[0], replicates[1] - 1,
             ", ".join(f"{m} {int(n)}" for m, n in failed.items()))  # fmt: skip
    write_csv(frame, table, BATCH_COLUMNS)


# --------------------------------------------------------------------------------------------------
# the gather: simulation.csv, simulation.md and the figure
# --------------------------------------------------------------------------------------------------


def _reasons(notes: pd.Series) -> str:
    counts = notes.value_counts()
    parts = [f"{n}x {text}" for text, n in counts.head(MAX_REASONS).items()]
    if len(counts) > MAX_REASONS:
        parts.append(f"{len(counts) - MAX_REASONS} further reasons in the batch files")
    return " | ".join(parts)


def simulation_summary(replicates: pd.DataFrame, settings: SimulationSettings) -> pd.DataFrame:
    """``simulation.csv``: bias, RMSE, coverage (with Monte-Carlo SEs) and mean width per condition and method.

    ``replicates`` holds the rows of every batch file.  Every configured condition must be present with each
    replicate ``0..replicates-1`` exactly once per method (a stale or missing batch is an error, not a smaller
    sample).  Rows: conditions in config order, methods in :data:`~alliancemeta.studies.simulation.METHODS` order.
    """
    rows = []
    methods = settings.fit.methods
    for name, condition in settings.conditions.items():
        part = replicates[replicates["condition"] == name]
        counts = part.groupby("method")["replicate"].agg(["nunique", "size", "min", "max"])
        expected = (settings.replicates, settings.replicates, 0, settings.replicates - 1)
        bad = [m for m in methods if m not in counts.index or tuple(counts.loc[m]) != expected]
        if bad or set(counts.index) - set(methods):
            raise ValueError(
                f"simulation condition {name!r}: the batch files do not hold replicates 0..{settings.replicates - 1} "
                f"exactly once for method(s) {', '.join(bad or sorted(set(counts.index) - set(methods)))}; rerun "
                "make simulate"
            )
        summary = summarise(part, condition.mu, methods).set_index("method")
        for method in methods:
            sub = part[part["method"] == method]
            failed = sub["failed"].astype(bool)
            rows.append(condition.as_row() | {"method": method} | summary.loc[method].to_dict() | {
                "level": settings.fit.level, "mean_k": float(sub["k"].mean()),
                "mean_generated": float(sub["n_generated"].mean()),
                "note": _reasons(sub.loc[failed, "note"].astype(str)) if failed.any() else "",
            })  # fmt: skip
    out = pd.DataFrame(rows)
    return out[[*SIMULATION_COLUMNS, *SIMULATION_EXTRA_COLUMNS]]


def simulation_markdown(summary: pd.DataFrame, settings: SimulationSettings, code: str = "") -> str:
    """The APA-style Markdown of the study: the design (Table 1) and the performance of every method (Table 2)."""
    head = (
        "# Monte-Carlo simulation study of the interval methods\n\n"
        "SYNTHETIC data: every dataset is simulated by `alliancemeta.studies.simulation` (alliance-like design with "
        "departures from every fitted model); these numbers describe the methods, not the alliance.\n\n"
        f"{settings.replicates} replicates per condition, config seed {settings.seed}"
        + (f", package code {code}" if code else "")
        + ".\n\n"
    )
    design = design_table(settings.conditions.values())
    results = results_table(summary, settings.fit)
    return head + design.markdown(1) + "\n" + results.markdown(2)


def write_simulation(batches: Sequence[str], table, markdown, figure_pdf, figure_png, *,
                     settings: SimulationSettings, code: str = "") -> None:  # fmt: skip
    """Gather the batch files into ``simulation.csv``, ``simulation.md`` and the coverage/bias figure."""
    frame = pd.concat([pd.read_csv(path, dtype={"note": str}, keep_default_na=False, na_values=[""])
                       for path in batches], ignore_index=True)  # fmt: skip
    frame["note"] = frame["note"].fillna("")
    summary = simulation_summary(frame, settings)
    write_csv(summary, table, [*SIMULATION_COLUMNS, *SIMULATION_EXTRA_COLUMNS])
    text = simulation_markdown(summary, settings, code)
    with atomic_path(markdown) as tmp:
        tmp.write_text(text)
    # imported here: the workflow imports this module when it is planned (in every cluster job step too), and
    # matplotlib would add about a quarter of a second to each
    from alliancemeta.plots.simulation import simulation_figure
    from alliancemeta.plots.style import save_figure

    labels = {m: method_label(m, settings.fit.che_rho) for m in settings.fit.methods}
    save_figure(simulation_figure(summary, settings.fit.level, labels), figure_pdf, figure_png)
    worst = summary.loc[summary["coverage"].idxmin()] if summary["coverage"].notna().any() else None
    if worst is not None:
        log.info("lowest coverage: %s in condition %s (%.3f)", worst["method"], worst["condition"], worst["coverage"])
    log.info("failed fits: %d of %d", int(summary["n_failed"].sum()), int(summary["n_replicates"].sum()))
