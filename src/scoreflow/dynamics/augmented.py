r"""The probability-flow ODE augmented with the integral of its divergence (instantaneous change of variables).

Along a solution of :math:`\dot x = F(x, t) = f(t)x - \tfrac12 g(t)^2 s(x, t)`,
:math:`\frac{d}{dt}\log p_t(x_t) = -\nabla\cdot F(x_t, t)`, so integrating the state
:math:`(x, \Delta)` with :math:`\dot\Delta = \nabla\cdot F` from :math:`t_{min}` to T gives
:math:`\log p_{t_{min}}(x) = \log p_T(x_T) + \Delta(T)`.

The drift is linear, so :math:`\nabla\cdot F = D f(t) - \tfrac12 g(t)^2\,\nabla\cdot s`: each evaluation
is one forward pass of the score and the vector-Jacobian products of the score alone (all probes in
one batched backward pass), never of the drift.  A model with another native prediction (a flow velocity) is
integrated through its velocity, finite where f and g are not (at pure noise), and the divergence is the
velocity's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._tensor import right_pad
from ..sde import ForwardSDE
from .counting import CountedScore, ScoreFn
from .divergence import (
    CentralDifferences,
    difference_scale,
    scaled_difference_step,
    value_and_exact_divergence,
    value_and_hutchinson_divergence,
)
from .probability_flow import ProbabilityFlowODE

__all__ = ["AugmentedProbabilityFlowODE", "DifferenceSteps", "counted_difference_hutchinson"]


class DifferenceSteps:
    r"""The steps of one solve's central differences at each noise level:
    :math:`\delta(t)` = :func:`~scoreflow.dynamics.divergence.difference_step` of :math:`\sigma(t)` and
    :math:`s(t) = \sqrt{\alpha(t)^2 m + \sigma(t)^2}`, the RMS size per coordinate of the diffused law's points, with
    the data's mean square per coordinate m estimated once from the solve's start points x, drawn at
    :math:`(\alpha_0, \sigma_0)`: :math:`m = \max(\overline{x^2} - \sigma_0^2, 0)/\alpha_0^2` (one read of x's device
    per solve).  ``steps(alpha, sigma)`` takes floats (the native solvers' nodes) or tensors (the torchdiffeq field's
    times)."""

    __slots__ = ("dtype", "scale", "data_square")

    def __init__(self, x: torch.Tensor, alpha: float, sigma: float) -> None:
        self.dtype = x.dtype
        self.scale = difference_scale(x.dtype)
        mean_square = float(torch.mean(x.square(), dtype=torch.float64)) if x.numel() else 0.0
        # (a start at pure noise, alpha = 0, tells nothing of the data: its points' size is the noise's)
        self.data_square = max(mean_square - sigma * sigma, 0.0) / (alpha * alpha) if alpha > 0 else 0.0

    def __call__(self, alpha: float | torch.Tensor, sigma: float | torch.Tensor) -> float | torch.Tensor:
        size = (alpha * alpha * self.data_square + sigma * sigma) ** 0.5
        return scaled_difference_step(self.scale, sigma, size)  # difference_step's, unchecked: once per time


def counted_difference_hutchinson(score: CountedScore, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                                  differences: CentralDifferences,
                                  step: float | torch.Tensor, *,
                                  sums: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The central ``differences`` (:class:`~scoreflow.dynamics.divergence.CentralDifferences`) of ``fn`` (a call of
    the counted ``score``) at ``step`` (a :class:`DifferenceSteps`' value at the time); with ``sums``, their
    :meth:`~scoreflow.dynamics.divergence.CentralDifferences.sums` written into those two tensors instead.  The one
    stacked call evaluated every sample 2P times, so ``score.nfe`` counts 2P."""
    value, div = differences(fn, x, step) if sums is None else differences.sums(fn, x, step, out=sums)
    score.count(2 * differences.n - 1)
    return value, div


class AugmentedProbabilityFlowODE(torch.nn.Module):
    r"""torchdiffeq vector field ``func(t, (x, delta)) -> (F(x, t), div F)`` for likelihoods.

    The divergence is exact (``probes=None``) or Hutchinson's :math:`v^\top (\partial F/\partial x) v`
    with probes fixed for the whole solve (resampling per step would make the field random and
    break adaptive step control).  ``delta`` has shape ``(P, B)``: one integral per probe, ``P = 1``
    for the exact trace.  As an ``nn.Module`` holding the score, its parameters are visible to
    ``torchdiffeq.odeint_adjoint``.

    Args:
        score: the score model ``score(x, t)`` (an ``nn.Module``'s parameters are registered).
        sde: the forward SDE.
        probes: ``(P, B, *D)`` Hutchinson probes, or ``None`` for the exact trace.
        chunk_size: basis vectors per vmapped VJP of the exact trace (see :func:`exact_divergence`).
        difference: Hutchinson's estimates by central differences at these steps (see
            :func:`value_and_difference_hutchinson`) instead of VJPs; ``None``: VJPs.

    Attributes:
        nfe: score evaluations so far; ``nfe_vjp``: vector-Jacobian products through the score so far.
    """

    def __init__(
        self,
        score: ScoreFn,
        sde: ForwardSDE,
        *,
        probes: torch.Tensor | None = None,
        chunk_size: int | None = None,
        difference: DifferenceSteps | None = None,
    ) -> None:
        super().__init__()
        self.flow = ProbabilityFlowODE(score, sde)
        self.probes = probes
        self.chunk_size = chunk_size
        self.steps = difference
        self.difference = None if difference is None else CentralDifferences(probes, probes[0])
        self.nfe_vjp = 0

    @property
    def nfe(self) -> int:
        return self.flow.nfe

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = state[0]
        t = t.to(x.dtype)
        score, sde = self.flow.score, self.flow.sde
        if score.prediction != "score":
            # A model of another prediction is integrated through its velocity (finite where f and g are not, at
            # pure noise), so the divergence is the velocity's own.
            dx, div = self._value_and_divergence(lambda y: self.flow(t, y), x, t)
            score.finite.record("divergence", div, t)
            return dx, div

        s, div_s = self._value_and_divergence(lambda y: score(y, t), x, t)
        f, half_g2 = sde.drift_coef(t), 0.5 * sde.diffusion(t) ** 2
        dx = torch.addcmul(right_pad(f, x) * x, s, right_pad(-half_g2, x))
        div = x[0].numel() * f - half_g2 * div_s
        score.finite.record("divergence", div, t)
        return dx, div

    def _value_and_divergence(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                              t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``fn(x)`` and its divergence, exact or per probe, shape ``(P, B)``; counts the VJPs."""
        if self.probes is None:
            value, div = value_and_exact_divergence(fn, x, chunk_size=self.chunk_size)
            self.nfe_vjp += x[0].numel()
            return value, div[None]
        if self.difference is not None:
            step = self.steps(*self.flow.sde.marginal(t))
            return counted_difference_hutchinson(self.flow.score, fn, x, self.difference, step)
        self.nfe_vjp += self.probes.shape[0]
        return value_and_hutchinson_divergence(fn, x, self.probes)
