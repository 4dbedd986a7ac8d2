r"""Ancestral samplers: DDIM with :math:`\eta > 0` (DDPM's ancestral sampling at :math:`\eta = 1`) and the
single-step stochastic DPM-Solver++ (k-diffusion's ``sample_dpmpp_sde``).

An ancestral step from :math:`s` to :math:`t < s` with data prediction :math:`\hat x_0` (Song et al. 2021, DDIM)
keeps the marginal of :math:`x_t` given :math:`x_0 = \hat x_0`:

.. math:: x_t = \alpha_t\hat x_0 + \sqrt{\sigma_t^2 - \varsigma^2}\;\frac{x_s - \alpha_s\hat x_0}{\sigma_s} + \varsigma z,\qquad
          \varsigma = \eta\,\sigma_t\sqrt{1 - e^{-2h}},\quad h = \lambda_t - \lambda_s .

:math:`\varsigma` at :math:`\eta = 1` is the standard deviation of DDPM's posterior :math:`q(x_t | x_s, x_0)`, so
the step is DDPM's ancestral step (and the first-order SDE-DPM-Solver++); :math:`\eta = 0` is DDIM.  In the
scaled variables :math:`x/\alpha`, :math:`\sigma/\alpha` this is k-diffusion's ``get_ancestral_step`` with its
``eta``: the same family, the same parameter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .base import ScorePredictions
from .stochastic import Point, SDEGrid, StepNoise, StochasticSolver, eta_option, register_stochastic

__all__ = ["AncestralDDIM", "DPMSolverPPSDE"]

#: DDIM's ``eta``: the noise standard deviation as a fraction of DDPM's posterior one.
DDIM_ETA = eta_option("0: DDIM (the ODE), 1: DDPM's ancestral step; the noise standard deviation as a fraction of DDPM's posterior one (DDIM's and k-diffusion's ancestral eta)")


def ancestral_coefficients(start: Point, end: Point, eta: float) -> tuple[float, float, float]:
    r"""``(c_x, c_m, c_z)`` of the ancestral step :math:`x_t = c_x x_s + c_m\hat x_0 + c_z z` between two grid points.

    :math:`c_x = \tfrac{\sigma_t}{\sigma_s}\sqrt{1 - \eta^2 a}`, :math:`a = 1 - e^{-2h}`, and
    :math:`c_m = \alpha_t - c_x\alpha_s = \alpha_t\big(1 - e^{-h} + e^{-h}\,\eta^2 a/(1 + \sqrt{1-\eta^2 a})\big)`, free of
    cancellation on short steps.
    """
    h = end.lam - start.lam
    a = -math.expm1(-2.0 * h)
    root = math.sqrt(1.0 - eta**2 * a)
    c_x = end.sigma / start.sigma * root
    c_m = end.alpha * (-math.expm1(-h) + math.exp(-h) * eta**2 * a / (1.0 + root))
    return c_x, c_m, eta * end.sigma * math.sqrt(a)


class AncestralDDIM(StochasticSolver):
    r"""DDIM with noise: the ancestral step of the module docstring with the data prediction at :math:`x_s`; one NFE per step.

    ``eta = 1`` (default) is DDPM's ancestral sampling, the first-order exponential integrator of the reverse SDE.
    """

    options = {"eta": DDIM_ETA}

    def __init__(self, *, eta: float = 1.0) -> None:
        self.eta = eta

    def solve(self, model: ScorePredictions, grid: SDEGrid, noise: StepNoise, x: torch.Tensor) -> Iterator[torch.Tensor]:
        coefs = [ancestral_coefficients(grid.point(i), grid.point(i + 1), self.eta) for i in range(grid.steps)]
        for i, (c_x, c_m, c_z) in enumerate(coefs):
            x = c_x * x + c_m * model.data(x, grid.times[i])
            if c_z:
                x = x + c_z * noise(grid.u[i], grid.u[i + 1])
            yield x


class DPMSolverPPSDE(StochasticSolver):
    r"""Single-step stochastic DPM-Solver++ (k-diffusion's ``sample_dpmpp_sde`` with r = 1/2): two NFE per step.

    An ancestral step to the log-SNR midpoint :math:`\lambda_m = \lambda_s + h/2` with noise from the path on
    :math:`[s, m]` gives :math:`u`; the step to :math:`t` is the ancestral step from :math:`x_s` with the
    prediction :math:`\hat x_0(u, m)` and the path's increment over the whole step :math:`[s, t]`.
    """

    nfe_per_step = 2
    options = {"eta": DDIM_ETA}

    def __init__(self, *, eta: float = 1.0) -> None:
        self.eta = eta

    def solve(self, model: ScorePredictions, grid: SDEGrid, noise: StepNoise, x: torch.Tensor) -> Iterator[torch.Tensor]:
        n = grid.steps
        mid = grid.stage(model.sde, [0.5 * (grid.lam[i] + grid.lam[i + 1]) for i in range(n)], grid.u[-1])
        half = [ancestral_coefficients(grid.point(i), mid.point(i), self.eta) for i in range(n)]
        full = [ancestral_coefficients(grid.point(i), grid.point(i + 1), self.eta) for i in range(n)]
        for i in range(n):
            m = model.data(x, grid.times[i])
            (a_x, a_m, a_z), (c_x, c_m, c_z) = half[i], full[i]
            u = a_x * x + a_m * m
            if a_z:
                u = u + a_z * noise(grid.u[i], mid.u[i])
            x = c_x * x + c_m * model.data(u, mid.times[i])
            if c_z:
                x = x + c_z * noise(grid.u[i], grid.u[i + 1])
            yield x


register_stochastic("ddim", AncestralDDIM, "DDIM with eta > 0; eta = 1 is DDPM's ancestral sampling")
register_stochastic("dpmpp_sde", DPMSolverPPSDE, "single-step stochastic DPM-Solver++ (log-SNR midpoint), as k-diffusion's dpmpp_sde")
