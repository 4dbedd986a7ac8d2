"""``scoreflow sample`` and ``scoreflow likelihood``: one solve on an analytic problem, against the exact answer."""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any

import torch

from ..methods import DEFAULT_TOLERANCE

from .options import (
    add_dtype,
    add_num_samples,
    add_problem,
    add_progress,
    add_run_options,
    add_solver_options,
    add_trace_options,
    check_schedule,
    resolve_dtype,
    resolve_t_min,
    solver_options,
    trace_options,
)
from .._files import atomic_write
from .outputs import add_out_file, check_out_file, write_errors

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``sample`` and ``likelihood`` commands."""
    sample = sub.add_parser("sample", help="sample an analytic problem and print NFE and errors against the exact law")
    add_problem(sample, "ring2d")
    sample.add_argument(
        "--sampler", choices=("ode", "sde"), default="ode", help="probability-flow ODE or reverse SDE (default: ode)"
    )
    add_solver_options(sample, {"ode": "with --sampler ode", "sde": "with --sampler sde"}, schedule=True)
    add_num_samples(sample, 2000, "samples", minimum=2)  # the errors include the samples' covariance
    add_dtype(sample)
    add_out_file(sample, required=False, help="save the samples with torch.save to this file")
    add_progress(sample)
    add_run_options(sample)
    sample.set_defaults(run=_sample)

    lik = sub.add_parser("likelihood", help="log-likelihood of exact samples, compared with the exact log-density")
    add_problem(lik, "ring2d")
    add_trace_options(lik)
    add_solver_options(lik, {"likelihood": "one of"})
    add_num_samples(lik, 256, "points")
    lik.add_argument(
        "--exact-prior",
        action="store_true",
        help="use the exact log p_T instead of the SDE's prior at T, leaving only solver error",
    )
    add_dtype(lik)
    add_run_options(lik)
    lik.set_defaults(run=_likelihood)


def _problem(args: argparse.Namespace):
    """The problem of ``--problem``/``--sde``, its law in ``--dtype``, and a generator seeded by ``--seed``."""
    from ..testing import make_problem

    problem = make_problem(args.problem, args.sde)
    return problem, problem.law.to(resolve_dtype(args)), problem.sde, torch.Generator().manual_seed(args.seed)


def _describe(options: dict[str, Any]) -> str:
    shown = (f"{k}={v}" if isinstance(v, str) else f"{k}={v:g}" for k, v in options.items() if k != "method")
    return ", ".join(shown) or f"rtol=atol={DEFAULT_TOLERANCE:g}"


def _sample(args: argparse.Namespace) -> int:
    """Sample an analytic problem by PF-ODE or reverse SDE and print NFE and errors against the exact law."""
    from .. import sample_ode, sample_sde
    from ..bench.sde import distribution_errors

    options = solver_options(args, args.sampler)
    out = None if args.out is None else check_out_file(args.out, overwrite=args.overwrite)
    problem, law, sde, g = _problem(args)
    t_min = resolve_t_min(args, sde)
    check_schedule(options, sde, t_min)
    x_T = sde.prior_sample((args.num_samples, *law.event_shape), generator=g, dtype=law.means.dtype)
    how = f"{args.sampler} {options['method']} ({_describe(options)})"
    print(f"{problem.name}: sampling {args.num_samples} points by {how} ...", flush=True)
    # A bar over the solver's steps when tqdm is installed (the 'progress' or 'bench' extra), as dist shows one.
    options["progress"] = not args.no_progress and importlib.util.find_spec("tqdm") is not None
    start = time.perf_counter()
    if args.sampler == "ode":
        res = sample_ode(law.score(sde), sde, x_T, t_min=t_min, **options)
    else:
        res = sample_sde(law.score(sde), sde, x_T, t_min=t_min, generator=g, **options)
    seconds = time.perf_counter() - start
    exact = law.marginal(sde, t_min)
    big = exact.sample(4096, generator=g)
    errs = distribution_errors(res.samples, exact, big, seed=args.seed)
    floor = distribution_errors(exact.sample(args.num_samples, generator=g), exact, big, seed=args.seed)
    print(f"NFE {res.nfe}, {seconds:.2f} s")
    print("errors against the exact law at t_min: " + ", ".join(f"{k} {v:.4f}" for k, v in errs.items()))
    print(
        f"the same for {args.num_samples} exact samples (Monte-Carlo floor): "
        + ", ".join(f"{k} {v:.4f}" for k, v in floor.items())
    )
    if out is not None:
        with write_errors(out), atomic_write(out) as tmp:
            torch.save(res.samples, tmp)
        print(f"samples ({tuple(res.samples.shape)}) written to {out}")
    return 0


def _likelihood(args: argparse.Namespace) -> int:
    """Log-likelihood of exact samples of an analytic problem, compared with the exact log-density."""
    from .. import log_likelihood

    options, trace = solver_options(args, "likelihood"), trace_options(args)
    problem, law, sde, g = _problem(args)
    t_min = resolve_t_min(args, sde)
    x = law.marginal(sde, t_min).sample(args.num_samples, generator=g)
    prior = law.marginal(sde, sde.T).log_prob if args.exact_prior else None
    print(
        f"{problem.name}: log-likelihood of {args.num_samples} points, {args.trace} trace, "
        f"{options['method']} ({_describe(options)}), "
        f"{'exact p_T' if args.exact_prior else 'the SDE prior'} at T ...",
        flush=True,
    )
    start = time.perf_counter()
    with torch.no_grad():
        res = log_likelihood(law.score(sde), sde, x, **trace, **options, t_min=t_min, prior_log_prob=prior, generator=g)
    seconds = time.perf_counter() - start
    exact = law.marginal(sde, t_min).log_prob(x)
    err = (res.log_prob - exact).abs()
    print(f"NFE {res.nfe} (+{res.nfe_vjp} VJPs), {seconds:.2f} s")
    print(
        f"mean log p: {float(res.log_prob.mean()):.5f} nats (exact {float(exact.mean()):.5f}); "
        f"mean |error| {float(err.mean()):.2e}, "
        f"max {float(err.max()):.2e}; {float(res.bpd.mean()):.4f} bits/dim"
    )
    return 0
