"""Predictor-corrector against predictor-only at equal NFE, and annealed against plain Langevin.

Part 1: on the 8-component ring (exact scores), sliced Wasserstein-2 to an exact sample of the same size
for ``sample_pc`` with N steps and one Langevin corrector step (2N NFE) against the same
predictor alone with 2N steps (2N NFE), averaged over seeds (mean and standard error).  The
exact-sample row is the Monte-Carlo floor of the metric at that sample size.

Part 2: mode-weight error of plain Langevin (exact score) and annealed Langevin (exact
noise-conditional scores) on a 1-D two-mode mixture with weights 0.2 / 0.8.

    PYTHONPATH=src python benchmarks/bench_pc.py                 # VE and VP, 4 seeds
    PYTHONPATH=src python benchmarks/bench_pc.py --sdes ve --seeds 2 --n 5000

Prints tables and writes ``benchmarks/results/bench_pc.json``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import scoreflow as sf
from scoreflow.metrics import mode_weights, sliced_wasserstein2
from scoreflow.testing import make_problem

from peers import write_json

F64 = torch.float64


def _mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=F64)
    se = float(t.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(t.mean()), se


def pc_table(sde_name: str, steps: list[int], snrs: list[float], seeds: int, n: int, predictor: str) -> list[dict]:
    problem = make_problem("ring2d", sde_name)
    reference = problem.law.sample(n, generator=torch.Generator().manual_seed(10_000))

    def sw2(x: torch.Tensor) -> float:
        return sliced_wasserstein2(x, reference, n_projections=64, generator=torch.Generator().manual_seed(7))

    rows = [{"sde": sde_name, "method": "exact samples", "nfe": 0,
             "sw2": _mean_se([sw2(problem.law.sample(n, generator=torch.Generator().manual_seed(s))) for s in range(seeds)])}]
    for n_steps in steps:
        configs = [(f"{predictor} x{2 * n_steps}", dict(steps=2 * n_steps, corrector=None))]
        configs += [(f"PC x{n_steps}, snr={snr}", dict(steps=n_steps, snr=snr)) for snr in snrs]
        for label, kwargs in configs:
            values, nfe, start = [], 0, time.perf_counter()
            for seed in range(seeds):
                g = torch.Generator().manual_seed(seed)
                x_T = problem.sde.prior_sample((n, 2), generator=g, dtype=F64)
                res = sf.sample_pc(problem.score, problem.sde, x_T, predictor=predictor, generator=g, **kwargs)
                values.append(sw2(res.samples))
                nfe = res.nfe
            rows.append({"sde": sde_name, "method": label, "nfe": nfe, "sw2": _mean_se(values),
                         "seconds": (time.perf_counter() - start) / seeds})
    return rows


def langevin_table(seeds: int, n: int) -> list[dict]:
    means = torch.tensor([[-2.5], [2.5]], dtype=F64)
    law = sf.analytic.GaussianMixture(torch.tensor([0.2, 0.8], dtype=F64), means, 0.0625 * torch.ones(2, 1, 1, dtype=F64))
    sigma_min, sigma_max = 0.3, 2.5
    ncsn_score = law.score(sf.EDMSDE(sigma_min, sigma_max))
    runs = {
        "plain Langevin (eps=0.01, 200 steps)": lambda x0, g: sf.langevin(
            law.grad_log_prob, x0, step_size=0.01, steps=200, generator=g),
        "annealed, L=15, T=40, alpha=0.2 sigma^2": lambda x0, g: sf.annealed_langevin(
            ncsn_score, x0, sf.geometric_sigmas(sigma_min, sigma_max, 15), steps=40,
            step_size=0.2 * sigma_min**2, generator=g),
        "annealed, L=15, T=80, alpha=0.1 sigma^2": lambda x0, g: sf.annealed_langevin(
            ncsn_score, x0, sf.geometric_sigmas(sigma_min, sigma_max, 15), steps=80,
            step_size=0.1 * sigma_min**2, generator=g),
    }
    rows = []
    for label, run in runs.items():
        errors, nfe = [], 0
        for seed in range(seeds):
            x0 = sigma_max * torch.randn(n, 1, generator=torch.Generator().manual_seed(100 + seed), dtype=F64)
            res = run(x0, torch.Generator().manual_seed(seed))
            errors.append(float((mode_weights(law, res.samples) - law.weights).abs().max()))
            nfe = res.nfe
        rows.append({"method": label, "nfe": nfe, "max_weight_error": _mean_se(errors), "worst": max(errors)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdes", nargs="+", default=["ve", "vp"])
    parser.add_argument("--predictor", default="reverse_diffusion")
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 40])
    parser.add_argument("--snrs", nargs="+", type=float, default=[0.16, 0.3, 0.5])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--langevin-n", type=int, default=3000)
    parser.add_argument("--out", default="benchmarks/results/bench_pc.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = {"args": vars(args), "pc": [], "langevin": []}
    print(f"sliced W2 to an exact sample (ring2d, n={args.n}, {args.seeds} seeds; mean +- standard error)")
    print(f"{'sde':4} {'method':32} {'NFE':>5} {'SW2':>16}")
    for sde_name in args.sdes:
        for row in pc_table(sde_name, args.steps, args.snrs, args.seeds, args.n, args.predictor):
            m, se = row["sw2"]
            print(f"{row['sde']:4} {row['method']:32} {row['nfe']:5d} {m:9.4f} +- {se:.4f}", flush=True)
            results["pc"].append(row)

    print(f"\nmode weights 0.2 / 0.8, modes 20 std apart (n={args.langevin_n}, {args.seeds} seeds)")
    print(f"{'method':42} {'NFE':>5} {'max |w - w*|':>18} {'worst':>7}")
    for row in langevin_table(args.seeds, args.langevin_n):
        m, se = row["max_weight_error"]
        print(f"{row['method']:42} {row['nfe']:5d} {m:9.4f} +- {se:.4f} {row['worst']:7.4f}", flush=True)
        results["langevin"].append(row)

    print()
    write_json(args.out, results, indent=2)


if __name__ == "__main__":
    main()
