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

As for the ODE solvers (:mod:`.base`), a solve first makes its plan: the coefficients of every step, in
float64 on the host, moved once to the state's device; the step loop only combines states, predictions
and path increments with them, and reads nothing on the host.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..dynamics.counting import CountedScore
from ..dynamics.sdeint import BrownianPath
from ..methods import Method, Option, Solution, StepMonitor, Stepping, interval_option, list_methods, register
from ..sde import ForwardSDE
from .base import Nodes, ScorePredictions, lagrange_weights, on_device

__all__ = ["StochasticSolver", "StepNoise", "exponential_weights", "register_stochastic", "ETA", "eta_option"]


def eta_option(doc: str) -> Option:
    """The ``eta`` option of a stochastic method: 0 is the probability-flow ODE, 1 the reverse SDE."""
    return interval_option(1.0, doc, low=0.0, high=1.0)


#: k-diffusion's ``eta`` of ``sample_dpmpp_2m_sde``: the fraction of the reverse SDE's noise *variance* rate.
ETA = eta_option("0: probability-flow ODE, 1: reverse SDE; the fraction of the SDE's noise variance rate, as in k-diffusion's dpmpp_2m_sde")


class StepNoise:
    r"""Standard normals :math:`z = (W(u_b) - W(u_a))/\sqrt{u_b - u_a}` between two nodes of a solve, shaped like the state.

    The solver times :math:`u = T - t` of the nodes (clipped to the path's span) and the normalizations are
    Python floats fixed before the loop.
    """

    def __init__(self, bm: BrownianPath, nodes: Nodes, sde: ForwardSDE, shape: torch.Size) -> None:
        self.bm, self.shape = bm, shape
        self.u = [min(max(sde.T - t, 0.0), bm.duration) for t in nodes.t]

    def __call__(self, a: int, b: int) -> torch.Tensor:
        """z over the path from node ``a`` to node ``b`` (later in solver time)."""
        u_a, u_b = self.u[a], self.u[b]
        return (self.bm(u_a, u_b) * (1.0 / math.sqrt(u_b - u_a))).reshape(self.shape)


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
    return lagrange_weights(nodes, _moments(len(nodes), H))


class StochasticSolver(ABC):
    """A fixed-grid reverse-SDE solver written in scoreflow, driven by a :class:`~scoreflow.BrownianPath`.

    As :class:`~scoreflow.solvers.NativeSolver`: :meth:`plan` gives the per-step coefficients from the nodes
    (and may add nodes between grid times), :meth:`solve` is the step loop, which draws each step's noise
    from the path, calls ``monitor.step`` after every step and continues from the state it returns.

    Class attributes (read by :func:`register_stochastic` into the method's registry record):
        strong_order, weak_order: declared orders for the reverse SDE's additive noise (``None``: none declared).
        drift_order: the order when the noise vanishes (``eta = 0``: the probability-flow solver it becomes), up to
            which measured orders may rise before the asymptotic regime.
        nfe_per_step: score evaluations per step.
        default_schedule: the step schedule used with ``steps=N`` when no ``schedule`` is given.
        options: the keyword options its constructor accepts.
        uses: the prediction its loop takes, ``"x0"`` or ``"eps"`` (see :class:`~scoreflow.solvers.base.ScorePredictions`).
        structure: plan entries that describe the loop's structure (Python values, e.g. node indices) rather than
            coefficients.
        to_data: whether it can end at t = 0 on a flow path (log-SNR +inf there, the last step infinitely long in
            it): a one-point step then returns the data prediction; a multistep polynomial cannot be extrapolated to
            an infinite log-SNR.
        name: the method's registered name (set by :func:`register_stochastic`), for messages.
    """

    strong_order: ClassVar[float | None] = 1.0
    weak_order: ClassVar[float | None] = 1.0
    drift_order: ClassVar[float | None] = 1.0
    nfe_per_step: ClassVar[int] = 1
    default_schedule: ClassVar[str] = "log_snr"
    options: ClassVar[Mapping[str, Option]] = {}
    uses: ClassVar[str] = "x0"
    structure: ClassVar[tuple[str, ...]] = ()
    to_data: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, bm: BrownianPath,
        *, monitor: StepMonitor,
    ) -> Solution:
        """Integrate the reverse SDE from ``x_T`` through the grid ``stepping.times`` (decreasing, in t) on the path ``bm``.

        Raises:
            ValueError: for a grid that ends at t = 0 (a flow path's ``t_min=0``) unless ``to_data``; the message
                names ``score.caller`` and the methods that reach t = 0.
        """
        grid = stepping.times
        nodes = Nodes(sde, grid, score.prediction)
        if nodes.t[len(grid) - 1] == 0.0 and not self.to_data:
            raise ValueError(
                f"{score.caller}: method '{self.name}' extrapolates its data predictions in log-SNR, which is +inf at "
                f"t_min=0. Fix: t_min > 0 (default {sde.t_min:g}), or a method that reaches t = 0 ("
                + ", ".join(_reaching_data()) + ", or torchsde's)."
            )
        plan = self.plan(nodes, len(grid) - 1)
        columns = {name: value if name in self.structure else on_device(value, x_T) for name, value in plan.items()}
        model = ScorePredictions(score, nodes, x_T, grid, uses=self.uses)
        return Solution(self.solve(model, columns, StepNoise(bm, nodes, sde, x_T.shape), x_T, monitor))

    @abstractmethod
    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        """The per-step coefficients (lists of floats) of a solve on the first ``steps + 1`` nodes; may add nodes."""

    @abstractmethod
    def solve(
        self, model: ScorePredictions, columns: Mapping[str, Sequence], noise: StepNoise, x: torch.Tensor,
        monitor: StepMonitor,
    ) -> torch.Tensor:
        """Step from ``x`` at node 0 through the grid nodes with the planned coefficients; return the last state."""


def _reaching_data() -> list[str]:
    """The registered native reverse-SDE methods that can end at t = 0."""
    return [m.name for m in list_methods("sde") if m.backend == "native" and m.solver.to_data]


def register_stochastic(name: str, solver: type[StochasticSolver], summary: str) -> Method:
    """Register a native reverse-SDE solver under ``name``, its capabilities read off the class."""
    solver.name = name
    return register(
        Method(
            name=name,
            kinds=("sde",),
            backend="native",
            solver=solver,
            summary=summary,
            strong_order=solver.strong_order,
            weak_order=solver.weak_order,
            drift_order=solver.drift_order,
            nfe_per_step=solver.nfe_per_step,
            default_schedule=solver.default_schedule,
            options=solver.options,
        )
    )
