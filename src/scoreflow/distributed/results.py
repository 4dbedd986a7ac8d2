"""What a rank computes for its items, and the one collective that merges the ranks' results on rank 0."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .group import world

__all__ = ["ShardResult", "gather", "concat", "empty"]


@dataclass
class ShardResult:
    """Results for a set of items: ``values[j]`` belongs to item ``indices[j]``.

    Attributes:
        indices: item indices, shape ``(n,)``, int64.
        values: samples ``(n, *D)`` or log-densities ``(n,)``.
        nfe: score evaluations summed over the batches solved.
        extras: further per-item tensors (e.g. ``prior_log_prob``), each with leading dimension ``n``.
    """

    indices: torch.Tensor
    values: torch.Tensor
    nfe: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def concat(parts: list[ShardResult]) -> ShardResult:
    """One result holding the items of all ``parts`` (at least one), in increasing item order."""
    indices = torch.cat([p.indices for p in parts])
    order = torch.argsort(indices)
    extras = {k: torch.cat([p.extras[k] for p in parts])[order] for k in parts[0].extras}
    return ShardResult(indices[order], torch.cat([p.values for p in parts])[order], sum(p.nfe for p in parts), extras)


def empty(shape: tuple[int, ...], dtype: torch.dtype, extras: tuple[str, ...] = ()) -> ShardResult:
    """The result of a rank without items: ``values`` of ``shape`` (leading dimension 0)."""
    return ShardResult(
        torch.zeros(0, dtype=torch.int64), torch.zeros(shape, dtype=dtype), 0, {k: torch.zeros(0, dtype=dtype) for k in extras}
    )


def gather(local: ShardResult, *, dst: int = 0) -> ShardResult | None:
    """Collect every rank's :class:`ShardResult` on rank ``dst``, in item order; ``None`` on other ranks.

    This is the only collective: call it once, after all local solves.  Without a process
    group it returns ``local``.
    """
    rank, world_size = world()
    if world_size == 1:
        return local
    received: list[ShardResult] | None = [None] * world_size if rank == dst else None  # type: ignore[list-item]
    dist.gather_object(local, received, dst=dst)
    return concat(received) if rank == dst else None
