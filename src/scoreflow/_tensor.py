"""Small tensor helpers and types shared by every layer (broadcasting of times and coefficients)."""

from __future__ import annotations

from collections.abc import Callable

import torch

TimeLike = float | torch.Tensor
#: A score model ``score(x, t)``: ``x`` of shape ``(B, *D)``, ``t`` of shape ``(B,)``, returning a tensor like ``x``.
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def as_time(t: TimeLike, like: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``t`` as a tensor in the dtype and device of ``like`` (if given)."""
    if like is None:
        return torch.as_tensor(t, dtype=torch.get_default_dtype()) if not torch.is_tensor(t) else t
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def batch_time(t: TimeLike, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or ``(B,)`` time to a ``(B,)`` tensor matching ``x``'s batch, dtype and device."""
    t = as_time(t, x)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.numel() == 1:
        return t.reshape(-1).expand(x.shape[0])
    if t.shape != x.shape[:1]:
        # a shape test, no value read: a wrong batch of times stops here, not inside the user's network
        raise ValueError(
            f"time t expected a scalar or shape ({x.shape[0]},) for x of shape {tuple(x.shape)}, got shape {tuple(t.shape)}."
        )
    return t


def right_pad(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or ``(B,)`` coefficient to ``(B, 1, ..., 1)`` so it multiplies ``x`` of shape ``(B, *D)``."""
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def flat_dim(x: torch.Tensor) -> int:
    """Number of data dimensions ``prod(D)`` of a batch ``x`` of shape ``(B, *D)``."""
    return x[0].numel()


def standard_normal(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    r"""Noise :math:`\varepsilon \sim N(0, I)` shaped, typed and placed like ``x``, drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
