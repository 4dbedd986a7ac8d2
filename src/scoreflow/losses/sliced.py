r"""Sliced score matching (Song et al. 2019): implicit score matching along random projections.

For probes :math:`v` with :math:`E[vv^\top] = I` (Gaussian or Rademacher),
:math:`E_v[v^\top J v] = \operatorname{tr} J` and :math:`E_v[\tfrac12 (v^\top s)^2] = \tfrac12\|s\|^2`,
so both losses below are unbiased for :func:`ism_loss` while costing one score evaluation and
one vector-Jacobian product per projection, whatever the dimension.  The quadratic form
:math:`v^\top J v` is :math:`v^\top \nabla_x (v^\top s)`: it differentiates ``(s * v).sum()``.
"""

from __future__ import annotations

import torch

from .._checks import check_batch, check_choice, check_generator, check_int, check_time
from .._tensor import TimeLike, batch_time
from ..dynamics.counting import ScoreFn
from ..dynamics.divergence import PROBES, draw_probes, value_and_hutchinson_divergence
from ._common import call_score, check_reduction, check_score, dot, reduce, sq_norm

__all__ = ["ssm_loss", "ssm_vr_loss"]


def _projections(
    fn: str, score: ScoreFn, x: torch.Tensor, t: TimeLike, n_projections: int, probe: str,
    generator: torch.Generator | None, reduction: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate, draw ``(P, B, *D)`` probes and return them with ``s(x, t)`` and the ``(P, B)`` values of :math:`v^\\top J v`."""
    check_score(fn, score)
    check_batch(fn, "x", x)
    check_int(fn, "n_projections", n_projections)
    check_choice(fn, "probe", probe, PROBES)
    check_generator(fn, generator, x)
    check_reduction(fn, reduction)
    probes = draw_probes(x, n_projections, probe, generator)
    tb = batch_time(check_time(fn, "t", t, x), x)
    s, vjv = value_and_hutchinson_divergence(lambda y: call_score(fn, score, y, tb), x, probes)
    return probes, s, vjv


def ssm_loss(
    score: ScoreFn,
    x: torch.Tensor,
    *,
    n_projections: int = 1,
    probe: str = "gaussian",
    t: TimeLike = 0.0,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sliced score matching :math:`E_{x,v}[v^\top \nabla_x s\, v + \tfrac12 (v^\top s)^2]`.

    Args:
        score: score model ``score(x, t)``, composable with ``torch.func``.
        x: data samples of shape ``(B, *D)``.
        n_projections: probes per sample (the loss averages over them).
        probe: ``"gaussian"`` or ``"rademacher"`` (both have :math:`E[vv^\top] = I`; no normalization).
        t: time handed to the score (scalar or ``(B,)``); 0 by default.
        generator: draws the probes.
        reduction: ``"mean"`` over the batch or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss, an unbiased estimate of :func:`ism_loss`.

    Raises:
        ValueError: for an unknown probe, ``n_projections < 1``, a malformed ``x`` or a score output not shaped like ``x``.
        TypeError: for a non-callable score, a wrong generator or mismatched dtypes.
    """
    probes, s, vjv = _projections("ssm_loss", score, x, t, n_projections, probe, generator, reduction)
    proj = torch.stack([dot(v, s) for v in probes])
    return reduce("ssm_loss", (vjv + 0.5 * proj**2).mean(dim=0), reduction, score=s, score_jacobian_products=vjv)


def ssm_vr_loss(
    score: ScoreFn,
    x: torch.Tensor,
    *,
    n_projections: int = 1,
    probe: str = "gaussian",
    t: TimeLike = 0.0,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Variance-reduced sliced score matching :math:`E_{x,v}[v^\top \nabla_x s\, v] + \tfrac12 E_x\|s\|^2`.

    The projected norm :math:`\tfrac12 (v^\top s)^2` of :func:`ssm_loss` is replaced by its
    expectation over :math:`v`, :math:`\tfrac12\|s\|^2`, which removes its variance.
    Arguments, returns and errors as :func:`ssm_loss`.
    """
    _, s, vjv = _projections("ssm_vr_loss", score, x, t, n_projections, probe, generator, reduction)
    return reduce("ssm_vr_loss", vjv.mean(dim=0) + 0.5 * sq_norm(s), reduction, score=s, score_jacobian_products=vjv)
