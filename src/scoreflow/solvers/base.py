r"""What every native solver shares: the nodes of a solve, their coefficients, and the predictions of a score there.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon` and :math:`\lambda = \log(\alpha/\sigma)`, a score
:math:`s(x, t)` gives the noise prediction :math:`\hat\varepsilon = -\sigma s` and the data (Tweedie)
prediction :math:`\hat x_0 = (x + \sigma^2 s)/\alpha`; the solvers integrate the probability-flow ODE
written with either of them, exactly in its linear part (Lu et al. 2022).

A fixed-grid solve knows every time it will evaluate the score at before it starts, so a native solver
first makes its *plan*: it reads the grid once (one host read per solve), computes the coefficients of
every step in float64 Python arithmetic (microseconds, where the same plan in small tensor operations
costs a millisecond), and moves them once to the state's device and dtype as 0-dim tensors.  Its step
loop then only combines states and scores with those coefficients: it reads nothing on the host, and
``torch.compile`` traces it into one graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..dynamics.counting import CountedScore
from ..methods import Method, Option, Solution, StepMonitor, Stepping, register
from ..sde import ForwardSDE

__all__ = ["NativeSolver", "ScorePredictions", "Nodes", "register_native", "combine", "on_device"]


def on_device(column: Sequence, like: torch.Tensor) -> tuple:
    """Per-step coefficients (a list of floats, or of equally long lists) as 0-dim tensors in ``like``'s dtype and
    device, indexed ``[i]`` or ``[i][j]`` (one copy to the device)."""
    rows = torch.tensor(column, dtype=like.dtype, device=like.device).unbind()
    return rows if not column or not isinstance(column[0], Sequence) else tuple(row.unbind() for row in rows)


def combine(x: torch.Tensor, scale: torch.Tensor, terms: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    r""":math:`\text{scale}\cdot x + \sum_j w_j v_j` for ``terms`` = [(v_j, w_j), ...] with 0-dim coefficients."""
    out = x * scale
    for value, weight in terms:
        out = torch.addcmul(out, value, weight)
    return out


class Nodes:
    r"""The times a solve evaluates the score at, with :math:`\alpha, \sigma, \lambda` there, as float64 Python lists.

    Args:
        sde: the forward SDE.
        times: the grid's times (any dtype and device; read once).

    Attributes:
        t, alpha, sigma, lam: lists of the nodes' times and coefficients: the grid, then any extra nodes.
    """

    def __init__(self, sde: ForwardSDE, times: torch.Tensor) -> None:
        self.sde = sde
        self.t, self.alpha, self.sigma, self.lam = [], [], [], []
        self._add(times.detach().to(device="cpu", dtype=torch.float64))

    def _add(self, t: torch.Tensor, lam: torch.Tensor | None = None) -> range:
        start = len(self.t)
        alpha, sigma = self.sde.marginal(t)
        if lam is None:
            lam = torch.log(alpha) - torch.log(sigma)
        for column, values in zip((self.t, self.alpha, self.sigma, self.lam), torch.stack([t, alpha, sigma, lam]).tolist()):
            column.extend(values)
        return range(start, len(self.t))

    def __len__(self) -> int:
        return len(self.t)

    def extend(self, lam: Sequence[float]) -> range:
        """Add nodes at the log-SNRs ``lam``; return their indices."""
        lam = torch.tensor(list(lam), dtype=torch.float64)
        return self._add(self.sde.t_from_log_snr(lam), lam)


class ScorePredictions:
    r"""A counted score and its data prediction at the nodes of a solve, by node index.

    ``t[k]`` is node k's time as a 0-dim tensor in the state's dtype and device; the score is called with that
    very object, so a prediction asked for again at the same state and node costs no evaluation (see
    :class:`~scoreflow.CountedScore`).
    """

    def __init__(self, score: CountedScore, nodes: Nodes, like: torch.Tensor, grid: torch.Tensor) -> None:
        self.score = score
        # The grid's own times (in the state's dtype) for the grid nodes, so the score sees the times asked for.
        self.t = grid.unbind() + on_device(nodes.t[len(grid):], like)
        self._inv_alpha = on_device([1.0 / a for a in nodes.alpha], like)
        self._var_over_alpha = on_device([s * s / a for a, s in zip(nodes.alpha, nodes.sigma)], like)

    def at(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The score :math:`s(x, t_k)` itself (solvers that use the noise prediction fold its factor
        :math:`-\\sigma_k` into their coefficients: one pass over the state fewer)."""
        return self.score(x, self.t[k])

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
        nodes = Nodes(sde, grid)
        plan = self.plan(nodes, len(grid) - 1)
        columns = {name: on_device(value, x_T) if name not in self.structure else value for name, value in plan.items()}
        return Solution(self.solve(ScorePredictions(score, nodes, x_T, grid), columns, x_T, monitor))

    #: Plan entries that describe the loop's structure (Python values) rather than coefficients.
    structure: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        """The per-step coefficients (lists of floats) of a solve on the first ``steps + 1`` nodes (the grid), which
        :meth:`sample` moves to the state's device once, and the loop's structure (the entries named in ``structure``).

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
