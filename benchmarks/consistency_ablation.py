r"""Where a distilled consistency model's error comes from: CD variants beside a network fitted to the exact answer.

On one problem (the 2-D ring under VP by default) and one seed, each variant trains the same MLP consistency model
(``examples/consistency_ring.py``'s ``ConsistencyMLP``, Adam, cosine learning rate) for the same number of
iterations of batch 512, and is measured by

- the RMS distance per coordinate of the learned f to the exact consistency function along exact trajectories
  (``bench_consistency.trajectory_error``), at T and at every ninth of the log-SNR range;
- sliced W2 to the exact law of its samples in 1, 2 and 4 steps (5000 samples, 20000 exact ones).

The variant ``supervised`` is not distillation: it regresses f directly onto the exact consistency function,
:math:`E\|f(x_{t_i}, t_i) - f^*(x_{t_i}, t_i)\|^2` over the same grid times, on pairs taken from exact trajectories
(20000 prior draws carried by a DOP853 solve of the exact flow at 1e-8).  It is the best this network, its
parameterisation and this optimiser reach in the budget: CD above it is CD's own error.

    python benchmarks/consistency_ablation.py --variant baseline                 # one variant (see VARIANTS)
    python benchmarks/consistency_ablation.py --variant supervised --iters 2000
    python benchmarks/consistency_ablation.py --variant heun8 --renoise          # and multistep re-noising levels
    python benchmarks/consistency_ablation.py --table OUT                        # the table of OUT/*.json

The table in docs/consistency.md (2000 iterations, ring2d, seed 0, variants two at a time on a loaded 2-core machine):

    for v in supervised baseline exact_teacher no_ema unshared ict heun12 heun8 dpm2_8_shared dpm2_8 dpm3_4 exact4_shared exact4 rk4_8; do
        python benchmarks/consistency_ablation.py --variant $v --out /tmp/cm_ablation; done
    python benchmarks/consistency_ablation.py --variant baseline --iters 8000 --out /tmp/cm_ablation
    python benchmarks/consistency_ablation.py --table /tmp/cm_ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import scipy.integrate
import torch

import scoreflow as sf
from scoreflow.testing import make_law

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from bench_consistency import SlicedW2, random_problem, trajectory_error  # noqa: E402
from consistency_ring import fresh_model  # noqa: E402
from peers import read_json, write_json, write_text  # noqa: E402

#: Each variant changes the CD recipe of the example before this change (Heun teacher on an 18-step Karras grid,
#: EMA target 0.95, squared L2, uniform weighting, one grid step per batch) in the fields it names.
BASELINE = {"solver": "heun", "steps": 18, "ema": 0.95, "shared_step": True, "distance": "l2", "weighting": "uniform"}
VARIANTS = {
    "supervised": {"supervised": True},
    "baseline": {},
    "exact_teacher": {"solver": "dopri5"},
    "no_ema": {"ema": 0.0},
    "unshared": {"shared_step": False},
    "ict": {"shared_step": False, "distance": "pseudo_huber", "weighting": "inverse_step"},
    "heun12": {"shared_step": False, "steps": 12},
    "heun8": {"shared_step": False, "steps": 8},
    "dpm2_8_shared": {"steps": 8, "solver": "dpm_solver_2"},
    "dpm2_8": {"shared_step": False, "steps": 8, "solver": "dpm_solver_2"},
    "dpm3_4": {"shared_step": False, "steps": 4, "solver": "dpm_solver_3"},
    "exact4_shared": {"steps": 4, "solver": "dopri5"},
    "exact4": {"shared_step": False, "steps": 4, "solver": "dopri5"},
    "rk4_8": {"shared_step": False, "steps": 8, "solver": "rk4"},  # the example's recipe
}


def trajectories(law64, sde, n: int, times: torch.Tensor, seed: int) -> torch.Tensor:
    """States at ``times`` (decreasing from T) on the exact flow trajectories of ``n`` prior draws: ``(len(times), n, D)``."""
    x_T = sde.prior_sample((n, law64.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    velocity = law64.velocity(sde).predict

    def rhs(t: float, y):
        with torch.no_grad():
            return velocity(torch.from_numpy(y).reshape(n, -1), torch.full((n,), t, dtype=torch.float64)).reshape(-1).numpy()

    ts = times.tolist()
    sol = scipy.integrate.solve_ivp(rhs, (ts[0], ts[-1]), x_T.reshape(-1).numpy(), method="DOP853", rtol=1e-8, atol=1e-8, t_eval=ts)
    return torch.from_numpy(sol.y.T.copy()).reshape(len(ts), n, -1)


def train(law64, sde, recipe: dict, *, iters: int, seed: int, batch: int = 512, lr: float = 1e-3) -> sf.consistency.ConsistencyModel:
    """Train the example's MLP consistency model by ``recipe`` (CD, or supervised on the exact function)."""
    law = law64.to(torch.float32)
    f, f_target, opt, decay, g = fresh_model(law, sde, iters=iters, lr=lr, seed=seed)
    grid = sf.time_grid(sde, recipe["steps"], "karras")
    if recipe.get("supervised"):
        states = trajectories(law64, sde, 20000, grid, 1234 + seed).float()
    score = law.score(sde)
    for _ in range(iters):
        if recipe.get("supervised"):
            i = torch.randint(recipe["steps"], (batch,), generator=g)
            j = torch.randint(states.shape[1], (batch,), generator=g)
            loss = (f(states[i, j], grid[i].float()) - states[-1, j]).pow(2).sum(1).mean()
        else:
            loss = sf.losses.consistency_distillation_loss(
                f, f_target, score, sde, law.sample(batch, generator=g), solver=recipe["solver"], schedule=grid.float(),
                shared_step=recipe["shared_step"], distance=recipe["distance"], weighting=recipe["weighting"], generator=g,
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
        if not recipe.get("supervised"):
            sf.consistency.ema_update(f_target, f, recipe["ema"])
    return f.eval().requires_grad_(False)


def measure(law64, sde, f, *, n: int = 5000) -> dict:
    """SW2 in 1, 2, 4 steps (the library's default re-noising times) and f's error along exact trajectories."""
    g = torch.Generator().manual_seed(100)
    x_T = sde.prior_sample((n, law64.dim), generator=g, dtype=torch.float64)
    exact = law64.marginal(sde, sde.t_min)
    sw2 = SlicedW2(exact.sample(4 * n, generator=g))
    floor = sw2(exact.sample(n, generator=g))
    with torch.no_grad():
        cm = {k: sw2(sf.sample_consistency(f, sde, x_T.float(), steps=k, generator=torch.Generator().manual_seed(101)).samples) for k in (1, 2, 4)}
        err = trajectory_error(law64, sde, f, x_T[:1000])
    return {"sw2": cm, "floor": floor, "f_error": [(e["sigma_over_alpha"], e["rms"]) for e in err]}


#: Re-noising levels tried by ``--renoise``, as multiples of sigma_d of sigma/alpha (one list per sampler).
RENOISE_LEVELS = ([0.05], [0.1], [0.15], [0.25], [0.1, 0.03], [0.15, 0.05], [0.3, 0.1], [0.5, 0.15, 0.05], [0.3, 0.1, 0.03],
                  [0.15, 0.07, 0.03], [1, 0.3, 0.1])


def renoise_study(law64, sde, f, *, n: int = 5000) -> list[dict]:
    """SW2 of multistep samples re-noised to ``sigma/alpha = c sigma_d`` for each list of c in RENOISE_LEVELS
    (two re-noising seeds each), from the prior draws of :func:`measure`."""
    g = torch.Generator().manual_seed(100)
    x_T = sde.prior_sample((n, law64.dim), generator=g, dtype=torch.float64)
    sw2 = SlicedW2(law64.marginal(sde, sde.t_min).sample(4 * n, generator=g))
    rows = []
    with torch.no_grad():
        for levels in RENOISE_LEVELS:
            times = [float(sde.t_from_log_snr(-torch.log(torch.tensor(c * f.sigma_data, dtype=torch.float64)))) for c in levels]
            runs = [sw2(sf.sample_consistency(f, sde, x_T.float(), times=times, generator=torch.Generator().manual_seed(s)).samples)
                    for s in (101, 102)]
            rows.append({"levels": levels, "sw2": runs})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def minimiser_error(law64, sde, recipe: dict, *, n: int = 1000) -> float | None:
    """RMS per coordinate at T of the CD minimiser against the exact f: the teacher's own solve through the grid
    (a one-step teacher); None for the supervised fit and an adaptive teacher (whose minimiser is f* to its tolerance)."""
    if recipe.get("supervised") or sf.get_method("ode", recipe["solver"]).adaptive:
        return None
    x_T = sde.prior_sample((n, law64.dim), generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    end = law64.flow_map(sde, x_T, sde.T, sde.t_min, rtol=1e-9, atol=1e-9)
    solve = sf.sample_ode(law64.score(sde), sde, x_T, method=recipe["solver"], schedule=sf.time_grid(sde, recipe["steps"], "karras"))
    return float((solve.samples - end).pow(2).mean().sqrt())


def table(rows: list[dict]) -> list[str]:
    levels = [s for s, _ in rows[0]["f_error"][:-1]]
    head = ["variant", "iterations", "CD minimiser's error at T", "SW2 1 step", "2 steps", "4 steps",
            *(f"f error at σ/α={s:.3g}" for s in levels)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        lowest = "-" if r["minimiser"] is None else f"{r['minimiser']:.3f}"
        cells = [r["variant"], str(r["iters"]), lowest, *(f"{r['sw2'][k]:.4f}" for k in ("1", "2", "4")), *(f"{e:.3f}" for _, e in r["f_error"][:-1])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="baseline")
    ap.add_argument("--problem", default="ring2d", help="'ring2d' or the seed of a random problem of bench_consistency")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/consistency_ablation")
    ap.add_argument("--renoise", action="store_true", help="also try the re-noising levels RENOISE_LEVELS")
    ap.add_argument("--table", metavar="DIR", help="only print the table of DIR/*.json")
    args = ap.parse_args(argv)
    if args.table:
        rows = [read_json(p) for p in sorted(Path(args.table).glob("*.json"))]
        order = list(VARIANTS)
        rows.sort(key=lambda r: (order.index(r["variant"]), r["iters"]))
        lines = table(rows)
        print("\n".join(lines))
        write_text(Path(args.table) / "table.md", "\n".join(lines) + "\n")
        return
    torch.set_num_threads(1)
    law64, sde = (make_law("ring2d"), sf.VPSDE()) if args.problem == "ring2d" else random_problem(int(args.problem))[1:]
    recipe = {**BASELINE, **VARIANTS[args.variant]}
    wall = time.perf_counter()
    f = train(law64, sde, recipe, iters=args.iters, seed=args.seed)
    row = {"variant": args.variant, "recipe": recipe, "problem": args.problem, "iters": args.iters, "seed": args.seed,
           "train_wall_s": time.perf_counter() - wall, **measure(law64, sde, f), "minimiser": minimiser_error(law64, sde, recipe)}
    if args.renoise:
        row["renoise"] = renoise_study(law64, sde, f)
    print(json.dumps(row), flush=True)
    write_json(Path(args.out) / f"{args.variant}_{args.problem}_{args.iters}_{args.seed}.json", row)


if __name__ == "__main__":
    main()
