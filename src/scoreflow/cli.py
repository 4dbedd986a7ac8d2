"""The ``scoreflow`` command line: ``demo``, ``bench``, ``sample`` and ``likelihood``."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from collections.abc import Sequence

import torch


def _demo(args: argparse.Namespace) -> int:
    """Sample the 2-D ring mixture by ODE and SDE and judge each sampler against the exact law."""
    from .bench.demo import main_demo

    return main_demo(args.sde, args.n, args.steps, args.seed)


def _dtype(name: str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[name]


def _methods(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _bench(args: argparse.Namespace) -> int:
    """Run the convergence studies, print the order tables and write the report."""
    from .bench import run_likelihood_study, run_ode_study, run_sde_study
    from .bench.report import orders_table, write_report
    from .testing import make_problem

    needed = (("tqdm", not args.no_progress), ("matplotlib", not args.no_plots))
    missing = [m for m, need in needed if need and importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"scoreflow bench: {' and '.join(missing)} not installed; install the bench extra "
            "(pip install 'scoreflow[bench]') or pass --no-progress/--no-plots.",
            file=sys.stderr,
        )
        return 2
    problem = make_problem(args.problem, args.sde)
    dtype = _dtype(args.dtype)
    common = {"dtype": dtype, "seed": args.seed, "progress": not args.no_progress}
    n = {} if args.n is None else {"n": args.n}
    runs = {
        "ode": lambda: run_ode_study(problem, methods=_methods(args.ode_methods), max_nfe=args.max_nfe, **n, **common),
        "sde": lambda: run_sde_study(
            problem, methods=_methods(args.sde_methods), max_nfe=args.sde_max_nfe, **n, **common
        ),
        "likelihood": lambda: run_likelihood_study(problem, max_nfe=args.max_nfe // 2, **common),
    }
    start = time.perf_counter()
    studies = [runs[name]() for name in args.study]
    seconds = time.perf_counter() - start
    command = "scoreflow " + " ".join(shlex.quote(a) for a in (args.argv or ["bench"]))
    files = write_report(studies, args.out, plots=not args.no_plots, command=command)
    for study in studies:
        print(
            f"\n{study.name.upper()} study on {study.problem} ({args.dtype}): measured order = -slope of log(error) vs log(NFE)"
        )
        print(orders_table(study))
    disagree = [f"{o['method']} ({o['metric']})" for s in studies for o in s.orders if o["agrees"] is False]
    print(
        f"\n{len(studies)} studies in {seconds:.1f} s; orders that disagree with theory: {', '.join(disagree) or 'none'}"
    )
    print(f"report written to {files['report']} (JSON, markdown and PNG plots in {args.out}/)")
    return 0


def _analytic_problem(args: argparse.Namespace):
    """The reference problem named by ``--problem``/``--sde``, its law in ``--dtype``, and a generator seeded by ``--seed``."""
    from .testing import make_problem

    problem = make_problem(args.problem, args.sde)
    law = problem.law.to(_dtype(args.dtype))
    return problem, law, problem.sde, torch.Generator().manual_seed(args.seed)


def _sample(args: argparse.Namespace) -> int:
    """Sample an analytic problem by PF-ODE or reverse SDE and print NFE and errors against the exact law."""
    from . import sample_ode, sample_sde
    from .bench.sde import distribution_errors

    problem, law, sde, g = _analytic_problem(args)
    dtype = law.means.dtype
    x_T = sde.prior_sample((args.n, *law.event_shape), generator=g, dtype=dtype)
    setting = {"steps": args.steps} if args.steps else {}
    start = time.perf_counter()
    if args.sampler == "ode":
        res = sample_ode(law.score(sde), sde, x_T, method=args.method, **setting)
    else:
        res = sample_sde(law.score(sde), sde, x_T, method=args.method, steps=args.steps or 500, generator=g)
    seconds = time.perf_counter() - start
    exact = problem.law.marginal(sde, sde.t_min)
    big = exact.sample(4096, generator=g)
    errs = distribution_errors(res.samples, exact, big, seed=args.seed)
    floor = distribution_errors(exact.sample(args.n, generator=g), exact, big, seed=args.seed)
    print(f"{problem.name}: {args.sampler} {args.method}, {args.n} samples, NFE {res.nfe}, {seconds:.2f} s")
    print("errors against the exact law at t_min: " + ", ".join(f"{k} {v:.4f}" for k, v in errs.items()))
    print(
        f"the same for {args.n} exact samples (Monte-Carlo floor): "
        + ", ".join(f"{k} {v:.4f}" for k, v in floor.items())
    )
    if args.out:
        torch.save(res.samples, args.out)
        print(f"samples ({tuple(res.samples.shape)}) written to {args.out}")
    return 0


def _likelihood(args: argparse.Namespace) -> int:
    """Log-likelihood of exact samples of an analytic problem, compared with the exact log-density."""
    from . import log_likelihood

    problem, law, sde, g = _analytic_problem(args)
    x = law.marginal(sde, sde.t_min).sample(args.n, generator=g)
    start = time.perf_counter()
    prior = law.marginal(sde, sde.T).log_prob if args.exact_prior else None
    with torch.no_grad():
        res = log_likelihood(
            law.score(sde),
            sde,
            x,
            trace=args.trace,
            method=args.method,
            rtol=args.tol,
            atol=args.tol,
            prior_log_prob=prior,
            generator=g,
        )
    seconds = time.perf_counter() - start
    exact = law.marginal(sde, sde.t_min).log_prob(x)
    err = (res.log_prob - exact).abs()
    print(
        f"{problem.name}: {args.trace} trace, {args.method} rtol=atol={args.tol:g}, {args.n} points, "
        f"{'exact p_T' if args.exact_prior else 'the SDE prior'} at T, NFE {res.nfe} (+{res.nfe_vjp} VJPs), {seconds:.2f} s"
    )
    print(
        f"mean log p: {float(res.log_prob.mean()):.5f} nats (exact {float(exact.mean()):.5f}); mean |error| {float(err.mean()):.2e}, "
        f"max {float(err.max()):.2e}; {float(res.bpd.mean()):.4f} bits/dim"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .sampling import ADAPTIVE_ODE_METHODS, FIXED_ODE_METHODS, NATIVE_ADAPTIVE_ODE_METHODS, SDE_METHODS
    from .testing import LAWS, SDES

    parser = argparse.ArgumentParser(
        prog="scoreflow",
        description="Solvers for score-based generative models, checked against problems with exact answers.",
        epilog="Start with 'scoreflow bench': convergence of every solver against NFE, with a report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def problem_args(p: argparse.ArgumentParser, law: str) -> None:
        p.add_argument("--problem", choices=LAWS, default=law, help=f"data law with exact answers (default: {law})")
        p.add_argument("--sde", choices=SDES, default="vp", help="forward SDE (default: vp)")
        p.add_argument(
            "--dtype", choices=("float64", "float32"), default="float64", help="precision (default: float64)"
        )
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        p.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch threads; the problems are small, so one is fastest (default: 1)",
        )

    demo = sub.add_parser(
        "demo", help="sample a 2-D mixture by ODE and SDE and print NFE and error against the exact law"
    )
    demo.add_argument("--sde", choices=SDES, default="vp", help="forward SDE (default: vp)")
    demo.add_argument("--n", type=int, default=5000, help="number of samples (default: 5000)")
    demo.add_argument("--steps", type=int, default=500, help="Euler-Maruyama steps (default: 500)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(run=_demo)

    from .bench.registry import DEFAULT_ODE_METHODS, DEFAULT_SDE_METHODS, ODE_METHODS
    from .bench.registry import SDE_METHODS as SDE_STUDY_METHODS

    bench = sub.add_parser(
        "bench",
        help="convergence study: error against NFE for every solver, fitted orders, report",
        description="Measure how fast each solver converges on a problem with an exact answer: ODE (error "
        "of x_tmin against the exact flow), SDE (strong, weak and distribution error) and likelihood "
        "(error against the exact log-density), each against NFE, with fitted convergence orders. "
        "Writes <out>/report.md, one JSON file per study and log-log PNG plots.",
    )
    problem_args(bench, "gaussian2d")
    bench.add_argument(
        "--study",
        nargs="+",
        choices=("ode", "sde", "likelihood"),
        default=["ode", "sde", "likelihood"],
        help="studies to run (default: all three)",
    )
    bench.add_argument(
        "--ode-methods",
        default=",".join(DEFAULT_ODE_METHODS),
        metavar="LIST",
        help=f"comma-separated ODE methods from {', '.join(ODE_METHODS)} (default: %(default)s)",
    )
    bench.add_argument(
        "--sde-methods",
        default=",".join(DEFAULT_SDE_METHODS),
        metavar="LIST",
        help=f"comma-separated SDE methods from {', '.join(SDE_STUDY_METHODS)} (default: %(default)s)",
    )
    bench.add_argument(
        "--max-nfe",
        type=int,
        default=512,
        help="NFE budget of one ODE solve; likelihood solves get half (default: 512)",
    )
    bench.add_argument("--sde-max-nfe", type=int, default=128, help="NFE budget of one SDE solve (default: 128)")
    bench.add_argument("--n", type=int, default=None, help="trajectories per solve (default: 512 ODE, 256 SDE)")
    bench.add_argument("--out", default="scoreflow-report", help="output folder (default: scoreflow-report)")
    bench.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    bench.set_defaults(run=_bench)

    sample = sub.add_parser("sample", help="sample an analytic problem and print NFE and errors against the exact law")
    problem_args(sample, "ring2d")
    sample.add_argument(
        "--sampler", choices=("ode", "sde"), default="ode", help="probability-flow ODE or reverse SDE (default: ode)"
    )
    sample.add_argument(
        "--method",
        default="dopri5",
        help=f"ODE: {', '.join(ADAPTIVE_ODE_METHODS + NATIVE_ADAPTIVE_ODE_METHODS + FIXED_ODE_METHODS)}; SDE: {', '.join(SDE_METHODS)} (default: dopri5)",
    )
    sample.add_argument("--steps", type=int, default=None, help="steps of a fixed-step method (SDE default: 500)")
    sample.add_argument("--n", type=int, default=2000, help="number of samples (default: 2000)")
    sample.add_argument("--out", default=None, help="save the samples with torch.save to this file")
    sample.set_defaults(run=_sample)

    lik = sub.add_parser("likelihood", help="log-likelihood of exact samples, compared with the exact log-density")
    problem_args(lik, "ring2d")
    lik.add_argument(
        "--trace", choices=("exact", "hutchinson"), default="exact", help="divergence estimator (default: exact)"
    )
    lik.add_argument("--method", default="dopri5", help="torchdiffeq method (default: dopri5)")
    lik.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the solver (default: 1e-5)")
    lik.add_argument("--n", type=int, default=256, help="number of points (default: 256)")
    lik.add_argument(
        "--exact-prior",
        action="store_true",
        help="use the exact log p_T instead of the SDE's prior at T, leaving only solver error",
    )
    lik.set_defaults(run=_likelihood)

    dist = sub.add_parser(
        "dist",
        help="sharded sampling or likelihood over torchrun processes (see docs/adapters.md)",
        description="Run under torchrun: torchrun --nproc-per-node N -m scoreflow dist sample|likelihood ... "
        "Each rank solves its shard; rank 0 writes the merged file. 'scoreflow dist sample --help' lists the options.",
    )
    dist.add_argument("dist_command", choices=("sample", "likelihood"), help="what to run on every rank")
    dist.add_argument("dist_args", nargs=argparse.REMAINDER, help="options of that command")
    dist.set_defaults(run=_distributed)
    return parser


def _distributed(args: argparse.Namespace) -> int:
    from .distributed_cli import main as distributed_main

    return distributed_main([args.dist_command, *args.dist_args])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
