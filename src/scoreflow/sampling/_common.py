"""Checks and finishing steps shared by the sampling front-ends."""

from __future__ import annotations

import contextlib

import torch

from .._checks import check_batch, check_real, check_score_output
from .._tensor import batch_time
from ..dynamics.counting import CountedScore, ScoreFn
from ..parameterizations import denoiser_from_score
from ..sde import ForwardSDE


def check_sde(fn: str, sde: object) -> ForwardSDE:
    if not isinstance(sde, ForwardSDE):
        raise TypeError(
            f"{fn}: argument 'sde' expected a ForwardSDE (e.g. scoreflow.VPSDE()), got {type(sde).__name__}."
        )
    return sde


def resolve_t_min(fn: str, sde: ForwardSDE, t_min: float | None) -> float:
    """The truncation time: ``sde.t_min`` by default, else a value in ``(0, T)``."""
    if t_min is None:
        return sde.t_min
    t = check_real(fn, "t_min", t_min)
    if not 0.0 < t < sde.T:
        raise ValueError(f"{fn}: argument 't_min' expected a time in (0, T={sde.T:g}), got {t!r}.")
    return t


def start_counted(fn: str, score: ScoreFn, sde: ForwardSDE, x_T: torch.Tensor, t_start: float) -> CountedScore:
    """Check ``x_T``, call the score once at ``(x_T, t_start)`` to check its output, and return a counter primed with it."""
    check_batch(fn, "x_T", x_T)
    t = batch_time(t_start, x_T)
    out = check_score_output(fn, score, x_T, t)
    counted = CountedScore(score)
    counted.prime(x_T, t, out)
    return counted


def tweedie_denoise(score: CountedScore, sde: ForwardSDE, x: torch.Tensor, t: float) -> torch.Tensor:
    r"""One final denoising step :math:`E[x_0|x_t] = (x + \sigma^2 s(x,t))/\alpha` (one NFE)."""
    return denoiser_from_score(score, sde)(x, batch_time(t, x))


def grad_mode(enable_grad: bool) -> contextlib.AbstractContextManager:
    """Samplers run under ``torch.no_grad()`` unless the caller asks to differentiate through them."""
    return contextlib.nullcontext() if enable_grad else torch.no_grad()
