r"""Explicit score matching: regression on a known target score."""

from __future__ import annotations

import torch

from .._checks import check_batch, check_like, check_time
from .._tensor import TimeLike
from ..dynamics.counting import ScoreFn
from ._common import call_score, check_reduction, check_score, reduce, sq_norm

__all__ = ["esm_loss"]


def esm_loss(
    score: ScoreFn,
    x: torch.Tensor,
    target_score: torch.Tensor,
    *,
    t: TimeLike = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Explicit score matching :math:`\tfrac12 E_x \|s(x, t) - \nabla_x \log q(x)\|^2` (Fisher divergence).

    Args:
        score: score model ``score(x, t)``.
        x: data samples of shape ``(B, *D)``.
        target_score: the true score :math:`\nabla_x \log q` at ``x``, shaped like ``x``
            (e.g. ``law.grad_log_prob(x)`` of an analytic law).
        t: time handed to the score (scalar or ``(B,)``); 0, the data time, by default.
        reduction: ``"mean"`` over the batch (a scalar) or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss; summed over data dimensions.

    Raises:
        ValueError: if ``x`` is empty or malformed, or ``target_score`` or the score's output is not shaped like ``x``.
        TypeError: for a non-callable score or mismatched dtypes.
    """
    fn = "esm_loss"
    check_score(fn, score)
    check_batch(fn, "x", x)
    check_like(fn, "target_score", target_score, x)
    if not bool(torch.isfinite(target_score).all()):
        raise ValueError(f"{fn}: argument 'target_score' contains NaN or infinite values.")
    check_time(fn, "t", t, x)
    check_reduction(fn, reduction)
    s = call_score(fn, score, x, t)
    return reduce(fn, 0.5 * sq_norm(s - target_score), reduction, score=s)
