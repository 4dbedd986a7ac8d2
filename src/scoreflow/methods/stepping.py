"""How a solve is stepped (a fixed grid or tolerances) and what a solver hands back (its solution).

The split follows diffrax's solver / step-size controller: a front-end turns its ``steps``,
``step_size``, ``schedule``, ``time``, ``rtol`` and ``atol`` arguments into one of these, once,
and every solver of the kind takes it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .._cache import LRU, parameters_key, version
from .._checks import (
    check_choice, check_int, check_positive, check_save_at, check_schedule_name, check_time_grid, first_unordered_step,
)
from ..schedules import SCHEDULES, step_size_grid, time_grid
from ..sde import ForwardSDE
from .registry import Method

__all__ = ["Grid", "Tolerances", "Stepping", "Solution", "resolve_stepping", "DEFAULT_TOLERANCE"]

#: rtol = atol of an adaptive solve when the caller gives none.
DEFAULT_TOLERANCE = 1e-5
# Named-schedule grids by their arguments (see scoreflow._cache).
_GRIDS = LRU(32)


@dataclass(frozen=True)
class Grid:
    """Fixed steps through the given times.

    Attributes:
        times: 1-D tensor of times in t, from the start of the solve to its end (decreasing when
            sampling from T to ``t_min``, increasing for likelihoods), in the state's dtype and device.
        time: the variable the solver integrates in: ``"t"``, ``"sigma"`` (``sigma/alpha``) or
            ``"log_snr"``; solvers with variables of their own ignore it.
        step_size: the step length in ``time`` the grid was built from, when the caller gave one instead of a
            grid (the last step is then shortened to land on the end), else ``None``.
    """

    times: torch.Tensor
    time: str = "t"
    step_size: float | None = None

    @property
    def steps(self) -> int:
        """The number of steps."""
        return len(self.times) - 1

    @property
    def first_step(self) -> float:
        """The length of the first step (a host read: for set-up, never inside a step loop)."""
        return self.step_size if self.step_size is not None else abs(float(self.times[1] - self.times[0]))


@dataclass(frozen=True)
class Tolerances:
    """Steps chosen by the solver from an error estimate.

    Attributes:
        times: the times in t at which the solver returns the state: the two ends of the solve, with the
            ``save_at`` times between them when some were asked for.
        rtol, atol: relative and absolute tolerances.
        time: the variable the solver integrates in (as for :class:`Grid`).
        first_step: the first step's length, where the solver needs one (torchsde's adaptive stepping).
        save_index: where each requested ``save_at`` time is in ``times`` (``None`` when none were asked for).
    """

    times: torch.Tensor
    rtol: float
    atol: float
    time: str = "t"
    first_step: float | None = None
    save_index: tuple[int, ...] | None = None


Stepping = Grid | Tolerances


@dataclass
class Solution:
    """What a sampling solver returns.

    Attributes:
        state: the final state, at the last time of the stepping, shape ``(B, *D)``.
        saved: for a :class:`Tolerances` solve, the states at every time of ``stepping.times``, shape
            ``(len(times), B, *D)`` (dense output); ``None`` for a fixed grid.
        stats: solver-specific counts (e.g. accepted and rejected steps).
    """

    state: torch.Tensor
    saved: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


def resolve_stepping(
    fn: str,
    method: Method,
    sde: ForwardSDE,
    like: torch.Tensor,
    *,
    start: float,
    end: float,
    steps: Any = None,
    step_size: Any = None,
    schedule: Any = None,
    time: Any = None,
    rtol: Any = None,
    atol: Any = None,
    adaptive: bool = False,
    save_at: Any = None,
) -> Stepping:
    """Check how the front-end ``fn`` was asked to step ``method`` and return the :class:`Grid` or :class:`Tolerances`.

    A method that chooses its own steps (``method.adaptive``) takes ``rtol``/``atol`` (default
    :data:`DEFAULT_TOLERANCE`) and no grid.  A fixed-grid method takes ``steps`` (placed by ``schedule``,
    a name from ``SCHEDULES``; default: :meth:`Method.schedule_for`), or a
    ``schedule`` that is the grid itself (a 1-D tensor of times from ``start`` to
    ``end``), or, where the method allows it, a ``step_size``; with ``adaptive=True`` (methods that also run
    with error control) that grid's first step starts the error-controlled solve.  ``save_at`` (error-controlled
    solves only) adds times between the ends at which the solver returns the state.

    Args:
        fn: the front-end, named in messages.
        method: the method's record.
        sde: the forward process (for schedules).
        like: a tensor whose dtype and device the times take.
        start, end: the times the solve runs between (``start > end`` when sampling, ``<`` for likelihoods).
        steps, step_size, schedule, time, rtol, atol, save_at: the front-end's arguments, unchecked.
        adaptive: the caller asked for error control of a fixed-grid method.

    Raises:
        ValueError: for a missing or superfluous argument (the message says which go together), an unknown
            schedule or time variable (listing the valid ones), a malformed custom grid, or ``save_at`` for a
            fixed grid or with times outside the solve.
        TypeError: for an argument of the wrong type.
    """
    name = method.name
    if time is not None:
        if not method.time_variables:
            raise ValueError(f"{fn}: the native method {name!r} integrates in its own variables; omit 'time' (got {time!r}).")
        check_choice(fn, "time", time, method.time_variables)
        if time != "t" and sde.pure_noise_at_T:
            raise ValueError(
                f"{fn}: time={time!r} is infinite at T={sde.T:g} on {sde!r}, where alpha(T) = 0 (pure "
                "noise). Fix: time='t' (the default), or a native exponential integrator."
            )
    time = time or "t"
    if save_at is not None and not (method.adaptive or adaptive):
        raise ValueError(
            f"{fn}: 'save_at' picks the times at which an error-controlled solve returns the state; the fixed-grid "
            f"method {name!r} returns the state at its grid times: give them as the grid (schedule=a tensor of times) "
            "with return_trajectory=True."
        )
    if method.adaptive:
        if steps is not None or step_size is not None or schedule is not None:
            raise ValueError(
                f"{fn}: the adaptive method {name!r} chooses its own steps from rtol/atol; omit 'steps', 'step_size' "
                f"and 'schedule' (got steps={steps!r}, step_size={step_size!r}, schedule={_show(schedule)})."
            )
        times, save_index = _output_times(fn, save_at, start, end, like)
        return Tolerances(times, *_tolerances(fn, rtol, atol), time=time, save_index=save_index)
    if adaptive and not method.tolerance:
        raise ValueError(f"{fn}: the method {name!r} has no error control; omit 'adaptive' or choose another method.")
    if not adaptive and (rtol is not None or atol is not None):
        raise ValueError(
            f"{fn}: 'rtol'/'atol' apply to adaptive methods; the fixed-grid method {name!r} takes 'steps' "
            f"(got rtol={rtol!r}, atol={atol!r})."
        )
    if step_size is not None and not method.step_size:
        raise ValueError(f"{fn}: the method {name!r} takes 'steps', not 'step_size' (got step_size={step_size!r}).")
    given = [arg for arg, value in (("steps", steps), ("step_size", step_size), ("schedule", schedule)) if value is not None]
    if step_size is not None and len(given) > 1 or not given:
        ways = "'steps' (with an optional 'schedule'), a 'schedule' grid" + (" or 'step_size'" if method.step_size else "")
        raise ValueError(
            f"{fn}: the fixed-grid method {name!r} needs exactly one of {ways}; got steps={steps!r}, "
            + (f"step_size={step_size!r}, " if method.step_size else "") + f"schedule={_show(schedule)}."
        )
    if step_size is not None:
        length = check_positive(fn, "step_size", step_size)
        ts = step_size_grid(sde, start, end, length, time)
        ts = _placed(fn, "step_size", ts.flip(0) if start < end else ts, like, start < end)
        grid = Grid(ts, time=time, step_size=length)
    else:
        grid = Grid(_grid(fn, method, sde, like, start, end, steps, schedule, time), time=time)
    if not adaptive:
        return grid
    times, save_index = _output_times(fn, save_at, start, end, like)
    return Tolerances(times, *_tolerances(fn, rtol, atol), time=time, first_step=grid.first_step, save_index=save_index)


def _grid(fn: str, method: Method, sde: ForwardSDE, like: torch.Tensor, start: float, end: float, steps: Any,
          schedule: Any, time: str) -> torch.Tensor:
    """The grid of times from ``start`` to ``end``: a checked custom ``schedule``, or ``steps`` steps of a named schedule."""
    increasing = start < end
    t_max, t_min = (end, start) if increasing else (start, end)
    if torch.is_tensor(schedule):
        ts = check_time_grid(fn, "schedule", schedule, t_max, t_min, increasing=increasing)
        if steps not in (None, len(ts) - 1):
            raise ValueError(f"{fn}: a grid of {len(ts)} times has {len(ts) - 1} steps, got steps={steps!r}; omit 'steps'.")
    else:
        if schedule is not None:
            check_schedule_name(fn, "schedule", schedule, SCHEDULES, increasing=increasing)
            if steps is None:
                raise ValueError(f"{fn}: 'schedule' places the grid of a fixed-grid method and needs 'steps', got steps=None.")
        check_int(fn, "steps", steps)
        default = method.schedule_for(sde, time)

        def make() -> tuple[torch.Tensor, int]:
            grid = _placed(fn, "steps", time_grid(sde, steps, schedule or default, t_min=t_min), like, increasing)
            return grid, version(grid)

        # The same grid object for the same arguments (a native solver's plan is cached on it), unless modified.
        process = parameters_key(sde)
        if process is None:
            return make()[0]
        key = (process, steps, schedule, default, t_min, like.dtype, like.device, increasing)
        return _GRIDS.get(key, make, valid=lambda entry: entry[1] is not None and version(entry[0]) == entry[1])[0]
    return _placed(fn, "schedule", ts, like, increasing)


def _placed(fn: str, name: str, ts: torch.Tensor, like: torch.Tensor, increasing: bool) -> torch.Tensor:
    """The decreasing float64 grid ``ts`` (on the host) in the dtype and device of ``like``, flipped to increase if
    ``increasing`` (a likelihood's solve from ``t_min`` to T).

    Raises:
        ValueError: naming the argument ``name`` the grid came from, if two of its times round to one time in
            ``like``'s dtype (a step of length 0: torchdiffeq's methods stopped on an assertion, the multistep
            methods divided by zero, EDM's Heun sampler took the step as nothing).
    """
    cast = ts.to(dtype=like.dtype)  # on the host, where the grid was made: no device read
    i = first_unordered_step(cast)
    if i is not None:
        # the two entries and times in the order of the solve (up from t_min when increasing)
        (a, first), (b, second) = ((i, ts[i]), (i + 1, ts[i + 1])) if not increasing else (
            (len(ts) - 2 - i, ts[i + 1]), (len(ts) - 1 - i, ts[i]))
        fix = {"schedule": "merge the two times", "steps": "fewer 'steps'",
               "step_size": "a 'step_size' that divides the span or leaves a longer last step"}[name]
        raise ValueError(
            f"{fn}: argument '{name}' expected a grid of distinct times in the state's dtype {like.dtype}, got times "
            f"{float(first)!r} and {float(second)!r} (entries {a} and {b}), which both round to "
            f"{float(cast[i])!r}. Fix: {fix}, or a float64 state (.double() of the state the solve starts from)."
        )
    cast = cast.to(device=like.device)
    return cast.flip(0) if increasing else cast


def _output_times(fn: str, save_at: Any, start: float, end: float, like: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """The ends of the solve with the ``save_at`` times between them, and where each ``save_at`` time is."""
    if save_at is None:
        return torch.tensor([start, end], dtype=like.dtype, device=like.device), None
    wanted = check_save_at(fn, "save_at", save_at, start, end)
    times = [start] + [t for t in wanted if t not in (start, end)] + [end]
    index = tuple(times.index(t) for t in wanted)
    return torch.tensor(times, dtype=like.dtype, device=like.device), index


def _tolerances(fn: str, rtol: Any, atol: Any) -> tuple[float, float]:
    return (
        DEFAULT_TOLERANCE if rtol is None else check_positive(fn, "rtol", rtol),
        DEFAULT_TOLERANCE if atol is None else check_positive(fn, "atol", atol),
    )


def _show(schedule: Any) -> str:
    return "a tensor" if torch.is_tensor(schedule) else repr(schedule)
