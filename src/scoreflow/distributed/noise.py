r"""Every item's own noise: its prior sample :math:`x_T` and Brownian path, and the generator of a global batch.

Each is drawn from a generator seeded by ``(seed, item index, stream)``, so an item meets the same
noise whatever batch or rank solves it.
"""

from __future__ import annotations

import torch

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
    """
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
    """
    entropies = [item_seed(seed, i, BROWNIAN) % 2**62 for i in indices]
    return brownian_rows(entropies, dim, duration, dtype=dtype, device=device, levy_area=levy_area)


def batch_generator(seed: int, items: range, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for noise shared by a global batch, seeded by ``(seed, first item, stream)``."""
    return torch.Generator(device=device).manual_seed(item_seed(seed, items.start, stream))
