"""The process group ``torchrun`` describes, the split of the work into global batches, and per-item seeds."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .._checks import check_int

__all__ = ["init_distributed", "world", "global_batches", "item_seed"]


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment; return ``(rank, world_size)``.

    Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing is initialised and
    ``(0, 1)`` is returned, so the same script runs as one process.

    Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (GPU); default nccl when CUDA is available, else gloo.
        timeout_s: how long a collective (the final gather; the agreements of ``scoreflow dist``) waits for the
            slowest rank.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, or ``(0, 1)`` without one.

    Raises:
        RuntimeError: without a process group in a launch of several processes (``WORLD_SIZE`` above 1 in the
            environment, as ``torchrun`` sets it): every rank would take itself for the only one and solve all
            the items, ``world_size`` times the work, and :func:`gather` would merge nothing.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    launched = os.environ.get("WORLD_SIZE", "1")
    if launched.strip().isdigit() and int(launched) > 1:
        raise RuntimeError(
            f"scoreflow.distributed: WORLD_SIZE={launched} in the environment (a torchrun launch) but no process "
            "group is initialised, so every rank would solve all the items. Fix: call "
            "scoreflow.distributed.init_distributed() first."
        )
    return 0, 1


def global_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[range]:
    """The item ranges of the global batches that ``rank`` solves: batch ``k`` goes to rank ``k % world_size``.

    Raises:
        TypeError: for a non-integer argument.
        ValueError: for a negative ``n``, a ``batch_size`` or ``world_size`` below 1, or a ``rank`` outside
            ``[0, world_size)`` (which would solve another rank's batches, or items of negative index).
    """
    check_int("global_batches", "n", n, minimum=0)
    check_int("global_batches", "batch_size", batch_size)
    check_rank("global_batches", rank, world_size)
    starts = range(rank * batch_size, n, world_size * batch_size)
    return [range(s, min(s + batch_size, n)) for s in starts]


def item_seed(seed: int, index: int, stream: int) -> int:
    """A 64-bit seed for one random ``stream`` of item ``index`` (numpy's SeedSequence mixing).

    The user's seed is the entropy and ``(stream, index)`` the spawn key, which SeedSequence keeps apart from it:
    as one entropy list ``[seed, stream, index]``, a seed of 2**32 or more spread over two words, and
    ``item_seed(2**32 + 5, 0, 0)`` was ``item_seed(5, 0, 1)``.

    Raises:
        TypeError, ValueError: for an argument that is not an int >= 0.
    """
    for name, value in (("seed", seed), ("index", index), ("stream", stream)):
        check_int("item_seed", name, value, minimum=0)
    return int(np.random.SeedSequence(seed, spawn_key=(stream, index)).generate_state(1, np.uint64)[0])


def check_rank(fn: str, rank: int, world_size: int) -> None:
    """Check that ``world_size`` is an int >= 1 and ``rank`` an int in ``[0, world_size)``."""
    check_int(fn, "world_size", world_size)
    check_int(fn, "rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"{fn}: argument 'rank' expected an int in [0, world_size={world_size}), got {rank}.")
