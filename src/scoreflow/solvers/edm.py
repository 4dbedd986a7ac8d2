r"""EDM's Heun sampler (Karras et al. 2022) for any forward SDE, in the scaled variables.

With :math:`y = x/\alpha` and :math:`\bar\sigma = \sigma/\alpha` the probability-flow ODE reads
:math:`dy/d\bar\sigma = \hat\varepsilon(\alpha y, t)`; Heun's trapezoidal rule is applied to it on the grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..methods import StepMonitor
from .base import NativeSolver, Nodes, ScorePredictions, combine, register_native

__all__ = ["EDMHeun"]


class EDMHeun(NativeSolver):
    r"""Heun's method in :math:`\bar\sigma`: :math:`\tilde y = y + \Delta\bar\sigma\, d_s`, :math:`y_t = y + \tfrac{\Delta\bar\sigma}{2}(d_s + d(\tilde y))`; two NFE per step.

    In the unscaled state :math:`x = \alpha y` (kept between steps, so the first evaluation is at :math:`x_T` itself)
    both stages are :math:`\tfrac{\alpha_t}{\alpha_s}x_s + c\,\hat\varepsilon`, with :math:`c = \alpha_t\Delta\bar\sigma` and half of it.
    """

    from_pure_noise = False
    order = 2
    nfe_per_step = 2
    default_schedule = "karras"
    uses = "eps"

    def plan(self, nodes: Nodes, steps: int) -> dict[str, list]:
        plan: dict[str, list] = {"ratio": [], "euler": [], "half": []}
        a, sg = nodes.alpha, nodes.sigma
        for alpha_s, sigma_s, alpha_t, sigma_t in zip(a[:steps], sg[:steps], a[1 : steps + 1], sg[1 : steps + 1]):
            euler = alpha_t * (sigma_t / alpha_t - sigma_s / alpha_s)
            plan["ratio"].append(alpha_t / alpha_s)
            plan["euler"].append(euler)
            plan["half"].append(0.5 * euler)
        return plan

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        ratio, euler, half = columns["ratio"], columns["euler"], columns["half"]
        for i in range(len(ratio)):
            d_s = model.noise(x, i)
            d_t = model.noise(combine(x, ratio[i], [(d_s, euler[i])]), i + 1)
            x = combine(x, ratio[i], [(d_s, half[i]), (d_t, half[i])])
            x = monitor.step(i, model.t[i + 1], x)
        return x


register_native("edm_heun", EDMHeun, "EDM's Heun sampler in sigma/alpha")
