r"""Sampling by the reverse-time SDE, with any ``"sde"`` method of the registry."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_batch, check_bool, check_generator, resolve_t_min
from ..dynamics.counting import ScoreFn
from ..dynamics.sdeint import BrownianPath, brownian_motion
from ..methods import StepCallback, get_method, resolve_stepping
from ..sde import ForwardSDE, check_diffusion_finite_at_T
from ._common import check_save_at_alone, sample_with
from .result import SampleResult

__all__ = ["sample_sde"]


def sample_sde(
    score: ScoreFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    *,
    method: str = "euler",
    steps: int | None = None,
    step_size: float | None = None,
    schedule: str | torch.Tensor | None = None,
    adaptive: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    generator: torch.Generator | None = None,
    bm: BrownianPath | None = None,
    t_min: float | None = None,
    return_trajectory: bool = False,
    save_at: torch.Tensor | None = None,
    denoise_final: bool = False,
    enable_grad: bool = False,
    callback: StepCallback | None = None,
    progress: bool = False,
    options: dict[str, Any] | None = None,
) -> SampleResult:
    r"""Integrate the reverse-time SDE :math:`dx = [f x - g^2 s]\,dt + g\,d\bar W` from T down to ``t_min``.

    The methods are the registry's ``"sde"`` kind (``scoreflow.list_methods("sde")``): torchsde's run in
    :math:`s = T - t` on the flattened state (see :class:`scoreflow.ReverseSDE`), on a grid uniform in t in one
    ``sdeint`` call, on any other grid (``schedule``; Karras' by default on EDM) one call per step on the same
    path; scoreflow's own (``ddim`` with ``eta``, ``dpmpp_sde``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``, their
    predictor-correctors, ``edm_stochastic``) on any grid of ``schedule``, reading the
    same Brownian path in :math:`s` (each step's noise is the path's increment over the step, normalized).

    Args:
        score: score model ``score(x, t)``.
        sde: the forward SDE.
        x_T: initial states at time T, shape ``(B, *D)``.
        method: an ``"sde"`` method (torchsde's names: ``"euler"`` is Euler-Maruyama).
        steps: number of steps (give this, ``step_size`` or a ``schedule`` grid; with ``adaptive=True`` it sets the
            first step) on the method's default grid (``Method.schedule_for``): for torchsde's methods uniform in t
            but on EDM, where it is Karras'; the method's ``default_schedule`` for native ones.
        step_size: step length of torchsde's methods (the last step is shortened to land on ``t_min``).
        schedule: a schedule name of :func:`scoreflow.time_grid` for ``steps`` steps, or the grid itself (a
            decreasing 1-D tensor of times from T to ``t_min``).
        adaptive: error-controlled stepping (torchsde's step doubling) with ``rtol``/``atol`` (default 1e-5 each).
        rtol, atol: tolerances of ``adaptive=True``.
        generator: seeds the Brownian path; equal generator states give bit-identical samples.
        bm: a Brownian path on ``[0, T - t_min]`` for the flattened state (e.g. from
            :func:`scoreflow.brownian_motion`) used instead of a fresh one; give this or ``generator``.
        t_min: final time (default ``sde.t_min``).
        return_trajectory: also return ``x_T`` and the states on the step grid as ``times`` and ``trajectory``
            (for ``adaptive=True``: at the output times, ``t_min`` and any ``save_at``).
        save_at: with ``adaptive=True`` only: a decreasing 1-D tensor of times between T and ``t_min`` at which to
            return the state (the solver steps onto them) as ``times`` and ``trajectory``.
        denoise_final: finish with Tweedie's denoising step at ``t_min`` (one NFE).
        enable_grad: keep the autograd graph; off by default.
        callback: ``callback(info)`` after every step, as in :func:`scoreflow.sample_ode`. torchsde has no step
            hook, so with a callback or a progress bar the solve runs one ``sdeint`` call per grid step on the same
            Brownian path (``adaptive=True``: per interval between output times) and the next step starts from the
            state the callback returns.
        progress: show a tqdm progress bar (``pip install 'scoreflow[progress]'``).
        options: the method's own options (``scoreflow.list_methods("sde")`` lists them; torchsde's take none).

    Returns:
        A :class:`SampleResult` with ``samples`` at ``t_min`` and ``nfe``.

    Raises:
        ValueError: for a process that reaches pure noise at T (a flow path such as ``RectifiedFlow()``, whose
            reverse SDE has infinite diffusion there; truncate it, ``RectifiedFlow(T=0.999)``).
        ValueError: for an unknown method (listing the valid ones), a missing ``steps``/``step_size``, a malformed
            ``schedule``, ``t_min`` outside ``(0, T)`` (``[0, T)`` on a flow path), a malformed ``x_T``, both ``bm``
            and ``generator``, or a ``bm`` of the wrong size or span, or without the Lévy area the method needs, or
            ``save_at`` without ``adaptive=True``, outside ``[t_min, T]`` or together with ``return_trajectory``.
        ValueError: for ``t_min=0`` (a flow path) with a native multistep method (``dpmpp_*m_sde*``, ``er_sde``,
            ``sa_solver``), whose polynomial in log-SNR cannot reach log-SNR +inf; ``ddim``, ``dpmpp_sde``,
            ``edm_stochastic`` and torchsde's methods can (with a ``schedule`` finite at t = 0, e.g. ``"t"``).
        TypeError: for an argument of the wrong type, a score returning the wrong dtype, or a callback returning
            something other than ``None`` or a state.
        ImportError: for ``progress=True`` without tqdm.
        NonFiniteError: if the score becomes NaN/inf; the message names the time (found when the solve ends).
    """
    fn = "sample_sde"
    check_diffusion_finite_at_T(fn, sde)
    spec = get_method("sde", method, caller=fn)
    solver = spec.build(fn, options)
    check_generator(fn, generator)
    check_bool(fn, "adaptive", adaptive)
    check_bool(fn, "denoise_final", denoise_final)
    if bm is not None and generator is not None:
        raise ValueError(f"{fn}: give 'generator' (a fresh Brownian path) or 'bm' (a given one), not both.")
    t_min = resolve_t_min(fn, sde, t_min)
    check_batch(fn, "x_T", x_T, state=True)
    check_save_at_alone(fn, save_at, return_trajectory)
    stepping = resolve_stepping(
        fn, spec, sde, x_T, start=sde.T, end=t_min, steps=steps, step_size=step_size, schedule=schedule,
        rtol=rtol, atol=atol, adaptive=adaptive, save_at=save_at,
    )
    duration = sde.T - t_min
    if bm is None:
        # The path must cover the solve's last time as rounded in x_T's dtype.
        bm = brownian_motion(
            x_T, float(sde.T - stepping.times[-1]), generator=generator, levy_area=spec.levy_area,
            step_size=stepping.first_step,
        )
    elif not isinstance(bm, BrownianPath):
        raise TypeError(
            f"{fn}: argument 'bm' expected a scoreflow BrownianPath (see scoreflow.brownian_motion), got {type(bm).__name__}."
        )
    else:
        bm.check(fn, x_T, duration, levy_area=spec.levy_area, method=method)
    return sample_with(
        fn, score, sde, x_T, stepping, lambda counted, monitor: solver.sample(counted, sde, x_T, stepping, bm, monitor=monitor),
        t_min=t_min, save_at=save_at, return_trajectory=return_trajectory, denoise_final=denoise_final,
        enable_grad=enable_grad, callback=callback, progress=progress,
    )
