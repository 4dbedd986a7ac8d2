r"""What scoreflow's reverse-SDE solvers share: the grid's coefficients, the noise drawn from a Brownian path, the step loop.

**Which Brownian path.**  Every stochastic solver is driven by the :class:`~scoreflow.BrownianPath` that
:func:`scoreflow.sample_sde` hands torchsde's methods: a Brownian motion :math:`W_u` in solver time
:math:`u = T - t` on the flattened state.  A step from :math:`t_i` to :math:`t_{i+1} < t_i` (or a stage of it)
draws the standard normal

.. math:: z = \frac{W(u_{i+1}) - W(u_i)}{\sqrt{u_{i+1} - u_i}},

and multiplies it by the exact standard deviation of the stochastic integral the step needs (for the
exponential integrators :math:`\sigma_t\sqrt{1 - e^{-2\eta h}}`, the integral of
:math:`e^{\ldots}\,dW` being Gaussian with that variance).  So each step's noise has exactly its law on any
grid, consecutive steps are independent, and a finer grid splits the same increments: one path serves
every step count, and the solutions converge (strongly) to the solution of the reverse SDE driven by
:math:`W_u`, the one torchsde's methods compute on the same path.  k-diffusion's
``BrownianTreeNoiseSampler`` runs its path in :math:`\sigma` instead; the law of every sample is the same
whatever the clock, only which coarse solve is paired with which fine one differs.  (In the clock
:math:`e^{2\lambda}`, the signal-to-noise ratio, the noise integral of the exponential integrators with
:math:`\eta = 1` would even be exact pathwise; solver time is used so that native and torchsde methods
share one path.)

The coefficients of every step are computed once, in float64 on the host, before the loop; the loop
only combines tensors with those numbers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from ..dynamics.counting import CountedScore
from ..dynamics.sdeint import BrownianPath
from ..methods import Method, Option, Path, Stepping, interval_option, register
from ..sde import ForwardSDE
from .base import ScorePredictions

__all__ = ["StochasticSolver", "SDEGrid", "Point", "StepNoise", "exponential_weights", "register_stochastic", "ETA"]


def eta_option(doc: str) -> Option:
    """The ``eta`` option of a stochastic method: 0 is the probability-flow ODE, 1 the reverse SDE."""
    return interval_option(1.0, doc, low=0.0, high=1.0)


#: k-diffusion's ``eta`` of ``sample_dpmpp_2m_sde``: the fraction of the reverse SDE's noise *variance* rate.
ETA = eta_option("0: probability-flow ODE, 1: reverse SDE; the fraction of the SDE's noise variance rate, as in k-diffusion's dpmpp_2m_sde")


class Point(NamedTuple):
    r""":math:`(\alpha, \sigma, \lambda)` at one time."""

    alpha: float
    sigma: float
    lam: float


@dataclass(frozen=True)
class SDEGrid:
    r"""The times of a solve and their coefficients, in float64 on the host.

    Attributes:
        times: the grid in t (decreasing), in the state's dtype and device: the times the score sees.
        t, alpha, sigma, lam, u: per grid point, :math:`t`, :math:`\alpha(t)`, :math:`\sigma(t)`,
            :math:`\lambda = \log(\alpha/\sigma)` and the solver time :math:`u = T - t` at which the
            Brownian path is read (clipped to the path's span).
    """

    times: torch.Tensor
    t: list[float]
    alpha: list[float]
    sigma: list[float]
    lam: list[float]
    u: list[float]

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def point(self, i: int) -> Point:
        r""":math:`(\alpha, \sigma, \lambda)` at grid point ``i``."""
        return Point(self.alpha[i], self.sigma[i], self.lam[i])

    @classmethod
    def at(cls, sde: ForwardSDE, t: Sequence[float], duration: float, like: torch.Tensor) -> SDEGrid:
        """The coefficients at the times ``t`` (floats), for a path on ``[0, duration]`` and states like ``like``."""
        t64 = torch.tensor(list(t), dtype=torch.float64)
        alpha, sigma = sde.marginal(t64)
        lam = torch.log(alpha) - torch.log(sigma)
        u = (sde.T - t64).clamp(0.0, duration)
        times = t64.to(dtype=like.dtype, device=like.device)
        return cls(times, t64.tolist(), alpha.tolist(), sigma.tolist(), lam.tolist(), u.tolist())

    def stage(self, sde: ForwardSDE, lam: Sequence[float], duration: float) -> SDEGrid:
        """The coefficients at the times whose log-SNR is ``lam`` (stages inside the steps)."""
        t = sde.t_from_log_snr(torch.tensor(list(lam), dtype=torch.float64))
        return SDEGrid.at(sde, t.tolist(), duration, self.times)


class StepNoise:
    r"""Standard normals :math:`z = (W(u_b) - W(u_a))/\sqrt{u_b - u_a}` from a Brownian path, shaped like the state."""

    def __init__(self, bm: BrownianPath, shape: torch.Size) -> None:
        self.bm, self.shape = bm, shape

    def __call__(self, u_a: float, u_b: float) -> torch.Tensor:
        return (self.bm(u_a, u_b) / math.sqrt(u_b - u_a)).reshape(self.shape)


def _moments(k: int, H: float) -> list[float]:
    r""":math:`\mu_j = \int_0^1 H e^{-H(1-r)} r^j\,dr` for j < k.

    :math:`\mu_0 = 1 - e^{-H}`, :math:`\mu_j = 1 - \tfrac{j}{H}\mu_{j-1}` (integration by parts; stable for
    H >= 1); below 1 the series :math:`\mu_j = j!\sum_{m\ge0} (-1)^m H^{m+1}/(j+m+1)!`, free of cancellation.
    """
    if H >= 1.0:
        mu = [-math.expm1(-H)]
        for j in range(1, k):
            mu.append(1.0 - j / H * mu[-1])
        return mu
    out = []
    for j in range(k):
        term, total = math.factorial(j) * H / math.factorial(j + 1), 0.0
        for m in range(60):
            total += term
            term *= -H / (j + m + 2)
            if abs(term) < 1e-18 * abs(total):
                break
        out.append(total)
    return out


def exponential_weights(nodes: Sequence[float], H: float) -> list[float]:
    r"""Weights :math:`w_j` with :math:`\int_0^1 H e^{-H(1-r)} P(r)\,dr = \sum_j w_j P(r_j)` for every polynomial P
    of degree below ``len(nodes)``: the exact integral, against the exponential integrator's weight, of the
    polynomial through values at the nodes :math:`r_j` (positions in units of the step, 0 at its start).
    """
    k = len(nodes)
    vandermonde = torch.tensor([[r**j for r in nodes] for j in range(k)], dtype=torch.float64)
    mu = torch.tensor(_moments(k, H), dtype=torch.float64)
    return torch.linalg.solve(vandermonde, mu).tolist()


class StochasticSolver(ABC):
    """A fixed-grid reverse-SDE solver written in scoreflow, driven by a :class:`~scoreflow.BrownianPath`.

    Class attributes (read by :func:`register_stochastic` into the method's registry record):
        strong_order, weak_order: declared orders for the reverse SDE's additive noise (``None``: none declared).
        nfe_per_step: score evaluations per step.
        default_schedule: the step schedule used with ``steps=N`` when no ``schedule`` is given.
        options: the keyword options its constructor accepts.
    """

    strong_order: ClassVar[float | None] = 1.0
    weak_order: ClassVar[float | None] = 1.0
    nfe_per_step: ClassVar[int] = 1
    default_schedule: ClassVar[str] = "log_snr"
    options: ClassVar[Mapping[str, Option]] = {}

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, bm: BrownianPath,
        *, trajectory: bool = False,
    ) -> Path:
        """Integrate the reverse SDE from ``x_T`` through the grid ``stepping.times`` (decreasing, in t) on the path ``bm``."""
        grid = SDEGrid.at(sde, stepping.times.double().cpu().tolist(), bm.duration, x_T)
        states = [x_T]
        for x in self.solve(ScorePredictions(score, sde), grid, StepNoise(bm, x_T.shape), x_T):
            if trajectory:
                states.append(x)
        if not trajectory:
            return Path(stepping.times[[0, -1]], [x_T, x])
        return Path(stepping.times, states)

    @abstractmethod
    def solve(self, model: ScorePredictions, grid: SDEGrid, noise: StepNoise, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Step from ``x`` at ``grid.times[0]`` through the grid, yielding the state after every step."""


def register_stochastic(name: str, solver: type[StochasticSolver], summary: str) -> Method:
    """Register a native reverse-SDE solver under ``name``, its capabilities read off the class."""
    return register(
        Method(
            name=name,
            kinds=("sde",),
            backend="native",
            solver=solver,
            summary=summary,
            strong_order=solver.strong_order,
            weak_order=solver.weak_order,
            nfe_per_step=solver.nfe_per_step,
            default_schedule=solver.default_schedule,
            options=solver.options,
        )
    )
