"""Where the fixed-grid native likelihood solver ``expint_pc`` should put its steps: error against step count per grid.

``sf.log_likelihood(model, sde, x, method="expint_pc", steps=N, schedule=...)`` integrates from the data at t_min to
T on a fixed grid.  For each problem (a Gaussian mixture: the named ones or ``peers.random_mixture(seed)``) and
process (rectified flow, VP, VE), 200 data draws at t_min, Hutchinson's estimator with one Rademacher probe (the same
probe in every solve), float64: the error is the mean |log p - reference| over the draws, against scoreflow's
torchdiffeq ``dopri5`` at rtol = atol = 1e-10 with the same probe, so the probe's noise cancels and what remains
is the grid's.  Grids: ``log_snr`` (the default until this script was written; ``log_snr_capped`` on rectified flow,
whose log-SNR is -inf at T), ``t``, and ``noise_fraction``: uniform in nu^(1/p) with nu = sigma / (alpha + sigma),
p = 1 and the default p = 5/3 (the grid ``expint_pc`` takes by default since this script was written).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_likelihood_grids.py --named --random 5101 5102
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_likelihood_grids.py --random 5200 5201 5202 5203 5204 5205 5206 5207 5208 5209 --out benchmarks/results/likelihood_grids

It prints, per process and step count, the median and the largest ratio of each grid's error to ``log_snr``'s over
the problems, and writes every error to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from peers import random_mixture, write_json  # benchmarks/ is on the path when this script runs

import scoreflow as sf
from scoreflow.testing import make_law

PROCESSES = {"rf": sf.RectifiedFlow, "vp": sf.VPSDE, "ve": sf.VESDE}
#: label -> (schedule, time_grid options); "log_snr" is :func:`old_default`
GRIDS = {"log_snr": (None, {}), "t": ("t", {}), "noise_fraction p=1": ("noise_fraction", {"power": 1.0}),
         "noise_fraction": ("noise_fraction", {})}
NAMED = ("mixture16d", "ring2d_sharp", "gaussian16d")


def old_default(sde: sf.ForwardSDE) -> str:
    """The grid ``expint_pc`` took by default before ``noise_fraction``: log-SNR, capped where it is infinite at T."""
    return "log_snr_capped" if sde.pure_noise_at_T else "log_snr"


def errors(law, sde: sf.ForwardSDE, steps: list[int], n: int) -> dict[str, dict[int, float]]:
    """Mean |log p - reference| of ``expint_pc`` on each grid and step count."""
    t_min = max(1e-3, sde.t_min)
    x = law.marginal(sde, t_min).sample(n, generator=torch.Generator().manual_seed(11))
    model = law.score(sde)

    def solve(**kw) -> torch.Tensor:
        return sf.log_likelihood(model, sde, x, t_min=t_min, trace="hutchinson",
                                 generator=torch.Generator().manual_seed(100), **kw).log_prob.detach()

    reference = solve(method="dopri5", rtol=1e-10, atol=1e-10)
    out: dict[str, dict[int, float]] = {}
    for label, (name, options) in GRIDS.items():
        out[label] = {}
        for k in steps:
            grid = sf.time_grid(sde, k, name or old_default(sde), t_min=t_min, **options).flip(0)  # data to noise
            out[label][k] = float((solve(method="expint_pc", schedule=grid) - reference).abs().mean())
    return out


def table(results: list[dict], steps: list[int]) -> list[str]:
    """Median [largest] ratio of each grid's error to log_snr's, over the problems, per process and step count."""
    lines = ["| process | grid | " + " | ".join(f"{k} steps" for k in steps) + " |",
             "| --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    for process in PROCESSES:
        rows = [r for r in results if r["process"] == process]
        for grid in list(GRIDS)[1:]:
            cells = []
            for k in steps:
                ratios = [r["errors"][grid][k] / r["errors"]["log_snr"][k] for r in rows]
                cells.append(f"{statistics.median(ratios):.3g} [{max(ratios):.3g}]")
            lines.append(f"| {process} | {grid} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--named", action="store_true", help=f"include the named problems {', '.join(NAMED)}")
    parser.add_argument("--random", type=int, nargs="*", default=[], help="seeds of peers.random_mixture problems")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 12, 16, 24, 32, 48, 64, 128])
    parser.add_argument("--n", type=int, default=200, help="data draws per problem")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/likelihood_grids"))
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    problems = [(name, make_law(name)) for name in NAMED if args.named]
    problems += [(f"random{seed}", random_mixture(seed)[0]) for seed in args.random]
    if not problems:
        parser.error("no problem: give --named and/or --random SEED ...")
    results = []
    for name, law in problems:
        for process, make in PROCESSES.items():
            results.append({"problem": name, "process": process, "dim": law.means.shape[-1],
                            "errors": errors(law, make(), args.steps, args.n)})
            e = results[-1]["errors"]
            print(f"{name:>14} {process}: " + "  ".join(
                f"{k}: " + "/".join(f"{e[g][k]:.1e}" for g in GRIDS) for k in args.steps), flush=True)
    lines = table(results, args.steps)
    print("\n".join(lines))
    write_json(args.out / "results.json", {"steps": args.steps, "grids": list(GRIDS), "results": results})


if __name__ == "__main__":
    main()
