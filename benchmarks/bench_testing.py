"""Calibration and power of ``scoreflow.testing.assert_samples_follow``.

False alarms: exact samples of each reference law are tested ``--runs`` times; the observed
rejection rate of each check (moments, sliced W2, mode weights) should be near (at most about)
``alpha``.  Power: the same laws with the covariance about the mean widened by a factor
``1 + eps``; the rejection rate should climb to 1 as eps grows past the Monte-Carlo error.

    PYTHONPATH=src python benchmarks/bench_testing.py                  # 200 runs, n=1000, alpha=0.01
    PYTHONPATH=src python benchmarks/bench_testing.py --runs 50 --laws gaussian2d ring2d

Prints a table and writes ``benchmarks/results/bench_testing.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from scoreflow.testing import LAWS, make_law
from scoreflow.testing.distribution import _mode_check, _moment_check, _sw2_check

from peers import write_json

CHECKS = ("moments", "sw2", "modes")


def rejections(law, x, alpha: float, generator: torch.Generator) -> dict[str, bool]:
    """Which of the three checks of ``assert_samples_follow`` reject the samples ``x``."""
    n = x.shape[0]
    ref = law.sample(20000, generator=generator).reshape(-1, law.dim).double()
    x = x.reshape(n, -1).double()
    out = {
        "moments": _moment_check(x, law, ref, alpha)[1] is not None,
        "sw2": _sw2_check(x, law, alpha, 10, 128, 0.01, generator)[1] is not None,
    }
    if law.n_components > 1:
        out["modes"] = _mode_check(x, law, ref, alpha)[1] is not None
    return out


def study(law_name: str, eps: float, runs: int, n: int, alpha: float) -> dict:
    law = make_law(law_name)
    counts = dict.fromkeys(CHECKS, 0)
    any_count = 0
    for seed in range(runs):
        g = torch.Generator().manual_seed(seed)
        x = law.sample(n, generator=g)
        x = law.mean + (1 + eps) * (x - law.mean)
        rej = rejections(law, x, alpha, g)
        for k, v in rej.items():
            counts[k] += v
        any_count += any(rej.values())
    has_modes = law.n_components > 1
    return {
        "law": law_name, "eps": eps, "runs": runs, "n": n, "alpha": alpha,
        **{f"rate_{k}": counts[k] / runs if (k != "modes" or has_modes) else None for k in CHECKS},
        "rate_any": any_count / runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laws", nargs="+", default=list(LAWS), choices=LAWS)
    parser.add_argument("--eps", nargs="+", type=float, default=[0.0, 0.02, 0.05, 0.1])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_testing.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"assert_samples_follow rejection rates: n={args.n}, alpha={args.alpha} per check, {args.runs} runs each")
    print(f"{'law':<12}{'widen eps':>10}{'moments':>9}{'sw2':>8}{'modes':>8}{'any':>8}{'s/run':>8}")
    for law_name in args.laws:
        for eps in args.eps:
            start = time.perf_counter()
            row = study(law_name, eps, args.runs, args.n, args.alpha)
            row["seconds_per_run"] = (time.perf_counter() - start) / args.runs
            rows.append(row)
            fmt = lambda v: "   -" if v is None else f"{v:.3f}"  # noqa: E731
            print(
                f"{law_name:<12}{eps:>10.2f}{fmt(row['rate_moments']):>9}{fmt(row['rate_sw2']):>8}"
                f"{fmt(row['rate_modes']):>8}{fmt(row['rate_any']):>8}{row['seconds_per_run']:>8.2f}",
                flush=True,
            )
    write_json(args.out, rows, indent=2)


if __name__ == "__main__":
    main()
