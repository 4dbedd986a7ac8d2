"""``scoreflow demo``: sample the 2-D ring mixture by ODE and SDE against the exact law."""

from __future__ import annotations

import argparse
import time

import torch

from ..testing import SDES
from .options import add_num_samples, add_run_options, int_at_least


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="sample a 2-D mixture by ODE and SDE and print NFE and error against the exact law"
    )
    demo.add_argument("--sde", choices=SDES, default="vp", help="forward SDE (default: vp)")
    add_num_samples(demo, 5000, "samples")
    demo.add_argument("--steps", type=int_at_least(1), default=500, help="Euler-Maruyama steps (default: 500)")
    add_run_options(demo)
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    """Sample the 2-D ring mixture by ODE and SDE and compare with the exact law."""
    from ..testing import make_problem

    problem = make_problem("ring2d", args.sde)
    law, sde = problem.law, problem.sde
    g = torch.Generator().manual_seed(args.seed)
    x_T = sde.prior_sample((args.num_samples, 2), generator=g, dtype=torch.float64)
    exact = law.marginal(sde, sde.t_min)
    from .. import SampleResult, sample_ode, sample_sde
    from ..metrics import mode_weights

    print(f"problem: {problem.name}  (8-component ring mixture, {args.num_samples} samples, exact law at t_min={sde.t_min:g})")
    print(f"{'sampler':<34}{'NFE':>6}{'mean err':>11}{'cov err':>10}{'weight err':>12}{'seconds':>9}")
    runs = {
        "ode dopri5 (rtol=atol=1e-5)": lambda: sample_ode(problem.score, sde, x_T, method="dopri5"),
        "ode dpmpp_3m_pc (20 steps)": lambda: sample_ode(problem.score, sde, x_T, method="dpmpp_3m_pc", steps=20),
        "ode dpmpp_4m_pc_adaptive (1e-3)": lambda: sample_ode(
            problem.score, sde, x_T, method="dpmpp_4m_pc_adaptive", rtol=1e-3, atol=1e-3
        ),
        f"sde euler ({args.steps} steps)": lambda: sample_sde(
            problem.score, sde, x_T, method="euler", steps=args.steps, generator=g
        ),
        "exact samples (Monte-Carlo floor)": lambda: SampleResult(exact.sample(args.num_samples, generator=g), 0),
    }
    for name, run in runs.items():
        start = time.perf_counter()
        res = run()
        secs = time.perf_counter() - start
        x = res.samples
        mean_err = (x.mean(0) - exact.mean).norm().item()
        cov_err = (torch.cov(x.T) - exact.covariance).norm().item()
        weight_err = (mode_weights(law, x) - law.weights).abs().max().item()
        print(f"{name:<34}{res.nfe:>6}{mean_err:>11.4f}{cov_err:>10.4f}{weight_err:>12.4f}{secs:>9.2f}")
    return 0

