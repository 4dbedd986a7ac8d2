r"""EDM's Heun sampler (Karras et al. 2022) for any forward SDE, in the scaled variables.

With :math:`y = x/\alpha` and :math:`\bar\sigma = \sigma/\alpha` the probability-flow ODE reads
:math:`dy/d\bar\sigma = \hat\varepsilon(\alpha y, t)`; Heun's trapezoidal rule is applied to it on the grid.
"""

from __future__ import annotations

import torch

from .base import NativeSolver, ScorePredictions, register_native

__all__ = ["EDMHeun"]


class EDMHeun(NativeSolver):
    r"""Heun's method in :math:`\bar\sigma`: :math:`\tilde y = y + \Delta\bar\sigma\, d_s`, :math:`y_t = y + \tfrac{\Delta\bar\sigma}{2}(d_s + d(\tilde y))`; two NFE per step."""

    from_pure_noise = False
    order = 2
    nfe_per_step = 2
    default_schedule = "karras"

    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        traj = [x]
        for s, t in zip(ts[:-1], ts[1:]):
            alpha_s, sigma_s, _ = model.coefs(s)
            alpha_t, sigma_t, _ = model.coefs(t)
            dsigma = sigma_t / alpha_t - sigma_s / alpha_s
            # Keep the state unscaled between steps, so the first evaluation is at x_T itself.
            d_s = model.noise(x, s)
            y = x / alpha_s
            d_t = model.noise(alpha_t * (y + dsigma * d_s), t)
            x = alpha_t * (y + 0.5 * dsigma * (d_s + d_t))
            traj.append(x)
        return traj


register_native("edm_heun", EDMHeun, "EDM's Heun sampler in sigma/alpha")
