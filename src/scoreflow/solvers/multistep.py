r"""Multistep exponential integrators in the log-SNR with data prediction (DPM-Solver++(2M), (3M)).

For :math:`h = \lambda_t - \lambda_s` the probability-flow ODE has the exact solution (Lu et al. 2022b)

.. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s + \sigma_t \int_{\lambda_s}^{\lambda_t} e^{\lambda}\,\hat x_0(x_\lambda, \lambda)\,d\lambda .

Expanding :math:`\hat x_0` in :math:`\lambda` around :math:`\lambda_s` and integrating the powers exactly gives

.. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t\varphi_1 \hat x_0 + \alpha_t\varphi_2\, h\hat x_0'
          - \alpha_t\varphi_3\, h^2\hat x_0'',\quad \varphi_1 = e^{-h}-1,\ \varphi_2 = \tfrac{\varphi_1}{h}+1,\
          \varphi_3 = \tfrac{\varphi_2}{h}-\tfrac12,

with the derivatives replaced by divided differences of the previous steps' predictions: one NFE per step.
"""

from __future__ import annotations

import torch

from .base import NativeSolver, ScorePredictions

__all__ = ["DPMSolverPP2M", "DPMSolverPP3M"]

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


class _Multistep(NativeSolver):
    options = ("lower_order_final",)

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
        for i, (s, t) in enumerate(zip(ts[:-1], ts[1:])):
            _, sigma_s, lam_s = model.coefs(s)
            alpha_t, sigma_t, lam_t = model.coefs(t)
            h = lam_t - lam_s
            history.insert(0, (lam_s, model.data(x, s)))
            del history[self.order :]
            order = self._step_order(i, n)
            if i == 0 and order >= 2:
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

    The first step is a log-SNR midpoint step (2 NFE), so the method keeps third order; ``lower_order_final``
    (default True) lowers the last two steps to orders 2 and 1 when there are fewer than 10 steps.
    """

    order = 3
