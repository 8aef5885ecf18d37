"""Sampling with nutpie (falling back to PyMC's NUTS), convergence diagnostics and one automatic retry.

Every call takes an integer seed (the pipeline derives it from the config seed and a stable key with
``zlib.crc32``), so the same seed gives the same draws bit for bit.  :func:`fit` samples, checks
r_hat, bulk ESS and divergences against the thresholds below, retries once with a higher
``target_accept`` (smaller steps) and twice the draws when a check fails, and raises :class:`SamplingError` with the
numbers when the retry fails too: an unconverged posterior is never returned silently.

Measured on the shared 2-core machine (``benchmarks/bench_bayes.py``), random-effects model at
k = 300, 4 chains x 1,000 draws: nutpie (numba backend) 7.1 s compilation + 1.2 s sampling for the
non-centred model (bulk ESS ~1,550 for mu and tau), 3.1 s + 0.3 s for the marginal one (ESS
~4,600); PyMC's NUTS 16.7 s and 5.9 s.  Compilation dominates and varies with the machine's load
(4-9 s).  JAX is not installed, so numba is the backend.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr

from alliancemeta.core.errors import SamplingError
from alliancemeta.core.settings import SamplerSettings

log = logging.getLogger(__name__)

#: Convergence thresholds (Vehtari et al. 2021, *Bayesian Analysis* 16, 667-718: r_hat < 1.01 and
#: bulk ESS > 100 per chain, i.e. 400 for four chains).
R_HAT_MAX = 1.01
ESS_BULK_MIN = 400
#: How often a running sampler is polled, and how often its progress goes to the log (seconds).
POLL_SECONDS = 0.1
PROGRESS_SECONDS = 10.0
#: The automatic retry runs with the configured ``retry_target_accept`` (smaller steps remove most
#: divergences that remain) and this many times the draws and tuning steps (which cures a bulk ESS that
#: fell just short).
RETRY_SCALE = 2


# --------------------------------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostics:
    """Worst convergence diagnostics over every element of every posterior variable."""

    max_r_hat: float
    max_r_hat_at: str
    min_ess_bulk: float
    min_ess_bulk_at: str
    min_ess_tail: float
    n_divergent: int
    n_draws: int
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def _worst(ds: xr.Dataset, largest: bool) -> tuple[float, str]:
    best_val, best_at = (-np.inf if largest else np.inf), ""
    for name, da in ds.data_vars.items():
        vals = np.asarray(da.values, dtype=float)
        if vals.size == 0:
            continue
        flat = np.where(np.isnan(vals), np.inf if largest else -np.inf, vals).ravel()
        i = int(np.argmax(flat) if largest else np.argmin(flat))
        val = float(flat[i])
        if (largest and val > best_val) or (not largest and val < best_val):
            idx = np.unravel_index(i, vals.shape)
            where = ",".join(str(da[d].values[j]) if d in da.coords else str(j) for d, j in zip(da.dims, idx,
                                                                                             strict=True))
            best_val, best_at = val, f"{name}[{where}]" if where else name
    return best_val, best_at


def diagnose(idata, var_names, r_hat_max: float = R_HAT_MAX, ess_bulk_min: float = ESS_BULK_MIN) -> Diagnostics:
    """r_hat (rank-normalised split), bulk/tail ESS and divergences of ``idata``'s posterior.

    ``var_names`` are the reported parameters (coefficients, SDs, derived quantities), the quantities
    whose summaries go into the tables; latent effects per study or client are not checked one by one
    (ArviZ takes ~10 s for 800 of them), but any divergence, wherever it arises, fails the check.
    """
    names = [v for v in var_names if v in idata.posterior]
    post = idata.posterior[names] if names else idata.posterior
    rhat, rhat_at = _worst(az.rhat(post), largest=True)
    ess, ess_at = _worst(az.ess(post, method="bulk"), largest=False)
    ess_tail, _ = _worst(az.ess(post, method="tail"), largest=False)
    n_div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    n_draws = int(post.sizes["chain"] * post.sizes["draw"])
    problems = []
    if not rhat <= r_hat_max:
        problems.append(f"r_hat of {rhat_at} is {rhat:.4f} > {r_hat_max}")
    if not ess >= ess_bulk_min:
        problems.append(f"ess_bulk of {ess_at} is {ess:.0f} < {ess_bulk_min}")
    if n_div > 0:
        problems.append(f"{n_div} divergent transition(s) in {n_draws} draws")
    return Diagnostics(rhat, rhat_at, ess, ess_at, ess_tail, n_div, n_draws, tuple(problems))


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------


class CompiledModel:
    """A model ready to sample: compiled once with nutpie (numba), or handed to PyMC's NUTS.

    ``backend`` is ``"nutpie"`` or ``"pymc"``; ``fallback_reason`` says why nutpie was not used.
    """

    def __init__(self, model: pm.Model, settings: SamplerSettings):
        self.model = model
        self.settings = settings
        self.backend = settings.sampler
        self.fallback_reason = ""
        self._nutpie = None
        if self.backend == "nutpie":
            try:
                import nutpie

                self._nutpie = nutpie.compile_pymc_model(model, backend="numba")
            except Exception as err:  # any import or compilation failure: fall back, loudly
                self.backend = "pymc"
                self.fallback_reason = f"{type(err).__name__}: {err}"
                warnings.warn(f"nutpie unavailable ({self.fallback_reason}); falling back to PyMC NUTS",
                              RuntimeWarning, stacklevel=2)

    def set_data(self, **arrays) -> None:
        """Replace data containers (same shapes) without recompiling (nutpie ``with_data``)."""
        pm.set_data(arrays, model=self.model)
        if self._nutpie is not None:
            self._nutpie = self._nutpie.with_data(**arrays)

    def sample(self, seed: int, target_accept: float | None = None, scale: int = 1):
        """One run with ``scale`` times the configured draws and tuning steps."""
        s = self.settings
        ta = float(s.target_accept if target_accept is None else target_accept)
        seed = int(seed)
        draws, tune = s.draws * scale, s.tune * scale
        if self.backend == "nutpie":
            import nutpie

            sampler = nutpie.sample(self._nutpie, draws=draws, tune=tune, chains=s.chains, cores=s.n_cores(),
                                    seed=seed, target_accept=ta, progress_bar=False, save_warmup=False,
                                    blocking=False)
            idata = _wait_logging_progress(sampler, draws, tune)
            label = f"nutpie {nutpie.__version__} (numba)"
        else:
            idata = pm.sample(draws=draws, tune=tune, chains=s.chains, cores=s.n_cores(), random_seed=seed,
                              target_accept=ta, progressbar=False, compute_convergence_checks=False,
                              model=self.model, idata_kwargs={"log_likelihood": False})
            label = f"pymc {pm.__version__} NUTS"
        return _tidy(idata, self.model, {"sampler": label, "seed": seed, "target_accept": ta,
                                         "draws": draws, "tune": tune, "chains": s.chains})


def _finished(sampler) -> bool:
    try:
        return bool(sampler.is_finished)
    except TimeoutError:  # nutpie's way of saying "still running"
        return False


def _wait_logging_progress(sampler, draws: int, tune: int):
    """Wait for a background nutpie run, logging each chain's progress every :data:`PROGRESS_SECONDS`.

    The log (the rule's log file) shows, per chain, the posterior draws done so far (after ``tune`` tuning
    steps) and the divergences so far, so a long run can be followed with ``tail -f``.
    """
    start = last = time.monotonic()
    while not _finished(sampler):
        time.sleep(POLL_SECONDS)
        now = time.monotonic()
        if now - last < PROGRESS_SECONDS:
            continue
        last = now
        part = sampler.inspect()
        # the first variable with values: none while every chain is still tuning (no posterior draw yet), and a
        # variable can be empty (e.g. imputed cells when none are missing)
        first = None
        if "posterior" in part.groups():
            first = next((v for v in part.posterior.data_vars.values() if v.size), None)
        if first is None:
            log.info("sampling: %.0f s, chains tuning (%d steps each)", now - start, tune)
            continue
        values = first.values.reshape(first.sizes["chain"], first.sizes["draw"], -1)
        done = np.isfinite(values[:, :, 0]).sum(axis=1)
        div = int(part.sample_stats["diverging"].sum()) if "diverging" in part.sample_stats else 0
        chains = ", ".join(f"chain {c}: {d}/{draws}" for c, d in enumerate(done))
        log.info("sampling: %.0f s, %s draws, %d divergences so far", now - start, chains, div)
    idata = sampler.wait()
    log.info("sampling finished in %.1f s", time.monotonic() - start)
    return idata


def _dataset(values: Mapping, model: pm.Model) -> xr.Dataset:
    data = {}
    for name, value in values.items():
        dims = model.named_vars_to_dims.get(name)
        value = np.asarray(value)
        if dims is None:
            dims = [f"{name}_dim_{i}" for i in range(value.ndim)]
        data[name] = xr.DataArray(value, dims=list(dims),
                                  coords={d: list(model.coords[d]) for d in dims if d in model.coords})
    return xr.Dataset(data)


def _tidy(idata, model: pm.Model, attrs: Mapping):
    """Keep constrained variables, add observed/constant data, drop timestamps (reproducible files)."""
    from pymc.backends.arviz import find_constants, find_observations

    post = idata.posterior
    post = post[[v for v in post.data_vars if not str(v).endswith("__")]]
    groups = {"posterior": post, "sample_stats": idata.sample_stats}
    for group, values in (("observed_data", find_observations(model)), ("constant_data", find_constants(model))):
        if values:
            groups[group] = _dataset(values, model)
    out = az.InferenceData(**groups)
    for name in out.groups():
        ds = out[name]
        for key in ("created_at", "arviz_version", "sampling_time", "inference_library_version"):
            ds.attrs.pop(key, None)
        if name == "posterior":
            ds.attrs.update({k: (str(v) if isinstance(v, str) else v) for k, v in attrs.items()})
    return out


def sample(model: pm.Model, settings: SamplerSettings, seed: int, target_accept: float | None = None):
    """Draw from ``model``'s posterior with nutpie (numba backend), or PyMC's NUTS as a fallback.

    Parameters
    ----------
    model : pymc.Model
        From :func:`~alliancemeta.studies.bayes.models.build_meta_model`.
    settings : SamplerSettings
        Draws, tuning steps, chains, sampler and target_accept (config ``bayes`` or ``sessions_bayes``).
    seed : int
        Integer random seed; the same seed gives identical draws.

    Returns
    -------
    arviz.InferenceData
        Groups ``posterior`` (constrained variables only), ``sample_stats`` (with ``diverging``),
        ``observed_data`` and ``constant_data``; the sampler, seed and settings are in
        ``posterior.attrs``.  No convergence check here: see :func:`fit`.
    """
    return CompiledModel(model, settings).sample(seed, target_accept)


@dataclass(frozen=True)
class Fit:
    """A checked posterior: the draws, their diagnostics and how many attempts it took."""

    idata: object
    diagnostics: Diagnostics
    attempts: int
    target_accept: float
    backend: str


def fit(model: pm.Model | CompiledModel, settings: SamplerSettings | None, seed: int, label: str,
        var_names: Sequence[str]) -> Fit:
    """Sample, check convergence, retry once (``retry_target_accept``, twice the draws), raise if still unconverged.

    ``model`` may be a :class:`CompiledModel` (then ``settings`` is taken from it and may be None),
    so a compiled model can be refitted to new data without recompiling.  ``label`` names the model in
    warnings and errors; ``var_names`` are the parameters whose r_hat and ESS are checked (see
    :func:`diagnose`).  This is the one MCMC path of the package: study- and session-level models alike.

    Raises
    ------
    SamplingError
        When r_hat > :data:`R_HAT_MAX`, bulk ESS < :data:`ESS_BULK_MIN` or any divergence remains
        after the retry.  The message names the model, the failing quantities and what to try.
    """
    if isinstance(model, CompiledModel):
        compiled = model
        settings = compiled.settings
    else:
        compiled = CompiledModel(model, settings)
    idata = compiled.sample(seed)
    diag = diagnose(idata, var_names)
    if diag.ok:
        return Fit(idata, diag, 1, settings.target_accept, compiled.backend)
    warnings.warn(f"{label}: {'; '.join(diag.problems)}; retrying with target_accept="
                  f"{settings.retry_target_accept} and {RETRY_SCALE} x the draws and tuning steps",
                  RuntimeWarning, stacklevel=2)
    idata = compiled.sample(seed, settings.retry_target_accept, RETRY_SCALE)
    diag2 = diagnose(idata, var_names)
    if diag2.ok:
        return Fit(idata, diag2, 2, settings.retry_target_accept, compiled.backend)
    raise SamplingError(
        f"{label}: MCMC did not converge after a retry with target_accept={settings.retry_target_accept}: "
        f"{'; '.join(diag2.problems)} (first attempt: {'; '.join(diag.problems)}). "
        f"Try more tuning or draws ({settings.section}.tune, {settings.section}.draws) or more informative priors."
    )
