"""``scoreflow bench``: the convergence studies, their order tables and the report."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import time

from .options import CLIError, add_dtype, add_num_samples, add_problem, add_progress, add_run_options, int_at_least
from .options import name_list, resolve_dtype
from .outputs import add_out_folder, check_out_folder

__all__ = ["add_parser"]

STUDIES = ("ode", "sde", "likelihood")


def _study_methods(kind: str) -> list[str]:
    from ..bench.registry import ODE_METHODS, SDE_METHODS

    return list({"ode": ODE_METHODS, "sde": SDE_METHODS}[kind])


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command."""
    from ..bench.registry import DEFAULT_ODE_METHODS, DEFAULT_SDE_METHODS

    bench = sub.add_parser(
        "bench",
        help="convergence study: error against NFE for every solver, fitted orders, report",
        description="Measure how fast each solver converges on a problem with an exact answer: ODE (error "
        "of x_tmin against the exact flow), SDE (strong, weak and distribution error) and likelihood "
        "(error against the exact log-density), each against NFE, with fitted convergence orders. "
        "Writes <out>/report.md, one JSON file per study and log-log PNG plots.",
    )
    add_problem(bench, "gaussian2d")
    bench.add_argument(
        "--study", nargs="+", choices=STUDIES, default=list(STUDIES), help="studies to run (default: all three)"
    )
    for kind, default in (("ode", DEFAULT_ODE_METHODS), ("sde", DEFAULT_SDE_METHODS)):
        bench.add_argument(
            f"--{kind}-methods",
            type=name_list(lambda kind=kind: _study_methods(kind), f"{kind.upper()} study methods"),
            default=default,
            metavar="LIST",
            help=f"comma-separated {kind.upper()} methods from {', '.join(_study_methods(kind))} "
            f"(default: {','.join(default)})",
        )
    bench.add_argument(
        "--max-nfe",
        type=int_at_least(8),
        default=512,
        help="NFE budget of one ODE solve, at least 8; likelihood solves get half (default: 512)",
    )
    bench.add_argument(
        "--sde-max-nfe",
        type=int_at_least(8),
        default=128,
        help="NFE budget of one SDE solve, at least 8 (default: 128)",
    )
    add_num_samples(bench, None, "trajectories (or points) per solve", minimum=2)  # the SDE study's weak error is a covariance
    add_dtype(bench)
    add_out_folder(bench, default="scoreflow-report", help="folder of report.md, the JSON files and the plots")
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_progress(bench)
    add_run_options(bench)
    bench.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    """Run the convergence studies, print the order tables and write the report."""
    twice = sorted({s for s in args.study if args.study.count(s) > 1})
    if twice:  # each study writes <study>.json: a repeat would run again and replace it
        raise CLIError(f"argument --study: expected each study once, got {' '.join(args.study)} ({', '.join(map(repr, twice))} repeated)")
    needed = (("tqdm", not args.no_progress), ("matplotlib", not args.no_plots))
    missing = [m for m, need in needed if need and importlib.util.find_spec(m) is None]
    if missing:
        raise CLIError(
            f"{' and '.join(missing)} not installed; install the bench extra "
            "(pip install 'scoreflow[bench]') or pass --no-progress/--no-plots"
        )
    patterns = ["report.md", *(f"{s}.json" for s in args.study), *(f"{s}_*.png" for s in args.study)]
    out = check_out_folder(args.out, overwrite=args.overwrite, patterns=patterns)

    from ..bench import run_likelihood_study, run_ode_study, run_sde_study
    from ..bench.report import orders_table, write_report
    from ..testing import make_problem

    problem = make_problem(args.problem, args.sde)
    dtype = resolve_dtype(args)
    common = {"dtype": dtype, "seed": args.seed, "progress": not args.no_progress}
    n = {} if args.num_samples is None else {"n": args.num_samples}
    runs = {
        "ode": lambda: run_ode_study(problem, methods=args.ode_methods, max_nfe=args.max_nfe, **n, **common),
        "sde": lambda: run_sde_study(problem, methods=args.sde_methods, max_nfe=args.sde_max_nfe, **n, **common),
        "likelihood": lambda: run_likelihood_study(problem, max_nfe=args.max_nfe // 2, **n, **common),
    }
    start = time.perf_counter()
    studies = [runs[name]() for name in args.study]
    seconds = time.perf_counter() - start
    command = "scoreflow " + " ".join(shlex.quote(a) for a in args.argv)
    files = write_report(studies, out, plots=not args.no_plots, command=command)
    _remove_stale_plots(out, args.study, files)
    for study in studies:
        print(
            f"\n{study.name.upper()} study on {study.problem} ({str(dtype).removeprefix('torch.')}): "
            "measured order = -slope of log(error) vs log(NFE)"
        )
        print(orders_table(study))
    disagree = [f"{o['method']} ({o['metric']})" for s in studies for o in s.orders if o["agrees"] is False]
    print(
        f"\n{len(studies)} studies in {seconds:.1f} s; orders that disagree with theory: {', '.join(disagree) or 'none'}"
    )
    print(f"report written to {files['report']} ({_written(files)} in {out}/)")
    return 0


def _written(files: dict) -> str:
    """What ``write_report`` wrote, e.g. ``"markdown, 2 JSON files and 3 PNG plots"`` (no plots under --no-plots)."""
    count = {suffix: sum(p.suffix == suffix for p in files.values()) for suffix in (".json", ".png")}
    kinds = [f"{count['.json']} JSON file{'s' * (count['.json'] != 1)}"]
    if count[".png"]:
        kinds.append(f"{count['.png']} PNG plot{'s' * (count['.png'] != 1)}")
    return "markdown, " + " and ".join(kinds)


def _remove_stale_plots(out, study_names: list[str], files: dict) -> None:
    """Delete the ``<study>_*.png`` that an earlier run left in ``out`` and this run did not write (``--overwrite``
    with ``--no-plots``, or a metric without data this time): every plot beside the report is of this run."""
    written = set(files.values())
    for name in study_names:
        for png in out.glob(f"{name}_*.png"):
            if png not in written:
                png.unlink()
