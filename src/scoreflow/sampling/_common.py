"""What the sampling front-ends share: the result of a solver's path, the final denoising step, grad mode."""

from __future__ import annotations

import contextlib

import torch

from .._tensor import batch_time
from ..dynamics.counting import CountedScore
from ..methods import Path
from ..parameterizations import denoiser_from_score
from ..sde import ForwardSDE
from .result import SampleResult


def tweedie_denoise(score: CountedScore, sde: ForwardSDE, x: torch.Tensor, t: float) -> torch.Tensor:
    r"""One final denoising step :math:`E[x_0|x_t] = (x + \sigma^2 s(x,t))/\alpha` (one NFE)."""
    return denoiser_from_score(score, sde)(x, batch_time(t, x))


def path_result(
    score: CountedScore, sde: ForwardSDE, path: Path, t_min: float, *, return_trajectory: bool, denoise_final: bool
) -> SampleResult:
    """The :class:`SampleResult` of a solver's path: its last state (optionally Tweedie-denoised), the NFE, the path if asked."""
    samples = path.states[-1]
    if denoise_final:
        samples = tweedie_denoise(score, sde, samples, t_min)
    trajectory = None
    if return_trajectory:
        trajectory = path.states if torch.is_tensor(path.states) else torch.stack(list(path.states))
    return SampleResult(samples, score.nfe, path.times if return_trajectory else None, trajectory, path.stats)


def grad_mode(enable_grad: bool) -> contextlib.AbstractContextManager:
    """Samplers run under ``torch.no_grad()`` unless the caller asks to differentiate through them."""
    return contextlib.nullcontext() if enable_grad else torch.no_grad()
