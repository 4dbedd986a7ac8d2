"""The grid of the velocity predictor-correctors under each forward process: path error on every candidate grid.

``velocity_2m_pc`` and ``velocity_3m_pc`` fit Adams polynomials in t to the probability-flow velocity
:math:`\\dot\\alpha\\hat x_0 + \\dot\\sigma\\hat\\varepsilon`, so where their steps fall in t is the whole question of
their grid.  Per process (rectified flow, the cosine path :math:`\\alpha = \\cos(\\pi t/2)`, VP, sub-VP, VE, EDM),
problem and budget N (5, 10, 15, 20, 30 steps): the same ``--n`` prior draws x_T for every grid, float64, path error =
RMS of :math:`x_{t_{min}} - x_{ref}` against ``scoreflow.testing.reference_flow_map`` (scipy DOP853 at 1e-10 on the
exact velocity; closed form for a Gaussian).  Candidate grids are ``sf.time_grid``'s: ``t``, ``log_snr``,
``log_snr_capped``, ``karras`` (rho = 7), ``shift`` with s = 0.5, 0.7, 3 and ``noise_fraction`` with p = 5/3 (its
default) and p = 1 (``log_snr`` and ``karras`` are undefined where a path reaches pure noise,
:math:`\\lambda(T) = -\\infty`, and are skipped there).  The table gives, per process and budget, the default grid
(``Method.schedule_for``) and its RMS error, then the median and the worst over problems (and both methods) of the
ratio candidate error / baseline error; the baseline is the uniform t grid (``--baseline t``, the default before the
per-process rule, first for the default grid) or the default grid itself (``--baseline default``).

Problem sets: ``design`` (``peers.random_mixture`` seeds 7100-7103 and ring2d_sharp), looked at while choosing the
rule; ``held_out`` (seeds 7200-7209, mixture16d, gaussian16d), run once after it was fixed; ``held_out_2`` (seeds
7300-7311, ring2d, gaussian2d), run once to test ``noise_fraction`` as one default for every process (it was not: on VE
5-12 times the rule's error in the median at 20 and 30 steps with either power; see docs/choosing-a-sampler.md).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_velocity_grids.py --set design
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_velocity_grids.py --set held_out  # the docs' first table
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_velocity_grids.py --set held_out_2 --baseline default
    PYTHONPATH=src python benchmarks/bench_velocity_grids.py --set held_out_2 --baseline default --report  # from JSON
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
from peers import grid_ratios, grid_path_errors, problem_set, read_json, write_json, write_text  # benchmarks/ is on the path when this script runs

import scoreflow as sf

METHODS = ("velocity_2m_pc", "velocity_3m_pc")
BUDGETS = (5, 10, 15, 20, 30)
#: label -> (schedule, options of sf.time_grid)
GRIDS = {
    "t": ("t", {}),
    "log_snr": ("log_snr", {}),
    "log_snr_capped": ("log_snr_capped", {}),
    "karras": ("karras", {}),
    "shift 0.5": ("shift", {"shift": 0.5}),
    "shift 0.7": ("shift", {"shift": 0.7}),
    "shift 3": ("shift", {"shift": 3.0}),
    "noise_fraction": ("noise_fraction", {}),
    "noise_fraction p=1": ("noise_fraction", {"power": 1.0}),
}
#: What the table divides by: the uniform t grid, or the grid the registry picks on each process.
BASELINES = ("t", "default")
PROCESSES = {
    "rf": sf.RectifiedFlow,
    "cosine": lambda: sf.AffinePath(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t)),
    "vp": sf.VPSDE,
    "subvp": sf.SubVPSDE,
    "ve": sf.VESDE,
    "edm": sf.EDMSDE,
}
SETS = {
    "design": ([7100, 7101, 7102, 7103], ["ring2d_sharp"]),
    "held_out": (list(range(7200, 7210)), ["mixture16d", "gaussian16d"]),
    "held_out_2": (list(range(7300, 7312)), ["ring2d", "gaussian2d"]),
}


def problems(name: str):
    """(label, law, seed of the prior draws) of a problem set."""
    return problem_set(*SETS[name])


def path_errors(law, sde, x_T: torch.Tensor) -> dict:
    """RMS path error of each method on each grid and budget, ``{method: {grid: {steps: error}}}`` (inf: not finite)."""
    return grid_path_errors(law, sde, x_T, METHODS, GRIDS, BUDGETS)


def default_grid(process: str) -> str:
    """The grid the registry picks for the velocity methods on ``process`` (``Method.schedule_for``)."""
    return sf.get_method("ode", METHODS[0]).schedule_for(PROCESSES[process]())


def ratios(results: list[dict], process: str, label: str, base: str, steps: int) -> list[float]:
    """Error on grid ``label`` / error on grid ``base``, over the problems and methods."""
    return grid_ratios(results, process, label, base, steps)


def table(results: list[dict], baseline: str = "t") -> str:
    """Per process and budget: the default grid's RMS error (median, worst over problems and both methods), then the
    median and worst ratio of each grid's error to the baseline's: uniform t (the default grid first), or the default."""
    labels = [g for g in GRIDS if g != "t"] if baseline == "t" else list(GRIDS)
    head = ["default now", "its RMS error: median, worst"] + (["default / t: median, worst"] if baseline == "t" else [])
    lines = ["| process | N | " + " | ".join(head) + " | " + " | ".join(f"{g} / {baseline}" for g in labels) + " |",
             "|" + " --- |" * (len(head) + len(labels) + 2)]
    for process in PROCESSES:
        chosen = default_grid(process)
        base = chosen if baseline == "default" else "t"
        shown = [chosen] + labels if baseline == "t" else labels
        for steps in BUDGETS:
            errors = [e[chosen][str(steps)] for r in results if r["process"] == process for e in r["errors"].values()]
            cells = [f"`{chosen}`", f"{statistics.median(errors):.2g}, {max(errors):.2g}"]
            for label in shown:
                values = ratios(results, process, label, base, steps)
                cells.append(f"{statistics.median(values):.2g}, {max(values):.2g}" if values else "-")
            lines.append(f"| {process} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=tuple(SETS), default="design", help="problem set (see the docstring)")
    ap.add_argument("--baseline", choices=BASELINES, default="t",
                    help="divide by the uniform t grid's error, or by the default grid's (Method.schedule_for)")
    ap.add_argument("--n", type=int, default=200, help="prior draws per problem")
    ap.add_argument("--out", default="benchmarks/results/velocity_grids")
    ap.add_argument("--report", action="store_true", help="only rebuild the table from OUT/SET.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(table(read_json(out / f"{args.set}.json")["results"], args.baseline))
        return
    torch.set_num_threads(1)
    results = []
    for name, law, seed in problems(args.set):
        for process, make in PROCESSES.items():
            sde = make()
            draws = torch.Generator().manual_seed(seed)
            x_T = sde.prior_sample((args.n, law.dim), generator=draws, dtype=torch.float64)
            with torch.no_grad():
                errors = path_errors(law, sde, x_T)
            results.append({"problem": name, "process": process, "dim": law.dim, "errors": errors})
            print(f"{name} {process} done", flush=True)
    text = table(results, args.baseline)
    print(text)
    write_json(out / f"{args.set}.json", {"set": args.set, "n": args.n, "results": results})
    write_text(out / f"{args.set}.md", text + "\n")


if __name__ == "__main__":
    main()
