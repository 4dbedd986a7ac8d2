"""Where the commands write ``--out``: checked before any computation, then written whole or not at all."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .._files import temporary_name
from .options import CLIError

__all__ = ["add_out_file", "add_out_folder", "check_out_file", "check_out_folder", "write_errors"]


def add_out_file(p: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    """``--out FILE`` and ``--overwrite``."""
    p.add_argument(
        "--out", required=required, default=None, metavar="FILE", help=help + "; its folder is created if missing"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (by default it is refused)")


def add_out_folder(p: argparse.ArgumentParser, *, default: str, help: str) -> None:
    """``--out FOLDER`` and ``--overwrite``."""
    p.add_argument("--out", default=default, metavar="FOLDER", help=f"{help} (default: {default}; created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")


def check_out_file(path: str, *, overwrite: bool, suffixes: tuple[str, ...] = ()) -> Path:
    """Check that the file ``path`` may be written: a file name (with one of ``suffixes``), not an existing
    file unless ``overwrite``, in a folder that exists (it is created) and takes new files.

    Raises:
        CLIError: naming what is wrong with ``--out`` and how to fix it.
    """
    out = Path(path)
    if suffixes and out.suffix not in suffixes:
        raise CLIError(f"argument --out: expected a file name ending in {' or '.join(suffixes)}, got {path!r}")
    if out.is_dir() or path.endswith(("/", os.sep)):  # 'runs/' names a folder even before it exists
        example = out / f"result{suffixes[0] if suffixes else '.pt'}"
        raise CLIError(f"argument --out: {path!r} is a folder; expected a file name such as {str(example)!r}")
    if out.exists() and not overwrite:
        raise CLIError(f"argument --out: {path!r} exists; pass --overwrite to replace it, or choose another name")
    _check_folder(out.parent)
    return out


def check_out_folder(path: str, *, overwrite: bool, patterns: Iterable[str]) -> Path:
    """Check that the folder ``path`` may receive a command's files (named by the glob ``patterns``): not a
    file, holding none of them unless ``overwrite``, and writable (it is created if missing).

    Raises:
        CLIError: naming what is wrong with ``--out`` and how to fix it.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"argument --out: {path!r} is a file; expected a folder")
    existing = sorted({f.name for pattern in patterns for f in out.glob(pattern)}) if out.is_dir() else []
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise CLIError(
            f"argument --out: {path!r} holds {existing[0]}{more} from an earlier run; pass --overwrite to replace "
            "them, or choose another folder"
        )
    _check_folder(out)
    return out


def _check_folder(folder: Path) -> None:
    """Create ``folder`` if missing and check that a new file can be written there (by writing one)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / "probe")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as e:
        raise CLIError(
            f"argument --out: cannot write in the folder {str(folder)!r} ({e.strerror or e}: {e.filename}); "
            "choose a folder you can write to"
        ) from None


@contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Report a failed write of ``path`` (a full disk, a vanished folder) as a one-line error.

    Raises:
        CLIError: with status 1 (the options were fine), chained to the writer's error.
    """
    try:
        yield
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        raise CLIError(f"writing {str(path)!r} failed ({e}); nothing of this write was left there", status=1) from e
