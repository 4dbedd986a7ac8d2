r"""Sampling by the probability-flow ODE, with any ``"ode"`` method of the registry."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_batch, check_bool, resolve_t_min
from ..dynamics.counting import ScoreFn
from ..methods import StepCallback, get_method, resolve_stepping
from ..parameterizations import check_native_at_pure_noise
from ..sde import ForwardSDE, check_sde
from ._common import check_save_at_alone, sample_with
from .result import SampleResult

__all__ = ["sample_ode"]


def sample_ode(
    score: ScoreFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    *,
    method: str = "dopri5",
    steps: int | None = None,
    step_size: float | None = None,
    schedule: str | torch.Tensor | None = None,
    time: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    t_min: float | None = None,
    return_trajectory: bool = False,
    save_at: torch.Tensor | None = None,
    denoise_final: bool = False,
    enable_grad: bool = False,
    callback: StepCallback | None = None,
    progress: bool = False,
    options: dict[str, Any] | None = None,
) -> SampleResult:
    r"""Integrate the probability-flow ODE :math:`\dot x = f x - \tfrac12 g^2 s(x,t)` from T down to ``t_min``.

    The methods are the registry's ``"ode"`` kind (``scoreflow.list_methods("ode")``): torchdiffeq's
    adaptive and fixed-grid Runge-Kutta methods, which integrate in the chosen ``time`` variable (t, the
    scaled noise level :math:`\bar\sigma = \sigma/\alpha` with state :math:`x/\alpha`, or the log-SNR
    :math:`\lambda = \log(\alpha/\sigma)`), and scoreflow's own exponential integrators and EDM's Heun
    sampler, which integrate in their own variables.

    Args:
        score: score model ``score(x, t)`` with ``x`` of shape ``(B, *D)`` and ``t`` of shape ``(B,)``.
        sde: the forward SDE the score belongs to.
        x_T: initial states at time T, shape ``(B, *D)`` (e.g. ``sde.prior_sample``).
        method: an ``"ode"`` method; adaptive ones (``dopri5``, ``dpmpp_4m_pc_adaptive``, ...) take
            ``rtol``/``atol``, fixed-grid ones ``steps``.
        steps: number of steps of a fixed-grid method.
        step_size: instead of ``steps``, the step length of a torchdiffeq fixed-grid method in the ``time``
            variable; the last step is shortened to land on ``t_min``.
        schedule: where the ``steps`` go: a name of ``scoreflow.schedules.SCHEDULES`` (``"t"``, ``"log_snr"``,
            ``"karras"``, ``"log_snr_capped"``, ``"shift"`` or ``"noise_fraction"``; :func:`scoreflow.time_grid`)
            (default: uniform in ``time``, Karras' for ``"sigma"``, and for the native methods the schedule
            they were designed for, adapted to the process: ``get_method("ode", method).schedule_for(sde)``), or the grid itself, a decreasing 1-D tensor of times from T to ``t_min``
            (e.g. :func:`scoreflow.time_grid` with its options); ``steps`` may then be omitted.
        time: torchdiffeq's integration variable, ``"t"`` (default), ``"sigma"`` or ``"log_snr"``.
        rtol, atol: tolerances of an adaptive method (default 1e-5 each).
        t_min: final time (default ``sde.t_min``; on a flow path it may be 0 for torchdiffeq's methods in t).
        return_trajectory: also return ``x_T`` and the state after every step (the grid times of a fixed-grid
            method, the accepted steps of an adaptive one) as ``times`` and ``trajectory``.
        save_at: adaptive methods only: a 1-D tensor of times between T and ``t_min`` (decreasing) at which to
            return the state as ``times`` and ``trajectory`` (dense output: the solver steps onto each of them),
            instead of ``return_trajectory``.
        denoise_final: finish with Tweedie's denoising step :math:`(x + \sigma^2 s)/\alpha` at ``t_min`` (one NFE).
        enable_grad: keep the autograd graph (for differentiating through the sampler); off by default.
        callback: ``callback(info)``, called after every accepted step with a mapping of ``"i"`` (step index),
            ``"t"`` (time reached, a 0-dim tensor), ``"x"`` (the state) and ``"denoised"`` (:math:`\hat x_0` at that
            state; evaluated only if read, one NFE unless the next step evaluates the score there anyway); it may
            return a replacement state, which the next step starts from (see the hooks guide).
        progress: show a tqdm progress bar (``pip install 'scoreflow[progress]'``).
        options: the method's own options (``scoreflow.list_methods("ode")`` lists them per method), e.g.
            ``{"max_num_steps": 10_000}`` for torchdiffeq's adaptive methods, ``{"lower_order_final": False}``
            for the multistep methods, ``{"h_init": 0.5}`` for ``dpmpp_4m_pc_adaptive``.

    Returns:
        A :class:`SampleResult` with ``samples`` at ``t_min``, ``nfe``, (with a trajectory) ``times`` in t, and
        the solver's ``stats`` (``dpmpp_4m_pc_adaptive``: accepted and rejected steps).

    Raises:
        ValueError: for a score or noise model on a process that reaches pure noise at T (a flow path: wrap
            the network's own prediction, e.g. :func:`scoreflow.score_from_flow_velocity`), a method or time
            variable that divides by :math:`\alpha(T) = 0` there, an unknown method, time variable or schedule (the message lists the valid ones), a
            missing or superfluous ``steps``/``step_size``/``schedule``/``time``/``rtol``/``atol``, ``t_min``
            outside ``(0, T)``, a malformed ``x_T``, a score returning the wrong shape, ``save_at`` with a fixed-grid
            method, with times outside ``[t_min, T]`` or together with ``return_trajectory``, or a grid two of whose
            times tie in ``x_T``'s dtype (naming ``schedule``, ``step_size`` or ``steps``).
        TypeError: if the score returns the wrong dtype, an argument has the wrong type, the method is given
            an option it does not take, or the callback returns something other than ``None`` or a state.
        ImportError: for ``progress=True`` without tqdm.
        NonFiniteError: if the score becomes NaN/inf; the message names the time (found when the solve ends: the
            solve reads no value on the host per evaluation).
        RuntimeError: if an adaptive method exceeds its step limit (``max_num_steps`` / ``max_steps``).
    """
    fn = "sample_ode"
    check_sde(fn, sde)
    check_native_at_pure_noise(fn, score, sde)
    spec = get_method("ode", method, caller=fn)
    solver = spec.build(fn, options)
    t_min = resolve_t_min(fn, sde, t_min)
    check_batch(fn, "x_T", x_T, state=True)
    check_save_at_alone(fn, save_at, return_trajectory)
    check_bool(fn, "denoise_final", denoise_final)
    check_bool(fn, "enable_grad", enable_grad)  # enable_grad="no" would keep the graph of the whole solve
    stepping = resolve_stepping(
        fn, spec, sde, x_T, start=sde.T, end=t_min,
        steps=steps, step_size=step_size, schedule=schedule, time=time, rtol=rtol, atol=atol, save_at=save_at,
    )
    return sample_with(
        fn, score, sde, x_T, stepping, lambda counted, monitor: solver.sample(counted, sde, x_T, stepping, monitor=monitor),
        t_min=t_min, save_at=save_at, return_trajectory=return_trajectory, denoise_final=denoise_final,
        enable_grad=enable_grad, callback=callback, progress=progress,
    )
