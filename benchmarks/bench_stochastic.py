"""Few-NFE stochastic sampling: scoreflow's reverse-SDE solvers against k-diffusion's on the same analytic denoisers.

Every sampler of both libraries starts from the same draws x_T of the exact law at T and reads the same Brownian
path (scoreflow's, in solver time s = T - t; k-diffusion's samplers get it through their ``noise_sampler``
argument, converted from their sigma), on the same grids ending at t_min.  k-diffusion sees the exact denoiser in
its variables, D(y, sigma_k) = E[x_0 | x_t = alpha(t) y] at the time t with sigma(t)/alpha(t) = sigma_k.

Metric: the sliced W2 distance of the n samples at t_min to the exact law there, through P fixed directions
(the same for every sampler) against a 10x larger exact sample.  Its Monte-Carlo floor, the same distance for
exact samples of size n, is measured from K independent exact draws; the excess is
``sqrt(SW2^2 - mean floor^2)`` (negative if SW2 is below the mean floor): squared distances of independent errors
add, so this estimates the sampler's own distance to the law, where ``SW2 - floor`` would shrink small errors
quadratically.  Also reported: mean and covariance errors and the largest error of a mixture's mode weights
(samples assigned by responsibility), each with its exact-sample floor.

"Best" at a budget is the (method, grid) cell of a library with the lowest mean excess^2 over the seeds (chosen
once per problem, so its noise does not favour either side); the ratio scoreflow / k-diffusion of those two
cells is reported per seed (paired: same x_T, path, projections) with its spread.

k-diffusion is an optional benchmark dependency: ``pip install --no-deps k-diffusion`` (it uses torchsde).

    python benchmarks/bench_stochastic.py                                # the full study (about 2 h on one loaded core)
    python benchmarks/bench_stochastic.py --problems ring2d_sharp --sdes vp --seeds 0 --n 2000   # a quick look
    python benchmarks/bench_stochastic.py --replot                       # redraw the plot from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import scoreflow as sf
from scoreflow.metrics import mode_weights, rms_error
from scoreflow.testing import make_law, make_sde

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_few_nfe import Counted, load_k_diffusion_sampling, vp_denoiser  # noqa: E402

BUDGETS = (5, 10, 20, 50, 100)
GRIDS = ("log_snr_capped", "log_snr", "karras", "t")
# (label, method, options) of scoreflow's stochastic samplers: every native "sde" method at its defaults.
SF_SAMPLERS = [(m.name, m.name, {}) for m in sf.list_methods("sde") if m.backend == "native"]
# k-diffusion's samplers and their NFE per step; heun with churn is EDM's stochastic sampler (s_churn as ours).
KD_SAMPLERS = {
    "euler_ancestral": ("sample_euler_ancestral", 1, {}),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", 2, {}),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", 2, {}),
    "dpmpp_sde": ("sample_dpmpp_sde", 2, {}),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", 1, {}),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", 1, {}),
}


def random_mixture(seed: int, dtype=torch.float64):
    """A mixture drawn at random: dimension 2-32, 2-8 components, Dirichlet weights, anisotropic covariances."""
    g = torch.Generator().manual_seed(10_000 + seed)
    dim = int(torch.tensor([2, 4, 8, 16, 32])[torch.randint(0, 5, (), generator=g)])
    k = int(torch.randint(2, 9, (), generator=g))
    weights = -torch.log(torch.rand(k, generator=g, dtype=dtype))  # Dirichlet(1) through exponentials
    means = torch.randn(k, dim, generator=g, dtype=dtype)
    means = means * (2.0 + torch.rand(k, 1, generator=g, dtype=dtype)) / means.norm(dim=1, keepdim=True)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=dtype))
        scale = 0.02 + 0.3 * float(torch.rand((), generator=g, dtype=dtype))
        eig = scale**2 * torch.logspace(-1.0, 0.0, dim, dtype=dtype)[torch.randperm(dim, generator=g)]
        covs.append((q * eig) @ q.T)
    return sf.analytic.GaussianMixture(weights, means, torch.stack(covs))


def make_problem_law(name: str):
    return random_mixture(int(name.removeprefix("random"))) if name.startswith("random") else make_law(name)


class PathNoise:
    """k-diffusion's ``noise_sampler(sigma, sigma_next)`` reading scoreflow's Brownian path in solver time s = T - t."""

    def __init__(self, bm, sde, grids):
        self.bm, self.sde = bm, sde
        # Grid sigmas map to the grid's own solver times exactly; stage sigmas (midpoints) are converted.
        self.known = {}
        for ts in grids:
            alpha, sigma = sde.marginal(ts)
            for s, t in zip((sigma / alpha).tolist(), ts.tolist()):
                self.known[s] = min(sde.T - t, bm.duration)

    def solver_time(self, sigma_k) -> float:
        s = float(sigma_k)
        if s in self.known:
            return self.known[s]
        t = float(self.sde.t_from_log_snr(-torch.log(torch.tensor(s, dtype=torch.float64))))
        return min(max(self.sde.T - t, 0.0), self.bm.duration)

    def __call__(self, sigma, sigma_next):
        a, b = self.solver_time(sigma), self.solver_time(sigma_next)
        return self.bm(a, b) / math.sqrt(b - a)


class Scorer:
    """Sliced W2 through fixed directions against a large exact sample, mean/covariance and mode-weight errors."""

    def __init__(self, exact_law, n, seed, n_projections):
        self.law, self.n = exact_law, n
        g = torch.Generator().manual_seed(7919 * seed + 1)
        dim = exact_law.dim
        theta = torch.randn(dim, n_projections, generator=g, dtype=torch.float64)
        self.theta = theta / theta.norm(dim=0, keepdim=True)
        big = exact_law.sample(10 * n, generator=g).reshape(10 * n, -1)
        proj = torch.sort((big @ self.theta).T, dim=1).values
        # The exact sample's quantiles at the n mid-levels (k + 1/2)/n.
        idx = ((torch.arange(n, dtype=torch.float64) + 0.5) * 10 - 0.5).round().long()
        self.ref = proj[:, idx]
        self.mean, self.cov = exact_law.mean.double(), exact_law.covariance.double()
        self.mixture = exact_law.n_components > 1

    def __call__(self, x):
        xf = x.reshape(x.shape[0], -1).double()
        px = torch.sort((xf @ self.theta).T, dim=1).values
        sw2sq = float((px - self.ref).pow(2).mean())
        out = {
            "sw2sq": sw2sq,
            "mean_error": float((xf.mean(0) - self.mean).norm()),
            "cov_error": float((torch.cov(xf.T).reshape(self.cov.shape) - self.cov).norm()),
        }
        if self.mixture:
            out["mode_error"] = float((mode_weights(self.law, x) - self.law.weights.double()).abs().max())
        return out


REFERENCE = ("dpmpp_3m_sde_pc", 1000, "log_snr")


def run_case(kd, problem, sde_name, seed, n, n_floor, n_projections, budgets, grids, sf_samplers, kd_samplers):
    """Every sampler on one problem, SDE and seed: the same x_T and Brownian path, scored against the exact law."""
    law, sde = make_problem_law(problem), make_sde(sde_name)
    score = law.score(sde)
    g = torch.Generator().manual_seed(seed)
    x_T = law.marginal(sde, sde.T).sample(n, generator=g)
    exact = law.marginal(sde, sde.t_min)
    scorer = Scorer(exact, n, seed, n_projections)
    floors = [scorer(exact.sample(n, generator=torch.Generator().manual_seed(1_000_003 * seed + k))) for k in range(n_floor)]
    method, ref_steps, ref_grid = REFERENCE
    ref_ts = sf.time_grid(sde, ref_steps, ref_grid)
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(seed + 77),
                            step_size=float(ref_ts[0] - ref_ts[1]))
    rows = []
    with torch.no_grad():
        # The finest solve first: it fixes the path that every coarser solve then shares.
        reference = sf.sample_sde(score, sde, x_T, method=method, steps=ref_steps, schedule=ref_grid, bm=bm).samples
        check = sf.sample_sde(score, sde, x_T, method=method, steps=ref_steps // 2, schedule=ref_grid, bm=bm).samples
        ref_scores = scorer(reference)

        def record(library, label, grid, budget, steps, nfe, seconds, x):
            rows.append(dict(library=library, method=label, grid=grid, budget=budget, steps=steps, nfe=nfe, seconds=seconds,
                             path_rms=rms_error(x, reference), **scorer(x)))

        record("reference", f"{method} (half the steps)", ref_grid, ref_steps // 2, ref_steps // 2, ref_steps // 2, 0.0, check)
        for label, name, options in sf_samplers:
            spec = sf.get_method("sde", name)
            for grid in grids:
                for budget in budgets:
                    steps = budget // spec.nfe_per_step
                    if steps < 1:
                        continue
                    t0 = time.perf_counter()
                    res = sf.sample_sde(score, sde, x_T, method=name, steps=steps, schedule=grid, bm=bm, options=options)
                    record("scoreflow", label, grid, budget, steps, res.nfe, time.perf_counter() - t0, res.samples)
        if kd is not None:
            denoise = vp_denoiser(law, sde)
            ends = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)
            a_end = sde.marginal(ends)[0]
            grid_ts = {(grid, budget // per): sf.time_grid(sde, budget // per, grid)
                       for grid in grids for budget in budgets for _, per, _ in kd_samplers.values() if budget // per >= 1}
            noise = PathNoise(bm, sde, grid_ts.values())
            for label, (fn_name, per_step, kwargs) in kd_samplers.items():
                sampler = getattr(kd, fn_name)
                for grid in grids:
                    for budget in budgets:
                        steps = budget // per_step
                        if steps < 1:
                            continue
                        alpha, sigma = sde.marginal(grid_ts[(grid, steps)])
                        model = Counted(denoise)
                        t0 = time.perf_counter()
                        y = sampler(model, x_T / a_end[0], sigma / alpha, disable=True, noise_sampler=noise, **kwargs)
                        record("k-diffusion", label, grid, budget, steps, model.calls, time.perf_counter() - t0, a_end[1] * y)
    floor = {key: [f[key] for f in floors] for key in floors[0]}
    info = dict(problem=problem, sde=sde_name, seed=seed, n=n, dim=law.dim, components=law.n_components, floor=floor,
                reference=ref_scores)
    return info, rows


def excess(sw2sq, floor_sq):
    d = sw2sq - floor_sq
    return math.copysign(math.sqrt(abs(d)), d)


def summarize(cases, budgets):
    """Per (problem, sde): each cell's excess over seeds, the best cell per library and budget, and the ratios.

    A row's excess is measured against the reference solve of its own seed (same x_T, same path).
    """
    groups = {}
    for info, rows in cases:
        groups.setdefault((info["problem"], info["sde"]), []).append((info, rows))
    table, verdicts = [], []
    for (problem, sde), group in groups.items():
        ref_sq = {info["seed"]: info["reference"]["sw2sq"] for info, _ in group}
        cells = {}
        for info, rows in group:
            for r in rows:
                r["excess_sq"] = r["sw2sq"] - ref_sq[info["seed"]]
                r["excess"] = excess(r["sw2sq"], ref_sq[info["seed"]])
                cells.setdefault((r["library"], r["method"], r["grid"], r["budget"]), {})[info["seed"]] = r
        seeds = sorted(ref_sq)

        def mean_excess(per_seed):
            return excess(sum(per_seed[s]["excess_sq"] for s in seeds) / len(seeds), 0.0)

        for key, per_seed in cells.items():
            if key[0] == "reference":
                table.append(dict(problem=problem, sde=sde, budget=key[3], library="reference", method=key[1], grid=key[2],
                                  nfe=key[3], excess=[per_seed[s]["excess"] for s in seeds], mean_excess=mean_excess(per_seed),
                                  mean_error=[per_seed[s]["mean_error"] for s in seeds], cov_error=[per_seed[s]["cov_error"] for s in seeds],
                                  mode_error=[per_seed[s].get("mode_error") for s in seeds]))
        for budget in budgets:
            best = {}
            for lib in ("scoreflow", "k-diffusion"):
                cands = [(k, v) for k, v in cells.items() if k[0] == lib and k[3] == budget and len(v) == len(seeds)]
                if cands:
                    best[lib] = min(cands, key=lambda kv: sum(r["excess_sq"] for r in kv[1].values()))
            for lib, (key, per_seed) in best.items():
                table.append(dict(problem=problem, sde=sde, budget=budget, library=lib, method=key[1], grid=key[2],
                                  nfe=max(per_seed[s]["nfe"] for s in seeds), excess=[per_seed[s]["excess"] for s in seeds],
                                  mean_excess=mean_excess(per_seed),
                                  mean_error=[per_seed[s]["mean_error"] for s in seeds],
                                  cov_error=[per_seed[s]["cov_error"] for s in seeds],
                                  mode_error=[per_seed[s].get("mode_error") for s in seeds]))
            if len(best) == 2:
                sf_cell, kd_cell = best["scoreflow"][1], best["k-diffusion"][1]
                ratios = [sf_cell[s]["excess"] / kd_cell[s]["excess"] if kd_cell[s]["excess"] > 0 else math.inf for s in seeds]
                verdicts.append(dict(problem=problem, sde=sde, budget=budget,
                                     ratio_of_means=mean_excess(sf_cell) / mean_excess(kd_cell), ratios=ratios,
                                     scoreflow=best["scoreflow"][0][1:3], k_diffusion=best["k-diffusion"][0][1:3]))
    return table, verdicts


def floors_table(cases):
    """The unpaired Monte-Carlo floor: SW2 of independent exact samples of size n, and the reference's (paired) SW2."""
    out = {}
    for info, _ in cases:
        key = f"{info['problem']}-{info['sde']}"
        out.setdefault(key, {"floor": [], "reference": []})
        out[key]["floor"] += [math.sqrt(v) for v in info["floor"]["sw2sq"]]
        out[key]["reference"].append(math.sqrt(info["reference"]["sw2sq"]))
    return {k: dict(mean=sum(v["floor"]) / len(v["floor"]), spread=[min(v["floor"]), max(v["floor"])],
                    reference=v["reference"]) for k, v in out.items()}


def print_tables(table, verdicts, floors):
    lines = ["| problem | SDE | NFE <= | library | best sampler [grid] | excess SW2: of the mean excess^2 (per seed) | mean err | cov err | mode-weight err |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        mid = len(r["excess"]) // 2
        mode = "-" if r["mode_error"][0] is None else f"{sorted(r['mode_error'])[mid]:.3f}"
        lines.append(f"| {r['problem']} | {r['sde']} | {r['budget']} | {r['library']} | {r['method']} [{r['grid']}] | "
                     f"{r['mean_excess']:.4f} ({', '.join(f'{e:.3f}' for e in r['excess'])}) | {sorted(r['mean_error'])[mid]:.3f} | "
                     f"{sorted(r['cov_error'])[mid]:.3f} | {mode} |")
    lines += ["", "| problem | SDE | NFE <= | ratio of mean excess | ratio per seed | scoreflow best | k-diffusion best |", "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['problem']} | {v['sde']} | {v['budget']} | {v['ratio_of_means']:.2f} | "
                     f"{', '.join(f'{r:.2f}' for r in v['ratios'])} | {v['scoreflow'][0]} [{v['scoreflow'][1]}] | "
                     f"{v['k_diffusion'][0]} [{v['k_diffusion'][1]}] |")
    lines += ["", "| problem | SW2 of independent exact samples (mean, min-max) | SW2 of the reference, per seed |", "|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.4f} ({v['spread'][0]:.4f} to {v['spread'][1]:.4f}) | {', '.join(f'{r:.4f}' for r in v['reference'])} |"
              for k, v in floors.items()]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["ring2d_sharp", "mixture16d", "gaussian16d"])
    ap.add_argument("--random", type=int, default=0, help="also this many random mixtures (random0, random1, ...)")
    ap.add_argument("--sdes", nargs="+", default=["vp", "ve"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-floor", type=int, default=8)
    ap.add_argument("--projections", type=int, default=128)
    ap.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    ap.add_argument("--grids", nargs="+", default=list(GRIDS))
    ap.add_argument("--out", default="benchmarks/results/stochastic")
    ap.add_argument("--no-k-diffusion", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    kd = None if args.no_k_diffusion else load_k_diffusion_sampling()
    problems = args.problems + [f"random{i}" for i in range(args.random)]
    cases = []
    for problem in problems:
        for sde_name in args.sdes:
            for seed in args.seeds:
                t0 = time.perf_counter()
                info, rows = run_case(kd, problem, sde_name, seed, args.n, args.n_floor, args.projections, args.budgets,
                                      args.grids, SF_SAMPLERS, KD_SAMPLERS)
                info["seconds"] = time.perf_counter() - t0
                cases.append((info, rows))
                print(f"{problem}-{sde_name} seed {seed}: {len(rows)} runs, {info['seconds']:.0f} s", file=sys.stderr, flush=True)
    table, verdicts = summarize(cases, args.budgets)
    lines = print_tables(table, verdicts, floors_table(cases))
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"cases": [{"info": i, "rows": r} for i, r in cases], "table": table,
                                                  "verdicts": verdicts, "args": vars(args)}, indent=1))
    (out / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
