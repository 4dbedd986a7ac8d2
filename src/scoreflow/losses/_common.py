"""Helpers shared by the loss families: score calls, per-sample norms and the batch reduction."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import call_checked, check_callable, check_choice, check_like
from .._tensor import TimeLike, batch_time
from ..dynamics.counting import ScoreFn
from ..errors import NonFiniteError

REDUCTIONS = ("mean", "none")


def check_score(fn: str, score: object) -> ScoreFn:
    return check_callable(fn, "score", score, "score(x, t)")


def check_reduction(fn: str, reduction: object) -> str:
    return check_choice(fn, "reduction", reduction, REDUCTIONS)


def call_score(fn: str, score: ScoreFn, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
    """``score(x, t)`` with ``t`` broadcast to ``(B,)``, its output checked to be shaped like ``x``."""
    out = call_checked(fn, "score", "score(x, t)", score, x, batch_time(t, x))
    return check_like(fn, "score", out, x, what="the score")


def sq_norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm over the data dimensions: ``(B, *D) -> (B,)``."""
    return v.reshape(v.shape[0], -1).pow(2).sum(dim=1)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over the data dimensions: ``(B, *D), (B, *D) -> (B,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def reduce(fn: str, per_sample: torch.Tensor, reduction: str, **parts: torch.Tensor) -> torch.Tensor:
    """Average the ``(B,)`` per-sample losses (``"mean"``) or return them (``"none"``), after one finiteness check.

    Args:
        parts: the model outputs the loss was built from, by name (e.g. ``score=s``); a non-finite loss names
            the first non-finite one, or else reports an overflow in the loss's dtype.

    Raises:
        NonFiniteError: if a per-sample loss is NaN or infinite (one host read per loss call).
    """
    if not bool(torch.isfinite(per_sample.detach()).all()):
        bad = [name for name, part in parts.items() if not bool(torch.isfinite(part.detach()).all())]
        cause = (
            f"the {bad[0].replace('_', ' ')} has NaN or infinite entries"
            if bad
            else f"the loss overflowed in {per_sample.dtype} (finite inputs of huge magnitude); rescale the data"
            + (" or use float64" if per_sample.dtype != torch.float64 else "")
        )
        raise NonFiniteError(f"{fn}: the loss is not finite: {cause}.")
    return per_sample.mean() if reduction == "mean" else per_sample




def call_weighting(fn: str, weighting: Callable, signature: str, *args: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``weighting(*args)``, the user's weighting function (a call its signature cannot take is named as
    :func:`call_checked` does, ``signature`` shown), its output checked by :func:`check_weights` for the batch ``like``."""
    weights = call_checked(fn, "weighting", signature, weighting, *args)
    return check_weights(fn, weights, like.shape[0], like)


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
