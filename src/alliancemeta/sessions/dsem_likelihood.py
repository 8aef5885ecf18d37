"""Within-client likelihood of the ``lagged_latent`` model: one PyTensor Op with an analytic gradient.

The session level of :mod:`alliancemeta.sessions.dsem` is a bivariate VAR(1) of the deviations of
alliance and outcome from each client's latent trend lines (Asparouhov, Hamaker & Muthén 2018,
eq. 1-4).  Cells are laid out client by client on a gap-free session grid (a missed session is a
cell whose two values are missing), so the previous session of cell *n* is cell *n - 1* unless *n*
starts a client.  With the deviations

.. math::

    a_n = A_n - \\mu^A_{c(n)} - g^A_{c(n)} t_n, \\qquad y_n = Y_n - \\mu^Y_{c(n)} - g^Y_{c(n)} t_n,

the transition residuals of a continuing cell of client *i* are

.. math::

    r^A_n = a_n - \\phi_A a_{n-1} - \\delta y_{n-1}, \\qquad
    r^Y_n = y_n - \\phi_Y y_{n-1} - (\\beta_W + b_i) a_{n-1},

bivariate normal with SDs :math:`\\sigma_A, \\sigma_Y` and correlation :math:`\\rho`, and the random
slope :math:`b_i \\sim N(0, v)`, :math:`v = \\sigma_b^2`.  The first cell of a client has
:math:`(a_n, y_n)` bivariate normal with SDs :math:`\\sigma_{0A}, \\sigma_{0Y}` and correlation
:math:`\\rho_0`.  Each bivariate density is a marginal times a conditional: :math:`r^A_n \\sim
N(0, \\sigma_A^2)` and, given it, :math:`m_n - b_i x_n \\sim N(0, q^2)` with

.. math::

    m_n = y_n - \\phi_Y y_{n-1} - \\beta_W a_{n-1} - k r^A_n, \\quad x_n = a_{n-1}, \\quad
    k = \\rho\\sigma_Y/\\sigma_A, \\quad q^2 = \\sigma_Y^2 (1 - \\rho^2).

The random slope enters linearly and is integrated out in closed form (the marginal of the
client's :math:`m` is :math:`N(0, q^2 I + v x x')`; matrix determinant lemma and Sherman-Morrison):
with :math:`S_{mm} = \\sum m_n^2`, :math:`S_{xm} = \\sum x_n m_n`, :math:`S_{xx} = \\sum x_n^2` over
the client's :math:`n_i` continuing cells and :math:`D_i = q^2 + v S_{xx}`,

.. math::

    L_i = -\\frac{Q_i}{2 q^2} - \\frac{n_i - 1}{2}\\log q^2 - \\frac12 \\log D_i, \\qquad
    Q_i = S_{mm} - \\frac{v S_{xm}^2}{D_i},

so the sampler never sees the per-client slopes (which, weakly identified by about ten sessions
each, made a funnel with :math:`\\sigma_b` in the non-centred form: ess_bulk < 400 in 4 x 1,000
draws on the bundled data); :math:`\\hat b_i = v S_{xm}/D_i` is the slope's conditional mean.  The
log-likelihood is the sum of the first-cell densities, the :math:`r^A` densities and the
:math:`L_i`, with :math:`-\\log 2\\pi` per cell.  Missing cells enter as parameters (their values
are imputed by the sampler, as in Mplus' DSEM), so a lag across a missed session runs through the
imputed cell and is never taken from the previous *row*.

Why an Op: written as a PyTensor graph, the likelihood and its reverse-mode gradient came to about
300 nodes, and nutpie's numba compilation of them took about 35 s of CPU on the development
machine.  Here two loops over the cells compute the log-likelihood and, by the chain rule written
out in :func:`_kernel`, its gradient with respect to every input in O(N); the loops are compiled
once by numba and cached on disk.  :func:`loglik_reference` evaluates the same likelihood directly
with SciPy's normal densities (dense covariance per client) for the tests, and finite differences
check the gradient.
"""

from __future__ import annotations

import hashlib
import inspect

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_type
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key

#: Order of the scalar parameters in the ``theta`` input.
THETA = ("alliance_ar", "outcome_ar", "outcome_to_alliance", "sigma_alliance", "sigma_outcome", "rho",
         "sigma0_alliance", "sigma0_outcome", "rho0", "beta_within", "sd_slope")  # fmt: skip
#: Differentiable inputs (in order), then the data inputs.
PARAMETER_INPUTS = ("level_alliance", "level_outcome", "trend_alliance", "trend_outcome", "alliance_missing",
                    "outcome_missing", "theta")  # fmt: skip
DATA_INPUTS = ("cell_client", "time", "first", "alliance", "outcome", "alliance_missing_index",
               "outcome_missing_index")  # fmt: skip
LOG_2PI = float(np.log(2.0 * np.pi))


def _kernel(la, ly, ga, gy, a_miss, y_miss, theta, cell_client, time, first, a_obs, y_obs, ia, iy):
    """Log-likelihood and its gradient with respect to the seven parameter inputs (see module docstring).

    Returns ``(logp, d_la, d_ly, d_ga, d_gy, d_a_miss, d_y_miss, d_theta)`` with ``logp`` a 0-d array.

    Chain rule.  For continuing cells, with :math:`u = r^A/\\sigma_A^2`, the alliance part gives
    :math:`\\partial\\ell/\\partial r^A = -u`; the outcome part is the client's marginal
    :math:`L_i` (module docstring) with :math:`\\partial L_i/\\partial m_n = -(m_n - \\hat b_i x_n)/q^2`
    and :math:`\\partial L_i/\\partial x_n = \\hat b_i (m_n - \\hat b_i x_n)/q^2 - v x_n/D_i`, where
    :math:`m_n = y_n - \\phi_Y y_{n-1} - \\beta_W a_{n-1} - k r^A_n` and :math:`x_n = a_{n-1}`.  These flow
    to :math:`a_n, y_n, a_{n-1}, y_{n-1}`, and from the deviations to the client levels (:math:`-1`),
    trends (:math:`-t_n`) and imputed cells (:math:`+1`).  For the scales,
    :math:`\\partial L_i/\\partial q^2 = \\tfrac12 Q_i/q^4 - \\tfrac12 v S_{xm}^2/(q^2 D_i^2) -
    \\tfrac12 (n_i - 1)/q^2 - \\tfrac12 / D_i` and :math:`\\partial L_i/\\partial v = \\tfrac12 (S_{xm}^2/D_i^2 -
    S_{xx}/D_i)`, with :math:`\\partial k/\\partial\\sigma_A = -k/\\sigma_A`, :math:`\\partial k/\\partial\\sigma_Y =
    k/\\sigma_Y`, :math:`\\partial q/\\partial\\sigma_Y = q/\\sigma_Y`, :math:`\\partial k/\\partial\\rho =
    \\sigma_Y/\\sigma_A` and :math:`\\partial q/\\partial\\rho = -q\\rho/(1-\\rho^2)`.
    """
    n_cells = cell_client.shape[0]
    n_clients = la.shape[0]
    a = a_obs.copy()
    y = y_obs.copy()
    for j in range(ia.shape[0]):
        a[ia[j]] = a_miss[j]
    for j in range(iy.shape[0]):
        y[iy[j]] = y_miss[j]
    phi_a, phi_y, delta = theta[0], theta[1], theta[2]
    s_a, s_y, rho, s0_a, s0_y, rho0 = theta[3], theta[4], theta[5], theta[6], theta[7], theta[8]
    beta_w, sd_b = theta[9], theta[10]
    if not (s_a > 0.0 and s_y > 0.0 and s0_a > 0.0 and s0_y > 0.0 and abs(rho) < 1.0 and abs(rho0) < 1.0):
        # outside the support (a sampler's extreme step, e.g. an SD underflowing to 0): zero density
        return (np.full((), -np.inf), np.zeros(n_clients), np.zeros(n_clients), np.zeros(n_clients),
                np.zeros(n_clients), np.zeros(ia.shape[0]), np.zeros(iy.shape[0]), np.zeros(11))  # fmt: skip
    v = sd_b * sd_b
    k = rho * s_y / s_a
    q2 = s_y * s_y * (1.0 - rho * rho)
    q = np.sqrt(q2)
    k0 = rho0 * s0_y / s0_a
    q0 = s0_y * np.sqrt(1.0 - rho0 * rho0)
    da = np.empty(n_cells)
    dy = np.empty(n_cells)
    for n in range(n_cells):
        c = cell_client[n]
        da[n] = a[n] - la[c] - ga[c] * time[n]
        dy[n] = y[n] - ly[c] - gy[c] * time[n]
    # pass 1: residuals and the per-client sums of the outcome part
    r_a = np.zeros(n_cells)
    m = np.zeros(n_cells)
    s_mm = np.zeros(n_clients)
    s_xm = np.zeros(n_clients)
    s_xx = np.zeros(n_clients)
    n_i = np.zeros(n_clients)
    quad_a = 0.0
    quad0 = 0.0
    n_first = 0
    g_da = np.zeros(n_cells)
    g_dy = np.zeros(n_cells)
    g_theta = np.zeros(11)
    for n in range(n_cells):
        if first[n]:
            e = dy[n] - k0 * da[n]
            u = da[n] / (s0_a * s0_a)
            w = e / (q0 * q0)
            quad0 += da[n] * u + e * w
            n_first += 1
            g_da[n] += -u + k0 * w
            g_dy[n] += -w
            g_theta[6] += da[n] * u / s0_a - 1.0 / s0_a - w * da[n] * k0 / s0_a
            g_theta[7] += (w * da[n] * k0 + e * w - 1.0) / s0_y
            g_theta[8] += w * da[n] * s0_y / s0_a - (e * w - 1.0) * rho0 / (1.0 - rho0 * rho0)
        else:
            c = cell_client[n]
            r_a[n] = da[n] - phi_a * da[n - 1] - delta * dy[n - 1]
            m[n] = dy[n] - phi_y * dy[n - 1] - beta_w * da[n - 1] - k * r_a[n]
            x = da[n - 1]
            quad_a += r_a[n] * r_a[n]
            s_mm[c] += m[n] * m[n]
            s_xm[c] += x * m[n]
            s_xx[c] += x * x
            n_i[c] += 1.0
    # per client: marginal over the random slope b_i ~ N(0, v)
    logp_y = 0.0
    g_q2 = 0.0
    g_v = 0.0
    b_hat = np.zeros(n_clients)
    d_i = np.zeros(n_clients)
    for c in range(n_clients):
        if n_i[c] == 0.0:
            continue
        d = q2 + v * s_xx[c]
        d_i[c] = d
        b_hat[c] = v * s_xm[c] / d
        quad = s_mm[c] - v * s_xm[c] * s_xm[c] / d
        logp_y += -0.5 * quad / q2 - 0.5 * (n_i[c] - 1.0) * np.log(q2) - 0.5 * np.log(d)
        g_q2 += (
            0.5 * quad / (q2 * q2) - 0.5 * v * s_xm[c] * s_xm[c] / (q2 * d * d) - 0.5 * (n_i[c] - 1.0) / q2 - 0.5 / d
        )
        g_v += 0.5 * (s_xm[c] * s_xm[c] / (d * d) - s_xx[c] / d)
    # pass 2: gradients of the continuing cells
    g_k = 0.0
    for n in range(1, n_cells):
        if first[n]:
            continue
        c = cell_client[n]
        x = da[n - 1]
        resid = m[n] - b_hat[c] * x
        g_m = -resid / q2
        g_x = b_hat[c] * resid / q2 - v * x / d_i[c]
        g_ra = -r_a[n] / (s_a * s_a) - k * g_m
        g_k -= g_m * r_a[n]
        g_dy[n] += g_m
        g_dy[n - 1] += -phi_y * g_m - delta * g_ra
        g_da[n - 1] += -beta_w * g_m + g_x - phi_a * g_ra
        g_da[n] += g_ra
        g_theta[0] -= g_ra * da[n - 1]
        g_theta[1] -= g_m * dy[n - 1]
        g_theta[2] -= g_ra * dy[n - 1]
        g_theta[9] -= g_m * da[n - 1]
    n_trans = n_cells - n_first
    g_q = 2.0 * q * g_q2
    g_theta[3] += quad_a / (s_a * s_a * s_a) - n_trans / s_a - g_k * k / s_a
    g_theta[4] += g_k * k / s_y + g_q * q / s_y
    g_theta[5] += g_k * s_y / s_a - g_q * q * rho / (1.0 - rho * rho)
    g_theta[10] += 2.0 * sd_b * g_v
    logp = (-0.5 * quad0 - n_first * (np.log(s0_a) + np.log(q0)) - 0.5 * quad_a / (s_a * s_a)
            - n_trans * np.log(s_a) + logp_y - n_cells * LOG_2PI)  # fmt: skip
    g_la = np.zeros(n_clients)
    g_ly = np.zeros(n_clients)
    g_ga = np.zeros(n_clients)
    g_gy = np.zeros(n_clients)
    for n in range(n_cells):
        c = cell_client[n]
        g_la[c] -= g_da[n]
        g_ly[c] -= g_dy[n]
        g_ga[c] -= g_da[n] * time[n]
        g_gy[c] -= g_dy[n] * time[n]
    g_a_miss = np.empty(ia.shape[0])
    for j in range(ia.shape[0]):
        g_a_miss[j] = g_da[ia[j]]
    g_y_miss = np.empty(iy.shape[0])
    for j in range(iy.shape[0]):
        g_y_miss[j] = g_dy[iy[j]]
    return np.full((), logp), g_la, g_ly, g_ga, g_gy, g_a_miss, g_y_miss, g_theta


#: The kernel compiled for calls from Python (``perform``: PyMC's own NUTS, ``compile_logp``) and
#: from nutpie's compiled graph; cached on disk so that a new process loads it instead of compiling
#: it again.  NumPy's error model: floating-point exceptions give inf/nan, never a Python exception.
_kernel_python = numba.njit(cache=True, error_model="numpy")(_kernel)


class LaggedLatentLoglik(Op):
    """PyTensor Op: ``logp, *gradients = op(*parameters, *data)`` (inputs in the order of
    :data:`PARAMETER_INPUTS` then :data:`DATA_INPUTS`).  Only ``logp`` is meant to be used; its
    gradient is the other outputs (first derivatives only, which is all NUTS needs)."""

    __props__ = ()

    def make_node(self, *inputs):
        if len(inputs) != len(PARAMETER_INPUTS) + len(DATA_INPUTS):
            raise TypeError(f"LaggedLatentLoglik takes {len(PARAMETER_INPUTS) + len(DATA_INPUTS)} inputs")
        floats = [pt.as_tensor_variable(x).astype("float64") for x in inputs[: len(PARAMETER_INPUTS)]]
        cc, time, first, a_obs, y_obs, ia, iy = (pt.as_tensor_variable(x) for x in inputs[len(PARAMETER_INPUTS) :])
        data = [cc.astype("int64"), time.astype("float64"), first.astype("bool"), a_obs.astype("float64"),
                y_obs.astype("float64"), ia.astype("int64"), iy.astype("int64")]  # fmt: skip
        for var in floats + data:
            if var.ndim != 1:
                raise TypeError(f"LaggedLatentLoglik: every input must be a vector, got {var.type}")
        outputs = [pt.dscalar("logp")] + [pt.dvector(f"d_{name}") for name in PARAMETER_INPUTS]
        return Apply(self, floats + data, outputs)

    def perform(self, node, inputs, output_storage):
        for storage, value in zip(output_storage, _kernel_python(*inputs), strict=True):
            storage[0] = np.asarray(value)

    def connection_pattern(self, node):
        n_out = 1 + len(PARAMETER_INPUTS)
        return [[True] + [False] * (n_out - 1)] * len(PARAMETER_INPUTS) + [[False] * n_out] * len(DATA_INPUTS)

    def grad(self, inputs, output_grads):
        gradients = self(*inputs)[1:]  # merged with the forward node by PyTensor's MergeOptimizer
        g = output_grads[0]
        return [g * d for d in gradients] + [disconnected_type() for _ in DATA_INPUTS]


#: PyTensor caches the numba code of an Op on disk under a key; the default key (the Op's type and
#: props) would outlive a change of the kernel and serve stale machine code, so the key carries a hash
#: of the kernel's source.
_CACHE_KEY = "LaggedLatentLoglik-" + hashlib.sha256(inspect.getsource(_kernel).encode()).hexdigest()


@register_funcify_and_cache_key(LaggedLatentLoglik)
def _numba_funcify_lagged_latent(op, node=None, **kwargs):
    return _kernel_python, _CACHE_KEY


lagged_latent_loglik = LaggedLatentLoglik()


def loglik_reference(la, ly, ga, gy, a_miss, y_miss, theta, cell_client, time, first, a_obs, y_obs, ia, iy):
    """Direct evaluation of the module-docstring likelihood (tests compare the kernel with it): bivariate
    normal densities of the first cells and of the alliance residuals, and per client the outcome
    residuals' multivariate normal density with the random slope integrated out, covariance
    :math:`q^2 I + \\sigma_b^2 x x'`, evaluated with a dense Cholesky factor."""
    from scipy import stats

    a = np.array(a_obs, dtype=float)
    y = np.array(y_obs, dtype=float)
    a[ia] = a_miss
    y[iy] = y_miss
    phi_a, phi_y, delta, s_a, s_y, rho, s0_a, s0_y, rho0, beta_w, sd_b = theta
    da = a - la[cell_client] - ga[cell_client] * time
    dy = y - ly[cell_client] - gy[cell_client] * time
    first = np.asarray(first, dtype=bool)
    cov0 = [[s0_a**2, rho0 * s0_a * s0_y], [rho0 * s0_a * s0_y, s0_y**2]]
    total = stats.multivariate_normal(np.zeros(2), cov0).logpdf(np.column_stack([da[first], dy[first]])).sum()
    cont = np.flatnonzero(~first)
    r_a = da[cont] - phi_a * da[cont - 1] - delta * dy[cont - 1]
    total += stats.norm(0.0, s_a).logpdf(r_a).sum()
    # outcome given the alliance residual: mean k r_a, SD q; the slope b_i adds b_i x_n to the mean
    k = rho * s_y / s_a
    q2 = s_y**2 * (1 - rho**2)
    m = dy[cont] - phi_y * dy[cont - 1] - beta_w * da[cont - 1] - k * r_a
    x = da[cont - 1]
    for c in np.unique(cell_client[cont]):
        sel = cell_client[cont] == c
        cov = q2 * np.eye(sel.sum()) + sd_b**2 * np.outer(x[sel], x[sel])
        total += stats.multivariate_normal(np.zeros(sel.sum()), cov).logpdf(m[sel])
    return float(total)
