"""Time per step of ``expint_pc_adaptive`` outside the model: the loop's own cost.

A step's time is the slope of a solve's time over its steps between two tolerances (1e-2 and 1e-4, the same data
and probe), so the set-up of a solve does not enter; the model's part is one bare call of it on the step's points
(2PB for ``hutchinson_fd``), subtracted.  Batch 256 in float32 under ``torch.no_grad()``, as the flow benchmark runs:

- ``free rf``: rectified flow with a linear velocity ``x @ W`` (``score_from_flow_velocity``), a nearly free model;
- ``free vp``: VP with a linear score ``x @ W``;
- ``mixture rf``: ``mixture16d``'s exact velocity under rectified flow (the flow benchmark's likelihood problem).

Rounds interleave the settings; medians over rounds.  To compare two trees, run it under each (``PYTHONPATH``) in
alternation:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_likelihood_loop.py --rounds 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import scoreflow as sf
from scoreflow.testing import make_law

TOLERANCES = (1e-2, 1e-4)


def settings(batch: int) -> dict:
    """Per setting: the model, the process, the data, and the bare model call on a step's points."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 16, generator=g) * 0.3
    w = -(w @ w.T) / 16 - 0.5 * torch.eye(16)
    rf, vp = sf.RectifiedFlow(), sf.VPSDE()
    law = make_law("mixture16d")
    velocity = law.to(torch.float32).velocity(rf)
    linear = sf.score_from_flow_velocity(lambda x, t: x @ w, rf)
    x = torch.randn(batch, 16, generator=g)
    mixture_x = law.marginal(rf, rf.t_min).sample(batch, generator=torch.Generator().manual_seed(11)).float()
    points, t = torch.randn(2 * batch, 16, generator=g), torch.full((2 * batch,), 0.5)
    return {
        "free rf": (linear, rf, x, lambda: linear.predict(points, t)),
        "free vp": (lambda y, s: y @ w, vp, x, lambda: points @ w),
        "mixture rf": (velocity, rf, mixture_x, lambda: velocity.predict(points, t)),
    }


def solve(model, sde, x, tol: float):
    """One solve (``hutchinson_fd``, one probe); its number of steps (evaluations after the first)."""
    res = sf.log_likelihood(model, sde, x, method="expint_pc_adaptive", rtol=tol, atol=tol, trace="hutchinson_fd",
                            generator=torch.Generator().manual_seed(1))
    return res.nfe // 2 - 1


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = settings(args.batch)
    steps, times, bare = {}, {(k, tol): [] for k in cases for tol in TOLERANCES}, {k: [] for k in cases}
    with torch.no_grad():
        for name, (model, sde, x, _) in cases.items():
            steps[name] = {tol: solve(model, sde, x, tol) for tol in TOLERANCES}  # (and a warm-up)
        for _ in range(args.rounds):
            for name, (model, sde, x, call) in cases.items():
                for tol in TOLERANCES:
                    times[name, tol].append(timed(lambda: solve(model, sde, x, tol)))
                bare[name].append(statistics.median(timed(call) for _ in range(5)))
    print(f"{sf.__file__}: per step, medians of {args.rounds} rounds (us)")
    for name in cases:
        few, many = (steps[name][tol] for tol in TOLERANCES)
        per_step = (statistics.median(times[name, TOLERANCES[1]]) - statistics.median(times[name, TOLERANCES[0]])) / (many - few)
        model = statistics.median(bare[name])
        print(f"  {name:10s} steps {few}-{many}: step {per_step * 1e6:6.1f}, model call {model * 1e6:6.1f}, "
              f"outside the model {(per_step - model) * 1e6:6.1f}")


if __name__ == "__main__":
    main()
