"""``scoreflow demo``: sample the 2-D ring mixture by ODE and SDE and judge each sampler against the exact law."""

from __future__ import annotations

import argparse

from ..testing import SDES
from .options import add_run_options, int_at_least


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="sample a 2-D mixture by ODE and SDE and judge the errors against exact samples of the same size"
    )
    demo.add_argument("--sde", choices=SDES, default="vp", help="forward SDE (default: vp)")
    # at least two samples: a covariance error needs two points
    demo.add_argument("--num-samples", type=int_at_least(2), default=5000, help="number of samples, >= 2 (default: 5000)")
    demo.add_argument("--steps", type=int_at_least(1), default=500, help="Euler-Maruyama steps (default: 500)")
    add_run_options(demo)
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    """Sample the 2-D ring mixture by ODE and SDE, with progress, and print a verdict per sampler."""
    from ..bench.demo import run_demo

    return run_demo(sde=args.sde, n=args.num_samples, steps=args.steps, seed=args.seed)
