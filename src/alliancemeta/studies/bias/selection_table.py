"""SPEC §5 ``selection_models.csv``: every selection model in one table.

Rows, in this order: the metafor ``selmodel`` weight functions (:data:`TYPES`) fitted by ML to all
effect sizes as if independent, then, when ``cluster`` groups rows, the step-function models for
dependent effects (:data:`CLUSTERED_TYPES`, metaselection).  A model that cannot be estimated gives a
row of NaN whose ``note`` says why; nothing raises.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alliancemeta.core.errors import ConvergenceError
from alliancemeta.studies.bias.clustered_selection import (
    METASELECTION_PRIORS,
    bootstrap_clustered_selmodel,
    clustered_selmodel,
)
from alliancemeta.studies.bias.common import as_arrays
from alliancemeta.studies.bias.selmodels import FAMILIES, SelModelFit, selmodel

#: SPEC §5 columns, then the trailing extras.
SELECTION_MODEL_COLUMNS = ("type", "estimate", "se", "ci_lb", "ci_ub", "tau2", "LRT", "LRT_pval", "delta")
EXTRA_COLUMNS = ("k", "note", "ci_method", "se_tau2", "n_studies", "n_boot", "ci_lb_sandwich", "ci_ub_sandwich")
#: Row type -> (metafor type, steps).
TYPES = {
    "stepfun_3psm": ("stepfun", (0.025,)),
    "stepfun_4psm": ("stepfun", (0.025, 0.5)),
    "beta": ("beta", None),
    "halfnorm": ("halfnorm", None),
    "negexp": ("negexp", None),
    "logistic": ("logistic", None),
    "power": ("power", None),
}
#: Row type -> steps of the selection model for dependent effects.
CLUSTERED_TYPES = {"clustered_3psm": (0.025,), "clustered_4psm": (0.025, 0.5)}
PENALTIES = ("metaselection", "none")
#: Fewest converged bootstrap replicates for a bootstrap interval; below it the row keeps the
#: sandwich (Wald) interval and says so.
MIN_BOOT_OK = 100


def _delta_text(delta) -> str:
    return ";".join(f"{d:.17g}" for d in np.asarray(delta, dtype=float))


def _row(type_: str, k: int, note: str, ci_method: str = "", **values) -> dict:
    row = {c: np.nan for c in SELECTION_MODEL_COLUMNS + EXTRA_COLUMNS}
    row.update(type=type_, delta="", k=k, note=note, ci_method=ci_method)
    row.update(values)
    return row


def _bound_note(fit: SelModelFit) -> str:
    delta = ", ".join(f"{d:.6g}" for d in fit.delta)
    if fit.type == "stepfun":
        return f"delta ({delta}) reaches its bound [0, 100]: the selection weight is not identified"
    fam = FAMILIES[fit.type]
    if np.all(np.asarray(fit.delta) <= np.asarray(fam.delta_min) + 1e-4) and fam.delta_min == fam.delta_h0:
        return (
            f"delta = {delta} at its lower bound: no selection is estimated and the model reduces to the "
            f"ML random-effects model (LRT = {fit.LRT:.3g}); not reported as a selection model"
        )
    bounds = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(fam.delta_min, fam.delta_max, strict=True))
    return f"delta = ({delta}) at (or within metafor's tolerance of) its bounds {bounds}: not identified"


def _metafor_row(type_: str, yi, vi, level: float) -> dict:
    kind, steps = TYPES[type_]
    k = yi.size
    try:
        fit = selmodel(yi, vi, kind, steps=steps, level=level)
    except (ValueError, ConvergenceError, np.linalg.LinAlgError) as err:
        return _row(type_, k, f"{type_} selection model not estimated: {err}")
    if fit.delta_at_bound:
        return _row(type_, k, _bound_note(fit))
    note = ""
    if "tau2" in fit.at_bound:
        note = "tau2 = 0 at its bound: standard errors are conditional on tau2 = 0"
    return _row(
        type_,
        k,
        note,
        "wald",
        estimate=fit.beta,
        se=fit.se,
        ci_lb=fit.ci_lb,
        ci_ub=fit.ci_ub,
        tau2=fit.tau2,
        se_tau2=fit.se_tau2,
        LRT=fit.LRT,
        LRT_pval=fit.LRT_pval,
        delta=_delta_text(fit.delta),
    )


def _clustered_row(type_, yi, vi, cluster, level, seed, n_boot, bootstrap, ci_type, penalty) -> dict:
    k = yi.size
    n_studies = int(np.unique(cluster).size)
    priors = METASELECTION_PRIORS if penalty == "metaselection" else None
    try:
        fit = clustered_selmodel(yi, vi, cluster, steps=CLUSTERED_TYPES[type_], priors=priors, level=level)
    except (ValueError, ConvergenceError, np.linalg.LinAlgError) as err:
        return _row(type_, k, f"{type_} selection model not estimated: {err}", n_studies=n_studies)
    estimator = "penalised composite ML (metaselection's default priors)" if priors else "composite ML"
    notes = [f"{estimator}, cluster-robust SE by study; no likelihood-ratio test for a composite likelihood"]
    ci_lb, ci_ub, ci_method, n_ok = fit.ci_lb, fit.ci_ub, "sandwich", 0
    if n_boot > 0:
        boot = bootstrap_clustered_selmodel(
            fit, n_boot=n_boot, seed=seed, method=bootstrap, studentized=ci_type == "student", bca=ci_type == "bca"
        )
        n_ok = boot.n_ok
        if n_ok >= MIN_BOOT_OK:
            ci_lb, ci_ub = boot.ci(ci_type)[0]
            ci_method = f"{ci_type} ({bootstrap} cluster bootstrap)"
            if n_ok < n_boot:
                notes.append(f"{n_boot - n_ok} of {n_boot} bootstrap refits did not converge and were dropped")
        else:
            notes.append(f"only {n_ok} of {n_boot} bootstrap refits converged: sandwich (Wald) interval reported")
    return _row(
        type_,
        k,
        "; ".join(notes),
        ci_method,
        estimate=fit.beta,
        se=fit.se,
        ci_lb=ci_lb,
        ci_ub=ci_ub,
        tau2=fit.tau2,
        se_tau2=fit.se_tau2,
        delta=_delta_text(fit.delta),
        n_studies=n_studies,
        n_boot=n_ok,
        ci_lb_sandwich=fit.ci_lb,
        ci_ub_sandwich=fit.ci_ub,
    )


def selection_models_table(
    yi,
    vi,
    cluster=None,
    *,
    level: float,
    seed: int,
    n_boot: int,
    bootstrap: str,
    ci_type: str,
    penalty: str,
) -> pd.DataFrame:
    """SPEC §5 ``selection_models.csv``: one row per selection model.

    The pipeline passes ``meta.level``, a seed derived from the config seed, and ``meta.selection_models``
    (``n_boot``, ``bootstrap``, ``ci_type``, ``penalty``; defaults in the schema).

    Columns ``type, estimate, se, ci_lb, ci_ub, tau2, LRT, LRT_pval, delta`` (the adjusted
    effect on the effect-size scale, Fisher z here; ``delta`` the selection parameters joined by
    ``;`` with 17 significant digits, for ``stepfun`` and the clustered rows including the first
    weight, fixed at 1) and the trailing ``k, note, ci_method, se_tau2, n_studies, n_boot,
    ci_lb_sandwich, ci_ub_sandwich`` (``se_tau2``: observed-information SE of tau2, or for the clustered
    rows the sandwich SE by the delta method; ``n_boot``: converged bootstrap replicates).

    - ``stepfun_3psm``, ``stepfun_4psm``, ``beta``, ``halfnorm``, ``negexp``, ``logistic``,
      ``power``: :func:`~alliancemeta.studies.bias.selmodels.selmodel` (metafor's ``selmodel``
      on an ML random-effects model, all effects treated as independent); z-based Wald interval
      (``ci_method = "wald"``); LRT of no selection.  A delta at (or within metafor's tolerance of)
      its bound gives a NaN row: for the monotone families at 0 that means no selection was
      estimated and the model is the ML random-effects model (the note says so).
    - ``clustered_3psm``, ``clustered_4psm`` (only when ``cluster`` puts two or more effects in
      one study): :func:`~alliancemeta.studies.bias.clustered_selection.clustered_selmodel` with
      the cluster-robust SE, the interval of ``ci_type`` from ``n_boot`` cluster-bootstrap
      replicates (``bootstrap``; the same ``seed`` for both rows, so both models see the same
      pseudo-samples) and the sandwich interval in ``ci_*_sandwich``; ``LRT`` is NaN (composite
      likelihood).  ``penalty="none"`` drops metaselection's prior penalties.
    """
    yi, vi = as_arrays(yi, vi)
    if penalty not in PENALTIES:
        raise ValueError(f"unknown penalty {penalty!r}; expected one of {', '.join(PENALTIES)}")
    rows = [_metafor_row(t, yi, vi, level) for t in TYPES]
    if cluster is not None:
        cluster = np.asarray(cluster)
        if cluster.shape != yi.shape:
            raise ValueError("cluster must have one entry per effect size")
        if np.unique(cluster).size < yi.size:
            rows += [
                _clustered_row(t, yi, vi, cluster, level, seed, n_boot, bootstrap, ci_type, penalty)
                for t in CLUSTERED_TYPES
            ]
    table = pd.DataFrame(rows, columns=list(SELECTION_MODEL_COLUMNS + EXTRA_COLUMNS))
    for col in ("k", "n_studies", "n_boot"):
        table[col] = table[col].astype("Int64")
    return table
