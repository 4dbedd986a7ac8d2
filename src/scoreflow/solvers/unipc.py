r"""UniPC (Zhao et al. 2023): the unified predictor-corrector in the log-SNR with data prediction, B(h) variants.

With :math:`h = \lambda_t - \lambda_s`, the data predictions :math:`m_0` at the step's start and :math:`m_k` at
log-SNR offsets :math:`r_k h` (earlier nodes for the predictor UniP; for the corrector UniC also the new node,
:math:`r = 1`), and :math:`D_k = (m_k - m_0)/r_k`, a step is

.. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t (e^{-h} - 1)\, m_0 - \alpha_t B(h) \sum_k \rho_k D_k ,

where the :math:`\rho_k` solve :math:`\sum_k \rho_k r_k^{i} = i!\,\varphi_{i+1}(h)/B(h)` for :math:`i = 0, \dots,
n - 1` (n differences), with :math:`\varphi_1 = (e^{-h} - 1)/(-h) - 1` and :math:`\varphi_{i+1} = \varphi_i/(-h) -
1/(i+1)!`, so that the step is exact where :math:`\hat x_0` is a polynomial of degree n in :math:`\lambda` (local
error :math:`O(h^{n+2})`); a single difference takes :math:`\rho = 1/2` (the paper's and diffusers' choice, the
solution to leading order). :math:`B(h) = -h` is ``"bh1"``, :math:`B(h) = e^{-h} - 1` ``"bh2"``. These coefficients depend on
the grid only, so the plan computes them before the first evaluation, and the loop is the shared
:class:`~scoreflow.solvers.multistep.PredictorCorrector`: one NFE per step, the new prediction both corrects the
step and starts the next, the last step uncorrected.  UniPC-p takes p points in its predictor and p + 1 in its
corrector (order p + 1 after the start-up).

With ``"bh2"`` these conditions are those of the exact integral of the interpolating polynomial, and the single
difference is DPM-Solver++(2M)'s: the same steps as ``dpmpp_2m_pc`` / ``dpmpp_3m_pc`` (``tests/test_unipc.py``).
``"bh1"`` is another method: on the random problems of ``benchmarks/bench_few_nfe_random.py`` it had 1.25 times
the error of the best ``dpmpp_*`` method on the same grid in the median, and less than 0.9 times in 8 of 115 cells
(docs/choosing-a-sampler.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._checks import check_choice
from ..methods import choice_option, int_option
from .base import lagrange_weights, register_native
from .multistep import _LOWER_ORDER_FINAL, _PredictorCorrector

__all__ = ["UniPC", "unipc_weights", "B_H_VARIANTS"]

#: UniPC's choices of B(h) (``"bh1"``: -h, ``"bh2"``: e^{-h} - 1; diffusers' default is bh2).
B_H_VARIANTS = ("bh1", "bh2")


def unipc_weights(h: float, offsets: Sequence[float], variant: str = "bh2") -> list[float]:
    r"""UniPC's weights :math:`y_j`, a step being :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s + \alpha_t\sum_j y_j m_j`.

    Args:
        h: the step's log-SNR increment (> 0).
        offsets: the predictions' log-SNR offsets from the step's start in units of h, the start's (0) first.
        variant: ``"bh1"`` or ``"bh2"``.

    Returns:
        One weight per offset: :math:`y_0 = -(e^{-h} - 1) + B(h)\sum_k \rho_k / r_k`, :math:`y_k = -B(h)\rho_k/r_k`.

    Raises:
        ValueError: for a ``variant`` other than ``"bh1"`` and ``"bh2"``.
    """
    check_choice("unipc_weights", "variant", variant, B_H_VARIANTS)
    hh = -h
    phi_1 = math.expm1(hh)
    ratios = [float(r) for r in offsets[1:]]
    n = len(ratios)
    if n == 0:
        return [-phi_1]
    b_h = hh if variant == "bh1" else phi_1
    if n == 1:
        rho = [0.5]
    else:
        rhs, phi, factorial = [], phi_1 / hh - 1.0, 1.0
        for i in range(1, n + 1):
            rhs.append(phi * factorial / b_h)
            factorial *= i + 1
            phi = phi / hh - 1.0 / factorial
        rho = lagrange_weights(ratios, rhs)  # the transposed Vandermonde system sum_k rho_k r_k^i = rhs_i
    differences = [-b_h * p / r for p, r in zip(rho, ratios)]
    return [-phi_1 - sum(differences), *differences]


class UniPC(_PredictorCorrector):
    r"""UniPC with data prediction: a UniP-p predictor and a UniC-p corrector (the new prediction, which the next
    step needs anyway), one NFE per step.

    Options: ``order`` (p, 2 or 3, default 3: the predictor's points; the corrector adds the new one), ``variant``
    (``"bh1"``, ``"bh2"``, default bh2) and ``lower_order_final`` (the last, uncorrected, step first order on
    grids of fewer than 10 steps). The first step is a corrected first-order step (local error :math:`O(h^3)`), so
    the declared global order is 3 for both p (p + 1 on the rest of the grid).
    """

    order = 3
    options = {
        "order": int_option(3, "the predictor's points p (UniP-p, UniC-p)", minimum=2, maximum=3),
        "variant": choice_option("bh2", B_H_VARIANTS, "B(h): bh1 = -h, bh2 = exp(-h) - 1"),
        **_LOWER_ORDER_FINAL,
    }

    def __init__(self, *, order: int = 3, variant: str = "bh2", lower_order_final: bool = True) -> None:
        super().__init__(lower_order_final=lower_order_final)
        self.predictor_points = int(order)
        self.variant = variant

    def rule(self, h: float, offsets: Sequence[float], whole: bool) -> list[float]:
        return unipc_weights(h, offsets, self.variant)


register_native("unipc", UniPC, "UniPC (B(h) bh1/bh2, orders 2, 3): predictor UniP-p, corrector UniC-p, one NFE per step")
