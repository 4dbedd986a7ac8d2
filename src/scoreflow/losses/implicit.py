r"""Implicit score matching (Hyvärinen 2005): the Fisher divergence without the data score.

Integration by parts turns :math:`-E[s^\top\nabla\log q]` into :math:`E[\operatorname{tr}\nabla_x s]`
(for data whose density vanishes at infinity), so

.. math:: \tfrac12 E\|s - \nabla\log q\|^2 = E[\tfrac12\|s\|^2 + \operatorname{tr}\nabla_x s] + \tfrac12 E\|\nabla\log q\|^2.
"""

from __future__ import annotations

import torch

from .._checks import check_batch, check_int, check_time
from .._tensor import TimeLike, batch_time
from ..dynamics.counting import ScoreFn
from ..dynamics.divergence import value_and_exact_divergence
from ._common import call_score, check_reduction, check_score, reduce, sq_norm

__all__ = ["ism_loss"]


def ism_loss(
    score: ScoreFn,
    x: torch.Tensor,
    *,
    t: TimeLike = 0.0,
    chunk_size: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Implicit score matching :math:`E_x[\tfrac12\|s(x, t)\|^2 + \operatorname{tr}\nabla_x s(x, t)]`.

    The trace is exact: one score evaluation and D vector-Jacobian products
    (:func:`scoreflow.dynamics.divergence.exact_divergence`, shared with the likelihood code),
    so the cost grows with the data dimension; use :func:`ssm_loss` or :func:`dsm_loss` in high D.
    Differs from :func:`esm_loss` by the constant :math:`\tfrac12 E\|\nabla\log q\|^2`.

    Args:
        score: score model ``score(x, t)``; it must be composable with ``torch.func`` (as
            ordinary networks and :func:`scoreflow.score_from_energy` scores are).
        x: data samples of shape ``(B, *D)``.
        t: time handed to the score (scalar or ``(B,)``); 0 by default.
        chunk_size: basis vectors per vmapped VJP (memory bound); ``None`` picks one.
        reduction: ``"mean"`` over the batch or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss (it may be negative).

    Raises:
        ValueError: if ``x`` is empty or malformed, the score's output is not shaped like ``x``, or ``chunk_size < 1``.
        TypeError: for a non-callable score or mismatched dtypes.
    """
    fn = "ism_loss"
    check_score(fn, score)
    check_batch(fn, "x", x)
    check_reduction(fn, reduction)
    if chunk_size is not None:
        check_int(fn, "chunk_size", chunk_size)
    tb = batch_time(check_time(fn, "t", t, x), x)
    s, div = value_and_exact_divergence(lambda y: call_score(fn, score, y, tb), x, chunk_size=chunk_size)
    return reduce(fn, 0.5 * sq_norm(s) + div, reduction, score=s, score_divergence=div)
