"""The options every command shares, built and checked in one place.

One vocabulary across the commands and the Python API: ``--num-samples``, ``--problem LAW --sde SDE``,
``--method`` (the names of :func:`scoreflow.list_methods`), ``--steps`` (a count), ``--schedule`` (where they
go), ``--step-size`` (a length), ``--rtol``/``--atol`` (adaptive methods), ``--t-min``, ``--dtype``, ``--seed``,
``--threads``, ``--out``/``--overwrite``, ``--debug``.  Each value is checked when it is parsed,
and combinations right after, before any computation.
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from ..dynamics.divergence import PROBES
from ..likelihood import TRACES, log_likelihood
from ..methods import DEFAULT_TOLERANCE, Method, list_methods
from ..sampling import sample_ode, sample_sde
from ..schedules import SCHEDULES, time_grid
from ..sde import ForwardSDE
from ..testing import LAWS, SDES

__all__ = [
    "CLIError", "Parser", "DTYPES", "DEFAULT_STEPS", "int_at_least", "positive_float", "name_list",
    "add_run_options", "add_problem", "add_dtype", "add_num_samples", "add_solver_options", "add_trace_options",
    "add_progress", "trace_options", "default_method", "resolve_method", "solver_options", "stepping_options",
    "check_schedule", "resolve_t_min", "resolve_dtype",
]

#: ``--dtype`` names.
DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Steps of a fixed-grid method when neither ``--steps`` nor ``--step-size`` is given.
DEFAULT_STEPS = 500
# The front-end each method kind is run by; their defaults are the commands' defaults.
_FRONT_ENDS: dict[str, Callable] = {"ode": sample_ode, "sde": sample_sde, "likelihood": log_likelihood}


class CLIError(Exception):
    """A user error, printed as the one line ``<prog>: error: <message>``; the command exits with ``status``.

    Args:
        message: names the option, what was expected, what was received and the fix.
        prog: the command (``"scoreflow sample"``); filled in by :func:`scoreflow.cli.main` when ``None``.
        status: 2 for rejected options (argparse's convention), 1 for a failure after the options were accepted.
    """

    def __init__(self, message: str, *, prog: str | None = None, status: int = 2) -> None:
        super().__init__(message)
        self.prog = prog
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse, except that an error raises :class:`CLIError` (one line, no usage block) instead of exiting."""

    def error(self, message: str):  # noqa: ANN201 - argparse's signature
        raise CLIError(message, prog=self.prog)


#: The largest count, size or seed torch takes (an int64); a larger one failed inside torch with a traceback.
INT_MAX = 2**63 - 1


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and at most :data:`INT_MAX`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        if value > INT_MAX:
            raise argparse.ArgumentTypeError(f"expected an int from {minimum} to 2^63-1 (torch's int64), got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def name_list(valid: Callable[[], list[str]], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: comma-separated names, each among ``valid()`` (e.g. ``euler,rk4``)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        allowed = valid()
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} from {', '.join(allowed)}, got {text!r}"
                + (f" ({', '.join(map(repr, unknown))} unknown)" if unknown else "")
            )
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # a study keys its results by name: a repeat would be run again and reported as another row
            raise argparse.ArgumentTypeError(f"expected each of the {what} once, got {text!r} ({', '.join(map(repr, twice))} repeated)")
        return names

    return parse


def add_run_options(p: argparse.ArgumentParser, *, threads: int | None = 1) -> None:
    """``--seed``, ``--threads`` (default ``threads``; ``None`` leaves torch's) and ``--debug``."""
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed, an int >= 0 (default: 0)")
    p.add_argument(
        "--threads",
        type=int_at_least(1),
        default=threads,
        help="torch threads (default: "
        + ("1; the problems are small, so one is fastest)" if threads == 1 else "torch's, e.g. OMP_NUM_THREADS)"),
    )
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def add_problem(
    p: argparse.ArgumentParser, law: str | None, *, group: argparse._ActionsContainer | None = None
) -> None:
    """``--problem LAW`` (default ``law``; ``None``: no default) and ``--sde SDE``: an analytic reference problem.

    ``group`` takes ``--problem`` instead of ``p`` (a group of sources, e.g. ``--problem`` or ``--model``).
    """
    (group or p).add_argument(
        "--problem",
        choices=LAWS,
        default=law,
        help="data law with exact answers" + (f" (default: {law})" if law else ""),
    )
    p.add_argument(
        "--sde", choices=SDES, default=None if law is None else "vp", help="forward SDE of --problem (default: vp)"
    )


def add_dtype(p: argparse.ArgumentParser, default_text: str = "float64") -> None:
    """``--dtype`` (resolved by :func:`resolve_dtype`)."""
    p.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help=f"precision of the solve (default: {default_text})"
    )


def add_num_samples(p: argparse.ArgumentParser, default: int | None, what: str, *, minimum: int = 1) -> None:
    """``--num-samples``, at least ``minimum`` (2 where a covariance of the samples is measured)."""
    shown = f"default: {default}" if default is not None else "default: 512 ODE, 256 SDE, 64 likelihood"
    least = f", >= {minimum}" if minimum > 1 else ""
    p.add_argument("--num-samples", type=int_at_least(minimum), default=default, help=f"number of {what}{least} ({shown})")


def _method_names(kind: str) -> str:
    return ", ".join(m.name for m in list_methods(kind))


def add_solver_options(p: argparse.ArgumentParser, kinds: dict[str, str], *, schedule: bool = False) -> None:
    """``--method``, ``--steps`` | ``--step-size``, ``--rtol``, ``--atol``, ``--t-min`` and, with ``schedule``,
    ``--schedule``.

    Args:
        kinds: method kind -> when it applies (``{"ode": "--sampler ode", "sde": "--sampler sde"}``), for the help.
        schedule: add ``--schedule``, a name of :data:`scoreflow.schedules.SCHEDULES` for the ``--steps`` of a
            fixed-grid method (the front-end's ``schedule=``).
    """
    lists = "; ".join(
        f"{when}: {_method_names(kind)} (default: {default_method(kind)})" for kind, when in kinds.items()
    )
    p.add_argument("--method", default=None, metavar="METHOD", help=f"the solver; {lists}")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument(
        "--steps",
        type=int_at_least(1),
        default=None,
        help=f"number of steps of a fixed-grid method (default: {DEFAULT_STEPS} unless --step-size is given)",
    )
    if schedule:
        p.add_argument(
            "--schedule",
            choices=SCHEDULES,
            default=None,
            help="where the --steps of a fixed-grid method go (default: the method's own grid, e.g. uniform in t; "
            "see scoreflow.time_grid)",
        )
    grid.add_argument(
        "--step-size", type=positive_float, default=None, help="step length of a fixed-grid method, instead of --steps"
    )
    for name in ("--rtol", "--atol"):
        p.add_argument(
            name,
            type=positive_float,
            default=None,
            help=f"tolerance of an adaptive method (default: {DEFAULT_TOLERANCE:g})",
        )
    p.add_argument("--t-min", type=positive_float, default=None, help="truncation time (default: the SDE's t_min)")


def add_trace_options(p: argparse.ArgumentParser) -> None:
    """``--trace``, ``--probe`` and ``--n-probes`` of a likelihood."""
    p.add_argument(
        "--trace", choices=TRACES, default="exact",
        help="divergence estimator (default: exact; hutchinson_fd: Hutchinson by central differences, no VJP)",
    )
    # No argparse defaults: trace_options tells a probe option given with --trace exact from one left out.
    p.add_argument(
        "--probe",
        choices=PROBES,
        default=None,
        help="Hutchinson probe (default: rademacher)",
    )
    p.add_argument("--n-probes", type=int_at_least(1), default=None, help="Hutchinson probes per point (default: 1)")


def trace_options(args: argparse.Namespace) -> dict[str, Any]:
    """The likelihood keywords of ``--trace``, ``--probe`` and ``--n-probes`` (the last two for Hutchinson only).

    Raises:
        CLIError: for ``--probe`` or ``--n-probes`` with ``--trace exact``, which has no probe.
    """
    if args.trace != "exact":
        n_probes = 1 if args.n_probes is None else args.n_probes
        return {"trace": args.trace, "probe": args.probe or "rademacher", "n_probes": n_probes}
    given = "--probe" if args.probe is not None else "--n-probes" if args.n_probes is not None else None
    if given:
        raise CLIError(f"argument {given}: applies to a Hutchinson trace; --trace exact computes the divergence without probes")
    return {"trace": args.trace}


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def default_method(kind: str) -> str:
    """The method a command uses without ``--method``: the default of the front-end that runs the kind."""
    return inspect.signature(_FRONT_ENDS[kind]).parameters["method"].default


def resolve_method(args: argparse.Namespace, kind: str) -> Method:
    """The record of ``--method`` (or the kind's default) among the methods of ``kind``."""
    name = default_method(kind) if args.method is None else args.method  # "" is a wrong name, not the default
    methods = {m.name: m for m in list_methods(kind)}
    if name not in methods:
        when = f" with --sampler {args.sampler}" if getattr(args, "sampler", None) else ""
        raise CLIError(f"argument --method: expected one of {', '.join(methods)}{when}, got {name!r}")
    return methods[name]


def solver_options(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The front-end's ``method`` and the keywords of its stepping (see :func:`stepping_options`), checked together."""
    method = resolve_method(args, kind)
    return {"method": method.name, **stepping_options(args, method, kind)}


def stepping_options(args: argparse.Namespace, method: Method, kind: str) -> dict[str, float | int]:
    """The front-end's ``steps``/``step_size``/``rtol``/``atol`` from the options, for ``method`` of ``kind``.

    An adaptive method takes ``--rtol``/``--atol`` only; a fixed-grid method takes ``--steps`` (placed by
    ``--schedule`` where the command has it) or ``--step-size`` (where its record allows it), :data:`DEFAULT_STEPS`
    steps without either.
    """
    adaptive = [m.name for m in list_methods(kind) if m.adaptive]
    schedule = getattr(args, "schedule", None)
    if method.adaptive:
        given = next((name for name, value in (("--steps", args.steps), ("--step-size", args.step_size),
                                               ("--schedule", schedule)) if value is not None), None)
        if given:
            raise CLIError(
                f"argument {given}: the adaptive method {method.name!r} chooses its own steps from --rtol/--atol; "
                f"omit {given}, or choose a fixed-grid method"
            )
        return {k: v for k, v in (("rtol", args.rtol), ("atol", args.atol)) if v is not None}
    given = "--rtol" if args.rtol is not None else "--atol" if args.atol is not None else None
    if given:
        raise CLIError(
            f"argument {given}: the fixed-grid method {method.name!r} takes --steps or --step-size; "
            f"--rtol/--atol apply to the adaptive methods ({', '.join(adaptive) or 'none here'})"
        )
    if args.step_size is not None:
        if not method.step_size:
            raise CLIError(
                f"argument --step-size: the method {method.name!r} takes --steps only, got --step-size {args.step_size:g}"
            )
        if schedule is not None:
            raise CLIError(
                f"argument --schedule: places the --steps of a fixed-grid method; --step-size {args.step_size:g} "
                "makes steps of equal length. Fix: --steps N with --schedule, or --step-size alone"
            )
        return {"step_size": args.step_size}
    steps = {"steps": DEFAULT_STEPS if args.steps is None else args.steps}
    return steps if schedule is None else {**steps, "schedule": schedule}


def check_schedule(options: dict[str, Any], sde: ForwardSDE, t_min: float) -> None:
    """Refuse a ``--schedule`` that ``sde`` does not define (a log-SNR or Karras grid where a path reaches pure
    noise) before anything is computed, as :func:`scoreflow.time_grid` would when the solve starts.

    Raises:
        CLIError: naming ``--schedule``, with ``time_grid``'s reason and the schedules that fit.
    """
    if "schedule" not in options:
        return
    try:
        time_grid(sde, options["steps"], options["schedule"], t_min=t_min)
    except ValueError as err:
        raise CLIError(f"argument --schedule: {err}") from None


def resolve_t_min(args: argparse.Namespace, sde: ForwardSDE) -> float:
    """``--t-min``, by default the SDE's ``t_min``; it must lie below the SDE's end time T."""
    if args.t_min is None:
        return sde.t_min
    if not args.t_min < sde.T:
        raise CLIError(f"argument --t-min: expected a time in (0, T={sde.T:g}) of the forward SDE, got {args.t_min:g}")
    return args.t_min


def resolve_dtype(args: argparse.Namespace, *, analytic: bool = True) -> torch.dtype:
    """``--dtype``; by default float64 for an analytic ``--problem`` (exact references), float32 for a ``--model``."""
    if args.dtype is not None:
        return DTYPES[args.dtype]
    return torch.float64 if analytic else torch.float32
