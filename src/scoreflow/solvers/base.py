r"""What every native solver shares: the nodes of a solve, their coefficients, and the predictions of a score there.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon` and :math:`\lambda = \log(\alpha/\sigma)`, a score
:math:`s(x, t)` gives the noise prediction :math:`\hat\varepsilon = -\sigma s` and the data (Tweedie)
prediction :math:`\hat x_0 = (x + \sigma^2 s)/\alpha`; the solvers integrate the probability-flow ODE
written with either of them, exactly in its linear part (Lu et al. 2022).

A fixed-grid solve knows every time it will evaluate the score at before it starts, so a native solver
first makes its *plan*: the coefficients of every step, computed in float64 on the CPU with tensor
operations (no host read) and moved once to the state's device and dtype.  Its step loop then only
combines states and predictions with those coefficients: it reads nothing on the host, and
``torch.compile`` traces it into one graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from ..dynamics.counting import CountedScore
from ..methods import Method, Option, Solution, StepMonitor, Stepping, register
from ..sde import ForwardSDE

__all__ = ["NativeSolver", "ScorePredictions", "Nodes", "register_native", "combine", "on_device"]


def on_device(column: torch.Tensor, like: torch.Tensor) -> tuple:
    """Per-step coefficients (a float64 ``(N,)`` or ``(N, K)`` CPU tensor) as 0-dim tensors in ``like``'s dtype
    and device, indexed ``[i]`` or ``[i][j]`` (one copy to the device)."""
    rows = column.to(dtype=like.dtype, device=like.device).unbind()
    return rows if column.ndim == 1 else tuple(row.unbind() for row in rows)


def combine(x: torch.Tensor, scale: torch.Tensor, terms: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    r""":math:`\text{scale}\cdot x + \sum_j w_j v_j` for ``terms`` = [(v_j, w_j), ...] with 0-dim coefficients."""
    out = x * scale
    for value, weight in terms:
        out = torch.addcmul(out, value, weight)
    return out


class Nodes:
    r"""The times a solve evaluates the score at, with :math:`\alpha, \sigma, \lambda` there, computed once.

    Args:
        sde: the forward SDE.
        times: the nodes' times in float64 on the CPU (the grid, then any extra nodes such as midpoints).

    Attributes:
        t, alpha, sigma, lam: float64 CPU tensors of the nodes' times and coefficients, for plans.
    """

    def __init__(self, sde: ForwardSDE, times: torch.Tensor) -> None:
        self.sde = sde
        self.t = times
        self.alpha, self.sigma = sde.marginal(times)
        self.lam = torch.log(self.alpha) - torch.log(self.sigma)

    def __len__(self) -> int:
        return len(self.t)

    def extend(self, lam: torch.Tensor) -> range:
        """Add nodes at the log-SNRs ``lam``; return their indices."""
        start = len(self.t)
        t = self.sde.t_from_log_snr(lam)
        alpha, sigma = self.sde.marginal(t)
        self.t = torch.cat([self.t, t])
        self.alpha, self.sigma = torch.cat([self.alpha, alpha]), torch.cat([self.sigma, sigma])
        self.lam = torch.cat([self.lam, lam])
        return range(start, len(self.t))


class ScorePredictions:
    r"""Noise and data predictions of a counted score at the nodes of a solve, by node index.

    ``t[k]`` is node k's time as a 0-dim tensor in the state's dtype and device; the score is called with that
    very object, so a prediction asked for again at the same state and node costs no evaluation (see
    :class:`~scoreflow.CountedScore`).
    """

    def __init__(self, score: CountedScore, nodes: Nodes, like: torch.Tensor, grid: torch.Tensor) -> None:
        self.score = score
        # The grid's own times (in the state's dtype) for the grid nodes, so the score sees the times asked for.
        self.t = grid.unbind() + on_device(nodes.t[len(grid):], like)
        self._inv_alpha = on_device(1.0 / nodes.alpha, like)
        self._var_over_alpha = on_device(nodes.sigma**2 / nodes.alpha, like)
        self._neg_sigma = on_device(-nodes.sigma, like)

    def noise(self, x: torch.Tensor, k: int) -> torch.Tensor:
        r""":math:`\hat\varepsilon = -\sigma s(x, t_k)`."""
        return self.score(x, self.t[k]) * self._neg_sigma[k]

    def data(self, x: torch.Tensor, k: int) -> torch.Tensor:
        r""":math:`\hat x_0 = x/\alpha + (\sigma^2/\alpha)\, s(x, t_k)`."""
        return torch.addcmul(x * self._inv_alpha[k], self.score(x, self.t[k]), self._var_over_alpha[k])


class NativeSolver(ABC):
    """A fixed-grid probability-flow ODE solver written in scoreflow (one the libraries lack).

    A subclass gives :meth:`plan` (its per-step coefficients from the nodes, before any evaluation) and
    :meth:`solve` (the step loop, which calls ``monitor.step`` after every step and continues from the
    state it returns).

    Class attributes (read by :func:`register_native` into the method's registry record):
        order: global order of accuracy in the step size (checked by the order tests).
        nfe_per_step: score evaluations per step.
        default_schedule: the step schedule it is designed for (see ``sampling.schedules``).
        options: the keyword options its constructor accepts.
    """

    order: ClassVar[int]
    nfe_per_step: ClassVar[int] = 1
    default_schedule: ClassVar[str] = "log_snr"
    options: ClassVar[Mapping[str, Option]] = {}

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, *, monitor: StepMonitor
    ) -> Solution:
        """Integrate the probability-flow ODE from ``x_T`` through the grid ``stepping.times`` (decreasing, in t)."""
        grid = stepping.times
        nodes = Nodes(sde, grid.detach().to(device="cpu", dtype=torch.float64))
        plan = self.plan(nodes, len(grid) - 1)
        columns = {name: on_device(value, x_T) if torch.is_tensor(value) else value for name, value in plan.items()}
        model = ScorePredictions(score, nodes, x_T, grid)
        return Solution(self.solve(model, columns, x_T, monitor))

    @abstractmethod
    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        """The per-step coefficients of a solve on the first ``steps + 1`` nodes (the grid): float64 CPU tensors,
        which :meth:`sample` moves to the state's device once, and any structure (Python ints) the loop needs.

        A plan may add nodes (``nodes.extend``) for evaluations between grid times.
        """

    @abstractmethod
    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Any], x: torch.Tensor, monitor: StepMonitor
    ) -> torch.Tensor:
        """Integrate from ``x`` at node 0 through the grid nodes with the planned coefficients; return the last state."""


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
