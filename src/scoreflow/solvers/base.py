r"""What every native solver shares: the grid coefficients and the noise / data predictions of a score.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon` and :math:`\lambda = \log(\alpha/\sigma)`, a score
:math:`s(x, t)` gives the noise prediction :math:`\hat\varepsilon = -\sigma s` and the data (Tweedie)
prediction :math:`\hat x_0 = (x + \sigma^2 s)/\alpha`; the solvers integrate the probability-flow ODE
written with either of them, exactly in its linear part (Lu et al. 2022).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch

from ..dynamics.counting import CountedScore
from ..methods import Method, Option, Path, Stepping, register
from ..parameterizations import denoiser_from_score, eps_from_score
from ..sde import ForwardSDE

__all__ = ["NativeSolver", "ScorePredictions", "register_native"]


class ScorePredictions:
    """Noise and data predictions of a counted score, and :math:`(\\alpha, \\sigma, \\lambda)` at scalar times.

    The predictions are :func:`scoreflow.eps_from_score` and :func:`scoreflow.denoiser_from_score` of the score.
    """

    def __init__(self, score: CountedScore, sde: ForwardSDE) -> None:
        self.score, self.sde = score, sde
        self.noise = eps_from_score(score, sde)
        self.data = denoiser_from_score(score, sde)

    def coefs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alpha, sigma, lambda)`` at a 0-dim time ``t``."""
        alpha, sigma = self.sde.marginal(t)
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def from_pure_noise(self, t: torch.Tensor) -> bool:
        r"""Whether a solve starting at ``t`` starts where :math:`\alpha = 0` (log-SNR :math:`-\infty`); read once per solve."""
        return bool(self.sde.marginal(t)[0] == 0)

    def time_at(self, lam: torch.Tensor) -> torch.Tensor:
        """The time whose log-SNR is ``lam``."""
        return self.sde.t_from_log_snr(lam)


class NativeSolver(ABC):
    """A fixed-grid probability-flow ODE solver written in scoreflow (one the libraries lack).

    Class attributes (read by :func:`register_native` into the method's registry record):
        order: global order of accuracy in the step size (checked by the order tests).
        nfe_per_step: score evaluations per step.
        default_schedule: the step schedule it is designed for (see ``sampling.schedules``).
        options: the keyword options its constructor accepts.
        from_pure_noise: whether it can start where :math:`\\alpha = 0` (a flow path at T); the noise-prediction
            forms divide by :math:`\\alpha_s` there.
    """

    order: ClassVar[int]
    nfe_per_step: ClassVar[int] = 1
    default_schedule: ClassVar[str] = "log_snr"
    options: ClassVar[Mapping[str, Option]] = {}
    from_pure_noise: ClassVar[bool] = True

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, *, trajectory: bool = False
    ) -> Path:
        """Integrate the probability-flow ODE from ``x_T`` through the grid ``stepping.times`` (decreasing, in t).

        Raises:
            ValueError: on a process that reaches pure noise at T, for a solver that cannot start there, or
                for a grid that ends at t = 0 (log-SNR +inf).
        """
        check_native_ends(type(self).__name__, sde, stepping.times, self.from_pure_noise)
        return Path(stepping.times, self.solve(ScorePredictions(score, sde), stepping.times, x_T))

    @abstractmethod
    def solve(self, model: ScorePredictions, ts: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """Integrate from ``x`` at ``ts[0]`` through the decreasing grid ``ts``; return the states at every ``ts[i]``."""


def check_native_ends(name: str, sde: ForwardSDE, times: torch.Tensor, from_pure_noise: bool) -> None:
    """Refuse a solve the exponential integrators cannot do: from pure noise without ``from_pure_noise``, or to t = 0."""
    if sde.pure_noise_at_T and not from_pure_noise:
        raise ValueError(
            f"sample_ode: the native method {name} divides by alpha(T) = 0 on {sde!r} (pure noise at T). Fix: use a "
            "data-prediction exponential integrator (ddim, dpmpp_2m, dpmpp_3m, dpmpp_*_pc, dpmpp_4m_pc_adaptive) or torchdiffeq's methods in t."
        )
    if float(times[-1]) == 0.0:
        raise ValueError(
            f"sample_ode: the native method {name} steps in log-SNR, which is +inf at t_min=0. Fix: t_min > 0 "
            f"(default {sde.t_min:g}), or torchdiffeq's methods in t to reach t = 0."
        )


def register_native(name: str, solver: type[NativeSolver], summary: str) -> Method:
    """Register a native fixed-grid probability-flow ODE solver under ``name``, its capabilities read off the class."""
    return register(
        Method(
            name=name,
            kinds=("ode",),
            backend="native",
            solver=solver,
            summary=summary,
            order=solver.order,
            nfe_per_step=solver.nfe_per_step,
            default_schedule=solver.default_schedule,
            options=solver.options,
        )
    )
