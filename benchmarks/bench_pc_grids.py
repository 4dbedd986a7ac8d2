"""The default grid of ``sample_pc``: uniform in t (score_sde's) against Karras' (``sample_sde``'s default on EDM).

Per process (EDM, VE), problem and budget N (20, 50, 100 steps): ``sf.sample_pc(score, sde, x_T, steps=N,
schedule=grid)`` with its defaults (reverse-diffusion predictor, one Langevin corrector step at snr 0.16: 2N NFE) and
with the predictor alone (``corrector=None``: N NFE), on the exact score of a Gaussian mixture, float64, from the same
``--n`` prior draws and noise for both grids.  Error = the Gaussian W2 distance between the moments (mean, covariance)
of the samples and the exact moments of the law at ``t_min`` (``bench_fixed_step_grids.moment_distance``); the floor
is the same distance for as many exact draws of that law.  The table gives, per process, configuration and budget,
the median error of each grid and of the floor, and the median and worst over problems of the ratio Karras / t, with
the number of problems on which Karras' error is the smaller.

Problem sets: ``design`` (``peers.random_mixture`` seeds 8000-8003 and ring2d_sharp), looked at while writing the
rule below; ``held_out`` (seeds 8100-8111, mixture16d, gaussian16d), run once after it was fixed.

Rule, fixed before the held-out run: Karras' becomes ``sample_pc``'s default on a process where, on the held-out set,
in both configurations and at every budget, the median ratio Karras / t is below 0.7 and Karras' error is the smaller
on at least 90 % of the problems; elsewhere the default stays uniform in t.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_pc_grids.py --set design
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_pc_grids.py --set held_out
    PYTHONPATH=src python benchmarks/bench_pc_grids.py --set held_out --report  # the table (and SET.md) from the JSON

Outcome (held-out, 14 problems): on EDM Karras / t had a median of 0.027-0.053 and at worst 0.09, Karras' better on
14 of 14 at every budget, with and without the corrector: ``sample_pc`` defaults to Karras' grid there (through
``coarse_t_schedule``, as ``sample_sde``'s torchsde methods; only EDM's clock is coarse at the data's scale).  On VE
the median was 1.1-1.3 (Karras' better on 0-2 of 14): it keeps the uniform grid.

Writes ``benchmarks/results/pc_grids/SET.json`` and ``SET.md``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from bench_fixed_step_grids import moment_distance  # benchmarks/ is on the path when this script runs
from peers import problem_set, read_json, write_json, write_text

import scoreflow as sf

PROCESSES = {"edm": sf.EDMSDE, "ve": sf.VESDE}
GRIDS = ("t", "karras")
BUDGETS = (20, 50, 100)
CONFIGS = {"PC (snr 0.16)": {}, "predictor only": {"corrector": None}}
SETS = {
    "design": ([8000, 8001, 8002, 8003], ["ring2d_sharp"]),
    "held_out": (list(range(8100, 8112)), ["mixture16d", "gaussian16d"]),
}


def errors(law, sde, n: int, seed: int) -> dict:
    """``{config: {grid: {str(steps): moment distance}}}`` and the floor, from the same prior draws and noise."""
    at = law.marginal(sde, sde.t_min)
    draws = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, law.dim), generator=draws, dtype=torch.float64)
    out = {"floor": moment_distance(at.sample(n, generator=draws), at.mean, at.covariance)}
    model = law.score(sde)
    for config, kwargs in CONFIGS.items():
        out[config] = {grid: {} for grid in GRIDS}
        for grid in GRIDS:
            for steps in BUDGETS:
                res = sf.sample_pc(model, sde, x_T, steps=steps, schedule=grid, generator=torch.Generator().manual_seed(seed + steps), **kwargs)
                out[config][grid][str(steps)] = moment_distance(res.samples, at.mean, at.covariance)
    return out


def karras_wins(results: list[dict], process: str) -> bool:
    """The rule of the docstring: in every configuration and budget, median Karras / t < 0.7 and Karras' error the
    smaller on at least 90 % of the problems."""
    mine = [r for r in results if r["process"] == process]
    for config in CONFIGS:
        for steps in map(str, BUDGETS):
            pairs = [(r["errors"][config]["t"][steps], r["errors"][config]["karras"][steps]) for r in mine]
            if not (statistics.median(k / t for t, k in pairs) < 0.7 and sum(k < t for t, k in pairs) >= 0.9 * len(pairs)):
                return False
    return True


def table(results: list[dict]) -> str:
    lines = ["| process | configuration | N | t | karras | floor | karras / t: median, worst | karras better |",
             "|" + " --- |" * 8]
    for process in PROCESSES:
        mine = [r for r in results if r["process"] == process]
        floor = statistics.median(r["errors"]["floor"] for r in mine)
        for config in CONFIGS:
            for steps in map(str, BUDGETS):
                t = [r["errors"][config]["t"][steps] for r in mine]
                k = [r["errors"][config]["karras"][steps] for r in mine]
                ratios = [b / a for a, b in zip(t, k)]
                wins = sum(b < a for a, b in zip(t, k))
                lines.append(
                    f"| {process} | {config} | {steps} | {statistics.median(t):.3g} | {statistics.median(k):.3g} | "
                    f"{floor:.2g} | {statistics.median(ratios):.2g}, {max(ratios):.2g} | {wins}/{len(mine)} |"
                )
    verdicts = ", ".join(f"{p}: {'karras' if karras_wins(results, p) else 't'}" for p in PROCESSES)
    return "\n".join(lines) + f"\n\nThe rule's default grid: {verdicts}."


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=tuple(SETS), default="design", help="problem set (see the docstring)")
    ap.add_argument("--n", type=int, default=4000, help="samples per problem")
    ap.add_argument("--out", default="benchmarks/results/pc_grids")
    ap.add_argument("--report", action="store_true", help="only rebuild the table (and OUT/SET.md) from OUT/SET.json")
    args = ap.parse_args(argv)
    stem = Path(args.out) / args.set
    if args.report:
        text = table(read_json(stem.with_suffix(".json"))["results"])
        print(text)
        write_text(stem.with_suffix(".md"), text + "\n")
        return
    torch.set_num_threads(1)
    results = []
    for name, law, seed in problem_set(*SETS[args.set]):
        for process, make in PROCESSES.items():
            with torch.no_grad():
                results.append({"problem": name, "process": process, "dim": law.dim, "errors": errors(law, make(), args.n, seed)})
            print(f"{name} {process} done", flush=True)
    text = table(results)
    print(text)
    write_json(stem.with_suffix(".json"), {"set": args.set, "n": args.n, "results": results})
    write_text(stem.with_suffix(".md"), text + "\n")


if __name__ == "__main__":
    main()
