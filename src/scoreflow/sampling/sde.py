r"""Sampling by the reverse-time SDE, with any ``"sde"`` method of the registry."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_batch, check_generator, resolve_t_min
from ..dynamics.counting import CountedScore, ScoreFn
from ..dynamics.sdeint import BrownianPath, brownian_motion
from ..methods import get_method, list_methods, resolve_stepping
from ..sde import ForwardSDE, check_sde
from ._common import grad_mode, path_result
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
    denoise_final: bool = False,
    enable_grad: bool = False,
    options: dict[str, Any] | None = None,
) -> SampleResult:
    r"""Integrate the reverse-time SDE :math:`dx = [f x - g^2 s]\,dt + g\,d\bar W` from T down to ``t_min``.

    The methods are the registry's ``"sde"`` kind (``scoreflow.list_methods("sde")``): torchsde's run in
    :math:`s = T - t` on the flattened state (see :class:`scoreflow.ReverseSDE`) on a grid uniform in t;
    scoreflow's own (``ddim`` with ``eta``, ``dpmpp_sde``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``, their
    predictor-correctors, ``edm_stochastic``) on any grid of ``schedule``, reading the same Brownian path in
    :math:`s` (each step's noise is the path's increment over the step, normalized).

    Args:
        score: score model ``score(x, t)``.
        sde: the forward SDE.
        x_T: initial states at time T, shape ``(B, *D)``.
        method: an ``"sde"`` method (torchsde's names: ``"euler"`` is Euler-Maruyama).
        steps: number of steps (give this, ``step_size`` or a ``schedule`` grid; with ``adaptive=True`` it sets the
            first step): uniform in t for torchsde's methods, the method's ``default_schedule`` for native ones.
        step_size: step length of torchsde's methods (the last step is shortened to land on ``t_min``).
        schedule: native methods only: a schedule name of :func:`scoreflow.time_grid` for ``steps`` steps, or the
            grid itself (a decreasing 1-D tensor of times from T to ``t_min``).
        adaptive: error-controlled stepping (torchsde's step doubling) with ``rtol``/``atol`` (default 1e-5 each).
        rtol, atol: tolerances of ``adaptive=True``.
        generator: seeds the Brownian path; equal generator states give bit-identical samples.
        bm: a Brownian path on ``[0, T - t_min]`` for the flattened state (e.g. from
            :func:`scoreflow.brownian_motion`) used instead of a fresh one; give this or ``generator``.
        t_min: final time (default ``sde.t_min``).
        return_trajectory: also return the states on the grid (``steps`` or ``schedule`` given).
        denoise_final: finish with Tweedie's denoising step at ``t_min`` (one NFE).
        enable_grad: keep the autograd graph; off by default.
        options: the method's own options (``scoreflow.list_methods("sde")`` lists them; torchsde's take none).

    Returns:
        A :class:`SampleResult` with ``samples`` at ``t_min`` and ``nfe``.

    Raises:
        ValueError: for an unknown method (listing the valid ones), a missing ``steps``/``step_size``, a
            ``schedule`` for a torchsde method or a malformed one,
            ``t_min`` outside ``(0, T)``, a malformed ``x_T``, both ``bm`` and ``generator``, or a
            ``bm`` of the wrong size or span, or without the Lévy area the method needs.
        TypeError: for an argument of the wrong type or a score returning the wrong dtype.
        NonFiniteError: if the score becomes NaN/inf; the message names the time.
    """
    fn = "sample_sde"
    check_sde(fn, sde)
    spec = get_method("sde", method, caller=fn)
    solver = spec.build(fn, options)
    check_generator(fn, generator)
    if bm is not None and generator is not None:
        raise ValueError(f"{fn}: give 'generator' (a fresh Brownian path) or 'bm' (a given one), not both.")
    t_min = resolve_t_min(fn, sde, t_min)
    check_batch(fn, "x_T", x_T)
    if schedule is not None and spec.backend == "torchsde":
        raise ValueError(
            f"{fn}: torchsde's method {method!r} steps uniformly in t and takes no 'schedule' (got "
            f"{'a tensor' if torch.is_tensor(schedule) else repr(schedule)}); scoreflow's native methods take one: "
            f"{', '.join(repr(m.name) for m in list_methods('sde') if m.backend == 'native')}."
        )
    stepping = resolve_stepping(
        fn, spec, sde, x_T, start=sde.T, end=t_min, steps=steps, step_size=step_size, schedule=schedule,
        rtol=rtol, atol=atol, adaptive=adaptive,
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
        bm.check(fn, x_T, duration, levy_area=spec.levy_area)
    counted = CountedScore(score, caller=fn)
    with grad_mode(enable_grad):
        path = solver.sample(counted, sde, x_T, stepping, bm, trajectory=return_trajectory)
        return path_result(counted, sde, path, t_min, return_trajectory=return_trajectory, denoise_final=denoise_final)
