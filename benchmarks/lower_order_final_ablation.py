r"""Which ``lower_order_final`` rule: candidate rules for the last steps of the multistep methods, ODE and SDE, at 5-20 NFE.

The ODE and SDE multistep methods take the points of each step's predictor from one function,
``scoreflow.solvers.multistep.final_points(points, i, steps, corrected=...)``; each candidate rule here is another
function of the same arguments, patched in for its solves:

- ``t10`` (scoreflow's): below 10 steps the last steps take at most ``steps - i`` points (a predictor-corrector: its
  last step one point); ``t15``, ``t20``: the same below 15 (diffusers' threshold) and 20 steps; ``off``: never;
- ``keep2_t10``, ``keep2_t15``: as ``t10``/``t15`` for predictors of 3 or more points, but two-point predictors keep
  their second-order last step (as k-diffusion's ``dpmpp_2m_sde`` does);
- ``pc2_t10``: as ``t10``, but a predictor-corrector's last step keeps two points;
- ``last2``: whatever the step count, the last step takes at most two points (which keeps a third-order method's order).

Stochastic samplers (``--kind sde``): bench_stochastic.py's cases, metric and references (the paired sliced W2 against a
256-step solve of the sampler's own limit SDE on the same Brownian path, from the same x_T), for ``dpmpp_2m_sde``,
``dpmpp_3m_sde``, ``dpmpp_2m_sde_pc``, ``dpmpp_3m_sde_pc`` at eta = 1 and 0.1 (the pc ones: 3m only at 0.1), ``er_sde`` and
``sa_solver`` (tau = 1 throughout).  ODE (``--kind ode``): ``dpmpp_2m``, ``dpmpp_3m``, ``dpmpp_2m_pc``, ``dpmpp_3m_pc``,
``dpmpp_4m_pc``; the RMS path error against scipy's DOP853 at 1e-10 from the same prior draws (float64).  Solves whose
plans coincide under two rules are run once.  The table: per method and step count, the median and the largest ratio
rule / ``t10`` over (case, grid); then the best over methods and grids per case (each library's "best" in
bench_stochastic.py), median and largest ratio over the cases; in between the same pooled over the two-point methods
and over the others.

    # choosing (random20-23), then held out (random60-63 and the named problems), as docs/choosing-a-sampler.md reports:
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lower_order_final_ablation.py --kind sde --random 4 --random-start 20 \
        --n 4000 --out /tmp/lof_sde_choose.jsonl
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lower_order_final_ablation.py --kind sde --random 4 --random-start 60 \
        --problems gaussian16d mixture16d ring2d_sharp --rules t10 off t15 --n 4000 --out /tmp/lof_sde_heldout.jsonl
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lower_order_final_ablation.py --kind ode --random 4 --random-start 20 \
        --budgets 5 6 7 8 9 10 12 14 15 17 20 --out /tmp/lof_ode_choose.jsonl
    python benchmarks/lower_order_final_ablation.py --table /tmp/lof_sde_choose.jsonl        # the table of a run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

import scoreflow as sf
from scoreflow.metrics import rms_error
from scoreflow.solvers import base, multistep, multistep_sde
from scoreflow.testing import make_sde

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stochastic import REFERENCE_GRID, Scorer, make_problem_law  # noqa: E402
from peers import reference_solve  # noqa: E402
from stochastic_peers import reference_sampler  # noqa: E402


def threshold(below: int, *, keep_two: bool = False, corrected_points: int = 1):
    """The rule of ``final_points`` with another step count (and two-point predictors or a corrected last step kept)."""

    def rule(points: int, i: int, steps: int, *, corrected: bool = False) -> int:
        if steps >= below or (keep_two and points <= 2):
            return points
        if corrected:
            return min(points, corrected_points) if i == steps - 1 else points
        return min(points, steps - i)

    return rule


RULES = {
    "t10": threshold(10),
    "t15": threshold(15),
    "t20": threshold(20),
    "off": lambda points, i, steps, *, corrected=False: points,
    "keep2_t10": threshold(10, keep_two=True),
    "keep2_t15": threshold(15, keep_two=True),
    "pc2_t10": threshold(10, corrected_points=2),
    "last2": lambda points, i, steps, *, corrected=False: min(points, 2) if i == steps - 1 else points,
}
SDE_SAMPLERS = [("dpmpp_2m_sde", {"eta": 1.0}), ("dpmpp_3m_sde", {"eta": 1.0}), ("dpmpp_2m_sde_pc", {"eta": 1.0}),
                ("dpmpp_3m_sde_pc", {"eta": 1.0}), ("dpmpp_2m_sde", {"eta": 0.1}), ("dpmpp_3m_sde", {"eta": 0.1}),
                ("dpmpp_3m_sde_pc", {"eta": 0.1}), ("er_sde", {}), ("sa_solver", {"tau_tmin": 0.0, "tau_tmax": 1.0})]
ODE_METHODS = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_pc", "dpmpp_3m_pc", "dpmpp_4m_pc")
LIMITS = {"er_sde": ("er_sde", "er5")}
TWO_POINT = {"dpmpp_2m_sde", "dpmpp_2m_sde_pc", "dpmpp_2m", "dpmpp_2m_pc"}


@contextmanager
def rule_in_force(name: str):
    """Every multistep solver's ``final_points`` replaced by the rule ``name`` (and no plan cached under another rule)."""
    with mock.patch.object(multistep, "final_points", RULES[name]), mock.patch.object(multistep_sde, "final_points", RULES[name]):
        base._PLANS.clear()
        yield
    base._PLANS.clear()


def plan_terms(kind: str, method: str, options: dict, sde, grid) -> tuple:
    """The points of each step's predictor in the plan of ``method`` on ``grid`` (under the rule in force)."""
    solver = sf.get_method(kind, method).build("sample_" + kind, options)
    return tuple(solver.plan(base.Nodes(sde, grid), len(grid) - 1)["terms"])


def run_case(kind, problem, sde_name, n, budgets, grids, rules):
    """Rows (method, options, grid, steps, rule, error) of one problem and SDE: each distinct plan solved once."""
    law, sde = make_problem_law(problem), make_sde(sde_name)
    score = law.score(sde)
    if kind == "sde":
        x_T = law.marginal(sde, sde.T).sample(n, generator=torch.Generator().manual_seed(0))
        scorer = Scorer(law.marginal(sde, sde.t_min), n, 0, 128)
        ref_ts = sf.time_grid(sde, 256, REFERENCE_GRID)
        bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(77), step_size=float(ref_ts[0] - ref_ts[1]))
        references = {}
        with rule_in_force("t10"):
            for method, options in SDE_SAMPLERS:
                limit = LIMITS.get(method, ("eta", options.get("eta", 1.0)))
                if limit not in references:
                    ref_method, ref_options = reference_sampler(limit)
                    references[limit] = sf.sample_sde(score, sde, x_T, method=ref_method, steps=256, schedule=REFERENCE_GRID, bm=bm,
                                                      options=ref_options).samples

        def solve(method, options, steps, grid):
            x = sf.sample_sde(score, sde, x_T, method=method, steps=steps, schedule=grid, bm=bm, options=options).samples
            return math.sqrt(scorer(x, references[LIMITS.get(method, ("eta", options.get("eta", 1.0)))])["paired_sq"])

        samplers = SDE_SAMPLERS
    else:
        x_T = sde.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        exact, _ = reference_solve(law, sde, x_T)

        def solve(method, options, steps, grid):
            return rms_error(sf.sample_ode(score, sde, x_T, method=method, steps=steps, schedule=grid).samples, exact)

        samplers = [(m, {}) for m in ODE_METHODS]
    rows = []
    with torch.no_grad():
        for method, options in samplers:
            for grid in grids:
                for steps in budgets:
                    times, errors = sf.time_grid(sde, steps, grid), {}
                    for name in rules:
                        with rule_in_force(name):
                            terms = plan_terms(kind, method, options, sde, times)
                            if terms not in errors:
                                errors[terms] = solve(method, options, steps, grid)
                        rows.append(dict(problem=problem, sde=sde_name, method=method, options=options, grid=grid, steps=steps,
                                         rule=name, terms=list(terms), error=errors[terms]))
    return rows


def table(rows, base_rule="t10"):
    """The lines of the summary table (module docstring)."""
    val = {}
    for r in rows:
        label = r["method"] + (f" eta={r['options']['eta']:g}" if "eta" in r["options"] else "")
        val[(r["problem"], r["sde"], label, r["grid"], r["steps"], r["rule"])] = r["error"]
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    cases = sorted({k[:2] for k in val})
    grids, steps_all = sorted({k[3] for k in val}), sorted({k[4] for k in val})

    head = "| steps | " + " | ".join(rules) + " |"
    sep = "|---" * (len(rules) + 1) + "|"
    lines = [f"ratio rule / {base_rule}: median [largest] over {len(cases)} cases x {len(grids)} grids"]
    for label in sorted({k[2] for k in val}):
        lines += ["", f"**{label}**", "", head, sep]
        for s in steps_all:
            cells = []
            for rule in rules:
                rs = [val[(p, sd, label, g, s, rule)] / val[(p, sd, label, g, s, base_rule)] for p, sd in cases for g in grids
                      if (p, sd, label, g, s, rule) in val]
                cells.append(f"{statistics.median(rs):.2f} [{max(rs):.2f}]" if rs else "")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    for title, family in (("two-point methods", TWO_POINT), ("methods of three or more points", None)):
        labels = [lb for lb in {k[2] for k in val} if (lb.split()[0] in TWO_POINT) == (family is not None)]
        lines += ["", f"**{title}** (pooled: {', '.join(sorted(labels))})", "", head, sep]
        for s in steps_all:
            cells = []
            for rule in rules:
                rs = [val[(p, sd, lb, g, s, rule)] / val[(p, sd, lb, g, s, base_rule)] for p, sd in cases for g in grids
                      for lb in labels if (p, sd, lb, g, s, rule) in val]
                cells.append(f"{statistics.median(rs):.2f} [{max(rs):.2f}]" if rs else "")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", f"best over methods and grids per case, ratio rule / {base_rule}: median [largest] over {len(cases)} cases", "", head, sep]
    for s in steps_all:
        cells = []
        best = lambda case, rule: min(v for k, v in val.items() if k[:2] == case and k[4] == s and k[5] == rule)  # noqa: E731
        for rule in rules:
            rs = [best(case, rule) / best(case, base_rule) for case in cases]
            cells.append(f"{statistics.median(rs):.2f} [{max(rs):.2f}]")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("sde", "ode"), default="sde")
    ap.add_argument("--problems", nargs="*", default=[])
    ap.add_argument("--random", type=int, default=0, help="also this many random mixtures (randomK, K from --random-start)")
    ap.add_argument("--random-start", type=int, default=20)
    ap.add_argument("--sdes", nargs="+", default=["vp", "ve"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[5, 7, 9, 10, 12, 15, 20])
    ap.add_argument("--grids", nargs="+", default=None, help="default: log_snr karras (sde), and log_snr_capped too (ode)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--n", type=int, default=None, help="samples (sde, default 4000) or prior draws (ode, default 300)")
    ap.add_argument("--out", default="/tmp/lower_order_final.jsonl", help="rows, one JSON list per case, appended")
    ap.add_argument("--table", default=None, help="compute nothing: print the table of this file's rows")
    args = ap.parse_args(argv)
    if args.table:
        print("\n".join(table([r for line in open(args.table) for r in json.loads(line)])))
        return
    torch.set_num_threads(1)
    grids = args.grids or (["log_snr", "karras"] + (["log_snr_capped"] if args.kind == "ode" else []))
    n = args.n or (4000 if args.kind == "sde" else 300)
    rules = list(dict.fromkeys(["t10", *args.rules]))
    problems = args.problems + [f"random{args.random_start + i}" for i in range(args.random)]
    rows = []
    with open(args.out, "a") as out:
        for problem in problems:
            for sde_name in args.sdes:
                t0 = time.perf_counter()
                case = run_case(args.kind, problem, sde_name, n, args.budgets, grids, rules)
                out.write(json.dumps(case) + "\n")
                out.flush()
                rows += case
                print(f"{problem}-{sde_name}: {len(case)} rows, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
