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
from ..sde import ForwardSDE
from .counting import CountedScore, ScoreFn

__all__ = ["TIME_VARIABLES", "ScaledProbabilityFlowODE", "to_time_variable", "from_time_variable"]

#: Independent variables of the probability-flow ODE: time t, scaled noise level sigma/alpha, log-SNR.
TIME_VARIABLES = ("t", "sigma", "log_snr")


def to_time_variable(sde: ForwardSDE, time: str, t: torch.Tensor) -> torch.Tensor:
    r"""Map times t to the variable ``time``: t itself, :math:`\bar\sigma = \sigma/\alpha` or :math:`\lambda = \log(\alpha/\sigma)`."""
    if time == "t":
        return t
    lam = sde.log_snr(t)
    return torch.exp(-lam) if time == "sigma" else lam


def from_time_variable(sde: ForwardSDE, time: str, u: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_time_variable` (through ``sde.t_from_log_snr``)."""
    if time == "t":
        return u
    return sde.t_from_log_snr(-torch.log(u) if time == "sigma" else u)


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

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t, x = self.state(u, y)
        eps = convert(self.score.predict(x, t), self.score.prediction, "eps", x, t, self.sde)
        if self.time == "sigma":
            return eps
        return -right_pad(torch.exp(-u.to(y.dtype)), y) * eps
