"""The default grid of torchdiffeq's fixed-step methods (and torchsde's) under each forward process.

``sf.sample_ode(score, sde, x_T, method=M, steps=N)`` with one of torchdiffeq's fixed-step methods (euler, midpoint,
heun, heun3, rk4) in ``time="t"`` places its N steps by the registry's default grid (``Method.schedule_for``); before
this benchmark that was uniform in t on every process.  Per process (VP, sub-VP, VE, EDM, rectified flow), problem and
budget N (5, 10, 20, 40 steps): the same ``--n`` prior draws x_T for every grid, float64, path error = RMS of
:math:`x_{t_{min}} - x_{ref}` against ``scoreflow.testing.reference_flow_map`` (scipy DOP853 at 1e-10 on the exact
velocity; closed form for a Gaussian).  Candidate grids are ``sf.time_grid``'s: ``t``, ``log_snr``,
``log_snr_capped``, ``karras`` (rho = 7) and ``noise_fraction`` (p = 5/3); ``log_snr`` and ``karras`` are undefined
where a path reaches pure noise (rectified flow) and are skipped there.  The table gives, per process and budget, the
default grid and its RMS error (median, worst over problems and methods), then the median and the worst over problems
and the five methods of the ratio candidate error / uniform-t error (the first ratio column: the default now over
the old default).

``--part sde``: torchsde's Euler-Maruyama and stochastic Heun on the reverse SDE (``sf.sample_sde``'s methods), on
the same grids, run interval by interval (torchsde itself steps uniformly between two output times).  Error = the
Gaussian W2 distance between the moments (mean, covariance) of ``--n-sde`` samples and the exact moments of the
law at ``t_min``; the floor column is the same distance for as many exact draws of that law.  Rectified flow is left
out (its reverse SDE is infinite at T, where ``sample_sde`` refuses it).  No default was changed on it: torchsde's
methods step uniformly in t, and ``sample_sde`` takes no grid for them.

Problem sets: ``design`` (``peers.random_mixture`` seeds 7500-7503 and ring2d_sharp), looked at while choosing the
rule; ``held_out`` (seeds 7600-7609, mixture16d, gaussian16d), run once after it was fixed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_fixed_step_grids.py --set design
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_fixed_step_grids.py --set held_out  # the docs' table
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_fixed_step_grids.py --set design --part sde
    PYTHONPATH=src python benchmarks/bench_fixed_step_grids.py --set held_out --report  # the table from the JSON
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
from peers import grid_ratios, grid_or_none, grid_path_errors, problem_set, read_json, write_json, write_text  # benchmarks/ is on the path when this script runs

import scoreflow as sf
from scoreflow.metrics import gaussian_w2

#: The methods of each part: torchdiffeq's fixed-step ODE methods, two of torchsde's SDE methods.
METHODS = {"ode": ("euler", "midpoint", "heun", "heun3", "rk4"), "sde": ("euler", "heun")}
BUDGETS = {"ode": (5, 10, 20, 40), "sde": (10, 20, 40)}
GRIDS = ("t", "log_snr", "log_snr_capped", "karras", "noise_fraction")
PROCESSES = {"vp": sf.VPSDE, "subvp": sf.SubVPSDE, "ve": sf.VESDE, "edm": sf.EDMSDE, "rf": sf.RectifiedFlow}
#: The processes of each part: the reverse SDE cannot start where a path reaches pure noise (``sample_sde`` refuses it).
PARTS = {"ode": tuple(PROCESSES), "sde": tuple(p for p, make in PROCESSES.items() if not make().pure_noise_at_T)}
SETS = {
    "design": ([7500, 7501, 7502, 7503], ["ring2d_sharp"]),
    "held_out": (list(range(7600, 7610)), ["mixture16d", "gaussian16d"]),
}


def problems(name: str):
    """(label, law, seed of the prior draws) of a problem set."""
    return problem_set(*SETS[name])


def path_errors(law, sde, x_T: torch.Tensor) -> dict:
    """RMS path error of each ODE method on each grid and budget, ``{method: {grid: {steps: error}}}`` (inf: not finite)."""
    return grid_path_errors(law, sde, x_T, METHODS["ode"], {g: (g, {}) for g in GRIDS}, BUDGETS["ode"])


def moment_distance(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """The Gaussian W2 distance between the sample moments of ``x`` and the moments ``mean``, ``cov``."""
    if not bool(torch.isfinite(x).all()):
        return math.inf
    return gaussian_w2(x.mean(0), torch.cov(x.T).reshape(cov.shape), mean, cov)


def reverse_sde(model, sde, method: str, x_T: torch.Tensor, times: torch.Tensor, seed: int) -> torch.Tensor:
    """torchsde's ``method`` on the reverse SDE through the grid ``times`` (``sample_sde`` runs a grid that is not
    uniform one ``sdeint`` call per step)."""
    return sf.sample_sde(model, sde, x_T, method=method, schedule=times, generator=torch.Generator().manual_seed(seed)).samples


def law_errors(law, sde, n: int, seed: int) -> dict:
    """Moment distance of each SDE method on each grid and budget, and the floor (exact draws), as in path_errors."""
    at = law.marginal(sde, sde.t_min)
    mean, cov = at.mean, at.covariance
    draws = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, law.dim), generator=draws, dtype=torch.float64)
    out = {"floor": moment_distance(at.sample(n, generator=draws), mean, cov)}
    model = law.score(sde)
    for method in METHODS["sde"]:
        out[method] = {}
        for label in GRIDS:
            row = {}
            for steps in BUDGETS["sde"]:
                times = grid_or_none(sde, steps, label)
                if times is not None:
                    row[str(steps)] = moment_distance(reverse_sde(model, sde, method, x_T, times, seed + steps), mean, cov)
            if row:
                out[method][label] = row
    return out


def default_grid(process: str, part: str) -> str:
    """The grid the registry picks for the part's first method on ``process`` (``Method.schedule_for``)."""
    return sf.get_method(part, METHODS[part][0]).schedule_for(PROCESSES[process]())


def ratios(results: list[dict], process: str, label: str, base: str, steps: int) -> list[float]:
    """Error on grid ``label`` / error on grid ``base``, over the problems and methods."""
    return grid_ratios(results, process, label, base, steps)


def table(results: list[dict], part: str = "ode") -> str:
    """Per process and budget: the default grid's error (median, worst over problems and methods), then the median and
    worst ratio of each grid's error to the uniform t grid's (the default grid first); for the SDE part the floor."""
    labels = [g for g in GRIDS if g != "t"]
    head = ["default now", "its error: median, worst", "default / t: median, worst"]
    head += ["floor: median, worst"] if part == "sde" else []
    lines = ["| process | N | " + " | ".join(head) + " | " + " | ".join(f"{g} / t" for g in labels) + " |",
             "|" + " --- |" * (len(head) + len(labels) + 2)]
    for process in PARTS[part]:
        chosen = default_grid(process, part)
        mine = [r for r in results if r["process"] == process]
        for steps in BUDGETS[part]:
            errors = [e[chosen][str(steps)] for r in mine for e in r["errors"].values() if isinstance(e, dict)]
            cells = [f"`{chosen}`", f"{statistics.median(errors):.2g}, {max(errors):.2g}"]
            for i, label in enumerate([chosen] + labels):
                values = ratios(results, process, label, "t", steps)
                cells.append(f"{statistics.median(values):.2g}, {max(values):.2g}" if values else "-")
                if part == "sde" and i == 0:  # the floor after the default's column
                    floors = [r["errors"]["floor"] for r in mine]
                    cells.append(f"{statistics.median(floors):.2g}, {max(floors):.2g}")
            lines.append(f"| {process} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=tuple(SETS), default="design", help="problem set (see the docstring)")
    ap.add_argument("--part", choices=tuple(METHODS), default="ode", help="torchdiffeq's ODE methods or torchsde's")
    ap.add_argument("--n", type=int, default=200, help="prior draws per problem (ODE part)")
    ap.add_argument("--n-sde", type=int, default=4000, help="samples per problem (SDE part)")
    ap.add_argument("--out", default="benchmarks/results/fixed_step_grids")
    ap.add_argument("--report", action="store_true", help="only rebuild the table from OUT/SET[_sde].json")
    args = ap.parse_args(argv)
    stem = Path(args.out) / (args.set + ("_sde" if args.part == "sde" else ""))
    if args.report:
        print(table(read_json(stem.with_suffix(".json"))["results"], args.part))
        return
    torch.set_num_threads(1)
    results = []
    for name, law, seed in problems(args.set):
        for process in PARTS[args.part]:
            sde = PROCESSES[process]()
            with torch.no_grad():
                if args.part == "sde":
                    errors = law_errors(law, sde, args.n_sde, seed)
                else:
                    draws = torch.Generator().manual_seed(seed)
                    x_T = sde.prior_sample((args.n, law.dim), generator=draws, dtype=torch.float64)
                    errors = path_errors(law, sde, x_T)
            results.append({"problem": name, "process": process, "dim": law.dim, "errors": errors})
            print(f"{name} {process} done", flush=True)
    text = table(results, args.part)
    print(text)
    n = args.n_sde if args.part == "sde" else args.n
    write_json(stem.with_suffix(".json"), {"set": args.set, "part": args.part, "n": n, "results": results})
    write_text(stem.with_suffix(".md"), text + "\n")


if __name__ == "__main__":
    main()
