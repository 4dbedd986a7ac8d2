"""Small caches of the set-up work a solve repeats when it is called again with the same arguments.

Sampling batch after batch with one method, process and grid recomputes the same grid and the same plan each
time; on a cheap model that set-up (a few dozen small tensor operations and the plan's float arithmetic) is a
few percent of the solve.  Entries are keyed on what determines them, including the parameters of the forward
process, and a process whose parameters are not plain numbers (callables, tensors) is not cached at all; entries
made from a tensor are checked against its version counter (so an in-place change of the grid makes a new plan).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["LRU", "parameters_key", "clear_caches", "version"]

_PLAIN = (int, float, bool, str, type(None))
_ALL: list[LRU] = []


def clear_caches() -> None:
    """Empty every cache (to measure or test a solve's set-up from scratch)."""
    for cache in _ALL:
        cache.clear()


def parameters_key(obj: object) -> tuple | None:
    """``(type, attributes)`` of ``obj`` when every attribute is a plain number or string (equal keys then mean
    equal parameters), else ``None`` (not cacheable).  The attributes include the plain class attributes of the
    classes a user derived outside scoreflow (a ``stretch = 1.0`` on the class, changed between solves, would
    otherwise find the old grid)."""
    items = tuple(vars(obj).items()) + tuple(
        (f"{cls.__qualname__}.{k}", v)
        for cls in type(obj).__mro__
        if cls is not object and not cls.__module__.startswith("scoreflow.")
        for k, v in vars(cls).items()
        if not k.startswith("__") and type(v) in _PLAIN
    )
    return (type(obj), items) if all(type(v) in _PLAIN for _, v in items) else None


def version(tensor: torch.Tensor) -> int | None:
    """The tensor's version counter (it counts in-place changes), ``None`` for an inference tensor, which has none:
    an entry made from one is never found valid again (in inference mode the set-up is made at every call)."""
    return None if tensor.is_inference() else tensor._version


class LRU:
    """A least-recently-used map of at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        _ALL.append(self)

    def get(self, key: Hashable, make: Callable[[], Any], valid: Callable[[Any], bool] = lambda _: True) -> Any:
        """The entry under ``key`` if there is one and it is still ``valid``, else ``make()``, stored."""
        entry = self._entries.get(key)
        if entry is not None and valid(entry):
            self._entries.move_to_end(key)
            return entry
        entry = self._entries[key] = make()
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._entries.clear()
