"""Result files: one per rank's shard beside the merged one, ``.pt`` or ``.npz``, each written whole or not at all."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import check_choice
from .._files import atomic_write
from .group import check_rank
from .results import ShardResult

__all__ = ["shard_path", "shard_files", "save_result", "load_result", "SUFFIXES"]

#: The file formats of :func:`save_result`.
SUFFIXES = (".pt", ".npz")


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The file of one rank's shard next to the merged file: ``samples.pt`` -> ``samples.rank0-of-2.pt``.

    Raises:
        TypeError, ValueError: unless ``world_size`` is an int >= 1 and ``rank`` an int in ``[0, world_size)``.
    """
    check_rank("shard_path", rank, world_size)
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{rank}-of-{world_size}{out.suffix}")


def shard_files(out: str | os.PathLike) -> list[Path]:
    """The shard files of the merged file ``out`` that exist, of any world size (e.g. left by an earlier run).

    Only files: a folder of a shard's name is no shard, and writing that shard reports it.
    """
    out = Path(out)
    pattern = re.compile(rf"{re.escape(out.stem)}\.rank\d+-of-\d+{re.escape(out.suffix)}")
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def save_result(result: ShardResult, path: str | os.PathLike, **meta: Any) -> Path:
    """Write a result as ``.pt`` (``torch.save`` of a dict) or ``.npz`` (numpy arrays); return the path.

    The file is written under a temporary name and moved into place, so ``path`` is complete or absent.
    ``meta`` values are Python scalars (str, int, float, bool, None) or tuples/lists of them, which both
    formats read back safely (``torch.load(weights_only=True)``, ``np.load`` without ``allow_pickle``): in
    ``.npz`` each is an array ``meta_<key>``, and one numpy could only store as a pickled object (None, or a
    list holding None) is stored as its JSON text, e.g. ``'null'``.

    Raises:
        ValueError: for any other suffix.
        TypeError: for another ``meta`` value (a numpy scalar or a ``Path`` would make the ``.pt`` file
            unreadable by :func:`load_result`).
    """
    path = Path(path)
    check_choice("save_result", "path suffix", path.suffix, SUFFIXES)
    for key, value in meta.items():
        if not _plain(value):
            raise TypeError(
                f"save_result: meta {key!r} expected a str, int, float, bool or None (or a tuple/list of them), got "
                f"{type(value).__name__} {value!r}. Fix: convert it, e.g. str(value) or value.item()."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"indices": result.indices, "values": result.values, "nfe": torch.tensor(result.nfe), **result.extras}
    with atomic_write(path) as tmp:
        if path.suffix == ".pt":
            torch.save({**arrays, "meta": meta}, tmp)
        else:
            np.savez(tmp, **{k: v.numpy() for k, v in arrays.items()}, **{f"meta_{k}": _npz_meta(v) for k, v in meta.items()})
    return path


def _npz_meta(value: Any) -> np.ndarray:
    """``value`` as an array ``np.load`` reads without pickle: itself, or its JSON text where numpy would make an object array."""
    array = np.asarray(value)
    return np.asarray(json.dumps(value)) if array.dtype == object else array


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return type(value) in (str, int, float, bool, type(None))


def _read(path: Path) -> Any:
    """The content of a result file: ``torch.load`` of a ``.pt`` file, a dict of tensors (without meta) for ``.npz``."""
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    with np.load(path) as f:
        return {k: torch.from_numpy(f[k]) for k in f.files if not k.startswith("meta_")}


def load_result(path: str | os.PathLike) -> ShardResult:
    """Read a file written by :func:`save_result` (``.pt`` or ``.npz``).

    Raises:
        ValueError: for another suffix, a file that cannot be read as its suffix says (truncated, corrupt, or
            another format), or a file that holds no ``indices``, ``values`` and ``nfe``; the message names the file.
        FileNotFoundError: for a missing file.
    """
    path = Path(path)
    check_choice("load_result", "path suffix", path.suffix, SUFFIXES)
    try:
        d = _read(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # torch.load and np.load raise many types for a damaged file (EOFError, KeyError, BadZipFile ...)
        what = " ".join(f"{type(e).__name__}: {e}".split())[:200].rstrip(":")
        raise ValueError(
            f"load_result: {str(path)!r} is not a readable {path.suffix} result file (truncated, corrupt, or not written "
            f"by save_result): {what}. Fix: write it again (save_result, or scoreflow dist ... --overwrite)."
        ) from e
    missing = [k for k in ("indices", "values", "nfe") if not isinstance(d, dict) or k not in d]
    if missing:
        found = f"a dict with keys {sorted(d)}" if isinstance(d, dict) else f"a {type(d).__name__}"
        raise ValueError(
            f"load_result: {str(path)!r} is not a result written by save_result: it holds {found}, without "
            f"{', '.join(missing)}."
        )
    extras = {k: v for k, v in d.items() if k not in ("indices", "values", "nfe", "meta")}
    return ShardResult(d["indices"], d["values"], int(d["nfe"]), extras)
