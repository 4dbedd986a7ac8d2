"""The ``scoreflow`` command line: ``demo``, ``bench``, ``sample``, ``likelihood`` and ``dist sample|likelihood``.

:mod:`.options` builds and checks the options the commands share, :mod:`.outputs` checks and writes
``--out``, and one module per command holds its parser and its run.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
