"""Stage ``bayes`` (workflow/rules/bayes.smk): every Bayesian model of one study-level dataset, written to tables.

:func:`write_bayes` fits, for one processed study table,

1. the random-effects model, with the exact quadrature posterior next to every MCMC summary
   (``exact_*`` columns) as a built-in check.  It is sampled with the study effects integrated out
   (two dimensions instead of k + 2: at k = 300 half the compile time and three times the ESS of
   the non-centred form, see ``benchmarks/bench_bayes.py``), and the study effects are then drawn
   exactly from their conditional normals (:func:`~alliancemeta.studies.bayes.summary.with_study_effects`),
   so ``posterior.nc`` holds the same joint posterior as the non-centred model;
2. the equal-effects model (tau = 0), for LOO, drawn exactly from its normal posterior;
3. one meta-regression per configured moderator (effect deviations integrated out), also with its
   exact posterior alongside;
4. the three-level model (effects within studies, both levels integrated out) when ``study_id``
   groups effects;

checks every fit (r_hat, ESS, divergences; one retry), and writes ``tables/bayes.csv``,
``tables/model_comparison.csv`` (PSIS-LOO) and ``posterior.nc`` (random-effects posterior with its
pointwise log-likelihood).  Nothing is written unless every model converged.

The meta-regressions share one compiled model: it has as many coefficients as the largest design,
and a moderator with fewer columns fills the rest of ``X`` with zeros, whose coefficients then
follow their N(0, sigma_beta^2) prior independently of the data and are dropped from the output.
Compiling costs 3-9 s per model on the shared 2-core machine (more under load); sampling about 1 s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.core.mcmc import CompiledModel, Fit, fit
from alliancemeta.core.seeds import derive_seed
from alliancemeta.core.settings import BayesSettings, Dataset, SamplerSettings
from alliancemeta.core.tables import atomic_path, write_csv
from alliancemeta.pipeline.common import read_studies_table
from alliancemeta.plots.bayes import posterior_figure
from alliancemeta.plots.robma import robma_figure
from alliancemeta.plots.style import save_figure, unavailable
from alliancemeta.studies.bayes.averaging import model_averaging
from alliancemeta.studies.bayes.models import REPORTED, build_meta_model
from alliancemeta.studies.bayes.priors import MetaPriors
from alliancemeta.studies.bayes.quadrature import SENSITIVITY_COLUMNS, exact_posterior, prior_sensitivity
from alliancemeta.studies.bayes.robma import (
    ROBMA_COLUMNS,
    ROBMA_SENSITIVITY_COLUMNS,
    RobmaSettings,
    fit_robma,
    prior_sensitivity_robma,
    robma_table,
)
from alliancemeta.studies.bayes.summary import (
    COMPARISON_COLUMNS,
    SUMMARY_COLUMNS,
    compare_models,
    summarise,
    with_log_likelihood,
    with_study_effects,
)
from alliancemeta.studies.regression import Design, ModeratorError, design_matrix

log = logging.getLogger(__name__)

BAYES_COLUMNS = (*SUMMARY_COLUMNS, "model", "k", "attempts", "target_accept", "sampler",
                 "exact_mean", "exact_sd", "exact_eti_lb", "exact_eti_ub", "exact_p_gt_0", "exact_p_gt_0.1")
_EXACT = ("mean", "sd", "eti_lb", "eti_ub", "p_gt_0", "p_gt_0.1")


# --------------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyBayes:
    """All Bayesian results for one dataset: the table rows, the LOO comparison and the RE posterior."""

    table: pd.DataFrame
    comparison: pd.DataFrame
    posterior: object  # arviz.InferenceData of the random-effects model, with log_likelihood


def _rows(fitted: Fit, model: str, k: int, exact: pd.DataFrame | None, level: float,
          prefix: str = "") -> pd.DataFrame:
    out = summarise(fitted.idata, level)
    if exact is not None:
        ex = exact.set_index("parameter")
        for col in _EXACT:
            out[f"exact_{col}"] = out["parameter"].map(ex[col]).astype(float)
    out["model"] = model
    out["k"] = k
    out["attempts"] = fitted.attempts
    out["target_accept"] = fitted.target_accept
    out["sampler"] = fitted.idata.posterior.attrs.get("sampler", fitted.backend)
    if prefix:
        out["parameter"] = prefix + out["parameter"]
    return out.reindex(columns=list(BAYES_COLUMNS))


def _timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    log.info("%s: %.1f s", label, time.perf_counter() - start)
    return result


def _relabel(idata, terms: Sequence[str]):
    """Drop the padding coefficients of the shared regression model and name the real ones."""
    p = len(terms)
    out = idata.copy()
    out.posterior = out.posterior.isel(term=slice(0, p)).assign_coords(term=list(terms))
    out.constant_data = out.constant_data.isel(term=slice(0, p)).assign_coords(term=list(terms))
    return out


def _uncentre(idata, T: np.ndarray):
    """Coefficients of the uncentred design, ``b = T b_centred`` (the intercept at moderator = 0).

    The sampler works on centred numeric moderators (intercept = the effect at the moderator's mean,
    nearly uncorrelated with the slope); the table reports the intercept of ``moderators.csv``.
    """
    if np.array_equal(T, np.eye(T.shape[0])):
        return idata
    out = idata.copy()
    b = out.posterior["b"]
    values = np.einsum("ij,...j->...i", T, b.transpose(..., "term").values)
    out.posterior["b"] = b.copy(data=np.moveaxis(values, -1, b.dims.index("term")))
    return out


def equal_effects_draws(yi, vi, priors: MetaPriors, study, settings: SamplerSettings, seed: int):
    r"""Exact posterior draws of the equal-effects model (tau = 0), shaped like an MCMC run.

    With :math:`\mu \sim N(m_0, s_0^2)` the posterior is :math:`N(m, s^2)`,
    :math:`1/s^2 = 1/s_0^2 + \sum_i 1/v_i`, :math:`m = s^2(m_0/s_0^2 + \sum_i y_i/v_i)`: no sampler is
    needed (``build_meta_model(..., fixed=True)`` is the same model in PyMC).
    """
    import arviz as az

    m0, s0 = priors.mu["mu"], priors.mu["sigma"]
    prec = 1.0 / s0**2 + np.sum(1.0 / vi)
    mean = (m0 / s0**2 + np.sum(yi / vi)) / prec
    draws = np.random.default_rng(int(seed)).normal(mean, 1.0 / np.sqrt(prec), (settings.chains, settings.draws))
    idata = az.from_dict(
        posterior={"mu": draws},
        observed_data={"y": yi},
        constant_data={"vi": vi},
        sample_stats={"diverging": np.zeros(draws.shape, dtype=bool)},
        dims={"y": ["study"], "vi": ["study"]},
        coords={"study": [str(s) for s in study]},
    )
    for group in idata.groups():
        for key in ("created_at", "arviz_version"):
            idata[group].attrs.pop(key, None)
    idata.posterior.attrs.update({"sampler": "exact (conjugate normal)", "seed": int(seed)})
    return idata


def fit_study_models(frame: pd.DataFrame, bayes: BayesSettings, seed: int, moderators: Sequence[str],
                     dataset: Dataset) -> StudyBayes:
    """Fit the random-effects, equal-effects, meta-regression and three-level models of one dataset.

    Parameters
    ----------
    frame : DataFrame
        A processed study table (``study, yi, vi`` + optional ``study_id`` and moderators).
    bayes : BayesSettings
        Priors, sampler settings and the interval level.
    seed : int
        Seed of the dataset (``derive_seed(config seed, "bayes/<dataset>")``); each model uses
        ``derive_seed(seed, <model name>)``.
    moderators : sequence of str
        Moderator columns; one meta-regression each.  Numeric moderators are centred for sampling and
        reported uncentred, so the intercept means what it means in ``moderators.csv``.
    dataset : Dataset
        Names the dataset in messages.

    Raises
    ------
    SamplingError
        If any model fails its convergence checks after the retry.
    """
    priors = MetaPriors.from_config(bayes.priors)
    settings = bayes.sampler
    level = bayes.level
    yi = frame["yi"].to_numpy(dtype=float)
    vi = frame["vi"].to_numpy(dtype=float)
    study = frame["study"].astype(str).to_numpy()
    k = yi.size
    name = f"{dataset.label}: "
    blocks, effect_models, study_models = [], {}, {}

    # 1. random effects (the headline), checked against the exact posterior; study effects drawn exactly
    re_model = build_meta_model(yi, vi, priors, study=study, marginal=True)
    re = _timed("random_effects", fit, re_model, settings, derive_seed(seed, "random_effects"),
                f"{name}random-effects model", REPORTED)
    blocks.append(_rows(re, "random_effects", k, exact_posterior(yi, vi, priors).summary(level), level))
    re_idata = with_study_effects(re.idata, derive_seed(seed, "random_effects/theta"))
    effect_models["random_effects"] = with_log_likelihood(re_idata, "effect")

    # 2. equal effects, for the comparison: its posterior is normal, so it is drawn exactly
    fe_idata = equal_effects_draws(yi, vi, priors, study, settings, derive_seed(seed, "fixed_effect"))
    effect_models["fixed_effect"] = with_log_likelihood(fe_idata, "effect")

    # 3. meta-regressions, one per moderator, sharing one compiled model where rows are complete
    designs: dict[str, Design] = {}
    for mod in moderators:
        try:
            designs[mod] = design_matrix(frame, [mod])
        except ModeratorError as err:
            log.info("no meta-regression on %s: %s", mod, err)
    complete = [d for d in designs.values() if d.rows.all()]
    shared = None
    if complete:
        p_max = max(d.X.shape[1] for d in complete)
        X0 = np.zeros((k, p_max))
        X0[:, 0] = 1.0
        shared_model = build_meta_model(yi, vi, priors, X=X0, terms=[f"b{j}" for j in range(p_max)],
                                        study=study, marginal=True)
        shared = _timed("compile meta-regression", CompiledModel, shared_model, settings)
    for mod, d in designs.items():
        label = f"{name}meta-regression on {mod}"
        y_d, v_d = yi[d.rows], vi[d.rows]
        Xc, T = d.centred()
        mod_seed = derive_seed(seed, f"mods/{mod}")
        if d.rows.all():
            padded = np.zeros((k, shared.model["X"].get_value().shape[1]))
            padded[:, : Xc.shape[1]] = Xc
            shared.set_data(X=padded)
            reg = _timed(f"meta_regression:{mod}", fit, shared, None, mod_seed, label, REPORTED)
            reg = Fit(_relabel(reg.idata, d.terms), reg.diagnostics, reg.attempts, reg.target_accept,
                      reg.backend)
        else:
            model = build_meta_model(y_d, v_d, priors, X=Xc, terms=d.terms, study=study[d.rows], marginal=True)
            reg = _timed(f"meta_regression:{mod}", fit, model, settings, mod_seed, label, REPORTED)
        if d.rows.all():
            effect_models[f"meta_regression:{mod}"] = with_log_likelihood(reg.idata, "effect")
        reg = Fit(_uncentre(reg.idata, T), reg.diagnostics, reg.attempts, reg.target_accept, reg.backend)
        exact = exact_posterior(y_d, v_d, priors, X=Xc, terms=d.terms).linear_map(T).summary(level)
        blocks.append(_rows(reg, "meta_regression", int(d.rows.sum()), exact, level, prefix=f"{mod}:"))

    # 4. three-level model when effects are nested in studies
    comparisons = [compare_models(effect_models, "effect")]
    if "study_id" in frame and frame["study_id"].nunique() < k:
        codes, clusters = pd.factorize(frame["study_id"].astype(str), sort=False)
        tl_model = build_meta_model(yi, vi, priors, cluster=frame["study_id"].to_numpy(), study=study, marginal=True)
        tl = _timed("three_level", fit, tl_model, settings, derive_seed(seed, "three_level"),
                    f"{name}three-level model", REPORTED)
        blocks.append(_rows(tl, "three_level", k, None, level, prefix="three_level:"))
        study_models["three_level"] = with_log_likelihood(tl.idata, "study")
        for model_name in ("random_effects", "fixed_effect"):
            src = re_idata if model_name == "random_effects" else fe_idata
            study_models[model_name] = with_log_likelihood(src, "study", codes, np.asarray(clusters))
        comparisons.append(compare_models(study_models, "study"))

    table = pd.concat(blocks, ignore_index=True)
    comparison = pd.concat(comparisons, ignore_index=True)
    return StudyBayes(table, comparison, effect_models["random_effects"])


# --------------------------------------------------------------------------------------------------
# writers called by the workflow scripts
# --------------------------------------------------------------------------------------------------


def write_posterior(idata, path: str | os.PathLike) -> None:
    """Write an InferenceData as netCDF atomically (HDF5 via h5netcdf)."""
    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")


def write_bayes(studies, table, comparison, posterior, *, bayes: BayesSettings, seed: int,
                moderators: Sequence[str], dataset: Dataset) -> None:
    """Fit every Bayesian model of a processed study table and write the three outputs atomically.

    ``seed`` is the config seed; the dataset's seed is ``derive_seed(seed, f"bayes/{dataset.name}")``.
    """
    frame = read_studies_table(studies)
    result = fit_study_models(frame, bayes, derive_seed(seed, f"bayes/{dataset.name}"), moderators, dataset)
    write_posterior(result.posterior, posterior)
    write_csv(result.table, table, BAYES_COLUMNS)
    write_csv(result.comparison, comparison, COMPARISON_COLUMNS)


def write_prior_sensitivity(studies, sensitivity, *, bayes: BayesSettings) -> None:
    """``prior_sensitivity.csv`` of one dataset by exact quadrature: the configured priors, the tau priors of
    ``bayes.sensitivity_priors`` and ``bayes.informative_mu`` (mu; ``null`` in the config leaves it out)."""
    frame = read_studies_table(studies)
    yi, vi = frame["yi"].to_numpy(dtype=float), frame["vi"].to_numpy(dtype=float)
    priors = MetaPriors.from_config(bayes.priors)
    sens = prior_sensitivity(yi, vi, priors, bayes.sensitivity_priors, bayes.informative_mu, bayes.level)
    write_csv(sens, sensitivity, SENSITIVITY_COLUMNS)


def robma_cluster(frame: pd.DataFrame):
    """The study of each effect when ``study_id`` groups several effects (the three-level ensemble), else None."""
    if "study_id" not in frame.columns or not frame["study_id"].duplicated().any():
        return None
    return frame["study_id"].to_numpy()


#: Fewest effects for which the RoBMA-PSMA ensemble is fitted: with one effect the bias components are
#: unidentified (a regression on the standard error through one point), and the posterior mode of the
#: heterogeneity models is the prior's.
ROBMA_MIN_K = 2


def write_model_averaging(studies, averaging, pdf, png, *, bayes: BayesSettings, seed: int, dataset: Dataset,
                          workers: int = 1) -> None:
    """``bayes_model_averaging.csv`` and ``figures/robma.{pdf,png}`` of one dataset.

    The table opens with the four exact no-bias models under the configured priors (effect x heterogeneity),
    followed, unless ``bayes.robma.enabled`` is false, by the RoBMA-PSMA ensemble (three-level when
    ``study_id`` groups effects): one row per model, the model-averaged (bias-adjusted), unadjusted and
    conditional estimates, and inclusion Bayes factors.  ``seed`` is the config seed; the ensemble's is
    ``derive_seed(seed, f"robma/{dataset.name}")`` (used only by models that need MCMC).  ``workers``
    processes fit the quadrature models side by side.
    """
    frame = read_studies_table(studies)
    yi, vi = frame["yi"].to_numpy(dtype=float), frame["vi"].to_numpy(dtype=float)
    exact = model_averaging(yi, vi, MetaPriors.from_config(bayes.priors), level=bayes.level)
    reason = None
    if not bayes.robma["enabled"]:
        reason = "The ensemble is switched off (bayes.robma.enabled: false)."
    elif yi.size < ROBMA_MIN_K:
        reason = (f"k = {yi.size}: the bias components need at least {ROBMA_MIN_K} effects (PET and PEESE regress "
                  "the effects on their standard errors), so only the exact no-bias models are reported.")
        log.warning("%s: RoBMA-PSMA not fitted. %s", dataset.name, reason)
    if reason is not None:
        table = exact.reindex(columns=list(ROBMA_COLUMNS))
        figure = unavailable("RoBMA-PSMA", reason, dataset.label)
    else:
        settings = RobmaSettings.from_bayes(bayes)
        fit = fit_robma(yi, vi, robma_cluster(frame), settings, derive_seed(seed, f"robma/{dataset.name}"),
                        workers=workers, progress=log.info)
        table = robma_table(fit, bayes.level, exact)
        figure = robma_figure(fit, dataset.label)
    write_csv(table, averaging, ROBMA_COLUMNS)
    save_figure(figure, pdf, png)


def write_robma_sensitivity(studies, sensitivity, *, bayes: BayesSettings, seed: int, dataset: Dataset,
                            workers: int = 1) -> None:
    """``prior_sensitivity_robma.csv``: the RoBMA-PSMA inclusion Bayes factors and bias-adjusted estimate under
    the configured priors and each alternative of ``bayes.robma.sensitivity`` (only the models whose priors an
    alternative changes are refitted)."""
    frame = read_studies_table(studies)
    yi, vi = frame["yi"].to_numpy(dtype=float), frame["vi"].to_numpy(dtype=float)
    table = prior_sensitivity_robma(yi, vi, robma_cluster(frame), RobmaSettings.from_bayes(bayes),
                                    derive_seed(seed, f"robma/{dataset.name}"), bayes.level, workers=workers,
                                    progress=log.info)
    write_csv(table, sensitivity, ROBMA_SENSITIVITY_COLUMNS)


def write_posterior_figure(studies, posterior, pdf, png, *, bayes: BayesSettings, dataset: Dataset) -> None:
    """Posterior figure of the random-effects model from ``posterior.nc`` and the processed table."""
    import arviz as az

    frame = read_studies_table(studies)
    priors = MetaPriors.from_config(bayes.priors)
    exact = exact_posterior(frame["yi"].to_numpy(dtype=float), frame["vi"].to_numpy(dtype=float), priors)
    idata = az.from_netcdf(posterior, engine="h5netcdf")
    title = f"{dataset.label}: Bayesian random-effects meta-analysis (k = {exact.k})"
    save_figure(posterior_figure(idata, exact, priors, bayes.level, title), pdf, png)
