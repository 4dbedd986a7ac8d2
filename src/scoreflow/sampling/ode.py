r"""Sampling by the probability-flow ODE with torchdiffeq's solvers."""

from __future__ import annotations

from typing import Any

import torch
import torchdiffeq

from .._checks import check_choice, check_int, check_positive
from ..dynamics.counting import ScoreFn
from ..dynamics.probability_flow import ProbabilityFlowODE
from ..sde import ForwardSDE
from ._common import check_sde, grad_mode, resolve_t_min, start_counted, tweedie_denoise
from .result import SampleResult

__all__ = ["sample_ode", "ADAPTIVE_ODE_METHODS", "FIXED_ODE_METHODS", "ODE_ORDERS"]

#: torchdiffeq's adaptive (error-controlled) methods and their orders.
ADAPTIVE_ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq's fixed-grid methods; ``heun`` is scoreflow's alias of torchdiffeq's ``heun2``.
#: (torchdiffeq's Adams methods are left out: their start-up makes them unstable on VE problems.)
FIXED_ODE_METHODS = ("euler", "midpoint", "heun", "heun2", "heun3", "rk4")
_ALIASES = {"heun": "heun2"}
#: Declared global order of accuracy of every ODE method (used by the order tests and benchmarks).
ODE_ORDERS = {
    "euler": 1, "midpoint": 2, "heun": 2, "heun2": 2, "heun3": 3, "rk4": 4,
    "dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2,
}


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
    return_trajectory: bool = False,
    denoise_final: bool = False,
    enable_grad: bool = False,
    options: dict[str, Any] | None = None,
) -> SampleResult:
    r"""Integrate the probability-flow ODE :math:`\dot x = f x - \tfrac12 g^2 s(x,t)` from T down to ``t_min``.

    Args:
        score: score model ``score(x, t)`` with ``x`` of shape ``(B, *D)`` and ``t`` of shape ``(B,)``.
        sde: the forward SDE the score belongs to.
        x_T: initial states at time T, shape ``(B, *D)`` (e.g. ``sde.prior_sample``).
        method: a torchdiffeq method: adaptive ``ADAPTIVE_ODE_METHODS`` or fixed-grid ``FIXED_ODE_METHODS``.
        rtol, atol: tolerances of adaptive methods.
        t_min: final time (default ``sde.t_min``).
        steps: number of uniform steps for a fixed-grid method (give this or ``step_size``).
        step_size: step length for a fixed-grid method; the last step is shortened to land on ``t_min``.
        return_trajectory: also return the states at every grid time (fixed-grid) or at ``T`` and ``t_min`` (adaptive).
        denoise_final: finish with Tweedie's denoising step :math:`(x + \sigma^2 s)/\alpha` at ``t_min`` (one NFE).
        enable_grad: keep the autograd graph (for differentiating through the sampler); off by default.
        options: extra torchdiffeq options (e.g. ``{"max_num_steps": 10_000}``).

    Returns:
        A :class:`SampleResult` with ``samples`` at ``t_min`` and ``nfe``.

    Raises:
        ValueError: for an unknown method (the message lists the valid ones), a missing or
            superfluous ``steps``/``step_size``, ``t_min`` outside ``(0, T)``, or a malformed ``x_T``.
        TypeError: if the score returns the wrong dtype, or an argument has the wrong type.
        NonFiniteError: if the score becomes NaN/inf; the message names the time.
    """
    fn = "sample_ode"
    check_sde(fn, sde)
    check_choice(fn, "method", method, ADAPTIVE_ODE_METHODS + FIXED_ODE_METHODS)
    t_min = resolve_t_min(fn, sde, t_min)
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

    with grad_mode(enable_grad):
        counted = start_counted(fn, score, sde, x_T, sde.T)
    func = ProbabilityFlowODE(counted, sde)
    if fixed and steps is not None:
        ts = torch.linspace(sde.T, t_min, steps + 1, dtype=x_T.dtype, device=x_T.device)
    else:
        ts = torch.tensor([sde.T, t_min], dtype=x_T.dtype, device=x_T.device)
    if not fixed:
        # torchdiffeq's adaptive solvers otherwise step past the last time and interpolate
        # back, evaluating the score below t_min (where sigma(t)^2 may be negative).
        opts.setdefault("step_t", ts[-1:])

    with grad_mode(enable_grad):
        traj = torchdiffeq.odeint(
            func, x_T, ts, method=_ALIASES.get(method, method), rtol=rtol, atol=atol, options=opts or None
        )
        samples = traj[-1]
        if denoise_final:
            samples = tweedie_denoise(counted, sde, samples, t_min)
    return SampleResult(
        samples=samples,
        nfe=counted.nfe,
        times=ts if return_trajectory else None,
        trajectory=traj if return_trajectory else None,
    )
