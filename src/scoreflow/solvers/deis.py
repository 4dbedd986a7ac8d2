r"""DEIS (Zhang & Chen 2023), its multistep :math:`\rho`AB variant with Lagrange interpolation in :math:`\log\rho`.

With :math:`y = x/\alpha` and :math:`\rho = \sigma/\alpha = e^{-\lambda}` the probability-flow ODE is
:math:`dy/d\rho = \hat\varepsilon`.  DEIS interpolates the last p noise predictions by a polynomial in
:math:`\log\rho` and integrates it exactly in :math:`\rho`.  In the log-SNR, :math:`\tau = \lambda - \lambda_s \in
[0, h]`, that is the exponential integrator of the noise prediction,

.. math:: x_t = \frac{\alpha_t}{\alpha_s} x_s - \sigma_t \int_0^h e^{h - \tau} P(\tau)\,d\tau
          = \frac{\alpha_t}{\alpha_s} x_s - \sigma_t \sum_j y_j \hat\varepsilon_j ,

with :math:`y_j` the integrals of the Lagrange polynomials against :math:`e^{h-\tau}` (moments
:math:`\int_0^h e^{h-\tau}\tau^p/p!\,d\tau = \varphi_p`, :math:`\varphi_0 = e^h - 1`, :math:`\varphi_p =
\varphi_{p-1} - h^p/p!`).  One point is DDIM; p points give order p, the lower orders while the history fills.
This is diffusers' ``DEISMultistepScheduler`` (``algorithm_type="deis"``, ``solver_type="logrho"``) to round-off
(``tests/test_deis.py``).  Where scoreflow's ``dpmpp_*`` methods interpolate the data prediction, DEIS interpolates
the noise prediction; at 5 NFE that can be the better choice (``benchmarks/bench_few_nfe_random.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..methods import int_option
from .base import Nodes, register_native
from .multistep import _LOWER_ORDER_FINAL, LinearMultistep, final_points, polynomial_weights

__all__ = ["DEIS", "noise_polynomial_weights"]


def noise_polynomial_weights(h: float, nodes: Sequence[float]) -> list[float]:
    r"""Weights :math:`y_j` with :math:`\int_0^h e^{h-\tau} P(\tau)\,d\tau = \sum_j y_j m_j` for the polynomial P through
    the values :math:`m_j` at :math:`\tau_j = h\,\text{nodes}_j` (``nodes[0] = 0``, the step's start).

    The data prediction's integral reflected: with :math:`\tau = -s`, :math:`\int_0^h e^{h-\tau} P(\tau)\,d\tau =
    -\int_0^{-h} e^{s-(-h)} P(-s)\,ds`, which is :func:`~scoreflow.solvers.multistep.polynomial_weights` at
    :math:`-h` on the same nodes, negated (its moments' recurrence is the module docstring's :math:`\varphi_p`).
    """
    return [-w for w in polynomial_weights(-h, nodes, dpm_form=False)]


class DEIS(LinearMultistep):
    r"""DEIS, :math:`\rho`AB with log-:math:`\rho` Lagrange interpolation of the noise prediction (module docstring):
    one NFE per step, ``order`` (1-3, default 3) points; the record declares the default's order, 3.

    ``lower_order_final`` (default True): on grids of fewer than 10 steps the last step takes one point and the one
    before at most two.
    """

    order = 3
    uses = "eps"
    from_pure_noise = False  # y = x / alpha
    options = {"order": int_option(3, "the points of the interpolating polynomial (its order)", minimum=1, maximum=3),
               **_LOWER_ORDER_FINAL}

    def __init__(self, *, order: int = 3, lower_order_final: bool = True) -> None:
        self.points = int(order)
        self.lower_order_final = bool(lower_order_final)

    @property
    def depth(self) -> int:
        return self.points

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        lam, alpha, sigma = nodes.lam, nodes.alpha, nodes.sigma
        plan: dict[str, Any] = {"ratio": [], "w": [], "terms": []}
        for i in range(steps):
            k = min(self.points, i + 1)
            if self.lower_order_final:
                k = final_points(k, i, steps)
            h = lam[i + 1] - lam[i]
            offsets = [(lam[i - j] - lam[i]) / h for j in range(k)]
            y = noise_polynomial_weights(h, offsets)
            plan["ratio"].append(alpha[i + 1] / alpha[i])
            plan["w"].append([-sigma[i + 1] * y_j for y_j in y] + [0.0] * (self.points - k))
            plan["terms"].append(k)
        return plan


register_native("deis", DEIS, "DEIS (rhoAB, log-rho Lagrange): multistep on the noise prediction, orders 1-3")
