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
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..methods import StepMonitor
from .base import Nodes, ScorePredictions, combine
from .stochastic import StepNoise, StochasticSolver, eta_option, register_stochastic

__all__ = ["AncestralDDIM", "DPMSolverPPSDE"]

#: DDIM's ``eta``: the noise standard deviation as a fraction of DDPM's posterior one.
DDIM_ETA = eta_option("0: DDIM (the ODE), 1: DDPM's ancestral step; the noise standard deviation as a fraction of DDPM's posterior one (DDIM's and k-diffusion's ancestral eta)")


def ancestral_coefficients(nodes: Nodes, s: int, t: int, eta: float) -> tuple[float, float, float]:
    r"""``(c_x, c_m, c_z)`` of the ancestral step :math:`x_t = c_x x_s + c_m\hat x_0 + c_z z` from node ``s`` to node ``t``.

    :math:`c_x = \tfrac{\sigma_t}{\sigma_s}\sqrt{1 - \eta^2 a}`, :math:`a = 1 - e^{-2h}`, and
    :math:`c_m = \alpha_t - c_x\alpha_s = \alpha_t\big(1 - e^{-h} + e^{-h}\,\eta^2 a/(1 + \sqrt{1-\eta^2 a})\big)`, free of
    cancellation on short steps.
    """
    h = nodes.lam[t] - nodes.lam[s]
    a = -math.expm1(-2.0 * h)
    root = math.sqrt(1.0 - eta**2 * a)
    c_x = nodes.sigma[t] / nodes.sigma[s] * root
    c_m = nodes.alpha[t] * (-math.expm1(-h) + math.exp(-h) * eta**2 * a / (1.0 + root))
    return c_x, c_m, eta * nodes.sigma[t] * math.sqrt(a)


def _columns(coefficients: list[tuple[float, float, float]], prefix: str) -> dict[str, list[float]]:
    return {prefix + name: list(column) for name, column in zip(("x", "m", "z"), zip(*coefficients))}


class AncestralDDIM(StochasticSolver):
    r"""DDIM with noise: the ancestral step of the module docstring with the data prediction at :math:`x_s`; one NFE per step.

    ``eta = 1`` (default) is DDPM's ancestral sampling, the first-order exponential integrator of the reverse SDE.
    """

    options = {"eta": DDIM_ETA}
    to_data = True  # at t = 0 (h = inf): c_x = 0, c_m = alpha_t, c_z = 0, the data prediction

    def __init__(self, *, eta: float = 1.0) -> None:
        self.eta = eta

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        return _columns([ancestral_coefficients(nodes, i, i + 1, self.eta) for i in range(steps)], "c_")

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], noise: StepNoise, x: torch.Tensor,
        monitor: StepMonitor,
    ) -> torch.Tensor:
        c_x, c_m, c_z = columns["c_x"], columns["c_m"], columns["c_z"]
        for i in range(len(c_x)):
            terms = [(model.data(x, i), c_m[i])]
            if self.eta:
                terms.append((noise(i, i + 1), c_z[i]))
            x = monitor.step(i, model.t[i + 1], combine(x, c_x[i], terms))
        return x


class DPMSolverPPSDE(StochasticSolver):
    r"""Single-step stochastic DPM-Solver++ (k-diffusion's ``sample_dpmpp_sde`` with r = 1/2): two NFE per step.

    An ancestral step to the log-SNR midpoint :math:`\lambda_m = \lambda_s + h/2` with noise from the path on
    :math:`[s, m]` gives :math:`u`; the step to :math:`t` is the ancestral step from :math:`x_s` with the
    prediction :math:`\hat x_0(u, m)` and the path's increment over the whole step :math:`[s, t]`.
    """

    nfe_per_step = 2
    drift_order = 2.0
    options = {"eta": DDIM_ETA}
    structure = ("mid",)
    to_data = True  # both stages are ancestral steps (the midpoint of an infinite last step is at t = 0 too)

    def __init__(self, *, eta: float = 1.0) -> None:
        self.eta = eta

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        mid = nodes.extend([0.5 * (nodes.lam[i] + nodes.lam[i + 1]) for i in range(steps)])
        half = [ancestral_coefficients(nodes, i, k, self.eta) for i, k in enumerate(mid)]
        full = [ancestral_coefficients(nodes, i, i + 1, self.eta) for i in range(steps)]
        return {"mid": list(mid), **_columns(half, "a_"), **_columns(full, "c_")}

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], noise: StepNoise, x: torch.Tensor,
        monitor: StepMonitor,
    ) -> torch.Tensor:
        mid, a_x, a_m, a_z = columns["mid"], columns["a_x"], columns["a_m"], columns["a_z"]
        c_x, c_m, c_z = columns["c_x"], columns["c_m"], columns["c_z"]
        for i, k in enumerate(mid):
            terms = [(model.data(x, i), a_m[i])]
            if self.eta:
                terms.append((noise(i, k), a_z[i]))
            terms = [(model.data(combine(x, a_x[i], terms), k), c_m[i])]
            if self.eta:
                terms.append((noise(i, i + 1), c_z[i]))
            x = monitor.step(i, model.t[i + 1], combine(x, c_x[i], terms))
        return x


register_stochastic("ddim", AncestralDDIM, "DDIM with eta > 0; eta = 1 is DDPM's ancestral sampling")
register_stochastic("dpmpp_sde", DPMSolverPPSDE, "single-step stochastic DPM-Solver++ (log-SNR midpoint), as k-diffusion's dpmpp_sde")
