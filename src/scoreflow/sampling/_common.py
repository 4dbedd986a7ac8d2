"""What the sampling front-ends share: the step monitor, the Tweedie prediction, the result of a solve, grad mode."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .._checks import check_bool
from .._tensor import as_time, right_pad
from ..dynamics.counting import CountedScore, ScoreFn
from ..methods import Grid, Solution, StepCallback, StepMonitor, Stepping
from ..parameterizations import convert
from ..sde import ForwardSDE
from .result import SampleResult


def tweedie(score: CountedScore, sde: ForwardSDE, x: torch.Tensor, t: Any) -> torch.Tensor:
    r"""The data prediction :math:`\hat x_0 = E[x_0 \mid x_t] = (x + \sigma^2 s(x,t))/\alpha` (one NFE), from the model's
    native prediction (finite at pure noise for a flow velocity, data or v prediction).

    ``t`` is handed to the model as it is, so a solver that evaluates it at the same state and time object
    next reuses this evaluation (see :class:`~scoreflow.CountedScore`).
    """
    native = score.predict(x, t)
    if score.prediction != "score":
        return convert(native, score.prediction, "x0", x, t, sde)
    alpha, sigma = sde.marginal(as_time(t, x))
    return (x + right_pad(sigma**2, x) * native) / right_pad(alpha, x)


def step_monitor(
    fn: str,
    score: CountedScore,
    sde: ForwardSDE | None,
    *,
    callback: StepCallback | None,
    progress: bool,
    return_trajectory: bool,
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> StepMonitor:
    """The front-end's :class:`StepMonitor`; ``"denoised"`` is Tweedie's prediction under ``sde`` unless ``denoise`` is given."""
    if not isinstance(return_trajectory, bool):
        raise TypeError(f"{fn}: argument 'return_trajectory' expected True or False, got {type(return_trajectory).__name__}.")
    if denoise is None:
        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return tweedie(score, sde, x, t)
    return StepMonitor(fn, callback=callback, progress=progress, trajectory=return_trajectory, denoise=denoise)


@contextlib.contextmanager
def solving(
    score: CountedScore, monitor: StepMonitor, t0: torch.Tensor, x0: torch.Tensor, *, enable_grad: bool,
    steps: int | None = None, span: float | None = None,
) -> Iterator[None]:
    """The context of one solve from ``x0`` at ``t0``: grad mode, the monitor (and its progress bar in ``steps`` or
    in time ``span``), and the non-finite check when the solve ends (one host read)."""
    with grad_mode(score.caller, enable_grad), monitor, score.guard():
        monitor.start(t0, x0, steps=steps, span=span)
        yield


def solving_stepping(
    score: CountedScore, monitor: StepMonitor, stepping: Stepping, x_T: torch.Tensor, *, enable_grad: bool
) -> contextlib.AbstractContextManager:
    """:func:`solving` for a solver's stepping: a bar in steps for a grid, in time for tolerances."""
    if isinstance(stepping, Grid):
        return solving(score, monitor, stepping.times[0], x_T, enable_grad=enable_grad, steps=stepping.steps)
    span = abs(float(stepping.times[0]) - float(stepping.times[-1]))
    return solving(score, monitor, stepping.times[0], x_T, enable_grad=enable_grad, span=span)


def sample_with(
    fn: str,
    score: ScoreFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    stepping: Stepping,
    solve: Callable[[CountedScore, StepMonitor], Solution],
    *,
    t_min: float,
    save_at: torch.Tensor | None,
    return_trajectory: bool,
    denoise_final: bool,
    enable_grad: bool,
    callback: StepCallback | None,
    progress: bool,
) -> SampleResult:
    """Run ``solve(counted_score, monitor)`` with the front-end ``fn``'s hooks and turn its solution into the result."""
    counted = CountedScore(score, caller=fn, sde=sde)
    monitor = step_monitor(fn, counted, sde, callback=callback, progress=progress, return_trajectory=return_trajectory)
    with solving_stepping(counted, monitor, stepping, x_T, enable_grad=enable_grad):
        solution = solve(counted, monitor)
        return solution_result(counted, sde, solution, stepping, monitor, t_min, save_at=save_at, denoise_final=denoise_final)


def solution_result(
    score: CountedScore,
    sde: ForwardSDE,
    solution: Solution,
    stepping: Stepping,
    monitor: StepMonitor,
    t_min: float,
    *,
    save_at: torch.Tensor | None,
    denoise_final: bool,
) -> SampleResult:
    """The :class:`SampleResult` of a solver's solution: its final state (optionally denoised), the NFE, and the
    states at ``save_at`` (dense output) or at every accepted step (``return_trajectory``).

    The final state joins the solve's non-finite record: a drift that is NaN where the score is finite (a process
    singular at ``t_min``, as sigma = sqrt(t) at 0) would otherwise leave NaN samples unreported."""
    samples = solution.state
    score.finite.record("state", samples, t_min)
    if denoise_final:
        samples = tweedie(score, sde, samples, torch.tensor(t_min, dtype=samples.dtype, device=samples.device))
    times = trajectory = None
    if save_at is not None:
        index = list(stepping.save_index)
        times, trajectory = stepping.times[index], solution.saved[index]
    elif monitor.keeps:
        times, trajectory = monitor.trajectory()
    return SampleResult(samples, score.nfe, times, trajectory, solution.stats)


def check_save_at_alone(fn: str, save_at: Any, return_trajectory: bool) -> None:
    """``save_at`` and ``return_trajectory`` both fill ``times``/``trajectory``: one at a time."""
    if save_at is not None and return_trajectory:
        raise ValueError(
            f"{fn}: give 'save_at' (the states at chosen times) or return_trajectory=True (the states at every "
            "accepted step), not both."
        )


def grad_mode(fn: str, enable_grad: bool) -> contextlib.AbstractContextManager:
    """Samplers run under ``torch.no_grad()`` unless the caller of the front-end ``fn`` asks to differentiate through
    them (``enable_grad=True``; a string such as ``"no"`` is refused: it would read as true and keep the graph)."""
    return contextlib.nullcontext() if check_bool(fn, "enable_grad", enable_grad) else torch.no_grad()
