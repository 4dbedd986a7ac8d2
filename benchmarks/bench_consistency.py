r"""Distilled consistency models against the teacher's deterministic samplers, on problems with an exact answer.

For each problem (the 2-D ring under VP, where the recipe of ``examples/consistency_ring.py`` was chosen, on
distillation seed 0, and Gaussian mixtures drawn at random: dimension 2-4, 3-8 components, random means, weights
and anisotropic covariances, under VP or EDM), a consistency model is distilled from the exact score with that
recipe (CD, one RK4 step of the teacher on an 8-step Karras grid, every grid step in every batch, EMA target).
Then, from the same prior draws:

- sliced W2 to the exact law p_{t_min} of the distilled model's samples in 1, 2 and 4 steps (the library's default
  re-noising times; the JSON also has them re-noised to low noise, ``low_noise_times``);
- the same for the teacher's deterministic samplers on the exact score (ddim, dpmpp_2m, dpmpp_2m_pc, dpmpp_3m_pc,
  dpm_solver_2, edm_heun, heun, euler, each on four grids) at every NFE budget 2-20: the best of them within a
  budget is "the best deterministic sampler" (chosen on the evaluation draws themselves: an optimistic baseline);
- the floor: sliced W2 of exact samples of the same size (several draws: mean and spread);
- the RMS distance per coordinate of the learned f to the exact consistency function along exact trajectories.

Every SW2 compares n samples with 4n exact ones over the same 256 directions.

    python benchmarks/bench_consistency.py                             # ring + 5 random problems, 12000 iterations each
    python benchmarks/bench_consistency.py --problems ring2d --iters 1000     # a quick look
    python benchmarks/bench_consistency.py --refine --iters 4000              # CD as its grid is refined
    python benchmarks/bench_consistency.py --refine --iters 0                 # its minimiser only (seconds)

The table in docs/consistency.md (4000 iterations, 10000 samples; the ring and random problems 0-2 two processes
at a time on a 2-core machine loaded by other jobs, then problems 3 and 4 on the quiet machine):

    for pair in "ring2d 0" "1 2" "3 4"; do for p in $pair; do
        OMP_NUM_THREADS=1 python benchmarks/bench_consistency.py --problems $p --iters 4000 --n 10000 --out /tmp/cm/$p --plot '' &
    done; wait; done
    python benchmarks/bench_consistency.py --combine /tmp/cm/ring2d /tmp/cm/0 /tmp/cm/1 /tmp/cm/2 /tmp/cm/3 /tmp/cm/4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scoreflow as sf
from scoreflow.metrics import _quantiles, sliced_wasserstein2
from scoreflow.testing import make_law

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from consistency_ring import distil  # noqa: E402  (the example's recipe is what is measured)
from peers import read_json, save_figure, write_json, write_text  # noqa: E402

METHODS = {"ddim": 1, "dpmpp_2m": 1, "dpmpp_2m_pc": 1, "dpmpp_3m_pc": 1, "dpm_solver_2": 2, "edm_heun": 2, "heun": 2, "euler": 1}
GRIDS = ("log_snr_capped", "log_snr", "karras", "t")
BUDGETS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
CONSISTENCY_STEPS = (1, 2, 4)


def random_problem(seed: int) -> tuple[str, sf.analytic.GaussianMixture, sf.ForwardSDE]:
    """A Gaussian mixture drawn from ``seed``: dimension, component count, means, weights, covariances; VP or EDM."""
    g = torch.Generator().manual_seed(1000 + seed)
    dim = int(torch.randint(2, 5, (), generator=g))
    k = int(torch.randint(3, 9, (), generator=g))
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    means = means / means.norm(dim=1, keepdim=True) * (1.5 + 1.5 * torch.rand(k, 1, generator=g, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=g, dtype=torch.float64))
    stds = 0.1 + 0.25 * torch.rand(k, dim, generator=g, dtype=torch.float64)
    covs = q @ torch.diag_embed(stds**2) @ q.transpose(1, 2)
    weights = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    sde = sf.VPSDE() if seed % 2 == 0 else sf.EDMSDE()
    name = f"random{seed}: D={dim}, K={k}, {'VP' if seed % 2 == 0 else 'EDM'}"
    return name, sf.analytic.GaussianMixture(weights, means, covs), sde


def low_noise_times(sde: sf.ForwardSDE, steps: int, sigma_data: float) -> list[float]:
    r"""Re-noising times of a ``steps``-step sampler: :math:`\sigma/\alpha` log-spaced from :math:`0.15\sigma_d` to
    :math:`0.03\sigma_d` (their geometric mean for two steps).

    The alternative to the library's default (Karras) times measured here: it helped a poorly distilled model on the
    ring (``consistency_ablation.py --renoise``) and lost to the default times on the ring's final model.
    """
    if steps == 1:
        return []
    alpha, sigma = sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))
    floor = math.log(2 * float(sigma / alpha))  # strictly above t_min, for data of a tiny scale
    hi, lo = max(math.log(0.15 * sigma_data), floor + 1), max(math.log(0.03 * sigma_data), floor)
    levels = [0.5 * (hi + lo)] if steps == 2 else [hi + (lo - hi) * k / (steps - 2) for k in range(steps - 1)]
    return [float(sde.t_from_log_snr(torch.tensor(-v, dtype=torch.float64))) for v in levels]


class SlicedW2:
    """``sliced_wasserstein2(x, reference, n_projections=256, generator=seed 7)`` with the reference's projections
    sorted once: the same number, for the few hundred sample sets compared with one reference."""

    def __init__(self, reference: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(7)
        theta = torch.randn(reference.shape[1], 256, generator=g, dtype=torch.float64)
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        self.reference = reference
        self.sorted = torch.sort((reference.double() @ self.theta).T, dim=1).values

    def __call__(self, x: torch.Tensor) -> float:
        px = torch.sort((x.double() @ self.theta).T, dim=1).values
        n = max(px.shape[1], self.sorted.shape[1])
        return math.sqrt(float((_quantiles(px, n) - _quantiles(self.sorted, n)).pow(2).mean()))


def evaluate(name, law64, sde, f, *, n: int, seed: int) -> dict:
    """Every SW2 of the benchmark and the distance of f to the exact function along trajectories."""
    g = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, law64.dim), generator=g, dtype=torch.float64)
    exact = law64.marginal(sde, sde.t_min)
    reference = exact.sample(4 * n, generator=g)

    sw2 = SlicedW2(reference)

    floor = [sw2(exact.sample(n, generator=g)) for _ in range(5)]
    check = exact.sample(n, generator=torch.Generator().manual_seed(seed + 2))
    assert math.isclose(sw2(check), sliced_wasserstein2(check, reference, n_projections=256, generator=torch.Generator().manual_seed(7)), rel_tol=1e-9)
    out = {"problem": name, "n": n, "floor": floor, "consistency": {}, "consistency_low_noise": {}, "deterministic": []}
    with torch.no_grad():
        for steps in CONSISTENCY_STEPS:
            res = sf.sample_consistency(f, sde, x_T.float(), steps=steps, generator=torch.Generator().manual_seed(seed + 1))
            out["consistency"][steps] = sw2(res.samples)
            times = low_noise_times(sde, steps, f.sigma_data) or None
            res = sf.sample_consistency(f, sde, x_T.float(), times=times, generator=torch.Generator().manual_seed(seed + 1))
            out["consistency_low_noise"][steps] = sw2(res.samples)
        score = law64.score(sde)
        for method, per_step in METHODS.items():
            for grid in GRIDS:
                for budget in BUDGETS:
                    steps = budget // per_step
                    if steps < 1 or steps * per_step != budget:
                        continue
                    res = sf.sample_ode(score, sde, x_T, method=method, steps=steps, schedule=grid)
                    out["deterministic"].append({"method": method, "grid": grid, "nfe": res.nfe, "sw2": sw2(res.samples)})
        out["f_error"] = trajectory_error(law64, sde, f, x_T[:2000])
    return out


def trajectory_error(law64, sde, f, x_T: torch.Tensor) -> list[dict]:
    """RMS per coordinate of f(x_t, t) - x_{t_min} along exact trajectories from ``x_T``, at 9 log-SNR times from T
    (first row) to t_min (last row, where f(x, t_min) = x makes it 0)."""
    end = law64.flow_map(sde, x_T, sde.T, sde.t_min, rtol=1e-9, atol=1e-9)
    rows = []
    for t in sf.time_grid(sde, 8, "log_snr").tolist():
        x_t = law64.flow_map(sde, x_T, sde.T, t, rtol=1e-9, atol=1e-9)
        err = f(x_t.float(), torch.full((x_t.shape[0],), t)).double() - end
        alpha, sigma = sde.marginal(torch.tensor(t))
        rows.append({"t": t, "sigma_over_alpha": float(sigma / alpha), "rms": float(err.pow(2).mean().sqrt())})
    return rows


def refinement(*, iters: int, seeds: tuple[int, ...], grids: tuple[int, ...] = (2, 4, 8, 18, 40)) -> list[dict]:
    """CD with a Heun teacher as its grid is refined, on gaussian2d under VP: the error at T of the minimiser
    (Heun's solve through the grid, exact) and of consistency models distilled on that grid (one per seed)."""
    law64, sde = make_law("gaussian2d"), sf.VPSDE()
    x_T = sde.prior_sample((2000, 2), generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    end = law64.flow_map(sde, x_T, sde.T, sde.t_min)
    rows = []
    for steps in grids:
        solve = sf.sample_ode(law64.score(sde), sde, x_T, method="heun", schedule=sf.time_grid(sde, steps, "karras"))
        trained = []
        for seed in seeds if iters > 0 else ():  # --iters 0: the minimiser alone
            f = distil(law64.to(torch.float32).score(sde), law64.to(torch.float32), sde, iters=iters, steps=steps, solver="heun", seed=seed)
            with torch.no_grad():
                trained.append(float((f(x_T.float(), sde.T).double() - end).pow(2).mean().sqrt()))
        rows.append({"steps": steps, "minimiser": float((solve.samples - end).pow(2).mean().sqrt()), "trained": trained})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def best_within(rows: list[dict], budget: int) -> dict:
    """The deterministic run of lowest SW2 with NFE <= budget."""
    return min((r for r in rows if r["nfe"] <= budget), key=lambda r: r["sw2"])


def verdicts(result: dict) -> dict:
    cm, det = result["consistency"], result["deterministic"]
    b5, b10 = best_within(det, 5), best_within(det, 10)
    return {
        "best_5": b5, "best_10": b10,
        "one_step_vs_5": cm[1] <= b5["sw2"], "two_steps_vs_10": cm[2] <= b10["sw2"],
        "floor_mean": float(np.mean(result["floor"])), "floor_sd": float(np.std(result["floor"], ddof=1)),
    }


def table(results: list[dict]) -> list[str]:
    head = ["problem", "CM 1 step", "CM 2 steps", "CM 4 steps", "best det. <=2", "<=5", "<=10", "<=20", "floor (mean ± sd)",
            "f error at T", "1 step <= 5 NFE", "2 steps <= 10 NFE"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        v, cm, det = r["verdicts"], r["consistency"], r["deterministic"]
        best = [best_within(det, b) for b in (2, 5, 10, 20)]
        cells = [r["problem"], *(f"{cm[k]:.4f}" for k in CONSISTENCY_STEPS),
                 *(f"{b['sw2']:.4f} ({b['method']}, {b['nfe']})" for b in best),
                 f"{v['floor_mean']:.4f} ± {v['floor_sd']:.4f}", f"{r['f_error'][0]['rms']:.3f}",
                 "yes" if v["one_step_vs_5"] else "**no**", "yes" if v["two_steps_vs_10"] else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 7.5), squeeze=False)
    for j, r in enumerate(results):
        ax = axes[0][j]
        budgets = list(BUDGETS)
        ax.plot(budgets, [best_within(r["deterministic"], b)["sw2"] for b in budgets], "o-", ms=3, label="best deterministic (exact score)")
        ax.plot(list(CONSISTENCY_STEPS), [r["consistency"][k] for k in CONSISTENCY_STEPS], "s", ms=7, color="C3", label="distilled consistency model")
        lo, sd = r["verdicts"]["floor_mean"], r["verdicts"]["floor_sd"]
        ax.axhspan(lo - sd, lo + sd, color="grey", alpha=0.3, label="exact samples (mean ± sd)")
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=r["problem"], xticks=[1, 2, 4, 5, 10, 20])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        if j == 0:
            ax.set_ylabel("sliced W2 to the exact law")
            ax.legend(fontsize=7)
        ax = axes[1][j]
        err = r["f_error"]
        ax.loglog([e["sigma_over_alpha"] for e in err[:-1]], [e["rms"] for e in err[:-1]], "o-", ms=3, color="C3")
        ax.set(xlabel="sigma/alpha along the trajectory", ylim=(1e-3, 1))
        if j == 0:
            ax.set_ylabel("RMS |f - f*| per coordinate")
        for a in axes[:, j]:
            a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["ring2d", "0", "1", "2", "3", "4"],
                    help="'ring2d' and/or seeds of random problems")
    ap.add_argument("--iters", type=int, default=12000, help="distillation iterations per problem")
    ap.add_argument("--n", type=int, default=20000, help="samples per SW2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/consistency")
    ap.add_argument("--plot", default="docs/img/consistency.png")
    ap.add_argument("--refine", action="store_true", help="instead: CD as its grid is refined (gaussian2d, VP)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot and table from OUT/results.json")
    ap.add_argument("--combine", nargs="+", metavar="DIR", help="only join DIR/results.json of runs made in parallel "
                    "into OUT/results.json, then redraw")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.refine:
        torch.set_num_threads(1)
        rows = refinement(iters=args.iters, seeds=(args.seed, args.seed + 1))
        lines = ["| grid steps N | RMS error at T of the CD minimiser (Heun's solve through the grid) | of the distilled model (2 seeds) |",
                 "| --- | --- | --- |"]
        lines += [f"| {r['steps']} | {r['minimiser']:.2e} | {', '.join(f'{e:.2e}' for e in r['trained']) or 'not run'} |" for r in rows]
        print("\n".join(lines))
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "refinement.json", rows)
        write_text(out / "refinement.md", "\n".join(lines) + "\n")
        return
    if args.combine:
        out.mkdir(parents=True, exist_ok=True)
        joined = [r for d in args.combine for r in read_json(Path(d) / "results.json")]
        write_json(out / "results.json", joined, default=float)
    if args.replot or args.combine:
        results = read_json(out / "results.json")
        for r in results:
            for key in ("consistency", "consistency_low_noise"):
                r[key] = {int(k): v for k, v in r.get(key, {}).items()}
            r["verdicts"] = verdicts(r)  # derived: recomputed from the numbers
    else:
        torch.set_num_threads(1)
        results = []
        for p in args.problems:
            name, law64, sde = ("ring2d: D=2, K=8, VP", make_law("ring2d"), sf.VPSDE()) if p == "ring2d" else random_problem(int(p))
            wall, cpu = time.perf_counter(), time.process_time()
            f = distil(law64.to(torch.float32).score(sde), law64.to(torch.float32), sde, iters=args.iters, seed=args.seed)
            train = {"iters": args.iters, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
            result = evaluate(name, law64, sde, f, n=args.n, seed=args.seed + 100)
            result["train"] = train
            result["verdicts"] = verdicts(result)
            results.append(result)
            print(json.dumps({k: result[k] for k in ("problem", "consistency", "train")}, default=float), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", results, default=float)
    lines = table(results)
    print("\n".join(lines))
    write_text(out / "table.md", "\n".join(lines) + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
