r"""iPNDM (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"): Adams-Bashforth in :math:`\bar\sigma`.

With :math:`y = x/\alpha` and :math:`\bar\sigma = \sigma/\alpha` the probability-flow ODE is
:math:`dy/d\bar\sigma = \hat\varepsilon(\alpha y, t)`.  iPNDM steps it with the fixed Adams-Bashforth combinations of
the last (up to four) noise predictions, newest first, as if the steps were equal:

.. math:: y_{i+1} = y_i + (\bar\sigma_{i+1} - \bar\sigma_i)\sum_j c_j \hat\varepsilon_{i-j},\quad
          c \in \{(1),\ (\tfrac32, -\tfrac12),\ (\tfrac{23}{12}, -\tfrac{16}{12}, \tfrac{5}{12}),\
          (\tfrac{55}{24}, -\tfrac{59}{24}, \tfrac{37}{24}, -\tfrac{9}{24})\},

the lower orders while the history fills; one NFE per step.  On the grids diffusion models use (far from equal in
:math:`\bar\sigma`) the fixed coefficients make it second order, which is what it declares; at 5-10 NFE it often
beats the exponential multistep methods on the same grid (``benchmarks/bench_few_nfe_random.py --ipndm``).
"""

from __future__ import annotations

import torch

from .base import NativeSolver, ScorePredictions, register_native

__all__ = ["IPNDM"]

_COEFFICIENTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class IPNDM(NativeSolver):
    r"""iPNDM: fourth-order Adams-Bashforth coefficients in :math:`\bar\sigma = \sigma/\alpha` on the noise prediction (see the module docstring)."""

    order = 2
    default_schedule = "log_snr_capped"
    from_pure_noise = False  # y = x / alpha

    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        traj, history = [x], []
        for s, t in zip(ts[:-1], ts[1:]):
            alpha_s, sigma_s, _ = model.coefs(s)
            alpha_t, sigma_t, _ = model.coefs(t)
            history.insert(0, model.noise(x, s))
            del history[len(_COEFFICIENTS) :]
            slope = sum(c * eps for c, eps in zip(_COEFFICIENTS[len(history) - 1], history))
            x = alpha_t * (x / alpha_s + (sigma_t / alpha_t - sigma_s / alpha_s) * slope)
            traj.append(x)
        return traj


register_native("ipndm", IPNDM, "iPNDM: Adams-Bashforth in sigma/alpha on the noise prediction")
