r"""Single-step exponential integrators in the log-SNR with noise prediction (DDIM, DPM-Solver-2/-3).

The probability-flow ODE has the exact solution (Lu et al. 2022, eq. 3.4), for :math:`h = \lambda_t - \lambda_s`,

.. math:: x_t = \frac{\alpha_t}{\alpha_s} x_s - \alpha_t \int_{\lambda_s}^{\lambda_t} e^{-\lambda}\,
          \hat\varepsilon(x_\lambda, \lambda)\,d\lambda ,

and the solvers expand :math:`\hat\varepsilon` in :math:`\lambda` to order k, using k - 1 extra
evaluations inside the step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..methods import StepMonitor
from .base import NativeSolver, Nodes, ScorePredictions, combine, register_native

__all__ = ["DDIM", "DPMSolver2", "DPMSolver3"]


def _steps(nodes: Nodes, steps: int) -> zip:
    """``(alpha_s, sigma_s, alpha_t, sigma_t, h)`` of every grid step s -> t."""
    a, sg, lam = nodes.alpha, nodes.sigma, nodes.lam
    return zip(a[:steps], sg[:steps], a[1 : steps + 1], sg[1 : steps + 1], (lt - ls for ls, lt in zip(lam[:steps], lam[1 : steps + 1])))


class DDIM(NativeSolver):
    r"""DDIM, the first-order exponential integrator: :math:`x_t = \tfrac{\sigma_t}{\sigma_s} x_s + \alpha_t(1 - e^{-h})\,\hat x_0(x_s, s)`.

    Identical to :math:`x_t = \tfrac{\alpha_t}{\alpha_s} x_s - \sigma_t (e^h - 1)\hat\varepsilon(x_s, s)`; one NFE per step.
    """

    order = 1
    uses = "native"

    def plan(self, nodes: Nodes, steps: int) -> dict[str, list]:
        # x_t = r x + w x0_hat with x0_hat = a x + b p (p the native prediction), folded into c_x x + c_p p
        a, b = nodes.affine("x0")
        c_x, c_p = [], []
        for k, (_, sigma_s, alpha_t, sigma_t, h) in enumerate(_steps(nodes, steps)):
            w = -alpha_t * math.expm1(-h)  # alpha_t at pure noise: h = inf
            c_x.append(sigma_t / sigma_s + w * a[k])
            c_p.append(w * b[k])
        return {"c_x": c_x, "c_p": c_p}

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        c_x, c_p = columns["c_x"], columns["c_p"]
        for i in range(len(c_x)):
            x = combine(x, c_x[i], [(model.at(x, i), c_p[i])])
            x = monitor.step(i, model.t[i + 1], x)
        return x


class DPMSolver2(NativeSolver):
    r"""DPM-Solver-2 (single-step, midpoint in log-SNR, r = 1/2): two NFE per step.

    :math:`u = \tfrac{\alpha_m}{\alpha_s}x_s - \sigma_m(e^{h/2}-1)\hat\varepsilon(x_s, s)`,
    :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^{h}-1)\hat\varepsilon(u, m)` with :math:`\lambda_m = \lambda_s + h/2`.
    """

    from_pure_noise = False
    order = 2
    nfe_per_step = 2
    uses = "eps"

    def plan(self, nodes: Nodes, steps: int) -> dict[str, list]:
        grid = list(_steps(nodes, steps))
        mid = nodes.extend(lam + 0.5 * h for lam, (*_, h) in zip(nodes.lam, grid))
        plan: dict[str, list] = {"a1": [], "b1": [], "a2": [], "b2": []}
        for (alpha_s, _, alpha_t, sigma_t, h), m in zip(grid, mid):
            plan["a1"].append(nodes.alpha[m] / alpha_s)
            plan["b1"].append(-nodes.sigma[m] * math.expm1(0.5 * h))
            plan["a2"].append(alpha_t / alpha_s)
            plan["b2"].append(-sigma_t * math.expm1(h))
        return plan

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

    from_pure_noise = False
    order = 3
    nfe_per_step = 3
    uses = "eps"
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0

    def plan(self, nodes: Nodes, steps: int) -> dict[str, list]:
        r1, r2 = self.r1, self.r2
        grid = list(_steps(nodes, steps))
        n1 = nodes.extend(lam + r1 * h for lam, (*_, h) in zip(nodes.lam, grid))
        n2 = nodes.extend(lam + r2 * h for lam, (*_, h) in zip(nodes.lam, grid))
        plan: dict[str, list] = {key: [] for key in ("a1", "b1", "a2", "c2", "d2", "a3", "c3", "d3")}
        for (alpha_s, _, alpha_t, sigma_t, h), i1, i2 in zip(grid, n1, n2):
            (alpha_1, sigma_1), (alpha_2, sigma_2) = (nodes.alpha[i1], nodes.sigma[i1]), (nodes.alpha[i2], nodes.sigma[i2])
            k2 = sigma_2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1.0)
            k3 = (sigma_t / r2) * (math.expm1(h) / h - 1.0)
            for key, value in (
                ("a1", alpha_1 / alpha_s), ("b1", -sigma_1 * math.expm1(r1 * h)),
                ("a2", alpha_2 / alpha_s), ("c2", -sigma_2 * math.expm1(r2 * h) + k2), ("d2", -k2),
                ("a3", alpha_t / alpha_s), ("c3", -sigma_t * math.expm1(h) + k3), ("d3", -k3),
            ):
                plan[key].append(value)
        return plan

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
