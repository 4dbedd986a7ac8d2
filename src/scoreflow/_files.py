"""Writing result files completely or not at all."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "temporary_name"]


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` that keeps its suffix (``.x.pt.<pid>.<random>.tmp.pt`` for ``x.pt``).

    The suffix is kept because writers choose the format by it (``np.savez``, ``Figure.savefig``).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, move the file written there to ``path``.

    The move is ``os.replace`` within one folder, so ``path`` holds either its complete new content or
    what it held before (nothing, for a new file), however the writer or the process ends. A block that
    raises leaves ``path`` untouched and removes the temporary file; a killed process may leave the
    hidden temporary file behind, never a truncated ``path``.

    Example::

        with atomic_write("runs/samples.pt") as tmp:
            torch.save(samples, tmp)
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot expose an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
