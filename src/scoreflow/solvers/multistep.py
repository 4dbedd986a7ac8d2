r"""Multistep exponential integrators in the log-SNR with data prediction: DPM-Solver++(2M), (3M) and predictor-correctors.

For :math:`h = \lambda_t - \lambda_s` the probability-flow ODE has the exact solution (Lu et al. 2022b)

.. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s + \sigma_t \int_{\lambda_s}^{\lambda_t} e^{\lambda}\,\hat x_0(x_\lambda, \lambda)\,d\lambda .

Expanding :math:`\hat x_0` in :math:`\lambda` around :math:`\lambda_s` and integrating the powers exactly gives

.. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t\varphi_1 \hat x_0 + \alpha_t\varphi_2\, h\hat x_0'
          - \alpha_t\varphi_3\, h^2\hat x_0'',\quad \varphi_1 = e^{-h}-1,\ \varphi_2 = \tfrac{\varphi_1}{h}+1,\
          \varphi_3 = \tfrac{\varphi_2}{h}-\tfrac12,

with the derivatives replaced by divided differences of the previous steps' predictions: one NFE per step.
The predictor-correctors (as in UniPC, Zhao et al. 2023) also interpolate the prediction at the new point,
which the next step needs anyway, and so gain one order at no extra NFE.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ..methods import bool_option
from .base import NativeSolver, ScorePredictions, register_native

__all__ = ["DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP2MPC", "DPMSolverPP3MPC", "DPMSolverPP4MPC"]

# DPM-Solver's rule: with fewer than this many steps the last steps drop to lower order, which
# avoids extrapolating the data prediction over the large final log-SNR steps.
_LOWER_ORDER_FINAL_BELOW = 10


def _update(x, sigma_ratio, alpha_t, h, m0, d1=None, d2=None):
    r"""One exponential-integrator step from the prediction ``m0`` and the scaled differences ``d1`` :math:`\approx h\hat x_0'`, ``d2`` :math:`\approx h^2\hat x_0''`.

    Without ``d2`` this is DPM-Solver++'s second-order form :math:`-\alpha_t\varphi_1(\hat x_0 + d_1/2)`, which
    differs from the Taylor form :math:`\varphi_2 d_1` only at third order.
    """
    phi_1 = torch.expm1(-h)
    if d2 is None:
        return sigma_ratio * x - alpha_t * phi_1 * (m0 if d1 is None else m0 + 0.5 * d1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return sigma_ratio * x - alpha_t * phi_1 * m0 + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2


def _differences(h, history):
    """Scaled divided differences from ``history`` = [(lambda, prediction), ...], newest first (2 or 3 entries)."""
    (l0, m0), (l1, m1) = history[0], history[1]
    d1_0 = (m0 - m1) * (h / (l0 - l1))
    if len(history) == 2:
        return d1_0, None
    l2, m2 = history[2]
    r0, r1 = (l0 - l1) / h, (l1 - l2) / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
    return d1, d2


_LOWER_ORDER_FINAL = {
    "lower_order_final": bool_option(True, f"lower the order of the last steps when there are fewer than {_LOWER_ORDER_FINAL_BELOW} steps"),
}


class _Multistep(NativeSolver):
    options = _LOWER_ORDER_FINAL

    def __init__(self, *, lower_order_final: bool = True) -> None:
        self.lower_order_final = bool(lower_order_final)

    def _step_order(self, i: int, n: int) -> int:
        # A 2M step needs one earlier prediction; 3M starts with a midpoint step whose prediction fills its history.
        order = self.order if self.order >= 3 else min(self.order, i + 1)
        if self.lower_order_final and n < _LOWER_ORDER_FINAL_BELOW:
            order = min(order, n - i)
        return order

    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        traj, history, n = [x], [], len(ts) - 1
        from_noise = model.from_pure_noise(ts[0])
        for i, (s, t) in enumerate(zip(ts[:-1], ts[1:])):
            _, sigma_s, lam_s = model.coefs(s)
            alpha_t, sigma_t, lam_t = model.coefs(t)
            h = lam_t - lam_s
            history.insert(0, (lam_s, model.data(x, s)))
            del history[self.order :]
            order = self._step_order(i, n)
            if i == 0 and from_noise:
                # h = inf: the exact DDIM limit; the prediction at lambda = -inf then enters the divided
                # differences with weight h / inf = 0, the limit of a node infinitely far away.
                x = _update(x, sigma_t / sigma_s, alpha_t, h, history[0][1])
            elif i == 0 and order >= 2:
                x = self._midpoint_start(model, x, s, history, lam_s, sigma_s, h, alpha_t, sigma_t)
            else:
                d1, d2 = _differences(h, history[:order]) if order > 1 else (None, None)
                x = _update(x, sigma_t / sigma_s, alpha_t, h, history[0][1], d1, d2)
            traj.append(x)
        return traj

    @staticmethod
    def _midpoint_start(model, x, s, history, lam_s, sigma_s, h, alpha_t, sigma_t):
        """A second-order single step (extra NFE at log-SNR midpoint) to start a third-order method at full order.

        The midpoint's prediction joins the history, so the next step already has three points.
        """
        lam_m = lam_s + 0.5 * h
        m = model.time_at(lam_m)
        alpha_m, sigma_m, _ = model.coefs(m)
        u = _update(x, sigma_m / sigma_s, alpha_m, 0.5 * h, history[0][1])
        history.insert(0, (lam_m, model.data(u, m)))
        return _update(x, sigma_t / sigma_s, alpha_t, h, history[0][1])


class DPMSolverPP2M(_Multistep):
    r"""DPM-Solver++(2M): :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s - \alpha_t(e^{-h}-1)\big[(1+\tfrac{1}{2r})\hat x_0^{(i)} - \tfrac{1}{2r}\hat x_0^{(i-1)}\big]`, :math:`r = h_{i-1}/h_i`.

    The first step is DDIM. Options: ``lower_order_final`` (default True) makes the last step first order when
    there are fewer than 10 steps.
    """

    order = 2


class DPMSolverPP3M(_Multistep):
    r"""DPM-Solver++(3M): third-order multistep with data prediction, one NFE per step (plus one to start).

    The first step is a log-SNR midpoint step (2 NFE), so the method keeps third order (from pure noise,
    :math:`\lambda = -\infty`, it is a DDIM step: its order drops by one); ``lower_order_final``
    (default True) lowers the last two steps to orders 2 and 1 when there are fewer than 10 steps.
    """

    order = 3


def _polynomial_update(x, sigma_ratio, alpha_t, h, base, others):
    r"""Exponential-integrator step with :math:`\hat x_0` replaced by the polynomial through ``base`` and ``others``.

    ``base`` = (lambda_s, prediction at the step's start), ``others`` = [(lambda_j, prediction_j), ...] at other
    log-SNRs (earlier or later).  With one other point this is DPM-Solver++'s second-order form (more accurate
    than the Taylor form on coarse grids).  Otherwise, writing the polynomial as :math:`\sum_k c_k (\tau/h)^k`,
    :math:`\tau = \lambda - \lambda_s`, the step is :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s + \alpha_t\sum_k c_k\,k!\,h^{-k}\psi_k(h)`
    with :math:`\psi_k = \int_0^h e^{\tau-h}\tau^k/k!\,d\tau = h^k/k! - \psi_{k-1}`, :math:`\psi_0 = 1 - e^{-h}`.
    A step from pure noise (:math:`\lambda_s = -\infty`) is :func:`_update_from_pure_noise`; a prediction there is
    the limit of a node infinitely far away and is left out of later steps' polynomials.
    """
    lam_s, m_s = base
    if len(others) <= 1:
        d1 = [(m - m_s) * (h / (lam - lam_s)) for lam, m in others]
        return _update(x, sigma_ratio, alpha_t, h, m_s, *d1)
    points = [base] + list(others)
    k, hh = len(points), float(h)
    nodes = torch.tensor([(float(lam) - float(lam_s)) / hh for lam, _ in points], dtype=torch.float64)
    inv = torch.linalg.inv(nodes[:, None] ** torch.arange(k, dtype=torch.float64))  # c = inv @ predictions
    psi, weights = -math.expm1(-hh), []
    for j in range(k):
        if j > 0:
            psi = hh**j / math.factorial(j) - psi
        weights.append(psi * math.factorial(j) / hh**j)
    return _combine(sigma_ratio * x, alpha_t, (torch.tensor(weights, dtype=torch.float64) @ inv).tolist(), points)


def _update_from_pure_noise(x, sigma_ratio, alpha_t, m_s, others):
    r"""The step from pure noise (:math:`\alpha_s = 0`, :math:`\lambda_s = -\infty`) to :math:`\lambda_t` through ``others``.

    In :math:`r = e^\lambda = \alpha/\sigma` the exact step is :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s + \sigma_t\int_0^{r_t}\hat x_0\,dr`,
    and :math:`\hat x_0` is smooth in r at r = 0 (where it is the data mean), so the polynomial through the
    predictions at :math:`\rho_j = r_j/r_t` (0 for the start) is integrated over [0, 1]: alone, the DDIM step
    :math:`\tfrac{\sigma_t}{\sigma_s}x_s + \alpha_t\hat x_0`; with the end point, the trapezoidal rule (the limit
    of DPM-Solver++'s second-order form).
    """
    if not others:
        return sigma_ratio * x + alpha_t * m_s
    lam_t = max(float(lam) for lam, _ in others)
    rho = torch.tensor([0.0] + [math.exp(float(lam) - lam_t) for lam, _ in others], dtype=torch.float64)
    k = len(rho)
    moments = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)  # integrals of rho^j over [0, 1]
    vander = rho[:, None] ** torch.arange(k, dtype=torch.float64)
    weights = torch.linalg.solve(vander.T, moments).tolist()
    return _combine(sigma_ratio * x, alpha_t, weights, [(None, m_s)] + list(others))


def _combine(out, alpha_t, weights, points):
    """``out + alpha_t * sum_j weights_j * prediction_j``."""
    for c, (_, m) in zip(weights, points):
        out = out + alpha_t * c * m
    return out


class _PredictorCorrector(NativeSolver):
    """Multistep predictor with ``predictor_points`` points, corrected with one more (the new one), as in UniPC."""

    predictor_points: ClassVar[int]
    options = _LOWER_ORDER_FINAL

    def __init__(self, *, lower_order_final: bool = True) -> None:
        self.lower_order_final = bool(lower_order_final)

    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        traj, n, history = [x], len(ts) - 1, []
        m = model.data(x, ts[0])
        from_noise = model.from_pure_noise(ts[0])
        for i, (s, t) in enumerate(zip(ts[:-1], ts[1:])):
            _, sigma_s, lam_s = model.coefs(s)
            alpha_t, sigma_t, lam_t = model.coefs(t)
            h, ratio = lam_t - lam_s, sigma_t / sigma_s
            last = i == n - 1
            if i == 0 and from_noise:
                # The prediction at lambda = -inf stays out of the history: later polynomials drop it in the limit.
                update = lambda others, m_s=m: _update_from_pure_noise(x, ratio, alpha_t, m_s, others)  # noqa: E731
                others = []
            else:
                history.insert(0, (lam_s, m))
                del history[self.predictor_points :]
                update = lambda others: _polynomial_update(x, ratio, alpha_t, h, history[0], others)  # noqa: E731
                others = history[1:]
            lower = last and self.lower_order_final and n < _LOWER_ORDER_FINAL_BELOW
            x_pred = update([] if lower else others)
            if last:
                x = x_pred
            else:
                m = model.data(x_pred, t)
                x = update([(lam_t, m)] + others)
            traj.append(x)
        return traj


class DPMSolverPP2MPC(_PredictorCorrector):
    r"""DPM-Solver++(2M) predictor with an exponential Adams-Moulton corrector (as in UniPC): one NFE per step, order 3.

    After the predictor reaches :math:`\tilde x_t`, the prediction :math:`\hat x_0(\tilde x_t, t)` (needed by the
    next step anyway) and the two previous ones define a quadratic in :math:`\lambda` that is integrated exactly
    to correct :math:`x_t`.  The last step is not corrected, so ``steps`` steps cost ``steps`` NFE;
    ``lower_order_final`` (default True) makes that last predictor first order when there are fewer than 10 steps.
    """

    order = 3
    predictor_points = 2


class DPMSolverPP3MPC(_PredictorCorrector):
    r"""DPM-Solver++(3M) predictor with a cubic exponential Adams-Moulton corrector: one NFE per step.

    Fourth order in every step but the first (a corrected first-order step, local error :math:`O(h^3)`), so the
    declared global order is 3; on fine grids it behaves like a fourth-order method until that term dominates.
    """

    order = 3
    predictor_points = 3


class DPMSolverPP4MPC(_PredictorCorrector):
    r"""A 4-point exponential Adams-Bashforth predictor with a quartic exponential Adams-Moulton corrector: one NFE per step.

    Fifth order once four predictions are in the history: the measured order on uniform log-SNR and Karras
    grids is 5 (on Gaussians, to 512 steps), which is what it declares. The start-up steps (a corrected
    first-order step, then 2- and 3-point predictors) have local errors :math:`O(h^3)`, :math:`O(h^4)`,
    :math:`O(h^5)` times :math:`\lambda`-derivatives of the data prediction at the noisy end; these are tiny
    on a grid whose first step is short (about :math:`e^{2\lambda(T)}`, 4e-5, under the default VP SDE), but
    on its default ``"log_snr_capped"`` grid, whose first step is long by design, the start-up term dominates
    once the error is below ~1e-5 and the slope there reads 3. ``lower_order_final`` (default True) makes the
    last predictor first order when there are fewer than 10 steps.
    """

    order = 5
    default_schedule = "log_snr_capped"
    predictor_points = 4


register_native("dpmpp_2m", DPMSolverPP2M, "DPM-Solver++(2M): second-order multistep, data prediction")
register_native("dpmpp_3m", DPMSolverPP3M, "DPM-Solver++(3M): third-order multistep, data prediction")
register_native("dpmpp_2m_pc", DPMSolverPP2MPC, "DPM-Solver++(2M) predictor with a UniPC-style corrector")
register_native("dpmpp_3m_pc", DPMSolverPP3MPC, "DPM-Solver++(3M) predictor with a UniPC-style corrector")
register_native("dpmpp_4m_pc", DPMSolverPP4MPC, "4-point exponential Adams predictor with a corrector")
