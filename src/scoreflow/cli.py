"""The ``scoreflow`` command line."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch


def _demo(args: argparse.Namespace) -> int:
    """Sample the 2-D ring mixture by ODE and SDE and compare with the exact law."""
    from .testing import make_problem

    problem = make_problem("ring2d", args.sde)
    law, sde = problem.law, problem.sde
    g = torch.Generator().manual_seed(args.seed)
    x_T = sde.prior_sample((args.n, 2), generator=g, dtype=torch.float64)
    exact = law.marginal(sde, sde.t_min)
    from . import sample_ode, sample_sde

    print(f"problem: {problem.name}  (8-component ring mixture, {args.n} samples, exact law at t_min={sde.t_min:g})")
    print(f"{'sampler':<28}{'NFE':>6}{'mean err':>11}{'cov err':>10}{'weight err':>12}{'seconds':>9}")
    runs = {
        "ode dopri5 (rtol=atol=1e-5)": lambda: sample_ode(problem.score, sde, x_T, method="dopri5"),
        f"sde euler ({args.steps} steps)": lambda: sample_sde(problem.score, sde, x_T, method="euler", steps=args.steps, generator=g),
    }
    for name, run in runs.items():
        start = time.perf_counter()
        res = run()
        secs = time.perf_counter() - start
        x = res.samples
        mean_err = (x.mean(0) - exact.mean).norm().item()
        cov_err = (torch.cov(x.T) - exact.covariance).norm().item()
        weights = exact.responsibilities(x).argmax(1).bincount(minlength=8).double() / x.shape[0]
        weight_err = (weights - law.weights).abs().max().item()
        print(f"{name:<28}{res.nfe:>6}{mean_err:>11.4f}{cov_err:>10.4f}{weight_err:>12.4f}{secs:>9.2f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoreflow", description="Solvers for score-based generative models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="sample a 2-D mixture by ODE and SDE and print NFE and error against the exact law")
    demo.add_argument("--sde", choices=("vp", "subvp", "ve"), default="vp", help="forward SDE (default: vp)")
    demo.add_argument("--n", type=int, default=5000, help="number of samples (default: 5000)")
    demo.add_argument("--steps", type=int, default=500, help="Euler-Maruyama steps (default: 500)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
