r"""Sampling by the probability-flow ODE with torchdiffeq's solvers."""

from __future__ import annotations

from typing import Any

import torch
import torchdiffeq

from .._tensor import right_pad
from .._checks import (
    check_batch,
    check_choice,
    check_int,
    check_options,
    check_positive,
    check_sde,
    check_time_grid,
    resolve_t_min,
)
from ..dynamics.counting import ScoreFn
from ..dynamics.probability_flow import ProbabilityFlowODE
from ..dynamics.reparameterized import (
    TIME_VARIABLES,
    ScaledProbabilityFlowODE,
    from_time_variable,
    to_time_variable,
)
from ..sde import ForwardSDE
from ..solvers import ADAPTIVE_SOLVERS, SOLVER_ORDERS, SOLVERS, ScorePredictions
from ._common import grad_mode, start_counted, tweedie_denoise
from .result import SampleResult
from .schedules import SCHEDULES, time_grid

__all__ = [
    "sample_ode", "ADAPTIVE_ODE_METHODS", "FIXED_ODE_METHODS", "NATIVE_ODE_METHODS", "NATIVE_ADAPTIVE_ODE_METHODS", "ODE_ORDERS",
]

#: torchdiffeq's adaptive (error-controlled) methods and their orders.
ADAPTIVE_ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: scoreflow's own fixed-grid solvers (``scoreflow.solvers``): exponential integrators and EDM's Heun.
NATIVE_ODE_METHODS = tuple(SOLVERS)
#: scoreflow's own error-controlled solver: ``dpmpp_4m_pc`` with its log-SNR steps chosen by an embedded estimate.
NATIVE_ADAPTIVE_ODE_METHODS = tuple(ADAPTIVE_SOLVERS)
#: Fixed-grid methods: torchdiffeq's (``heun`` is scoreflow's alias of its ``heun2``; its Adams methods
#: are left out, their start-up makes them unstable on VE problems), then the native ones.
FIXED_ODE_METHODS = ("euler", "midpoint", "heun", "heun2", "heun3", "rk4") + NATIVE_ODE_METHODS
_ALIASES = {"heun": "heun2"}
#: Declared global order of accuracy of every ODE method (used by the order tests and benchmarks).
ODE_ORDERS = {
    "euler": 1, "midpoint": 2, "heun": 2, "heun2": 2, "heun3": 3, "rk4": 4,
    "dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2,
    **SOLVER_ORDERS,
}
# Default step schedule of torchdiffeq's fixed-grid methods in each time variable.
_DEFAULT_SCHEDULE = {"t": "t", "sigma": "karras", "log_snr": "log_snr"}


def sample_ode(
    score: ScoreFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    time: str | None = None,
    schedule: str | torch.Tensor | None = None,
    return_trajectory: bool = False,
    denoise_final: bool = False,
    enable_grad: bool = False,
    options: dict[str, Any] | None = None,
) -> SampleResult:
    r"""Integrate the probability-flow ODE :math:`\dot x = f x - \tfrac12 g^2 s(x,t)` from T down to ``t_min``.

    torchdiffeq's methods integrate in the chosen ``time`` variable: t, the scaled noise level
    :math:`\bar\sigma = \sigma/\alpha` (state :math:`x/\alpha`, :math:`dy/d\bar\sigma = \hat\varepsilon`) or the
    log-SNR :math:`\lambda = \log(\alpha/\sigma)`.  The native methods ``NATIVE_ODE_METHODS`` (DDIM,
    DPM-Solver, DPM-Solver++, EDM Heun) integrate in their own variables.

    Args:
        score: score model ``score(x, t)`` with ``x`` of shape ``(B, *D)`` and ``t`` of shape ``(B,)``.
        sde: the forward SDE the score belongs to.
        x_T: initial states at time T, shape ``(B, *D)`` (e.g. ``sde.prior_sample``).
        method: adaptive ``ADAPTIVE_ODE_METHODS`` (torchdiffeq's) or ``NATIVE_ADAPTIVE_ODE_METHODS``
            (``"dpmpp_4m_pc_adaptive"``), or fixed-grid ``FIXED_ODE_METHODS`` (which include the native ones).
        rtol, atol: tolerances of adaptive methods.
        t_min: final time (default ``sde.t_min``).
        steps: number of steps of a fixed-grid method (give this or ``step_size``; native methods need ``steps``).
        step_size: step length of a torchdiffeq fixed-grid method in the ``time`` variable; the last step is
            shortened to land on ``t_min``.
        time: torchdiffeq's integration variable, ``"t"`` (default), ``"sigma"`` or ``"log_snr"``.
        schedule: grid of ``steps``: ``"t"``, ``"log_snr"``, ``"karras"`` or ``"log_snr_capped"`` (default: uniform in ``time``,
            Karras for ``"sigma"``; native methods default to the schedule they were designed for), or the grid
            itself, a decreasing 1-D tensor of times from T to ``t_min`` (e.g. ``time_grid`` with its options);
            ``steps`` may then be omitted.
        return_trajectory: also return the states at every grid time (fixed-grid), at every accepted step
            (``dpmpp_4m_pc_adaptive``) or at ``T`` and ``t_min`` (torchdiffeq's adaptive methods).
        denoise_final: finish with Tweedie's denoising step :math:`(x + \sigma^2 s)/\alpha` at ``t_min`` (one NFE).
        enable_grad: keep the autograd graph (for differentiating through the sampler); off by default.
        options: extra torchdiffeq options (e.g. ``{"max_num_steps": 10_000}``), or a native solver's
            options (e.g. ``{"lower_order_final": False}`` for the multistep methods, ``{"h_init": 0.5}`` for
            ``dpmpp_4m_pc_adaptive``, whose ``stats`` report its accepted and rejected steps).

    Returns:
        A :class:`SampleResult` with ``samples`` at ``t_min``, ``nfe`` and (with a trajectory) ``times`` in t.

    Raises:
        ValueError: for an unknown method, time variable or schedule (the message lists the valid ones), a
            missing or superfluous ``steps``/``step_size``/``schedule``/``time``, ``t_min`` outside ``(0, T)``,
            or a malformed ``x_T``.
        TypeError: if the score returns the wrong dtype, an argument has the wrong type, or a native solver
            is given an option it does not take.
        NonFiniteError: if the score becomes NaN/inf; the message names the time.
    """
    fn = "sample_ode"
    check_sde(fn, sde)
    check_choice(fn, "method", method, ADAPTIVE_ODE_METHODS + FIXED_ODE_METHODS + NATIVE_ADAPTIVE_ODE_METHODS)
    t_min = resolve_t_min(fn, sde, t_min)
    check_batch(fn, "x_T", x_T)
    if time is not None:
        check_choice(fn, "time", time, TIME_VARIABLES)
    if method in ADAPTIVE_SOLVERS:
        if steps is not None or step_size is not None or schedule is not None or time is not None:
            raise ValueError(
                f"{fn}: the adaptive method {method!r} chooses its own log-SNR steps from rtol/atol; omit "
                f"'steps', 'step_size', 'schedule' and 'time' (got steps={steps!r}, step_size={step_size!r}, "
                f"schedule={'a tensor' if torch.is_tensor(schedule) else repr(schedule)}, time={time!r})."
            )
        solver = ADAPTIVE_SOLVERS[method](**check_options(fn, options, ADAPTIVE_SOLVERS[method].options))
        check_positive(fn, "rtol", rtol)
        check_positive(fn, "atol", atol)
        with grad_mode(enable_grad):
            return _solve_native_adaptive(solver, score, sde, x_T, t_min, rtol, atol, return_trajectory, denoise_final)
    if torch.is_tensor(schedule):
        if method not in FIXED_ODE_METHODS:
            raise ValueError(f"{fn}: a grid of times ('schedule') applies to fixed-grid methods; the adaptive method {method!r} uses rtol/atol.")
        schedule = check_time_grid(fn, "schedule", schedule, sde.T, t_min)
        if steps not in (None, len(schedule) - 1):
            raise ValueError(f"{fn}: a grid of {len(schedule)} times has {len(schedule) - 1} steps, got steps={steps!r}; omit 'steps'.")
        steps = len(schedule) - 1
    elif schedule is not None:
        check_choice(fn, "schedule", schedule, SCHEDULES)
        if steps is None:
            raise ValueError(f"{fn}: 'schedule' places the grid of a fixed-grid method and needs 'steps', got steps=None.")
    if method in SOLVERS:
        if time is not None:
            raise ValueError(f"{fn}: the native method {method!r} integrates in its own variables; omit 'time' (got {time!r}).")
        if steps is None or step_size is not None:
            raise ValueError(f"{fn}: the native method {method!r} needs 'steps' (and a 'schedule'), got steps={steps!r}, step_size={step_size!r}.")
        check_int(fn, "steps", steps)
        solver = SOLVERS[method](**check_options(fn, options, SOLVERS[method].options))
        ts = _grid(sde, steps, schedule, solver.default_schedule, t_min, x_T)
        with grad_mode(enable_grad):
            return _solve_native(solver, score, sde, x_T, ts, t_min, return_trajectory, denoise_final)

    time = time or "t"
    opts = dict(options or {})
    fixed = method in FIXED_ODE_METHODS
    if fixed:
        if (steps is None) == (step_size is None):
            raise ValueError(f"{fn}: the fixed-grid method {method!r} needs exactly one of 'steps' or 'step_size', got steps={steps!r}, step_size={step_size!r}.")
        if step_size is not None:
            opts["step_size"] = check_positive(fn, "step_size", step_size)
        else:
            check_int(fn, "steps", steps)
    else:
        if steps is not None or step_size is not None:
            raise ValueError(f"{fn}: 'steps'/'step_size' apply to fixed-grid methods {FIXED_ODE_METHODS}; the adaptive method {method!r} uses rtol/atol.")
        check_positive(fn, "rtol", rtol)
        check_positive(fn, "atol", atol)

    if fixed and steps is not None:
        ts = _grid(sde, steps, schedule, _DEFAULT_SCHEDULE[time], t_min, x_T)
    else:
        ts = torch.tensor([sde.T, t_min], dtype=x_T.dtype, device=x_T.device)
    with grad_mode(enable_grad):
        return _solve_torchdiffeq(
            method, score, sde, x_T, ts, t_min, time, fixed, rtol, atol, opts, return_trajectory, denoise_final
        )


def _solve_native(solver, score, sde, x_T, ts, t_min, return_trajectory, denoise_final) -> SampleResult:
    """Run one of scoreflow's own solvers on the grid ``ts`` (validation done by :func:`sample_ode`)."""
    counted = start_counted("sample_ode", score, sde, x_T, sde.T)
    states = solver.solve(ScorePredictions(counted, sde), ts, x_T)
    return _native_result(counted, sde, ts, states, t_min, return_trajectory, denoise_final)


def _solve_native_adaptive(solver, score, sde, x_T, t_min, rtol, atol, return_trajectory, denoise_final) -> SampleResult:
    """Run scoreflow's error-controlled solver from T to ``t_min`` (validation done by :func:`sample_ode`)."""
    counted = start_counted("sample_ode", score, sde, x_T, sde.T)
    ends = torch.tensor([sde.T, t_min], dtype=x_T.dtype, device=x_T.device)
    times, states, rejected = solver.solve(ScorePredictions(counted, sde), ends[0], ends[1], x_T, rtol, atol)
    stats = {"steps": len(times) - 1, "rejected_steps": rejected}
    return _native_result(counted, sde, torch.stack(times), states, t_min, return_trajectory, denoise_final, stats)


def _native_result(counted, sde, times, states, t_min, return_trajectory, denoise_final, stats=None) -> SampleResult:
    """The result of a native solve: the last state (optionally Tweedie-denoised), the NFE and, if asked, the path."""
    samples = states[-1]
    if denoise_final:
        samples = tweedie_denoise(counted, sde, samples, t_min)
    traj = torch.stack(states) if return_trajectory else None
    return SampleResult(samples, counted.nfe, times if return_trajectory else None, traj, stats or {})


def _solve_torchdiffeq(
    method, score, sde, x_T, ts, t_min, time, fixed, rtol, atol, opts, return_trajectory, denoise_final
) -> SampleResult:
    """Integrate with torchdiffeq in the time variable ``time`` between the t-grid ``ts`` (validated)."""
    if time == "t":
        us, y_T = ts, x_T
    else:
        us = to_time_variable(sde, time, ts)
        ts = from_time_variable(sde, time, us)
        y_T = x_T / right_pad(sde.marginal(ts[0])[0], x_T)
    if not fixed:
        # torchdiffeq's adaptive solvers otherwise step past the last time and interpolate
        # back, evaluating the score below t_min (where sigma(t)^2 may be negative).
        opts.setdefault("step_t", us[-1:])
    if time == "t":
        counted = start_counted("sample_ode", score, sde, x_T, sde.T)
        func = ProbabilityFlowODE(counted, sde)
    else:
        # The first evaluation of the vector field is at (alpha y_T, ts[0]): check and count it there.
        counted = start_counted("sample_ode", score, sde, right_pad(sde.marginal(ts[0])[0], x_T) * y_T, ts[0])
        func = ScaledProbabilityFlowODE(counted, sde, time)
    traj = torchdiffeq.odeint(func, y_T, us, method=_ALIASES.get(method, method), rtol=rtol, atol=atol, options=opts or None)
    if time != "t":
        traj = traj * right_pad(sde.marginal(ts)[0], traj)
    samples = traj[-1]
    if denoise_final:
        samples = tweedie_denoise(counted, sde, samples, t_min)
    return SampleResult(
        samples=samples,
        nfe=counted.nfe,
        times=ts if return_trajectory else None,
        trajectory=traj if return_trajectory else None,
    )


def _grid(
    sde: ForwardSDE, steps: int, schedule: str | torch.Tensor | None, default: str, t_min: float, like: torch.Tensor
) -> torch.Tensor:
    """The fixed-step grid in ``like``'s dtype and device: a checked custom grid, or ``time_grid`` of a schedule name."""
    if torch.is_tensor(schedule):
        return schedule.to(dtype=like.dtype, device=like.device)
    return time_grid(sde, steps, schedule or default, t_min=t_min, dtype=like.dtype, device=like.device)
