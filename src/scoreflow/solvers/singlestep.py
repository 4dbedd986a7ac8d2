r"""Single-step exponential integrators in the log-SNR with noise prediction (DDIM, DPM-Solver-2/-3).

The probability-flow ODE has the exact solution (Lu et al. 2022, eq. 3.4), for :math:`h = \lambda_t - \lambda_s`,

.. math:: x_t = \frac{\alpha_t}{\alpha_s} x_s - \alpha_t \int_{\lambda_s}^{\lambda_t} e^{-\lambda}\,
          \hat\varepsilon(x_\lambda, \lambda)\,d\lambda ,

and the solvers expand :math:`\hat\varepsilon` in :math:`\lambda` to order k, using k - 1 extra
evaluations inside the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..methods import StepMonitor
from .base import NativeSolver, Nodes, ScorePredictions, combine, register_native

__all__ = ["DDIM", "DPMSolver2", "DPMSolver3"]


def _steps(nodes: Nodes, steps: int) -> tuple[torch.Tensor, ...]:
    """``(alpha_s, sigma_s, alpha_t, sigma_t, h)`` of every grid step s -> t, float64 vectors."""
    a, sg, lam = nodes.alpha[: steps + 1], nodes.sigma[: steps + 1], nodes.lam[: steps + 1]
    return a[:-1], sg[:-1], a[1:], sg[1:], lam[1:] - lam[:-1]


class DDIM(NativeSolver):
    r"""DDIM, the first-order exponential integrator: :math:`x_t = \tfrac{\sigma_t}{\sigma_s} x_s + \alpha_t(1 - e^{-h})\,\hat x_0(x_s, s)`.

    Identical to :math:`x_t = \tfrac{\alpha_t}{\alpha_s} x_s - \sigma_t (e^h - 1)\hat\varepsilon(x_s, s)`; one NFE per step.
    """

    order = 1

    def plan(self, nodes: Nodes, steps: int) -> dict[str, torch.Tensor]:
        _, sigma_s, alpha_t, sigma_t, h = _steps(nodes, steps)
        return {"ratio": sigma_t / sigma_s, "w": -alpha_t * torch.expm1(-h)}

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        ratio, w = columns["ratio"], columns["w"]
        for i in range(len(ratio)):
            x = combine(x, ratio[i], [(model.data(x, i), w[i])])
            x = monitor.step(i, model.t[i + 1], x)
        return x


class DPMSolver2(NativeSolver):
    r"""DPM-Solver-2 (single-step, midpoint in log-SNR, r = 1/2): two NFE per step.

    :math:`u = \tfrac{\alpha_m}{\alpha_s}x_s - \sigma_m(e^{h/2}-1)\hat\varepsilon(x_s, s)`,
    :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^{h}-1)\hat\varepsilon(u, m)` with :math:`\lambda_m = \lambda_s + h/2`.
    """

    order = 2
    nfe_per_step = 2

    def plan(self, nodes: Nodes, steps: int) -> dict[str, torch.Tensor]:
        alpha_s, _, alpha_t, sigma_t, h = _steps(nodes, steps)
        mid = nodes.extend(nodes.lam[:steps] + 0.5 * h)
        alpha_m, sigma_m = nodes.alpha[mid], nodes.sigma[mid]
        return {
            "a1": alpha_m / alpha_s, "b1": -sigma_m * torch.expm1(0.5 * h),
            "a2": alpha_t / alpha_s, "b2": -sigma_t * torch.expm1(h),
        }

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        a1, b1, a2, b2 = (columns[k] for k in ("a1", "b1", "a2", "b2"))
        steps = len(a1)
        for i in range(steps):
            u = combine(x, a1[i], [(model.noise(x, i), b1[i])])
            x = combine(x, a2[i], [(model.noise(u, steps + 1 + i), b2[i])])
            x = monitor.step(i, model.t[i + 1], x)
        return x


class DPMSolver3(NativeSolver):
    r"""DPM-Solver-3 (single-step, nodes at :math:`\lambda_s + h/3` and :math:`\lambda_s + 2h/3`): three NFE per step.

    With :math:`\varphi_1(z) = (e^z - 1)/z`, :math:`D_k = \hat\varepsilon(u_k, s_k) - \hat\varepsilon(x_s, s)`:
    :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^h - 1)\hat\varepsilon_s - \tfrac{\sigma_t}{r_2}(\varphi_1(h) - 1) D_2`,
    the intermediate states likewise; the plan folds each into :math:`a\,x_s + c\,\hat\varepsilon_s + d\,\hat\varepsilon_k`.
    """

    order = 3
    nfe_per_step = 3
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0

    def plan(self, nodes: Nodes, steps: int) -> dict[str, torch.Tensor]:
        r1, r2 = self.r1, self.r2
        alpha_s, _, alpha_t, sigma_t, h = _steps(nodes, steps)
        lam_s = nodes.lam[:steps]
        n1, n2 = nodes.extend(lam_s + r1 * h), nodes.extend(lam_s + r2 * h)
        (alpha_1, sigma_1), (alpha_2, sigma_2) = (nodes.alpha[n1], nodes.sigma[n1]), (nodes.alpha[n2], nodes.sigma[n2])
        k2 = sigma_2 * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1.0)
        k3 = (sigma_t / r2) * (torch.expm1(h) / h - 1.0)
        return {
            "a1": alpha_1 / alpha_s, "b1": -sigma_1 * torch.expm1(r1 * h),
            "a2": alpha_2 / alpha_s, "c2": -sigma_2 * torch.expm1(r2 * h) + k2, "d2": -k2,
            "a3": alpha_t / alpha_s, "c3": -sigma_t * torch.expm1(h) + k3, "d3": -k3,
        }

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        a1, b1, a2, c2, d2, a3, c3, d3 = (columns[k] for k in ("a1", "b1", "a2", "c2", "d2", "a3", "c3", "d3"))
        steps = len(a1)
        for i in range(steps):
            eps_s = model.noise(x, i)
            u1 = combine(x, a1[i], [(eps_s, b1[i])])
            u2 = combine(x, a2[i], [(eps_s, c2[i]), (model.noise(u1, steps + 1 + i), d2[i])])
            x = combine(x, a3[i], [(eps_s, c3[i]), (model.noise(u2, 2 * steps + 1 + i), d3[i])])
            x = monitor.step(i, model.t[i + 1], x)
        return x


register_native("ddim", DDIM, "DDIM: first-order exponential integrator (deterministic, eta = 0)")
register_native("dpm_solver_2", DPMSolver2, "DPM-Solver-2: single-step, log-SNR midpoint")
register_native("dpm_solver_3", DPMSolver3, "DPM-Solver-3: single-step, third order")
