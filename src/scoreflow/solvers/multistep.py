r"""Multistep exponential integrators in the log-SNR with data prediction: DPM-Solver++(2M), (3M) and predictor-correctors.

For :math:`h = \lambda_t - \lambda_s` the probability-flow ODE has the exact solution (Lu et al. 2022b)

.. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s + \alpha_t \int_0^h e^{\tau - h}\,\hat x_0(x_{\lambda_s + \tau}, \lambda_s + \tau)\,d\tau .

Replacing :math:`\hat x_0` by the polynomial through the predictions at earlier (and, for a corrector, later)
log-SNRs and integrating it exactly gives :math:`x_t = \tfrac{\sigma_t}{\sigma_s} x_s + \sum_j w_j \hat x_0^{(j)}`:
one NFE per step, and weights :math:`w_j` that depend on the grid only, so the plan computes them all before
the first evaluation.  DPM-Solver++(2M) is the two-point case in its own second-order form, (3M) the
three-point case; the predictor-correctors (as in UniPC, Zhao et al. 2023) also interpolate the prediction at
the new point, which the next step needs anyway, and so gain one order at no extra NFE.

From pure noise (a flow path at T, :math:`\alpha = 0`, :math:`\lambda = -\infty`) the first step is the exact DDIM
limit (:math:`h = \infty`, weight :math:`\alpha_t`), and a prediction there is the limit of a node infinitely far
away: it drops out of later polynomials.  The predictor-correctors' first step is then taken in
:math:`r = e^\lambda` (:func:`pure_noise_weights`) and that prediction stays out of their history.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..methods import StepMonitor, bool_option
from .base import NativeSolver, Nodes, ScorePredictions, combine, lagrange_weights, register_native

__all__ = [
    "DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP2MPC", "DPMSolverPP3MPC", "DPMSolverPP4MPC", "LinearMultistep",
    "PredictorCorrector", "predictor_corrector_points", "polynomial_weights", "adams_weights", "pure_noise_weights",
    "exponential_weights", "final_points", "LOWER_ORDER_FINAL_BELOW",
]

#: DPM-Solver's ``lower_order_final``: on grids of fewer steps than this the last steps of a multistep method use fewer
#: points, which avoids extrapolating the data prediction over the long final log-SNR steps.  The ODE and SDE solvers
#: share it; diffusers' 15 and rules without a step count were measured against it (docs/choosing-a-sampler.md).
LOWER_ORDER_FINAL_BELOW = 10

#: The ``lower_order_final`` option of every multistep method (ODE and SDE).
LOWER_ORDER_FINAL = bool_option(True, f"use fewer points in the last steps when there are fewer than {LOWER_ORDER_FINAL_BELOW} steps")


def final_points(points: int, i: int, steps: int, *, corrected: bool = False) -> int:
    """The points of step ``i``'s predictor polynomial on a grid of ``steps`` steps under ``lower_order_final``.

    ``points`` from :data:`LOWER_ORDER_FINAL_BELOW` steps on, so every method keeps its order.  Below, at most
    ``steps - i``: the last step takes one point (its order drops to 1), the one before at most two, and so on; a
    predictor-corrector (``corrected``), whose steps but the last are corrected through the new point, drops only its
    last, uncorrected, step to one point.  Every multistep solver with the ``lower_order_final`` option, ODE and SDE,
    takes its points from here (``ipndm`` and the ``velocity_*_pc`` methods have no such option).

    Args:
        points: the points step ``i`` would take without the rule (its history, at most the method's).
        i: the step, from 0.
        steps: the grid's number of steps.
        corrected: whether the method corrects its steps (the last one excepted).

    Returns:
        The number of points, between 1 and ``points``.
    """
    if steps >= LOWER_ORDER_FINAL_BELOW:
        return points
    if corrected:
        return 1 if i == steps - 1 else points
    return min(points, steps - i)


def polynomial_weights(h: float, nodes: Sequence[float], *, dpm_form: bool = True) -> list[float]:
    r"""Weights :math:`y_j` with :math:`\int_0^h e^{\tau-h} P(\tau)\,d\tau = \sum_j y_j m_j` for the polynomial P through
    the values :math:`m_j` at :math:`\tau_j = h\,\text{nodes}_j`; ``nodes[0]`` is the step's start (0).

    With :math:`u = \tau/h`, :math:`\int_0^h e^{\tau-h} u^p\,d\tau = p!\,h^{-p}\psi_p(h)`,
    :math:`\psi_p = \int_0^h e^{\tau-h}\tau^p/p!\,d\tau = h^p/p! - \psi_{p-1}`, :math:`\psi_0 = 1 - e^{-h}`, and
    :math:`y_j` is that functional of the Lagrange polynomial :math:`L_j`.  Two points take DPM-Solver++'s
    second-order form :math:`\psi_0 (m_0 + \tfrac{1}{2}(m_1 - m_0)/\text{nodes}_1)`, more accurate than the exact
    linear integral on coarse grids (they differ at third order), unless ``dpm_form=False``.  Plain float
    arithmetic: a plan computes these for every step in microseconds.
    """
    k = len(nodes)
    psi = [-math.expm1(-h)]
    if k == 1:
        return psi
    if k == 2 and dpm_form:
        half = 0.5 / nodes[1]
        return [psi[0] * (1.0 - half), psi[0] * half]
    for p in range(1, k):
        psi.append(h**p / math.factorial(p) - psi[-1])
    return lagrange_weights(nodes, [psi[p] * math.factorial(p) / h**p for p in range(k)])


def adams_weights(h: float, nodes: Sequence[float]) -> list[float]:
    r"""Weights :math:`y_j` with :math:`\int_0^h P(\tau)\,d\tau = \sum_j y_j m_j` for the polynomial P through the values
    :math:`m_j` at :math:`\tau_j = h\,\text{nodes}_j` (Adams' quadrature: :math:`\int_0^h u^p\,d\tau = h/(p + 1)`, :math:`u = \tau/h`)."""
    return [h * w for w in lagrange_weights(nodes, [1.0 / (p + 1) for p in range(len(nodes))])]


def pure_noise_weights(nodes: Sequence[float]) -> list[float]:
    r"""Weights of a step from pure noise (:math:`\alpha_s = 0`, :math:`\lambda_s = -\infty`), in :math:`\rho = r/r_t`.

    In :math:`r = e^\lambda = \alpha/\sigma` the exact step is :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s + \sigma_t\int_0^{r_t}\hat x_0\,dr`,
    and :math:`\hat x_0` is smooth in r at r = 0 (where it is the data mean), so the polynomial through the
    predictions at ``nodes`` :math:`\rho_j \in [0, 1]` (0 for the start) is integrated over [0, 1]: alone, the DDIM step
    (weight 1, times :math:`\alpha_t`); with the end point, the trapezoidal rule.
    """
    return adams_weights(1.0, nodes)


#: ``rule(h, offsets, whole) -> y``: a step's weights :math:`y_j` (times :math:`\alpha_t`) on the predictions at
#: log-SNR offsets ``h * offsets[j]`` from its start; ``whole`` is false when points at pure noise were dropped.
StepRule = Callable[[float, Sequence[float], bool], list[float]]


def _polynomial_rule(h: float, offsets: Sequence[float], whole: bool) -> list[float]:
    return polynomial_weights(h, offsets, dpm_form=whole)


def exponential_weights(
    nodes: Nodes, s: Sequence[int], t: Sequence[int], points: Sequence[Sequence[int]], width: int,
    rule: StepRule = _polynomial_rule,
) -> list[list[float]]:
    r"""Weights of the steps :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s + \sum_j w_j \hat x_0(\text{point}_j)`, zero-padded to ``width``.

    A point at pure noise (:math:`\lambda = -\infty`) in a step's polynomial gets weight 0, the limit of a node
    infinitely far away; the others then take the exact polynomial integral (the limit of the full one).

    Args:
        nodes: the solve's nodes.
        s, t: node indices of each step's start and end.
        points: for each step, the node indices of the predictions it uses, the step's start first.
        width: the number of columns (the most points of any step).
        rule: the step's weights from its length and offsets (default: :func:`polynomial_weights`, in DPM-Solver++'s
            two-point form where no point was dropped).

    Returns:
        One row of ``width`` weights per step: :math:`\alpha_t` times the rule's.
    """
    lam, rows = nodes.lam, []
    for start, end, at in zip(s, t, points):
        h = lam[end] - lam[start]
        near = [p for p in at if math.isfinite(lam[p])] if math.isfinite(lam[start]) else [at[0]]
        offsets = [0.0] + [(lam[p] - lam[start]) / h for p in near[1:]]
        weights = dict(zip(near, rule(h, offsets, len(near) == len(at))))
        rows.append([nodes.alpha[end] * weights.get(p, 0.0) for p in at] + [0.0] * (width - len(at)))
    return rows


_LOWER_ORDER_FINAL = {"lower_order_final": LOWER_ORDER_FINAL}


def _grid_ratio(nodes: Nodes, steps: int) -> list[float]:
    sigma = nodes.sigma
    return [b / a for a, b in zip(sigma[:steps], sigma[1 : steps + 1])]


class LinearMultistep(NativeSolver):
    r"""The loop of a linear multistep method: :math:`x_{i+1} = r_i x_i + \sum_j w_{ij} p_{i-j}` over the last ``depth``
    predictions p (data or noise, as ``uses`` says), newest first; its plan gives ``ratio``, ``w`` and ``terms``
    (how many predictions each step takes), and optionally a midpoint start (``mid``, ``mid_ratio``, ``mid_w``)."""

    structure = ("terms", "mid")
    depth: ClassVar[int]

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Any], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        ratio, w, terms = columns["ratio"], columns["w"], columns["terms"]
        predict = model.data if self.uses == "x0" else model.noise
        history: list[torch.Tensor] = []
        for i in range(len(ratio)):
            history.insert(0, predict(x, i))
            del history[self.depth :]
            if i == 0 and "mid" in columns:
                u = combine(x, columns["mid_ratio"][0], [(history[0], columns["mid_w"][0])])
                history.insert(0, predict(u, columns["mid"]))
            x = combine(x, ratio[i], zip(history[: terms[i]], w[i]))
            x = monitor.step(i, model.t[i + 1], x)
        return x


class _Multistep(LinearMultistep):
    options = _LOWER_ORDER_FINAL

    @property
    def depth(self) -> int:
        return self.order

    def __init__(self, *, lower_order_final: bool = True) -> None:
        self.lower_order_final = bool(lower_order_final)

    def _step_order(self, i: int, n: int) -> int:
        # A 2M step needs one earlier prediction; 3M starts with a midpoint step whose prediction fills its history.
        order = self.order if self.order >= 3 else min(self.order, i + 1)
        return final_points(order, i, n) if self.lower_order_final else order

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        # The history of prediction nodes, newest first, as the loop will keep it.  3M's first step (order >= 2
        # at step 0) is a midpoint step: the midpoint's prediction alone advances the step and joins the history.
        # From pure noise the first step is DDIM's limit (order 1), without the midpoint.
        plan: dict[str, Any] = {"ratio": _grid_ratio(nodes, steps)}
        history: list[int] = []
        points = []
        from_noise = not math.isfinite(nodes.lam[0])
        for i in range(steps):
            history.insert(0, i)
            del history[self.order :]
            order = 1 if i == 0 and from_noise else self._step_order(i, steps)
            if i == 0 and order >= 2:
                mid = nodes.extend([0.5 * (nodes.lam[0] + nodes.lam[1])])[0]
                plan.update(mid=mid, mid_ratio=[nodes.sigma[mid] / nodes.sigma[0]],
                            mid_w=exponential_weights(nodes, [0], [mid], [[0]], 1)[0])
                history.insert(0, mid)
                points.append([mid])
            else:
                points.append(history[:order])
        plan["w"] = exponential_weights(nodes, range(steps), range(1, steps + 1), points, self.order)
        plan["terms"] = [len(p) for p in points]
        return plan


class DPMSolverPP2M(_Multistep):
    r"""DPM-Solver++(2M): :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s - \alpha_t(e^{-h}-1)\big[(1+\tfrac{1}{2r})\hat x_0^{(i)} - \tfrac{1}{2r}\hat x_0^{(i-1)}\big]`, :math:`r = h_{i-1}/h_i`.

    The first step is DDIM. Options: ``lower_order_final`` (default True) makes the last step first order when
    there are fewer than 10 steps.
    """

    order = 2


class DPMSolverPP3M(_Multistep):
    r"""DPM-Solver++(3M): third-order multistep with data prediction, one NFE per step (plus one to start).

    The first step is a log-SNR midpoint step (2 NFE), so the method keeps third order (from pure noise,
    :math:`\lambda = -\infty`, it is a DDIM step: its order drops by one); ``lower_order_final``
    (default True) lowers the last two steps to orders 2 and 1 when there are fewer than 10 steps.
    """

    order = 3


def predictor_corrector_points(steps: int, points: int, *, oldest: int = 0, lower_final: bool = False) -> tuple[list, list]:
    """Node indices of the predictions each step of a predictor-corrector combines, newest first.

    Step i's predictor takes the predictions at nodes i, i - 1, ... (``points`` of them, none before ``oldest``
    after the first step; with ``lower_final``, as few as :func:`final_points` gives a corrected method); its corrector
    adds node i + 1 after node i.
    """
    predictor, corrector = [], []
    for i in range(steps):
        first = oldest if i > 0 else 0
        history = list(range(i, max(i - points, first - 1), -1))
        predictor.append(history[: final_points(len(history), i, steps, corrected=True)] if lower_final else history)
        corrector.append([i, i + 1] + history[1:])
    return predictor, corrector


class PredictorCorrector(NativeSolver):
    r"""The loop of a linear predictor-corrector with one NFE per step (as in UniPC): with the predictions p (``uses``)
    at the last ``predictor_points`` nodes, :math:`\tilde x_{i+1} = r_i x_i + \sum_j w^P_{ij} p_{i-j}`; the prediction at
    :math:`\tilde x_{i+1}`, which the next step needs anyway, then corrects it,
    :math:`x_{i+1} = r_i x_i + w^C_{i0} p_i + w^C_{i1} p_{i+1} + \sum_{j \ge 1} w^C_{i,j+1} p_{i-j}`.  The last step is not
    corrected.  Its plan gives ``ratio``, ``wp``, ``wc`` and ``terms`` (the predictor's number of points per step)."""

    predictor_points: ClassVar[int]
    structure = ("terms",)

    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Any], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        ratio, wp, wc, terms = columns["ratio"], columns["wp"], columns["wc"], columns["terms"]
        n = len(ratio)
        m, history = model.data(x, 0), []
        for i in range(n):
            history.insert(0, m)
            del history[self.predictor_points :]
            x_pred = combine(x, ratio[i], zip(history[: terms[i]], wp[i]))
            if i == n - 1:
                x = x_pred
            else:  # (a prediction at pure noise, the oldest, is past the step's terms: it drops out)
                m = model.data(x_pred, i + 1)
                x = combine(x, ratio[i], zip([history[0], m, *history[1 : terms[i]]], wc[i]))
            x, m = model.report(monitor, i, x, m, last=i == n - 1)
        return x


class _PredictorCorrector(PredictorCorrector):
    """Multistep exponential predictor with ``predictor_points`` points, corrected with one more (the new one), as in UniPC."""

    options = _LOWER_ORDER_FINAL

    def __init__(self, *, lower_order_final: bool = True) -> None:
        self.lower_order_final = bool(lower_order_final)

    def rule(self, h: float, offsets: Sequence[float], whole: bool) -> list[float]:
        """The weights of one predictor or corrector step (:data:`StepRule`): the exact integral of the polynomial."""
        return _polynomial_rule(h, offsets, whole)

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        # Step i starts from the prediction at node i (at the corrected state's predictor point) and the earlier
        # ones; its corrector adds the prediction at node i + 1.  From pure noise the first step is taken in
        # r = e^lambda, and the prediction at node 0 stays out of the history.
        from_noise = not math.isfinite(nodes.lam[0])
        predictor, corrector = predictor_corrector_points(steps, self.predictor_points, oldest=int(from_noise),
                                                          lower_final=self.lower_order_final)
        s, t = range(steps), range(1, steps + 1)
        wp = exponential_weights(nodes, s, t, predictor, self.predictor_points, self.rule)
        wc = exponential_weights(nodes, s, t, corrector, self.predictor_points + 1, self.rule)
        if from_noise:
            alpha = nodes.alpha[1]
            wp[0] = [alpha * w for w in pure_noise_weights([0.0])] + [0.0] * (self.predictor_points - 1)
            wc[0] = [alpha * w for w in pure_noise_weights([0.0, 1.0])] + [0.0] * (self.predictor_points - 1)
        return {"ratio": _grid_ratio(nodes, steps), "wp": wp, "wc": wc, "terms": [len(p) for p in predictor]}


class DPMSolverPP2MPC(_PredictorCorrector):
    r"""DPM-Solver++(2M) predictor with an exponential Adams-Moulton corrector (as in UniPC): one NFE per step, order 3.

    After the predictor reaches :math:`\tilde x_t`, the prediction :math:`\hat x_0(\tilde x_t, t)` (needed by the
    next step anyway) and the two previous ones define a quadratic in :math:`\lambda` that is integrated exactly
    to correct :math:`x_t`.  The last step is not corrected, so ``steps`` steps cost ``steps`` NFE;
    ``lower_order_final`` (default True) makes that last predictor first order when there are fewer than 10 steps.
    """

    order = 3
    predictor_points = 2


class DPMSolverPP3MPC(_PredictorCorrector):
    r"""DPM-Solver++(3M) predictor with a cubic exponential Adams-Moulton corrector: one NFE per step.

    Fourth order in every step but the first (a corrected first-order step, local error :math:`O(h^3)`), so the
    declared global order is 3; on fine grids it behaves like a fourth-order method until that term dominates.
    """

    order = 3
    predictor_points = 3


class DPMSolverPP4MPC(_PredictorCorrector):
    r"""A 4-point exponential Adams-Bashforth predictor with a quartic exponential Adams-Moulton corrector: one NFE per step.

    Fifth order once four predictions are in the history: the measured order on uniform log-SNR and Karras
    grids is 5 (on Gaussians, to 512 steps), which is what it declares. The start-up steps (a corrected
    first-order step, then 2- and 3-point predictors) have local errors :math:`O(h^3)`, :math:`O(h^4)`,
    :math:`O(h^5)` times :math:`\lambda`-derivatives of the data prediction at the noisy end; these are tiny
    on a grid whose first step is short (about :math:`e^{2\lambda(T)}`, 4e-5, under the default VP SDE), but
    on its default ``"log_snr_capped"`` grid, whose first step is long by design, the start-up term dominates
    once the error is below ~1e-5 and the slope there reads 3. ``lower_order_final`` (default True) makes the
    last predictor first order when there are fewer than 10 steps.
    """

    order = 5
    default_schedule = "log_snr_capped"
    predictor_points = 4


register_native("dpmpp_2m", DPMSolverPP2M, "DPM-Solver++(2M): second-order multistep, data prediction")
register_native("dpmpp_3m", DPMSolverPP3M, "DPM-Solver++(3M): third-order multistep, data prediction")
register_native("dpmpp_2m_pc", DPMSolverPP2MPC, "DPM-Solver++(2M) predictor with a UniPC-style corrector")
register_native("dpmpp_3m_pc", DPMSolverPP3MPC, "DPM-Solver++(3M) predictor with a UniPC-style corrector")
register_native("dpmpp_4m_pc", DPMSolverPP4MPC, "4-point exponential Adams predictor with a corrector")
