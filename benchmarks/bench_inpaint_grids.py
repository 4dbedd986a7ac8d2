"""The grid of ``inpaint`` on EDM: the old uniform t grid against the default, sample_pc's (Karras' on EDM).

Six random Gaussians (seeds 9100-9105, drawn once and not looked at before this run: nothing here was tuned on them),
each on 5 coordinates: an unknown block of 3 with a random rotation and variances log-uniform in [0.05, 1], means
N(0, 1), independent of an observed block of 2 whose known values are a draw of it.  With independent blocks
replacement and RePaint sample the exact conditional law (the score of x_u does not see the noisy x_o), so what is
left is the discretization of the reverse steps, which the grid decides.  Per problem, method (``replacement``:
N NFE; ``repaint`` with resample=2, jump=10) and budget N (100, 300, 1000 steps): ``sf.inpaint`` with the default
reverse-diffusion predictor on EDMSDE, float64, ``--n`` samples from the same prior draws and noise for both grids.
Reference: ``law.condition(mask, known).marginal(sde, sde.t_min)`` (exact).  Metrics on the unknown block: the
largest |z| of the sample mean and covariance entries (z = error / the standard error of n exact draws:
sqrt(S_ii / n) for a mean, sqrt((S_ii S_jj + S_ij^2) / n) for a covariance entry), and the relative covariance error
||C - S||_F / ||S||_F; the floor is both for n exact draws.  The table gives medians over the problems and the worst.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_inpaint_grids.py
    PYTHONPATH=src python benchmarks/bench_inpaint_grids.py --report   # the table again from the JSON

Writes ``benchmarks/results/inpaint_grids/held_out.json`` and ``held_out.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
from peers import read_json, write_json, write_text  # benchmarks/ is on the path when this script runs

import scoreflow as sf
from scoreflow.analytic import Gaussian

SEEDS = range(9100, 9106)
BUDGETS = (100, 300, 1000)
GRIDS = {"t (old)": "t", "default": None}
METHODS = {"replacement": {}, "repaint": {"method": "repaint", "resample": 2, "options": {"jump": 10}}}
UNKNOWN, OBSERVED = 3, 2


def random_problem(seed: int) -> tuple[Gaussian, torch.Tensor, torch.Tensor]:
    """The law (unknown block independent of the observed one), the mask (True where observed) and the known values."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    rotation, _ = torch.linalg.qr(torch.randn(UNKNOWN, UNKNOWN, generator=g, dtype=f64))
    variances = torch.exp(torch.empty(UNKNOWN, dtype=f64).uniform_(math.log(0.05), 0.0, generator=g))
    cov = torch.block_diag(rotation @ torch.diag(variances) @ rotation.T, torch.diag(torch.empty(OBSERVED, dtype=f64).uniform_(0.1, 1.0, generator=g)))
    law = Gaussian(torch.randn(UNKNOWN + OBSERVED, generator=g, dtype=f64), cov)
    mask = torch.arange(UNKNOWN + OBSERVED) >= UNKNOWN
    return law, mask, law.sample(1, generator=g)[0]


def moment_errors(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> dict:
    """Largest |z| of the sample mean and covariance entries, and the relative covariance error (see the docstring)."""
    n, var = len(x), cov.diagonal()
    z_mean = (x.mean(0) - mean) / (var / n).sqrt()
    sample_cov = torch.cov(x.T)
    z_cov = (sample_cov - cov) / ((var[:, None] * var[None, :] + cov**2) / n).sqrt()
    return {
        "z_max": float(torch.cat([z_mean.abs(), z_cov.abs().flatten()]).max()),
        "cov_rel": float(torch.linalg.norm(sample_cov - cov) / torch.linalg.norm(cov)),
    }


def errors(seed: int, n: int) -> dict:
    """``{method: {grid: {str(steps): moment_errors}}}`` and the floor, from the same prior draws and noise."""
    law, mask, known = random_problem(seed)
    sde = sf.EDMSDE()
    exact = law.condition(mask, known).marginal(sde, sde.t_min)
    draws = torch.Generator().manual_seed(seed + 1)
    x_T = sde.prior_sample((n, law.dim), generator=draws, dtype=torch.float64)
    out = {"floor": moment_errors(exact.sample(n, generator=draws), exact.mean, exact.covariance)}
    for method, kwargs in METHODS.items():
        out[method] = {grid: {} for grid in GRIDS}
        for grid, schedule in GRIDS.items():
            for steps in BUDGETS:
                res = sf.inpaint(law.score(sde), sde, x_T, known=known, mask=mask, steps=steps, schedule=schedule,
                                 generator=torch.Generator().manual_seed(seed + steps), **kwargs)
                out[method][grid][str(steps)] = moment_errors(res.samples[:, ~mask], exact.mean, exact.covariance)
    return out


def table(results: list[dict]) -> str:
    grids = list(GRIDS)
    lines = ["| method | N | max \\|z\\|: " + ", ".join(grids) + " (median [worst]) | covariance rel. error: "
             + ", ".join(grids) + " (median [worst]) |", "| --- | --- | --- | --- |"]
    floor_z = [r["errors"]["floor"]["z_max"] for r in results]
    floor_c = [r["errors"]["floor"]["cov_rel"] for r in results]
    for method in METHODS:
        for steps in map(str, BUDGETS):
            cells = []
            for key, fmt in (("z_max", "{:.1f}"), ("cov_rel", "{:.3f}")):
                parts = []
                for grid in grids:
                    v = [r["errors"][method][grid][steps][key] for r in results]
                    parts.append(f"{fmt.format(statistics.median(v))} [{fmt.format(max(v))}]")
                cells.append(", ".join(parts))
            lines.append(f"| {method} | {steps} | {cells[0]} | {cells[1]} |")
    lines.append(f"| exact draws (floor) | – | {statistics.median(floor_z):.1f} [{max(floor_z):.1f}] | "
                 f"{statistics.median(floor_c):.3f} [{max(floor_c):.3f}] |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="samples per run")
    ap.add_argument("--out", default="benchmarks/results/inpaint_grids")
    ap.add_argument("--report", action="store_true", help="only rebuild the table (and OUT/held_out.md) from the JSON")
    args = ap.parse_args(argv)
    stem = Path(args.out) / "held_out"
    if args.report:
        text = table(read_json(stem.with_suffix(".json"))["results"])
    else:
        torch.set_num_threads(1)
        results = []
        for seed in SEEDS:
            with torch.no_grad():
                results.append({"seed": seed, "errors": errors(seed, args.n)})
            print(f"seed {seed} done", flush=True)
        text = table(results)
        write_json(stem.with_suffix(".json"), {"n": args.n, "budgets": BUDGETS, "results": results})
    print(text)
    write_text(stem.with_suffix(".md"), text + "\n")


if __name__ == "__main__":
    main()
