r"""The probability-flow ODE in the scaled noise level or the log-SNR, as torchdiffeq vector fields.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon`, the scaled state :math:`y = x/\alpha` obeys the
probability-flow ODE in :math:`\bar\sigma = \sigma/\alpha` (the DDIM / EDM form)

.. math:: \frac{dy}{d\bar\sigma} = \hat\varepsilon(\alpha y, t),\qquad \hat\varepsilon = -\sigma\, s(x, t),

and in the log-SNR :math:`\lambda = \log(\alpha/\sigma) = -\log\bar\sigma`,
:math:`dy/d\lambda = -e^{-\lambda}\,\hat\varepsilon`.  Both are the same ODE as
:class:`~scoreflow.dynamics.ProbabilityFlowODE` in t; the time is recovered with ``sde.t_from_log_snr``.
For data near Gaussian, :math:`\hat\varepsilon` varies slowly in these variables, so few steps suffice.
"""

from __future__ import annotations

import torch

from .._tensor import right_pad
from ..parameterizations import convert
from ..schedules import TIME_VARIABLES, from_time_variable, to_time_variable
from ..sde import ForwardSDE
from .counting import CountedScore, ScoreFn

__all__ = ["TIME_VARIABLES", "ScaledProbabilityFlowODE", "to_time_variable", "from_time_variable"]

class ScaledProbabilityFlowODE(torch.nn.Module):
    r"""Vector field ``func(u, y)`` of :math:`y = x/\alpha` against ``u`` = :math:`\bar\sigma` or :math:`\lambda`.

    Args:
        score: the score model ``score(x, t)``.
        sde: the forward SDE.
        time: ``"sigma"`` (u = sigma/alpha) or ``"log_snr"`` (u = log(alpha/sigma)).

    Attributes:
        nfe: number of score evaluations so far.
    """

    def __init__(self, score: ScoreFn, sde: ForwardSDE, time: str) -> None:
        super().__init__()
        if time not in TIME_VARIABLES[1:]:
            raise ValueError(f"ScaledProbabilityFlowODE: argument 'time' expected 'sigma' or 'log_snr', got {time!r}.")
        self.score = score if isinstance(score, CountedScore) else CountedScore(score, caller="ScaledProbabilityFlowODE")
        self.sde = sde
        self.time = time

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def state(self, u: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The time ``t`` and unscaled state ``x = alpha(t) y`` at solver variable ``u``."""
        t = from_time_variable(self.sde, self.time, u.to(y.dtype))
        return t, right_pad(self.sde.marginal(t)[0], y) * y

    def scaled(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The scaled state ``y = x / alpha(t)`` of ``x`` at solver variable ``u``."""
        t = from_time_variable(self.sde, self.time, u.to(x.dtype))
        return x / right_pad(self.sde.marginal(t)[0], x)

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # dy/dsigma-bar = eps-hat;  dy/dlambda = -e^{-lambda} eps-hat
        u = u.to(y.dtype)
        t = from_time_variable(self.sde, self.time, u)
        alpha, sigma = self.sde.marginal(t)
        x = right_pad(alpha, y) * y
        native = self.score.predict(x, t)
        if self.score.prediction == "score":  # eps-hat = -sigma s: one coefficient, one pass over the state
            return native * right_pad(-sigma if self.time == "sigma" else sigma * torch.exp(-u), y)
        eps = convert(native, self.score.prediction, "eps", x, t, self.sde)
        return eps if self.time == "sigma" else -right_pad(torch.exp(-u), y) * eps
