r"""What every native solver shares: the nodes of a solve, their coefficients, and the predictions of a model there.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon` and :math:`\lambda = \log(\alpha/\sigma)`, a model gives the noise
prediction :math:`\hat\varepsilon` and the data (Tweedie) prediction :math:`\hat x_0` as affine functions of the
state and of its native prediction (for a score, :math:`\hat\varepsilon = -\sigma s` and
:math:`\hat x_0 = (x + \sigma^2 s)/\alpha`; see :mod:`scoreflow.parameterizations`); the solvers integrate the
probability-flow ODE written with either of them, exactly in its linear part (Lu et al. 2022).

A fixed-grid solve knows every time it will evaluate the model at before it starts, so a native solver
first makes its *plan*: it reads the grid once (one host read per solve), computes the coefficients of
every step in float64 Python arithmetic (microseconds, where the same plan in small tensor operations
costs a millisecond), folds into them the affine maps from the native prediction, and moves them once to
the state's device and dtype as 0-dim tensors.  Its step loop then only combines states and predictions with
those coefficients: it reads nothing on the host, and ``torch.compile`` traces it into one graph.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from .._cache import LRU, parameters_key, version
from ..dynamics.counting import CountedScore
from ..methods import Method, Option, Solution, StepMonitor, Stepping, register
from ..parameterizations import convert
from ..sde import ForwardSDE

__all__ = [
    "NativeSolver", "ScorePredictions", "Nodes", "register_native", "combine", "on_device", "columns_on_device",
    "check_native_ends", "lagrange_basis", "lagrange_weights",
]

# Plans by solver, options, process, prediction and grid (see scoreflow._cache).
_PLANS = LRU(32)


def lagrange_basis(nodes: Sequence[float]) -> tuple[list[float], list[float]]:
    r"""What the Lagrange polynomials through ``nodes`` :math:`u_j` are built from: the coefficients of
    :math:`Q(u) = \prod_m (u - u_m)` in ascending powers and the denominators :math:`Q'(u_j) = \prod_{m \ne j}(u_j -
    u_m)`, so that :math:`L_j(u) = Q(u) / ((u - u_j)\,Q'(u_j))`."""
    k = len(nodes)
    q = [1.0] + [0.0] * k
    for n, u_m in enumerate(nodes, 1):
        for p in range(n, 0, -1):
            q[p] = q[p - 1] - u_m * q[p]
        q[0] = -u_m * q[0]
    denominators = []
    for j, u_j in enumerate(nodes):
        denom = 1.0
        for m, u_m in enumerate(nodes):
            if m != j:
                denom *= u_j - u_m
        denominators.append(denom)
    return q, denominators


def lagrange_weights(nodes: Sequence[float], moments: Sequence[float],
                     basis: tuple[list[float], list[float]] | None = None) -> list[float]:
    r"""Weights :math:`w_j = \sum_p a_{jp}\mu_p` of the Lagrange polynomials :math:`L_j(u) = \sum_p a_{jp} u^p` through
    ``nodes``: the quadrature :math:`\int P\,dK = \sum_j w_j P(u_j)`, exact for polynomials P of degree below
    ``len(nodes)``, of a measure dK with moments :math:`\mu_p = \int u^p\,dK(u)` (``moments`` from p = 0, at least
    ``len(nodes)`` of them).  Plain float arithmetic (part of a plan); every solver's polynomial weights come from
    here.  ``basis``: the nodes' :func:`lagrange_basis`, if the caller has it.
    """
    # Q once; L_j = (Q(u) / (u - u_j)) / Q'(u_j), the quotient's coefficients by synthetic division (from the top)
    # summed against the moments as they come: O(k^2) for all k weights in plain loops (a plan makes a call or two
    # per step).
    q, denominators = lagrange_basis(nodes) if basis is None else basis
    k = len(nodes)
    weights = []
    for u_j, denom in zip(nodes, denominators):
        carry, total = 0.0, 0.0
        for p in range(k, 0, -1):
            carry = q[p] + u_j * carry
            total += carry * moments[p - 1]
        weights.append(total / denom)
    return weights


def on_device(column: Sequence, like: torch.Tensor) -> tuple:
    """Per-step coefficients (a list of floats, or of equally long lists) as 0-dim tensors in ``like``'s dtype and
    device, indexed ``[i]`` or ``[i][j]`` (one copy to the device)."""
    rows = torch.tensor(column, dtype=like.dtype, device=like.device).unbind()
    return rows if not column or not isinstance(column[0], Sequence) else tuple(row.unbind() for row in rows)


def columns_on_device(columns: Mapping[str, Sequence], like: torch.Tensor) -> dict[str, tuple]:
    """:func:`on_device` for several columns at once: one tensor for all of them (one copy to the device and one
    ``unbind``, where a column at a time costs a tensor and an ``unbind`` each)."""
    flat: list[float] = []
    shapes = {}
    for name, column in columns.items():
        width = len(column[0]) if column and isinstance(column[0], Sequence) else None
        flat.extend(column if width is None else (v for row in column for v in row))
        shapes[name] = (len(column), width)
    values = torch.tensor(flat, dtype=like.dtype, device=like.device).unbind()
    out, start = {}, 0
    for name, (rows, width) in shapes.items():
        if width is None:
            out[name] = values[start : start + rows]
        else:
            out[name] = tuple(values[start + i * width : start + (i + 1) * width] for i in range(rows))
        start += rows * (width or 1)
    return out


def combine(x: torch.Tensor, scale: torch.Tensor | float, terms: Iterable[tuple[torch.Tensor, torch.Tensor | float]]) -> torch.Tensor:
    r""":math:`\text{scale}\cdot x + \sum_j w_j v_j` for ``terms`` = [(v_j, w_j), ...], the coefficients 0-dim tensors
    (a planned loop) or Python floats (a step sized on the fly)."""
    out = x * scale
    for value, weight in terms:  # in place: ``out`` is this function's own (and no backward needs its old values)
        if torch.is_tensor(weight):
            out.addcmul_(value, weight)
        else:
            out.add_(value, alpha=weight)
    return out


class Nodes:
    r"""The times a solve evaluates the model at, with :math:`\alpha, \sigma, \lambda` there, as float64 Python lists.

    Args:
        sde: the forward process.
        times: the grid's times (any dtype and device; read once).
        prediction: the model's native prediction (``"score"``, ``"flow_velocity"``, ...).

    Attributes:
        t, alpha, sigma, lam: lists of the nodes' times and coefficients: the grid, then any extra nodes
            (:math:`\lambda = -\infty` where :math:`\alpha = 0`, pure noise).
    """

    def __init__(self, sde: ForwardSDE, times: torch.Tensor, prediction: str = "score") -> None:
        self.sde, self.prediction = sde, prediction
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

    def affine(self, target: str) -> tuple[list[float], list[float]]:
        r"""``(a, b)`` per node with ``target`` :math:`= a\,x + b\,p` for the native prediction p (``"x0"``, ``"eps"`` or
        ``"flow_velocity"``, the probability-flow drift :math:`\dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon`)."""
        if self.prediction == "score" and target in ("x0", "eps"):  # the classic forms, in plain arithmetic
            if target == "x0":
                return [1.0 / a for a in self.alpha], [s * s / a for a, s in zip(self.alpha, self.sigma)]
            return [0.0] * len(self.t), [-s for s in self.sigma]
        t = torch.tensor(self.t, dtype=torch.float64)
        ones, zeros = torch.ones(len(t), 1, dtype=torch.float64), torch.zeros(len(t), 1, dtype=torch.float64)
        a = convert(zeros, self.prediction, target, ones, t, self.sde)
        b = convert(ones, self.prediction, target, zeros, t, self.sde)
        return a[:, 0].tolist(), b[:, 0].tolist()


class ScorePredictions:
    r"""A counted model and its data prediction at the nodes of a solve, by node index.

    ``t[k]`` is node k's time as a 0-dim tensor in the state's dtype and device; the model is called with that
    very object, so a prediction asked for again at the same state and node costs no evaluation (see
    :class:`~scoreflow.CountedScore`).
    """

    def __init__(self, score: CountedScore, nodes: Nodes, like: torch.Tensor, grid: torch.Tensor, *, uses: str) -> None:
        self.score = score
        # The grid's own times (in the state's dtype) for the grid nodes, so the model sees the times asked for.
        columns = {"t": nodes.t[len(grid):]}
        if uses != "native":
            columns["a"], columns["b"] = nodes.affine(uses)
            self._through_x = any(v != 0.0 for v in columns["a"])
        columns = columns_on_device(columns, like)
        self.t = grid.unbind() + columns["t"]
        self._a, self._b = columns.get("a"), columns.get("b")

    def with_score(self, score: CountedScore | None) -> ScorePredictions:
        """The same nodes and coefficients for another model (a cached plan's, ``None`` to keep none)."""
        other = copy.copy(self)
        other.score = score
        return other

    def at(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The model's native prediction at ``(x, t_k)`` (for a solver that folds its affine maps into the plan)."""
        return self.score.predict(x, self.t[k])

    def data(self, x: torch.Tensor, k: int) -> torch.Tensor:
        r"""The solver's prediction ``uses`` at ``(x, t_k)``, :math:`a_k x + b_k p` from the native prediction p: the data
        prediction :math:`\hat x_0` (:math:`x/\alpha + (\sigma^2/\alpha) s` for a score) or, for ``uses="flow_velocity"``,
        the velocity."""
        return (x * self._a[k]).addcmul_(self.score.predict(x, self.t[k]), self._b[k])

    def report(
        self, monitor: StepMonitor, i: int, x: torch.Tensor, m: torch.Tensor, *, last: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Report step ``i`` (which reached node ``i + 1`` at ``x``, with the prediction ``m`` for the next step).

        Returns the state to continue from and its prediction: a state the callback returned is where the next
        step starts, so its prediction is evaluated there (one NFE), except after the ``last`` step.
        """
        reported = monitor.step(i, self.t[i + 1], x)
        if reported is not x and not last:
            m = self.data(reported, i + 1)
        return reported, m

    def noise(self, x: torch.Tensor, k: int) -> torch.Tensor:
        r""":math:`\hat\varepsilon = a_k x + b_k p` from the native prediction p (:math:`-\sigma s` for a score: one pass)."""
        p = self.score.predict(x, self.t[k])
        return (x * self._a[k]).addcmul_(p, self._b[k]) if self._through_x else p * self._b[k]


class NativeSolver(ABC):
    """A fixed-grid probability-flow ODE solver written in scoreflow (one the libraries lack).

    A subclass gives :meth:`plan` (its per-step coefficients from the nodes, before any evaluation) and
    :meth:`solve` (the step loop, which calls ``monitor.step`` after every step and continues from the
    state it returns).

    Class attributes (read by :func:`register_native` into the method's registry record):
        order: global order of accuracy in the step size (checked by the order tests).
        nfe_per_step: score evaluations per step.
        default_schedule: the step schedule it is designed for (see ``sampling.schedules``).
        coarse_t_schedule: for a ``default_schedule`` of ``"t"``, the schedule in its place where a uniform t grid
            is coarse at the data end (see :class:`~scoreflow.methods.Method`).
        options: the keyword options its constructor accepts.
        from_pure_noise: whether it can start where :math:`\\alpha = 0` (a flow path at T); the noise-prediction
            forms divide by :math:`\\alpha_s` there.
        to_data: whether it can end at t = 0 (where the front-end allows it: a flow path); methods in log-SNR cannot.
        uses: the prediction its loop takes: ``"x0"`` or ``"flow_velocity"`` (``ScorePredictions.data``), ``"eps"``
            (``ScorePredictions.noise``) or ``"native"`` (``ScorePredictions.at``, maps folded into the plan).
        structure: plan entries that describe the loop's structure (Python values) rather than coefficients.
    """

    order: ClassVar[int]
    nfe_per_step: ClassVar[int] = 1
    default_schedule: ClassVar[str] = "log_snr"
    coarse_t_schedule: ClassVar[str | None] = None
    options: ClassVar[Mapping[str, Option]] = {}
    from_pure_noise: ClassVar[bool] = True
    to_data: ClassVar[bool] = False
    uses: ClassVar[str] = "x0"
    structure: ClassVar[tuple[str, ...]] = ()

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, *, monitor: StepMonitor
    ) -> Solution:
        """Integrate the probability-flow ODE from ``x_T`` through the grid ``stepping.times`` (decreasing, in t).

        Raises:
            ValueError: for a grid that starts at pure noise (alpha = 0, a flow path at T), for a solver that
                cannot start there, or that ends at t = 0 (log-SNR +inf) unless ``to_data``; the message names
                ``score.caller``.
        """
        grid = stepping.times

        def make() -> tuple:
            nodes = Nodes(sde, grid, score.prediction)
            check_native_ends(type(self).__name__, sde, nodes.t[-1], self.from_pure_noise, to_data=self.to_data,
                              alpha_start=nodes.alpha[0], caller=score.caller)
            plan = self.plan(nodes, len(grid) - 1)
            columns = columns_on_device({name: value for name, value in plan.items() if name not in self.structure}, x_T)
            columns.update((name, plan[name]) for name in self.structure if name in plan)
            return grid, version(grid), columns, ScorePredictions(None, nodes, x_T, grid, uses=self.uses)

        # A plan depends on the solver and its options, the process, the model's prediction and the grid (the same
        # object from one call to the next for the same arguments, see resolve_stepping): cached on them.
        process, options = parameters_key(sde), parameters_key(self)
        if process is None or options is None:
            entry = make()
        else:
            # (made in inference mode, its coefficients could not be saved for a backward pass later: kept apart)
            key = (options, process, score.prediction, id(grid), x_T.dtype, x_T.device, torch.is_inference_mode_enabled())
            entry = _PLANS.get(key, make, valid=lambda e: e[0] is grid and e[1] is not None and version(grid) == e[1])
        return Solution(self.solve(entry[3].with_score(score), entry[2], x_T, monitor))

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


def check_native_ends(
    name: str, sde: ForwardSDE, t_end: float, from_pure_noise: bool, *, to_data: bool = False,
    alpha_start: float | None = None, caller: str = "sample_ode",
) -> None:
    """Refuse a solve the exponential integrators cannot do: from pure noise without ``from_pure_noise``, or to t = 0
    without ``to_data``; the message names ``caller``, the public function solving.

    The solve starts at pure noise if ``alpha_start``, alpha at its first time, is 0 (by default, if the process
    reaches pure noise at T): a solve that starts below T on such a process (a teacher step from t < T) is not refused.
    """
    at_pure_noise = sde.pure_noise_at_T if alpha_start is None else alpha_start == 0.0
    if not from_pure_noise and at_pure_noise:
        raise ValueError(
            f"{caller}: the native method {name} divides by alpha(T) = 0 on {sde!r} (pure noise at T). Fix: use a "
            "data-prediction exponential integrator (ddim, dpmpp_2m, dpmpp_3m, dpmpp_*_pc, dpmpp_4m_pc_adaptive) or "
            f"torchdiffeq's methods in t, or start below T (a path truncated short of pure noise, sde.truncated(T') "
            f"with T' < {sde.T:g})."
        )
    if t_end == 0.0 and not to_data:
        raise ValueError(
            f"{caller}: the native method {name} steps in log-SNR, which is +inf at t_min=0. Fix: t_min > 0 "
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
            coarse_t_schedule=solver.coarse_t_schedule,
            options=solver.options,
        )
    )

