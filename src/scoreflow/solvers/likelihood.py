r"""Native likelihood solvers: the probability-flow ODE by exponential Adams predictor-correctors, its divergence
integral by a quadrature on the same nodes.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon`, :math:`\lambda = \log(\alpha/\sigma)`, the data and noise predictions
:math:`\hat x_0`, :math:`\hat\varepsilon` (:math:`x = \alpha\hat x_0 + \sigma\hat\varepsilon`) and
:math:`r = e^\lambda = \alpha/\sigma`, :math:`\bar\sigma = 1/r`, the probability-flow ODE is linear up to a prediction:

.. math:: \frac{d(x/\sigma)}{dr} = \hat x_0, \qquad \frac{d(x/\alpha)}{d\bar\sigma} = \hat\varepsilon,

and its divergence is :math:`\nabla\cdot F = D\,\tfrac{d\log\sigma}{dt} + \tfrac{d\lambda}{dt}\,\alpha\nabla\cdot\hat x_0
= D\,\tfrac{d\log\alpha}{dt} - \tfrac{d\lambda}{dt}\,\sigma\nabla\cdot\hat\varepsilon`, so over a step from s to t

.. math:: \Delta_{s\to t} = \int_s^t \nabla\cdot F\,dt' = D\log\frac{\sigma_t}{\sigma_s} + \int_{r_s}^{r_t}\sigma\,\nabla\cdot\hat x_0\,dr
          = D\log\frac{\alpha_t}{\alpha_s} + \int_{\bar\sigma_s}^{\bar\sigma_t}\alpha\,\nabla\cdot\hat\varepsilon\,d\bar\sigma,

with :math:`\alpha\nabla\cdot\hat\varepsilon = r\,(D - \alpha\nabla\cdot\hat x_0)`.  Each step replaces the prediction and
the divergence integrand by their polynomial through the nodes of the step (Lagrange, integrated exactly), as the
samplers' exponential integrators do: the linear part is exact, one model evaluation (a forward pass and the
vector-Jacobian products of the trace) per step, and the divergence quadrature costs nothing beyond the
evaluations the state needs.  Where the data is sharp (:math:`\lambda > 0`) the step is taken in
:math:`\bar\sigma` with the noise prediction, smooth there (:math:`\hat\varepsilon \to 0` linearly in
:math:`\bar\sigma` at the data); towards noise (:math:`\lambda \le 0`) in r with the data prediction, smooth
down to pure noise (:math:`r = 0`, where :math:`\hat x_0` is the data mean), which a flow path reaches at T, for an
exact model: a score model's error e in :math:`\hat\varepsilon` is :math:`e/r` in :math:`\hat x_0`, and the fixed grid's
order falls to about 2 (docs/likelihood.md, "A model that is not an exact score").
Polynomials in :math:`\lambda` itself (DPM-Solver++'s weights) fit neither end: in the likelihood direction their
weights grow like :math:`e^{|h|}` and, measured on the 16-D mixture, they needed about 20 % more evaluations.

The predictor interpolates the predictions at the step's start and the three nodes before it (four points), the
corrector adds the prediction at the predicted end point, which the next step needs anyway; the divergence integral
takes the corrector's five points.  Both are fifth order once the history is full.  The last step is corrected too
(its evaluation gives the divergence at the end), so N steps cost N + 1 evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..dynamics.counting import CountedScore
from ..dynamics.augmented import DifferenceSteps, counted_difference_hutchinson
from ..dynamics.divergence import CentralDifferences, value_and_exact_divergence, value_and_hutchinson_divergence
from ..methods import Method, Stepping, interval_option, register
from ..sde import ForwardSDE
from .base import Nodes, combine, lagrange_basis, lagrange_weights, on_device

__all__ = ["LikelihoodPC", "step_weights", "register_likelihood", "POINTS"]

#: Interpolation points of the predictor; the corrector and the divergence quadrature take one more.
POINTS = 4

#: :math:`\int_0^1 u^p\,du` for p below POINTS: Adams' moments over a step scaled to [0, 1].
_UNIT_MOMENTS = tuple(1.0 / (p + 1) for p in range(POINTS))

#: A step's ``(w, q, c)`` (see :func:`step_weights`).
StepWeights = tuple[list[float], list[float], float]


def step_weights(lam: Sequence[float], alpha: Sequence[float], sigma: Sequence[float], points: Sequence[int],
                 end: int, switch: float) -> tuple[bool, float, StepWeights, StepWeights]:
    r"""The coefficients of one step from node ``points[0]`` to node ``end``: the predictor's, through the predictions
    at ``points``, and the corrector's, through those at ``[points[0], end, *points[1:]]``.

    For each, ``x_end = ratio * x_start + sum_j w_j pred_j`` and
    :math:`\Delta_{s\to t} = D\,c + \sum_j q_j\,\nabla\!\cdot\hat x_0^{(j)}`, where pred is :math:`\hat\varepsilon`
    (``noise`` True: the step is taken in :math:`\bar\sigma`, when :math:`\lambda_s >` ``switch`` and the end is not
    pure noise) or :math:`\hat x_0` (in r): polynomials in v (:math:`\bar\sigma` or r) through the predictions,
    integrated over the step (:func:`_corrector_quadrature` has the corrector's weights from the predictor's).

    Args:
        lam, alpha, sigma: the nodes' log-SNRs and coefficients (Python floats; :math:`\lambda = -\infty` at pure noise).
        points: node indices of the predictor's predictions, the step's start first.
        end: the node the step ends at.
        switch: the log-SNR above which steps are taken in :math:`\bar\sigma`.

    Returns:
        ``(noise, ratio, (wp, qp, cp), (wc, qc, c))``: the predictor's and the corrector's ``(w, q, c)``.
    """
    s = points[0]
    noise = lam[s] > switch and math.isfinite(lam[end])
    sign = -1.0 if noise else 1.0
    v = [math.exp(sign * lam[j]) if math.isfinite(lam[j]) else 0.0 for j in (*points, end)]
    span = v[-1] - v[0]
    u = [(vj - v[0]) / span for vj in v[:-1]]
    basis = lagrange_basis(u)
    quad = lagrange_weights(u, _UNIT_MOMENTS, basis)  # int_0^1 of each Lagrange polynomial
    corrector_quad = _corrector_quadrature(u, quad, basis[0])
    if noise:
        ratio = alpha[end] / alpha[s]
        log_ratio = math.log(ratio)

        def coefficients(at: Sequence[int], quad: Sequence[float]) -> StepWeights:
            r = [math.exp(lam[j]) for j in at]
            q = [-span * qj * rj * alpha[j] for qj, rj, j in zip(quad, r, at)]
            return [alpha[end] * span * qj for qj in quad], q, log_ratio + span * sum(qj * rj for qj, rj in zip(quad, r))
    else:
        ratio = sigma[end] / sigma[s]
        log_ratio = math.log(ratio)

        def coefficients(at: Sequence[int], quad: Sequence[float]) -> StepWeights:
            return [sigma[end] * span * qj for qj in quad], [span * qj * sigma[j] for qj, j in zip(quad, at)], log_ratio
    corrector = coefficients([s, end, *points[1:]], corrector_quad)
    return noise, ratio, coefficients(points, quad), corrector


def _corrector_quadrature(u: Sequence[float], quad: Sequence[float], q: Sequence[float]) -> list[float]:
    r""":math:`\int_0^1` of the Lagrange polynomials through the nodes ``[u[0], 1, *u[1:]]`` (the corrector's: the end
    u = 1 added) from ``quad``, those of the polynomials :math:`\ell_j` through ``u`` (the predictor's), and ``q``,
    the coefficients (ascending) of :math:`Q(u) = \prod_j (u - u_j)` (:func:`~scoreflow.solvers.base.lagrange_basis`).

    The end's polynomial is :math:`Q/Q(1)` and node j's is :math:`\ell_j - \ell_j(1)\,Q/Q(1)` (each is 1 at its node
    and 0 at the others), and :math:`\ell_j(1)/Q(1) = 1/((1 - u_j)\,Q'(u_j))`: one set of Lagrange weights serves
    both, where two sets (4 and 5 points) cost twice as much.
    """
    integral = sum(c / (p + 1) for p, c in enumerate(q))
    at_end = 1.0  # Q(1)
    for u_m in u:
        at_end *= 1.0 - u_m
    through = []
    for j, u_j in enumerate(u):
        slope = 1.0 - u_j  # (1 - u_j) Q'(u_j), rounded as ever (the steps chosen follow the weights' rounding)
        for m, u_m in enumerate(u):
            if m != j:
                slope *= u_j - u_m
        through.append(quad[j] - integral / slope)
    return [through[0], integral / at_end, *through[1:]]


class _Evaluator:
    r"""One model evaluation at a node: the native prediction p and its divergence :math:`\nabla\cdot p` (exact, or per
    Hutchinson probe, shape ``(P, B)``; recorded for finiteness).  With the node's affine maps
    :math:`\hat x_0 = a x + b p` the divergence of the data prediction is :math:`a D + b\,\nabla\cdot p`.

    ``difference``: Hutchinson's :math:`v^\top J v` by central differences at these steps, taken at each node's
    :math:`(\alpha, \sigma)` (:func:`~scoreflow.dynamics.augmented.counted_difference_hutchinson`).  These carry no
    graph: a call given ``sums`` (a ``(B, *D)`` and a ``(P, B)`` tensor) writes their
    :meth:`~scoreflow.dynamics.divergence.CentralDifferences.sums` there and returns them, p and
    :math:`\nabla\cdot p` divided by the node's :meth:`factors`, for a solver to fold those into its weights (the
    other traces return p and :math:`\nabla\cdot p`, factors 1)."""

    def __init__(self, score: CountedScore, probes: torch.Tensor | None, chunk_size: int | None, like: torch.Tensor,
                 *, difference: DifferenceSteps | None = None) -> None:
        self.score, self.probes, self.chunk_size = score, probes, chunk_size
        self.steps = difference
        self.dim = like[0].numel()
        self.divergence_shape = (1 if probes is None else probes.shape[0], like.shape[0])
        self.nfe_vjp = 0
        self.differences = None if difference is None else CentralDifferences(probes, like)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, alpha: float, sigma: float, *,
                 sums: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        def native(y: torch.Tensor) -> torch.Tensor:
            return self.score.predict(y, t)

        if self.probes is None:
            p, div = value_and_exact_divergence(native, x, chunk_size=self.chunk_size)
            div = div[None]
            self.nfe_vjp += self.dim
        elif self.differences is not None:
            p, div = counted_difference_hutchinson(self.score, native, x, self.differences, self.steps(alpha, sigma),
                                                   sums=sums)
        else:
            p, div = value_and_hutchinson_divergence(native, x, self.probes)
            self.nfe_vjp += self.probes.shape[0]
        self.score.finite.record("divergence", div, t)
        return p, div

    def factors(self, alpha: float, sigma: float) -> tuple[float, float]:
        r"""What a call given ``sums`` returns times these is p and :math:`\nabla\cdot p` at the node
        :math:`(\alpha, \sigma)`: :math:`1/(2P)` and :math:`1/(2\delta)` for central differences, else 1 and 1."""
        if self.differences is None:
            return 1.0, 1.0
        return 0.5 / self.differences.n, 0.5 / self.steps(alpha, sigma)

    def predictions(self, x: torch.Tensor, t: torch.Tensor, alpha: float, sigma: float,
                    coefs: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r""":math:`\hat x_0`, :math:`\hat\varepsilon` and :math:`\nabla\cdot\hat x_0` at ``(x, t)`` (``alpha``, ``sigma``:
        the node's coefficients; ``coefs``: its ``[a_x0, b_x0, a_eps, b_eps]`` as 0-dim tensors, a planned solve)."""
        a0, b0, ae, be = coefs
        p, div = self(x, t, alpha, sigma)
        return torch.addcmul(x * a0, p, b0), torch.addcmul(x * ae, p, be), div * b0 + a0 * self.dim


def _affine(nodes: Nodes) -> list[list[float]]:
    """Per node ``[a_x0, b_x0, a_eps, b_eps]``."""
    (a0, b0), (ae, be) = nodes.affine("x0"), nodes.affine("eps")
    return [list(row) for row in zip(a0, b0, ae, be)]


class LikelihoodPC:
    """The fixed-grid solver (see the module docstring): steps on the grid's nodes, weights planned before the loop.

    Args (checked by the method's record):
        switch: the log-SNR above which steps are taken in sigma/alpha with the noise prediction (below: in alpha/sigma
            with the data prediction).
    """

    options = {"switch": interval_option(0.0, "log-SNR above which steps use the noise prediction in sigma/alpha", low=-20.0, high=20.0)}

    def __init__(self, *, switch: float = 0.0) -> None:
        self.switch = switch

    def plan(self, nodes: Nodes, dim: int) -> dict[str, Any]:
        """Per step: the side (noise or data prediction), ratio, predictor and corrector weights, the divergence
        weights, and the constant part of the log-density change (summed: :math:`D\\sum_i c_i`)."""
        lam, alpha, sigma = nodes.lam, nodes.alpha, nodes.sigma
        plan: dict[str, Any] = {"noise": [], "ratio": [], "wp": [], "wc": [], "q": [], "terms": []}
        total = 0.0
        for i in range(len(lam) - 1):
            history = list(range(i, max(i - POINTS, -1), -1))
            noise, ratio, (wp, _, _), (wc, q, c) = step_weights(lam, alpha, sigma, history, i + 1, self.switch)
            pad = [0.0] * (POINTS - len(history))
            plan["noise"].append(noise)
            plan["ratio"].append(ratio)
            plan["wp"].append(wp + pad)
            plan["wc"].append(wc + pad)
            plan["q"].append(q + pad)
            plan["terms"].append(len(history))
            total += c
        plan["constant"] = dim * total
        return plan

    def likelihood(self, score: CountedScore, sde: ForwardSDE, x: torch.Tensor, probes: torch.Tensor | None,
                   stepping: Stepping, *, chunk_size: int | None = None,
                   difference: DifferenceSteps | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Integrate from ``x`` at ``stepping.times[0]`` (``t_min``) through the grid to T (a grid from t = 0, log-SNR
        +inf, is refused by the front-end, before the grid is built).

        ``difference``: with ``probes``, Hutchinson's estimates by central differences at these steps (two forward
        passes per probe, no VJP) instead of VJPs.

        Returns:
            the end state :math:`x_T`, the log-density change :math:`\\Delta` of shape ``(P, B)`` (P = 1 for the exact
            trace), and the number of vector-Jacobian products taken.
        """
        grid = stepping.times
        nodes = Nodes(sde, grid, score.prediction)
        plan = self.plan(nodes, x[0].numel())
        coefs = on_device(_affine(nodes), x)
        ratio, wp, wc, q = (on_device(plan[k], x) for k in ("ratio", "wp", "wc", "q"))
        evaluate = _Evaluator(score, probes, chunk_size, x, difference=difference)
        times = grid.unbind()
        x0, eps, d = evaluate.predictions(x, times[0], nodes.alpha[0], nodes.sigma[0], coefs[0])
        history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        delta = torch.full_like(d, plan["constant"])
        for i, (noise, terms) in enumerate(zip(plan["noise"], plan["terms"])):
            history.insert(0, (x0, eps, d))
            del history[POINTS:]
            pick = 1 if noise else 0
            x_pred = combine(x, ratio[i], [(h[pick], w) for h, w in zip(history[:terms], wp[i])])
            new = evaluate.predictions(x_pred, times[i + 1], nodes.alpha[i + 1], nodes.sigma[i + 1], coefs[i + 1])
            points = [history[0], new, *history[1:terms]]
            x = combine(x, ratio[i], [(h[pick], w) for h, w in zip(points, wc[i])])
            delta = combine(delta, 1.0, [(h[2], w) for h, w in zip(points, q[i])])
            x0, eps, d = new
        return x, delta, evaluate.nfe_vjp


def register_likelihood(name: str, solver: Callable[..., Any], summary: str, *, adaptive: bool) -> None:
    register(
        Method(
            name=name,
            kinds=("likelihood",),
            backend="native",
            solver=solver,
            summary=summary,
            order=5,
            nfe_per_step=1,
            adaptive=adaptive,
            # few steps near the data, where the noise prediction is nearly linear in sigma / alpha, and none of
            # log-SNR's tiny ones there (benchmarks/bench_likelihood_grids.py)
            default_schedule=None if adaptive else "noise_fraction",
            options=solver.options,
        )
    )


register_likelihood("expint_pc", LikelihoodPC,
                    "exponential Adams predictor-corrector with the divergence quadrature on its nodes", adaptive=False)
