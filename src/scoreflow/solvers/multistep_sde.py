r"""Multistep exponential integrators of the reverse SDE with data prediction: SDE-DPM-Solver++(2M), (3M) and
stochastic predictor-correctors.

The reverse SDEs :math:`dx = [f x - \tfrac{1+\eta}{2} g^2 s]\,dt + \sqrt{\eta}\,g\,d\bar W` (:math:`\eta\in[0,1]`) share
the marginals of the forward process; :math:`\eta = 1` is Anderson's reverse SDE, :math:`\eta = 0` the
probability-flow ODE.  With :math:`h = \lambda_t - \lambda_s` their exact solution (Lu et al. 2022b) is

.. math:: x_t = \frac{\sigma_t}{\sigma_s}e^{-\eta h} x_s + \alpha_t\int_0^h (1+\eta)\,e^{-(1+\eta)(h-\tau)}\,
          \hat x_0(x_{\lambda_s+\tau})\,d\tau + \sigma_t\sqrt{1 - e^{-2\eta h}}\;z .

The noise term is exact (see :mod:`.stochastic` for how z comes from the Brownian path).  The multistep
methods take the integral exactly for the polynomial in :math:`\lambda` through the data predictions of the
previous steps (:func:`.stochastic.exponential_weights`).

The predictor-correctors evaluate the prediction :math:`\hat x_0(\tilde x_t, t)` at the predicted state (noise
included, as SA-Solver does) and redo the step with the same z and the trapezoidal rule
:math:`\tfrac12(\hat x_0(x_s) + \hat x_0(\tilde x_t))` in place of the polynomial.  At :math:`\eta = 1`, in the
signal-to-noise clock :math:`v = e^{2\lambda}` and the state :math:`y = x\alpha/\sigma^2`, the reverse SDE is
:math:`dy = \hat x_0\,dv + dB_v` and the step is the trapezoidal rule in v, the stochastic Heun scheme for additive
noise: :math:`\hat x_0(\tilde x_t) - \hat x_0(x_s)` carries :math:`\partial\hat x_0/\partial y` times the step's noise, and
half of it gives the covariance of the step with its noise that the exact solution has (where that Jacobian is
constant over the step).  Polynomial correctors put almost all the weight on the new point once
:math:`(1+\eta)h` is large, and were worse at 10-20 NFE (``benchmarks/bench_stochastic.py``).  The new prediction
is the next step's, so every method costs one NFE per step; the last step is not corrected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..methods import StepMonitor
from .base import Nodes, ScorePredictions, combine
from .multistep import LOWER_ORDER_FINAL, final_points
from .stochastic import ETA, StepNoise, StochasticSolver, exponential_weights, register_stochastic

__all__ = ["DPMSolverPP2MSDE", "DPMSolverPP3MSDE", "DPMSolverPP2MSDEPC", "DPMSolverPP3MSDEPC"]


class _ExponentialSDE(StochasticSolver):
    """The multistep family of the module docstring; subclasses set the number of points and the corrector."""

    predictor_points: ClassVar[int]
    corrected: ClassVar[bool] = False
    # DPM-Solver++'s second-order form (k-diffusion's "midpoint" solver type) for a two-point predictor.
    midpoint_form: ClassVar[bool] = False
    options = {
        "eta": ETA,
        "lower_order_final": LOWER_ORDER_FINAL,
    }
    structure = ("terms",)

    def __init__(self, *, eta: float = 1.0, lower_order_final: bool = True) -> None:
        self.eta, self.lower_order_final = eta, lower_order_final

    def _points(self, i: int, n: int) -> int:
        """Points of step ``i``'s predictor: as many as there are predictions, fewer in the last steps of short grids."""
        points = min(i + 1, self.predictor_points)
        return final_points(points, i, n, corrected=self.corrected) if self.lower_order_final else points

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        r"""Per step :math:`x_t = c_x x_s + c_z z + \sum_j w_j m_j` over the predictions newest first (``terms`` of them),
        and the corrector's two weights (the new point's and the step start's; zero on the last step)."""
        eta, lam = self.eta, nodes.lam
        plan: dict[str, list] = {"c_x": [], "c_z": [], "w": [], "terms": [], "wc": []}
        for i in range(steps):
            h = lam[i + 1] - lam[i]
            H = (1.0 + eta) * h
            nodes_r = [(lam[i - j] - lam[i]) / h for j in range(self._points(i, steps))]
            if self.midpoint_form and len(nodes_r) == 2:
                mu0, half = -math.expm1(-H), -0.5 / nodes_r[1]
                predictor = [mu0 * (1.0 + half), -mu0 * half]
            else:
                predictor = exponential_weights(nodes_r, H)
            # the trapezoidal rule through the new point and the step's start (module docstring)
            corrector = [-0.5 * math.expm1(-H)] * 2 if self.corrected and i < steps - 1 else [0.0, 0.0]
            alpha_t = nodes.alpha[i + 1]
            plan["c_x"].append(nodes.sigma[i + 1] / nodes.sigma[i] * math.exp(-eta * h))
            plan["c_z"].append(nodes.sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * eta * h)))
            plan["terms"].append(len(predictor))
            plan["w"].append([alpha_t * w for w in predictor] + [0.0] * (self.predictor_points - len(predictor)))
            plan["wc"].append([alpha_t * w for w in corrector])
        return plan

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], noise: StepNoise, x: torch.Tensor,
        monitor: StepMonitor,
    ) -> torch.Tensor:
        c_x, c_z, w, terms, wc = columns["c_x"], columns["c_z"], columns["w"], columns["terms"], columns["wc"]
        n, depth = len(c_x), max(self.predictor_points, len(wc[0]) - 1 if wc else 0)
        spans = columns.get("noise_span") or [(i, i + 1) for i in range(n)]  # the nodes between which a step's noise is drawn
        m, history = model.data(x, 0), []
        for i in range(n):
            history.insert(0, m)
            del history[depth:]
            base = combine(x, c_x[i], [(noise(*spans[i]), c_z[i])] if self.noisy else [])
            x = combine(base, 1.0, zip(history[: terms[i]], w[i]))
            if i < n - 1:
                m = model.data(x, i + 1)
                if self.corrected:  # the corrector's points: the new prediction, then the history, newest first
                    x = combine(base, 1.0, zip([m, *history], wc[i]))
            x, m = model.report(monitor, i, x, m, last=i == n - 1)
        return x

    @property
    def noisy(self) -> bool:
        """Whether the steps add noise (the loop draws none on a noise-free solve)."""
        return self.eta > 0.0


class DPMSolverPP2MSDE(_ExponentialSDE):
    r"""SDE-DPM-Solver++(2M) (k-diffusion's ``sample_dpmpp_2m_sde``, midpoint form): one NFE per step.

    :math:`x_t = \tfrac{\sigma_t}{\sigma_s}e^{-\eta h}x_s + \alpha_t(1 - e^{-(1+\eta)h})\big(\hat x_0^{(i)} +
    \tfrac{1}{2r}(\hat x_0^{(i)} - \hat x_0^{(i-1)})\big) + \sigma_t\sqrt{1-e^{-2\eta h}}\,z`, :math:`r = h_{i-1}/h_i`.
    """

    predictor_points = 2
    midpoint_form = True
    drift_order = 2.0


class DPMSolverPP3MSDE(_ExponentialSDE):
    """SDE-DPM-Solver++(3M): the quadratic through the last three predictions, integrated exactly; one NFE per step.

    The first two steps use one and two points (as k-diffusion's ``sample_dpmpp_3m_sde``, whose quadratic term
    is half the exact one: this one reduces to a third-order ODE solver at ``eta = 0``).
    """

    predictor_points = 3
    drift_order = 3.0


class DPMSolverPP2MSDEPC(_ExponentialSDE):
    """``dpmpp_2m_sde`` predictor with the trapezoidal stochastic corrector of the module docstring: one NFE per step."""

    predictor_points = 2
    midpoint_form = True
    drift_order = 2.0
    corrected = True


class DPMSolverPP3MSDEPC(_ExponentialSDE):
    """``dpmpp_3m_sde`` predictor with the trapezoidal stochastic corrector of the module docstring: one NFE per step."""

    predictor_points = 3
    drift_order = 2.0  # the trapezoidal corrector's (tests: eta = 0 converges at second order)
    corrected = True


register_stochastic("dpmpp_2m_sde", DPMSolverPP2MSDE, "SDE-DPM-Solver++(2M), as k-diffusion's dpmpp_2m_sde")
register_stochastic("dpmpp_3m_sde", DPMSolverPP3MSDE, "SDE-DPM-Solver++(3M) with the exact quadratic term")
register_stochastic("dpmpp_2m_sde_pc", DPMSolverPP2MSDEPC, "dpmpp_2m_sde predictor, trapezoidal corrector through the new prediction")
register_stochastic("dpmpp_3m_sde_pc", DPMSolverPP3MSDEPC, "dpmpp_3m_sde predictor, trapezoidal corrector through the new prediction")
