"""The ``scoreflow`` command: parse, run, and report a user's error as one line on stderr.

A user's error is one line ``<command>: error: <message>`` and exit status 2: an option argparse
rejects, a combination a command rejects (:class:`~.options.CLIError`), or a ``ValueError`` /
``TypeError`` that scoreflow's API raises on purpose for the values given (a ``raise`` statement in
scoreflow's own code).  A result that could not be written, a solve that turned non-finite, or an
allocation larger than the machine's memory (too many steps or samples) is one line and status 1;
Ctrl-C is one line and status 130.  Anything else is a bug and keeps its traceback; ``--debug``
shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from ..errors import NonFiniteError
from . import analytic, bench, demo, dist
from .failures import one_line
from .options import CLIError, Parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command: ``demo``, ``bench``, ``sample``, ``likelihood``, ``dist sample|likelihood``."""
    parser = Parser(
        prog="scoreflow",
        description="Solvers for score-based generative models, checked against problems with exact answers.",
        epilog="Start with 'scoreflow bench': convergence of every solver against NFE, with a report. "
        "Exit status: 0 done, 2 an option was rejected (one line on stderr), 1 a result could not be "
        "written, a solve turned non-finite or memory ran out; --debug shows the traceback.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    bench.add_parser(sub)
    analytic.add_parsers(sub)
    dist.add_parser(sub)
    return parser


def _report(prog: str, message: str, status: int) -> int:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike; rank 0 speaks for them
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scoreflow`` with ``argv`` (default: the process's arguments); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return args.run(args)
    except (CLIError, ValueError, TypeError, NonFiniteError, KeyboardInterrupt, MemoryError, RuntimeError) as e:
        line = one_line(e)
        # Before the arguments are parsed, only a rejected argument (a CLIError naming its prog) is one line.
        if line is None or (args.debug if args is not None else not isinstance(e, CLIError)):
            raise
        return _report(getattr(e, "prog", None) or _prog(args), *line)


def _prog(args: argparse.Namespace) -> str:
    return " ".join(["scoreflow", args.command, *([args.dist_command] if args.command == "dist" else [])])
