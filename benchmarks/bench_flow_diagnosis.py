"""Why the log-SNR exponential integrators lose on rectified flow at 10 NFE: the start from pure noise, or the grid?

On the problems of bench_flow.py (the exact velocity of an analytic law under RectifiedFlow, 300 prior draws, RMS
path error at t_min = 1e-3 against the float64 reference), each of dpmpp_2m_pc, dpmpp_3m_pc (data prediction,
polynomials in the log-SNR) and velocity_2m_pc, velocity_3m_pc (velocity, polynomials in t) runs 10 steps on three
grids ("log_snr_capped", uniform "t", "shift" 0.5), twice: as is, and with its first step from t = 1 replaced by the
exact flow map (the same method then runs the other 9 steps from the exact state, its options as on 10 steps).  If the first step from
lambda = -inf (a DDIM step corrected by the trapezoidal rule, one order short) were the cause, the second error
would be much smaller than the first.

    OMP_NUM_THREADS=1 python benchmarks/bench_flow_diagnosis.py      # about a minute; JSON in benchmarks/results/flow/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_flow import RF, T_MIN, random_mixture  # benchmarks/ is on the path when this script runs
from peers import write_json

import scoreflow as sf
from scoreflow.metrics import rms_error
from scoreflow.testing import make_law, reference_flow_map

METHODS = ("dpmpp_2m_pc", "dpmpp_3m_pc", "velocity_2m_pc", "velocity_3m_pc")


def study(law, n: int, steps: int) -> list[dict]:
    x1 = RF.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = reference_flow_map(law, RF, x1, 1.0, T_MIN)
    velocity = law.velocity(RF)
    grids = {"log_snr_capped": sf.time_grid(RF, steps, "log_snr_capped"), "t": sf.time_grid(RF, steps, "t"),
             "shift0.5": sf.time_grid(RF, steps, "shift", shift=0.5)}
    rows = []
    for gname, grid in grids.items():
        t1 = float(grid[1])
        exact_1 = reference_flow_map(law, RF, x1, 1.0, t1)
        for method in METHODS:
            full = sf.sample_ode(velocity, RF, x1, method=method, schedule=grid).samples
            # the same method from the exact state at t_1 on the rest of the grid (a path started there, at T = t_1)
            # (with lower_order_final off, as it is on the full grid of 10 steps: on 9 it would lower the last step)
            options = {"lower_order_final": False} if method.startswith("dpmpp") else None
            rest = sf.sample_ode(velocity, RF.truncated(t1), exact_1, method=method, schedule=grid[1:], options=options).samples
            rows.append({"grid": gname, "method": method, "t1": t1, "path_rms": rms_error(full, ref),
                         "path_rms_exact_first_step": rms_error(rest, ref)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/flow")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    problems = [("ring2d_sharp", make_law("ring2d_sharp")), ("mixture16d", make_law("mixture16d")),
                random_mixture(3000), random_mixture(3001)]
    results = {}
    print("| problem | grid | method | RMS path error | with the exact first step |")
    print("| --- | --- | --- | --- | --- |")
    for name, law in problems:
        results[name] = study(law, args.n, args.steps)
        for r in results[name]:
            print(f"| {name} | {r['grid']} | {r['method']} | {r['path_rms']:.1e} | {r['path_rms_exact_first_step']:.1e} |", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "diagnosis.json", {"n": args.n, "steps": args.steps, "results": results})


if __name__ == "__main__":
    main()
