r"""The probability-flow ODE as a torchdiffeq vector field.

.. math:: \frac{dx}{dt} = f(t)\,x - \tfrac12 g(t)^2\, s(x, t)

shares its marginals with the forward SDE, so integrating it from :math:`x_T \sim p_T`
down to :math:`t_{min}` samples :math:`p_{t_{min}}`, and from data up to T gives likelihoods.
The right-hand side is the flow velocity :math:`\dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon`, taken from
the model's native prediction (:func:`scoreflow.parameterizations.convert`): a flow-velocity model is
integrated as itself, a score model through the drift above.
"""

from __future__ import annotations

import torch

from .._tensor import right_pad
from ..parameterizations import convert
from ..sde import ForwardSDE, check_sde
from .counting import CountedScore, ScoreFn

__all__ = ["ProbabilityFlowODE"]


class ProbabilityFlowODE(torch.nn.Module):
    """Vector field ``func(t, x)`` for ``torchdiffeq.odeint`` (any method, either time direction).

    Non-finite scores are recorded, not raised, during a solve (no host read per evaluation): run the solve
    inside ``field.score.guard()`` to have them raised (see :class:`~scoreflow.CountedScore`).

    Args:
        score: the score model ``score(x, t)``.
        sde: the forward SDE.

    Attributes:
        nfe: number of score evaluations so far.
    """

    def __init__(self, score: ScoreFn, sde: ForwardSDE) -> None:
        super().__init__()
        self.score = score if isinstance(score, CountedScore) else CountedScore(score, caller="ProbabilityFlowODE")
        self.sde = check_sde("ProbabilityFlowODE", sde)

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype)
        native = self.score.predict(x, t)
        if self.score.prediction != "score":
            return convert(native, self.score.prediction, "flow_velocity", x, t, self.sde)
        # f(t) x - g(t)^2/2 s(x, t) with the coefficients at the (scalar) time, not broadcast over the batch
        drift = right_pad(self.sde.drift_coef(t), x) * x
        return torch.addcmul(drift, native, right_pad(-0.5 * self.sde.diffusion(t) ** 2, x))
