r"""Every item's own noise: its prior sample :math:`x_T` and Brownian path, and the generator of a global batch.

Each is drawn from a generator seeded by ``(seed, item index, stream)``, so an item meets the same
noise whatever batch or rank solves it.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_int
from ..dynamics.sdeint import BrownianPath, brownian_rows
from ..sde import ForwardSDE
from .group import item_seed

__all__ = ["prior_sample_per_item", "brownian_per_item", "batch_generator", "PRIOR", "BROWNIAN", "PROBES"]

#: Independent random streams of one item.
PRIOR, BROWNIAN, PROBES = 0, 1, 2


def prior_sample_per_item(
    sde: ForwardSDE,
    indices: range,
    data_shape: tuple[int, ...],
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    r""":math:`x_T` for the given items, row ``i`` drawn from a CPU generator seeded by ``(seed, i)``.

    Drawing on the CPU and moving the result makes it independent of the device as well.

    Raises:
        ValueError: for no ``indices``, a negative ``seed`` or a malformed ``data_shape``.
    """
    _check_items("prior_sample_per_item", indices, seed)
    data_shape = check_data_shape("prior_sample_per_item", data_shape)
    rows = [
        sde.prior_sample((1, *data_shape), generator=torch.Generator().manual_seed(item_seed(seed, i, PRIOR)), dtype=dtype)
        for i in indices
    ]
    return torch.cat(rows).to(device)


def brownian_per_item(
    indices: range,
    dim: int,
    duration: float,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    levy_area: bool = False,
) -> BrownianPath:
    """A Brownian path on ``[0, duration]`` of shape ``(len(indices), dim)`` whose row ``i`` is seeded by ``(seed, i)``.

    Pass it to :func:`scoreflow.sample_sde` as ``bm`` (``duration = T - t_min``).

    Raises:
        ValueError: for no ``indices`` or a negative ``seed``.
    """
    _check_items("brownian_per_item", indices, seed)
    entropies = [item_seed(seed, i, BROWNIAN) % 2**62 for i in indices]
    return brownian_rows(entropies, dim, duration, dtype=dtype, device=device, levy_area=levy_area)


def check_data_shape(fn: str, data_shape: Any) -> tuple[int, ...]:
    """Check that ``data_shape`` is a non-empty tuple (or list, ``torch.Size``) of ints >= 1; return it as a tuple."""
    shape = tuple(data_shape) if isinstance(data_shape, (tuple, list, torch.Size)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(
            f"{fn}: argument 'data_shape' expected a non-empty tuple of ints >= 1 (the shape D of one sample, "
            f"e.g. (3, 32, 32)), got {data_shape!r}."
        )
    return shape


def _check_items(fn: str, indices: range, seed: int) -> None:
    """Check that ``indices`` holds at least one item and ``seed`` is an int >= 0."""
    check_int(fn, "seed", seed, minimum=0)
    if len(indices) == 0:
        raise ValueError(f"{fn}: argument 'indices' expected at least one item index, got {indices!r}.")


def batch_generator(seed: int, items: range, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for noise shared by a global batch, seeded by ``(seed, first item, stream)``."""
    return torch.Generator(device=device).manual_seed(item_seed(seed, items.start, stream))
