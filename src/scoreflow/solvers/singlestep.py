r"""Single-step exponential integrators in the log-SNR with noise prediction (DDIM, DPM-Solver-2/-3).

The probability-flow ODE has the exact solution (Lu et al. 2022, eq. 3.4), for :math:`h = \lambda_t - \lambda_s`,

.. math:: x_t = \frac{\alpha_t}{\alpha_s} x_s - \alpha_t \int_{\lambda_s}^{\lambda_t} e^{-\lambda}\,
          \hat\varepsilon(x_\lambda, \lambda)\,d\lambda ,

and the solvers expand :math:`\hat\varepsilon` in :math:`\lambda` to order k, using k - 1 extra
evaluations inside the step.
"""

from __future__ import annotations

import torch

from .base import NativeSolver, ScorePredictions, register_native

__all__ = ["DDIM", "DPMSolver2", "DPMSolver3"]


class DDIM(NativeSolver):
    r"""DDIM, the first-order exponential integrator: :math:`x_t = \tfrac{\sigma_t}{\sigma_s} x_s + \alpha_t(1 - e^{-h})\,\hat x_0(x_s, s)`.

    Identical to :math:`x_t = \tfrac{\alpha_t}{\alpha_s} x_s - \sigma_t (e^h - 1)\hat\varepsilon(x_s, s)`; one NFE per step.
    """

    order = 1

    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        traj = [x]
        for s, t in zip(ts[:-1], ts[1:]):
            _, sigma_s, lam_s = model.coefs(s)
            alpha_t, sigma_t, lam_t = model.coefs(t)
            x = (sigma_t / sigma_s) * x - alpha_t * torch.expm1(lam_s - lam_t) * model.data(x, s)
            traj.append(x)
        return traj


class DPMSolver2(NativeSolver):
    r"""DPM-Solver-2 (single-step, midpoint in log-SNR, r = 1/2): two NFE per step.

    :math:`u = \tfrac{\alpha_m}{\alpha_s}x_s - \sigma_m(e^{h/2}-1)\hat\varepsilon(x_s, s)`,
    :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^{h}-1)\hat\varepsilon(u, m)` with :math:`\lambda_m = \lambda_s + h/2`.
    """

    from_pure_noise = False
    order = 2
    nfe_per_step = 2

    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        traj = [x]
        for s, t in zip(ts[:-1], ts[1:]):
            alpha_s, _, lam_s = model.coefs(s)
            alpha_t, sigma_t, lam_t = model.coefs(t)
            h = lam_t - lam_s
            m = model.time_at(lam_s + 0.5 * h)
            alpha_m, sigma_m, _ = model.coefs(m)
            u = (alpha_m / alpha_s) * x - sigma_m * torch.expm1(0.5 * h) * model.noise(x, s)
            x = (alpha_t / alpha_s) * x - sigma_t * torch.expm1(h) * model.noise(u, m)
            traj.append(x)
        return traj


class DPMSolver3(NativeSolver):
    r"""DPM-Solver-3 (single-step, nodes at :math:`\lambda_s + h/3` and :math:`\lambda_s + 2h/3`): three NFE per step.

    With :math:`\varphi_1(z) = (e^z - 1)/z`, :math:`D_k = \hat\varepsilon(u_k, s_k) - \hat\varepsilon(x_s, s)`:
    :math:`x_t = \tfrac{\alpha_t}{\alpha_s}x_s - \sigma_t(e^h - 1)\hat\varepsilon_s - \tfrac{\sigma_t}{r_2}(\varphi_1(h) - 1) D_2`.
    """

    from_pure_noise = False
    order = 3
    nfe_per_step = 3
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0

    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        r1, r2 = self.r1, self.r2
        traj = [x]
        for s, t in zip(ts[:-1], ts[1:]):
            alpha_s, _, lam_s = model.coefs(s)
            alpha_t, sigma_t, lam_t = model.coefs(t)
            h = lam_t - lam_s
            s1, s2 = model.time_at(lam_s + r1 * h), model.time_at(lam_s + r2 * h)
            (alpha_1, sigma_1, _), (alpha_2, sigma_2, _) = model.coefs(s1), model.coefs(s2)
            eps_s = model.noise(x, s)
            u1 = (alpha_1 / alpha_s) * x - sigma_1 * torch.expm1(r1 * h) * eps_s
            d1 = model.noise(u1, s1) - eps_s
            phi_2 = torch.expm1(r2 * h) / (r2 * h) - 1.0
            u2 = (alpha_2 / alpha_s) * x - sigma_2 * torch.expm1(r2 * h) * eps_s - sigma_2 * (r2 / r1) * phi_2 * d1
            d2 = model.noise(u2, s2) - eps_s
            phi = torch.expm1(h) / h - 1.0
            x = (alpha_t / alpha_s) * x - sigma_t * torch.expm1(h) * eps_s - (sigma_t / r2) * phi * d2
            traj.append(x)
        return traj


register_native("ddim", DDIM, "DDIM: first-order exponential integrator (deterministic, eta = 0)")
register_native("dpm_solver_2", DPMSolver2, "DPM-Solver-2: single-step, log-SNR midpoint")
register_native("dpm_solver_3", DPMSolver3, "DPM-Solver-3: single-step, third order")
