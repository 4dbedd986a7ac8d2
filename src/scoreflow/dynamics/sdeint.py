r"""torchsde's solvers behind scoreflow's registry: the only module that calls ``torchsde``.

torchsde needs increasing time and a 2-D state, so the reverse SDE is integrated in
:math:`s = T - t` on the flattened state (see :class:`.ReverseSDE`), driven by a
:class:`BrownianPath` on :math:`[0, T - t_{min}]`.  The noise is additive (g depends on t only),
so Itô and Stratonovich coincide and every method integrates the same SDE; the records declare
torchsde's own orders, with the strong orders it states for additive noise.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torchsde

from .._checks import check_batch, check_bool, check_generator, check_positive
from ..methods import Method, Solution, StepMonitor, Stepping, Tolerances, register
from ..schedules import DATA_NOISE_LEVEL
from ..sde import ForwardSDE
from .counting import CountedScore
from .reverse_sde import ReverseSDE

__all__ = ["BrownianPath", "brownian_motion", "brownian_rows", "TorchsdeSolver"]


class BrownianPath(torchsde.BaseBrownian):
    """A Brownian motion :math:`W_s` on ``[0, duration]`` (solver time s = T - t) for a flattened ``(B, D)`` state.

    Built on torchsde's ``BrownianInterval``: one for the whole batch, or one per block of rows
    (e.g. one per item, as :mod:`scoreflow.distributed` uses), queried together.  A torchsde
    interval fixes its path where it is first queried, so a fresh one queried on another grid is
    another path; see :func:`brownian_motion` for sharing one path across step counts.

    Args:
        intervals: torchsde Brownian intervals on ``[0, duration]``, of shapes ``(B_k, D)`` stacked in order.
        duration: the length of the time span.
        levy_area: whether the intervals give space-time Lévy area (needed by ``srk``).

    Attributes:
        duration, levy_area: as given; ``shape``, ``dtype``, ``device`` of the stacked path.
    """

    def __init__(self, intervals: Sequence[torchsde.BrownianInterval], duration: float, *, levy_area: bool) -> None:
        self.intervals = list(intervals)
        self.duration = float(duration)
        self.levy_area = bool(levy_area)

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: ANN001 - torchsde's signature
        parts = [path(ta, tb, return_U=return_U, return_A=return_A) for path in self.intervals]
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(column) for column in zip(*parts))
        return torch.cat(parts)

    def __repr__(self) -> str:
        return f"BrownianPath(shape={tuple(self.shape)}, duration={self.duration:g}, levy_area={self.levy_area})"

    @property
    def dtype(self) -> torch.dtype:
        return self.intervals[0].dtype

    @property
    def device(self) -> torch.device:
        return self.intervals[0].device

    @property
    def shape(self) -> torch.Size:
        return torch.Size((sum(path.shape[0] for path in self.intervals), self.intervals[0].shape[1]))

    @property
    def levy_area_approximation(self) -> str:
        return self.intervals[0].levy_area_approximation

    def check(self, fn: str, x_T: torch.Tensor, duration: float, *, levy_area: bool, method: str = "") -> BrownianPath:
        """Check that this path drives a solve of ``x_T`` over ``[0, duration]`` (with Lévy area if needed).

        Raises:
            ValueError: for another shape, dtype or device than the flattened ``x_T``, a shorter span, or no Lévy area
                where ``method`` (its name, for the message) needs it.
        """
        size = (x_T.shape[0], x_T[0].numel())
        # torchsde keeps the device as given: "cuda" (no index) is the current device
        on_device = torch.device(self.device) in (x_T.device, torch.device(x_T.device.type))
        if tuple(self.shape) != size or self.dtype != x_T.dtype or not on_device:
            raise ValueError(
                f"{fn}: argument 'bm' expected shape {size}, dtype {x_T.dtype} and device {x_T.device} (the flattened "
                f"x_T), got shape {tuple(self.shape)}, dtype {self.dtype} and device {self.device}."
            )
        if self.duration < duration * (1 - 1e-6):
            raise ValueError(
                f"{fn}: argument 'bm' must cover solver times [0, T - t_min] = [0, {duration:g}], got [0, {self.duration:g}]."
            )
        if levy_area and not self.levy_area:
            who = f"method {method!r}" if method else "the method"
            raise ValueError(
                f"{fn}: argument 'bm' expected a path with Levy area ({who} needs it), got one without. "
                "Fix: make it with brownian_motion(..., levy_area=True)."
            )
        return self


class _GridQueries(BrownianPath):
    """The path ``bm`` queried at the times of a fixed grid: a query time within a millionth of a typical step of a
    grid time is taken as that time.

    A torchsde ``BrownianInterval`` fixes its path where it is first queried, so query times off by 1e-10 draw
    another path.  torchsde steps through a grid by sums of steps a hair longer than the grid's (``dt * (1 + 1e-9)``,
    so that round-off adds no vanishing step), which land 1e-10 beside the grid times; a solve run step by step (for
    a callback) lands on them: unsnapped, the two drew different paths (38 Euler steps: samples 10 % apart), and a
    solve restarted on the rest of the grid another one still.
    """

    def __init__(self, bm: BrownianPath, solver_ts: torch.Tensor) -> None:
        super().__init__(bm.intervals, bm.duration, levy_area=bm.levy_area)
        self.times = solver_ts.tolist()
        self.tolerance = 1e-6 * (self.times[-1] - self.times[0]) / max(len(self.times) - 1, 1)

    def _snap(self, t):  # noqa: ANN001, ANN202 - torchsde's times (floats or 0-dim tensors)
        i = bisect.bisect_left(self.times, float(t))
        near = min(self.times[max(i - 1, 0) : i + 1], key=lambda g: abs(g - float(t)))
        return near if abs(near - float(t)) <= self.tolerance else t

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: ANN001 - torchsde's signature
        tb = None if tb is None else self._snap(tb)
        return super().__call__(self._snap(ta), tb, return_U=return_U, return_A=return_A)


def _uniform(solver_ts: torch.Tensor) -> bool:
    """Whether the grid's steps are equal to round-off (one ``sdeint`` call steps it); a float64 tensor on the host."""
    steps = solver_ts.diff()
    return bool(steps.max() - steps.min() <= 1e-9 * steps.abs().max())


def brownian_motion(
    x_T: torch.Tensor,
    duration: float,
    *,
    generator: torch.Generator | None = None,
    levy_area: bool = False,
    query_independent: bool = False,
    step_size: float | None = None,
) -> BrownianPath:
    """A Brownian path on ``[0, duration]`` (solver time s = T - t) for the flattened state of ``x_T``.

    The same generator state gives the same path for the same query times. A torchsde
    ``BrownianInterval`` fixes its path where it is first queried, so a fresh one queried on
    another grid is another path. To share one path across step counts (strong-order studies),
    either query one object on the finest grid first and then reuse it on coarser nested grids,
    or build it with ``query_independent=True`` (torchsde's dyadic ``halfway_tree``: the same path
    however it is queried, 4-5x slower to query); pass it to :func:`scoreflow.sample_sde` as ``bm``.

    ``step_size``, the typical step of the solves it will drive, lets torchsde build its dependency tree
    up front; without it torchsde infers one from its first queries, which with thousands of steps nests
    deeper than Python's recursion limit.

    Raises:
        TypeError: if ``generator`` is not a ``torch.Generator``.
        ValueError: for a ``duration`` or ``step_size`` that is not a finite number > 0, or ``step_size``
            with ``query_independent=True`` (the dyadic tree needs no hint).
    """
    fn = "brownian_motion"
    check_batch(fn, "x_T", x_T)
    check_generator(fn, generator)
    check_bool(fn, "levy_area", levy_area)
    check_bool(fn, "query_independent", query_independent)
    duration = check_positive(fn, "duration", duration)
    if step_size is not None:
        step_size = check_positive(fn, "step_size", step_size)
        if query_independent:
            raise ValueError(f"{fn}: argument 'step_size' applies to query_independent=False (the dyadic tree needs no hint).")
    entropy = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device if generator else "cpu"))
    # The halfway tree rounds its dyadic points to 10**-ndigits (ndigits = -int(log10(tol))): two query times in one
    # such cell recurse without end (a RecursionError), so the cells must be finer than any step a solve takes
    # (2**-20 of the span failed on 400 log-SNR steps under EDM; 2**-30 resolves steps of 1e-8 of it, and 2**-40
    # made every query 3x slower).
    extra = {"halfway_tree": True, "tol": duration * 2.0**-30} if query_independent else {"dt": step_size}
    interval = torchsde.BrownianInterval(
        t0=0.0,
        t1=duration,
        size=(x_T.shape[0], x_T[0].numel()),
        dtype=x_T.dtype,
        device=x_T.device,
        entropy=entropy,
        levy_area_approximation="space-time" if levy_area else "none",
        **extra,
    )
    return BrownianPath([interval], duration, levy_area=levy_area)


def brownian_rows(
    entropies: Sequence[int],
    dim: int,
    duration: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    levy_area: bool = False,
) -> BrownianPath:
    """A Brownian path on ``[0, duration]`` of shape ``(len(entropies), dim)`` whose row ``i`` is its own path,
    seeded by ``entropies[i]`` (an int in ``[0, 2**62)``): a row's noise does not depend on the other rows."""
    intervals = [
        torchsde.BrownianInterval(
            t0=0.0, t1=duration, size=(1, dim), dtype=dtype, device=device, entropy=entropy,
            levy_area_approximation="space-time" if levy_area else "none",
        )
        for entropy in entropies
    ]
    return BrownianPath(intervals, duration, levy_area=levy_area)


class TorchsdeSolver:
    """One of torchsde's methods on the reverse-time SDE.

    Args:
        library_name: torchsde's name of the method.
        sde_type: ``"ito"`` or ``"stratonovich"``, as torchsde requires for the method (the same SDE here).
    """

    def __init__(self, library_name: str, *, sde_type: str) -> None:
        self.library_name = library_name
        self.sde_type = sde_type

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, bm: BrownianPath,
        *, monitor: StepMonitor,
    ) -> Solution:
        """Integrate the reverse SDE from ``x_T`` at T through ``stepping.times`` (decreasing, in t) on the path ``bm``.

        torchsde steps a solve by one step size and has no step callback: on a grid that is not uniform, or when the
        monitor must see the steps as they happen (a callback or a progress bar), the solve runs interval by interval
        on the same Brownian path, one ``sdeint`` call per grid step (for ``adaptive=True``, per interval between the
        output times ``stepping.times``), and the next interval starts from the state the callback returns.  Returns the final state and, for an adaptive
        solve, the states at every time of ``stepping.times``.
        """
        ts = stepping.times
        # torchsde advances its time in the dtype of the grid it is given: in float32 the sum of the steps falls
        # short of the end by an ulp and it takes one more, vanishing step (one more NFE); float64 lands on it.
        # (The solver times themselves stay those of the state's dtype, which the Brownian path covers.)
        solver_ts = (sde.T - ts).to(torch.float64)
        # A path made for [0, T - t_min] (as documented) ends a hair before the float32 grid's last solver time
        # (T minus t_min rounded to float32; BrownianPath.check allows 1e-6 of the span): end the solve on the path's
        # end, where torchsde would clip its queries anyway, with a UserWarning at every solve.
        solver_ts[-1] = min(float(solver_ts[-1]), bm.duration)
        adaptive = isinstance(stepping, Tolerances)
        reverse = ReverseSDE(score, sde, tuple(x_T.shape[1:]), sde_type=self.sde_type)
        y = x_T.reshape(x_T.shape[0], -1)
        if not adaptive:
            bm = _GridQueries(bm, solver_ts)
        if not monitor.live and (adaptive or stepping.step_size is not None or _uniform(solver_ts)):
            out = slice(None) if adaptive or monitor.keeps else [0, -1]
            dt = stepping.first_step if adaptive else stepping.step_size or float(solver_ts[-1]) / (len(ts) - 1)
            ys = self._sdeint(reverse, y, solver_ts[out], bm, stepping, dt)[0].reshape((-1, *x_T.shape))
            if monitor.keeps:
                for i in range(1, len(ys)):
                    monitor.step(i - 1, ts[i], ys[i])
            return Solution(ys[-1], ys if adaptive else None)
        states, times, extra = [x_T], ts.unbind(), None
        for i in range(1, len(times)):
            grid = solver_ts[i - 1 : i + 1]
            dt = stepping.first_step if adaptive else float(grid[1] - grid[0])
            ys, extra = self._sdeint(reverse, y, grid, bm, stepping, dt, extra_solver_state=extra)
            x = ys[-1].reshape(x_T.shape)
            reported = monitor.step(i - 1, times[i], x)
            if reported is x:
                y = ys[-1]
            else:  # a method's own state (reversible_heun's) restarts from the returned state
                y, extra = reported.reshape(y.shape), None
            states.append(reported)
        return Solution(states[-1], torch.stack(states) if adaptive else None)

    def _sdeint(
        self, reverse: ReverseSDE, y: torch.Tensor, grid: torch.Tensor, bm: BrownianPath, stepping: Stepping, dt: float,
        *, extra_solver_state: Any = None,
    ) -> tuple[torch.Tensor, Any]:
        """``torchsde.sdeint`` from ``y`` through the solver times ``grid`` (increasing, s = T - t), steps of ``dt``;
        returns the states and the method's own state at the end (to continue from)."""
        adaptive = isinstance(stepping, Tolerances)
        reverse.expect_contract_check(y)
        tolerances = {"rtol": stepping.rtol, "atol": stepping.atol} if adaptive else {}
        with warnings.catch_warnings():
            # torchsde warns about adaptive Euler-Maruyama with non-additive noise; this noise is
            # additive (g depends on t only) even though declared diagonal.
            warnings.filterwarnings("ignore", message="Numerical solution is not guaranteed")
            # A step a hair longer than the grid's stops torchsde's float round-off from adding a
            # vanishing extra step; its last step is clipped to land on the end exactly.
            return torchsde.sdeint(
                reverse, y, grid, bm=bm, method=self.library_name, dt=dt * (1 + 1e-9), adaptive=adaptive,
                extra=True, extra_solver_state=extra_solver_state, **tolerances,
            )


# The default grid where a uniform t grid leaves the data's own scale (sigma/alpha < 1) to its last twentieth (EDM,
# t = sigma): Karras', which there gave Euler-Maruyama and stochastic Heun 0.01-0.03 of the uniform t grid's moment
# error in the median at 10-40 steps (benchmarks/bench_fixed_step_grids.py --part sde, docs/choosing-a-sampler.md);
# on a grid that is not uniform the solve runs one sdeint call per step.
_COARSE_T = {"coarse_t_schedule": "karras", "coarse_t_noise_level": DATA_NOISE_LEVEL}


def _register(
    name: str, sde_type: str, strong_order: float, weak_order: float, drift_order: float, nfe_per_step: int,
    summary: str, **extra: Any,
) -> None:
    register(
        Method(
            name=name,
            kinds=("sde",),
            backend="torchsde",
            solver=partial(TorchsdeSolver, name, sde_type=sde_type),
            summary=summary,
            strong_order=strong_order,
            weak_order=weak_order,
            drift_order=drift_order,
            nfe_per_step=nfe_per_step,
            tolerance=True,
            step_size=True,
            default_schedule="t",
            **_COARSE_T,
            **extra,
        )
    )


# Strong orders for additive noise (Euler-Maruyama is order 1 here, not 1/2); weak orders as torchsde
# declares them; drift orders measured with the noise switched off (g = 0, a nonlinear ODE; srk's
# diagonal-noise scheme is third order there).  Score evaluations per step as counted on the flattened
# diagonal-noise state (torchsde's srk then runs its diagonal-noise scheme, with 10 drift evaluations).
_register("euler", "ito", 1.0, 1.0, 1.0, 1, "Euler-Maruyama")
_register("milstein", "ito", 1.0, 1.0, 1.0, 1, "Milstein (equal to Euler-Maruyama for additive noise)")
_register("srk", "ito", 1.5, 1.5, 3.0, 10, "stochastic Runge-Kutta of strong order 1.5 (needs Levy area)", levy_area=True)
_register("heun", "stratonovich", 1.0, 1.0, 2.0, 2, "stochastic Heun (Stratonovich)")
_register("midpoint", "stratonovich", 1.0, 1.0, 2.0, 2, "stochastic midpoint (Stratonovich)")
_register("euler_heun", "stratonovich", 1.0, 1.0, 1.0, 1, "Euler-Heun (Stratonovich)")
_register("reversible_heun", "stratonovich", 1.0, 1.0, 2.0, 1, "reversible Heun (algebraically reversible; small stability region)")
