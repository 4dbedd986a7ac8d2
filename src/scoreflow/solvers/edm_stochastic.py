r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun steps in :math:`\bar\sigma = \sigma/\alpha` with churn.

In the scaled state :math:`y = x/\alpha`, step i first raises the noise level from :math:`\bar\sigma_i` to
:math:`\hat\sigma_i = (1 + \gamma_i)\bar\sigma_i`, :math:`\gamma_i = \min(S_{churn}/N, \sqrt2 - 1)` where
:math:`S_{tmin} \le \bar\sigma_i \le S_{tmax}` (else 0), by adding noise:
:math:`\hat y = y + S_{noise}\sqrt{\hat\sigma_i^2 - \bar\sigma_i^2}\,z`; then it takes a Heun step of
:math:`dy/d\bar\sigma = \hat\varepsilon(\alpha y, t)` from :math:`\hat\sigma_i` to :math:`\bar\sigma_{i+1}`.
The score is evaluated at the time :math:`\hat t_i` whose :math:`\sigma/\alpha` is :math:`\hat\sigma_i` (above T
in the first step when churn applies there; bound it with ``s_tmax`` if the model is not defined above T).
z is the Brownian path's increment over the step (see :mod:`.stochastic`); with ``s_churn = 0`` this is
``edm_heun``.  As N grows with :math:`S_{churn}` fixed, the churn per step shrinks like 1/N and the chain
converges to one SDE of EDM's family (their eq. 6) for the given schedule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..methods import StepMonitor, interval_option
from .base import Nodes, ScorePredictions, combine
from .stochastic import StepNoise, StochasticSolver, register_stochastic

__all__ = ["EDMStochastic"]

_MAX_GAMMA = math.sqrt(2.0) - 1.0


class EDMStochastic(StochasticSolver):
    r"""EDM's Heun sampler with churn (module docstring); two NFE per step.

    Options (EDM's names; noise levels are :math:`\sigma/\alpha`): ``s_churn`` (total churn, divided over the
    steps), ``s_tmin``/``s_tmax`` (the noise levels where churn applies), ``s_noise`` (factor on the added noise).

    Raises:
        ValueError: if ``s_tmin > s_tmax`` (no noise level would get churn).
    """

    nfe_per_step = 2
    drift_order = 2.0
    default_schedule = "karras"
    uses = "eps"
    structure = ("at", "churn")
    to_data = True  # Heun in sigma/alpha, which is 0 (finite) at t = 0
    options = {
        "s_churn": interval_option(40.0, "total churn S_churn; each step raises sigma/alpha by a factor 1 + min(S_churn/N, sqrt(2) - 1)"),
        "s_tmin": interval_option(0.0, "churn only where sigma/alpha >= s_tmin"),
        "s_tmax": interval_option(math.inf, "churn only where sigma/alpha <= s_tmax"),
        "s_noise": interval_option(1.0, "factor on the standard deviation of the added noise (EDM: slightly above 1)"),
    }

    def __init__(self, *, s_churn: float = 40.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0) -> None:
        if s_tmin > s_tmax:
            raise ValueError(
                f"edm_stochastic: options 's_tmin' and 's_tmax' expected s_tmin <= s_tmax, got s_tmin={s_tmin!r} > "
                f"s_tmax={s_tmax!r}; no step would get churn (use s_churn=0 or method 'edm_heun' for none)."
            )
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        r"""Per step: the node of the first evaluation (the raised time :math:`\hat t_i`, or :math:`t_i` without churn)
        and, in the unscaled state, :math:`\hat x = r\,x + c\,z`, :math:`\tilde x = q\hat x + e\,\hat\varepsilon`,
        :math:`x_t = q\hat x + \tfrac{e}{2}(\hat\varepsilon + \hat\varepsilon(\tilde x, t))` with
        :math:`q = \alpha_t/\hat\alpha`, :math:`e = \alpha_t(\bar\sigma_{i+1} - \hat\sigma_i)`."""
        level = [s / a for a, s in zip(nodes.alpha, nodes.sigma)]
        gamma = [min(self.s_churn / steps, _MAX_GAMMA) if self.s_tmin <= level[i] <= self.s_tmax else 0.0 for i in range(steps)]
        churned = [i for i in range(steps) if gamma[i] > 0.0]
        raised = dict(zip(churned, nodes.extend([-math.log(level[i] * (1.0 + gamma[i])) for i in churned])))
        plan: dict[str, list] = {"at": [], "churn": [], "r": [], "c": [], "q": [], "euler": [], "half": []}
        for i in range(steps):
            k = raised.get(i, i)
            hat, alpha_hat, alpha_t = level[i] * (1.0 + gamma[i]), nodes.alpha[k], nodes.alpha[i + 1]
            if k == i:  # keep the state unscaled, so without churn the first evaluation is at x itself (as edm_heun)
                hat = level[i]
            euler = alpha_t * (level[i + 1] - hat)
            plan["at"].append(k)
            plan["churn"].append(k != i)
            plan["r"].append(alpha_hat / nodes.alpha[i])
            plan["c"].append(alpha_hat * self.s_noise * math.sqrt(max(hat**2 - level[i] ** 2, 0.0)))
            plan["q"].append(alpha_t / alpha_hat)
            plan["euler"].append(euler)
            plan["half"].append(0.5 * euler)
        return plan

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], noise: StepNoise, x: torch.Tensor,
        monitor: StepMonitor,
    ) -> torch.Tensor:
        at, churn, r, c, q = columns["at"], columns["churn"], columns["r"], columns["c"], columns["q"]
        euler, half = columns["euler"], columns["half"]
        for i, k in enumerate(at):
            if churn[i]:
                x = combine(x, r[i], [(noise(i, i + 1), c[i])])
            d = model.noise(x, k)
            d_t = model.noise(combine(x, q[i], [(d, euler[i])]), i + 1)
            x = monitor.step(i, model.t[i + 1], combine(x, q[i], [(d, half[i]), (d_t, half[i])]))
        return x


register_stochastic("edm_stochastic", EDMStochastic, "EDM's stochastic sampler: Heun in sigma/alpha with churn")
