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

from typing import Any

from .base import Nodes, register_native
from .multistep import LinearMultistep

__all__ = ["IPNDM"]

_COEFFICIENTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class IPNDM(LinearMultistep):
    r"""iPNDM: fourth-order Adams-Bashforth coefficients in :math:`\bar\sigma = \sigma/\alpha` on the noise prediction (see the module docstring).

    In the unscaled state a step is :math:`x_{i+1} = \tfrac{\alpha_{i+1}}{\alpha_i}x_i + \alpha_{i+1}\Delta\bar\sigma\sum_j c_j\hat\varepsilon_{i-j}`.
    """

    order = 2
    default_schedule = "log_snr_capped"
    from_pure_noise = False  # y = x / alpha
    uses = "eps"
    depth = len(_COEFFICIENTS)

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        a, sg, width = nodes.alpha, nodes.sigma, len(_COEFFICIENTS)
        plan: dict[str, Any] = {"ratio": [], "w": [], "terms": []}
        for i, (alpha_s, sigma_s, alpha_t, sigma_t) in enumerate(zip(a[:steps], sg[:steps], a[1 : steps + 1], sg[1 : steps + 1])):
            c = _COEFFICIENTS[min(i, width - 1)]
            step = alpha_t * (sigma_t / alpha_t - sigma_s / alpha_s)
            plan["ratio"].append(alpha_t / alpha_s)
            plan["w"].append([step * c_j for c_j in c] + [0.0] * (width - len(c)))
            plan["terms"].append(len(c))
        return plan


register_native("ipndm", IPNDM, "iPNDM: Adams-Bashforth in sigma/alpha on the noise prediction")
