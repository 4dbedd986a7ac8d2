"""What the command line makes of an exception, by the rules :func:`.main.main` states: one line and an exit
status, or a traceback (a bug, in scoreflow, torch or the user's model; Python then exits with status 1).

``dist`` reports another rank's failure by the same rules, so every rank ends as one process would.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import torch

from ..errors import NonFiniteError
from .options import CLIError

__all__ = ["INTERRUPTED", "one_line", "out_of_memory", "raised_on_purpose"]

#: The one line of Ctrl-C (status 130).
INTERRUPTED = "interrupted (results are written whole or not at all)"

_PACKAGE = Path(__file__).resolve().parents[1]


def raised_on_purpose(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a ``raise`` statement in scoreflow's code (a rejected input), not from a failed
    operation inside scoreflow, torch or the user's code (a bug, whose traceback is needed)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    return Path(last.filename).resolve().is_relative_to(_PACKAGE) and (last.line or "").startswith("raise ")


def out_of_memory(exc: BaseException) -> str | None:
    """The one line of an allocation the machine could not make (a CUDA ``OutOfMemoryError``, Python's
    ``MemoryError``, or the CPU allocator's ``RuntimeError``), or ``None`` for any other exception.

    Its cause is the size of the problem asked for (``--steps``, ``--num-samples``, a batch), not a bug, so it is
    one line (status 1) naming the allocation, not a traceback.
    """
    cpu_allocator = isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    if not (isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or cpu_allocator):
        return None
    size = re.search(r"tried to allocate (\d+) bytes", str(exc))
    asked = f" ({int(size.group(1)) / 2**30:.3g} GiB in one allocation)" if size else ""
    return f"out of memory{asked}: ask for fewer steps or samples"


def one_line(exc: BaseException) -> tuple[str, int] | None:
    """The message and exit status of ``exc`` as one line, or ``None`` for an exception shown with its traceback."""
    if (memory := out_of_memory(exc)) is not None:
        return memory, 1
    if isinstance(exc, CLIError):
        return str(exc), exc.status
    if isinstance(exc, (ValueError, TypeError, NonFiniteError)) and raised_on_purpose(exc):
        return str(exc), 1 if isinstance(exc, NonFiniteError) else 2
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, 130
    return None
