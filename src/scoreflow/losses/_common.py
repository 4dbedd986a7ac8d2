"""Helpers shared by the loss families: score calls, per-sample norms and the batch reduction."""

from __future__ import annotations

import torch

from .._checks import check_callable, check_choice, check_like
from .._tensor import TimeLike, batch_time
from ..dynamics.counting import ScoreFn

REDUCTIONS = ("mean", "none")


def check_score(fn: str, score: object) -> ScoreFn:
    return check_callable(fn, "score", score, "score(x, t)")


def check_reduction(fn: str, reduction: object) -> str:
    return check_choice(fn, "reduction", reduction, REDUCTIONS)


def call_score(fn: str, score: ScoreFn, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """``score(x, t)`` with ``t`` broadcast to ``(B,)``, its output checked to be shaped like ``x``."""
    return check_like(fn, "score", score(x, batch_time(t, x)), x, what="the score")


def sq_norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm over the data dimensions: ``(B, *D) -> (B,)``."""
    return v.reshape(v.shape[0], -1).pow(2).sum(dim=1)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over the data dimensions: ``(B, *D), (B, *D) -> (B,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Average the ``(B,)`` per-sample losses (``"mean"``) or return them (``"none"``)."""
    return per_sample.mean() if reduction == "mean" else per_sample




def check_weights(fn: str, weights: object, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Check the output of a user weighting function: a finite tensor of shape ``(B,)`` (or a scalar) that is >= 0."""
    if not torch.is_tensor(weights):
        raise TypeError(f"{fn}: the weighting function returned {type(weights).__name__}; expected a tensor of shape ({batch},).")
    if weights.shape not in ((), (batch,)):
        raise ValueError(
            f"{fn}: the weighting function returned shape {tuple(weights.shape)}; expected ({batch},), one weight per sample."
        )
    if not (torch.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError(f"{fn}: the weighting function returned negative or non-finite weights.")
    return weights.to(dtype=like.dtype, device=like.device).expand(batch)
