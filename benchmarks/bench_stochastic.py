"""Few-NFE stochastic sampling: scoreflow's reverse-SDE solvers against k-diffusion's on the same analytic denoisers.

Every sampler of both libraries starts from the same draws x_T of the exact law at T and reads the same Brownian
path (scoreflow's, in solver time s = T - t; k-diffusion's samplers get it through their ``noise_sampler``
argument, converted from their sigma), on the same grids ending at t_min.  k-diffusion sees the exact denoiser in
its variables, D(y, sigma_k) = E[x_0 | x_t = alpha(t) y] at the time t with sigma(t)/alpha(t) = sigma_k.

Metrics, per sampler, budget and grid (n samples at t_min, P fixed directions shared by every sampler):

- ``excess``: the sliced W2 to the exact law (against the quantiles of a 10x larger exact sample) with its
  Monte-Carlo floor removed, ``sqrt(SW2^2 - floor^2)`` (signed), the floor being the mean SW2^2 of K independent
  exact samples of size n (squared distances of independent errors add).  Below ~the floor's spread it is noise.
- ``paired``: the sliced W2 between the sampler's n samples and those of a fine reference solve (``--ref-steps``
  steps of ``dpmpp_3m_sde_pc``) from the same x_T on the same Brownian path.  Both converge to the strong solution of the
  reverse SDE on that path, so the floor cancels: this is the distributional error of the sampler alone, with a
  noise far below the unpaired one (the reference's own error is shown by the same solve with half the steps).
- mean and covariance errors against the exact law, the largest error of a mixture's mode weights (samples
  assigned by responsibility), and the RMS distance to the reference (strong error).

"Best" at a budget is a library's (method, grid) cell with the lowest mean paired^2 over the seeds (chosen once
per problem, so its noise does not favour either side); the ratio scoreflow / k-diffusion of those two cells is
reported as the ratio of root-mean-squares over seeds and per seed (paired: same x_T, path, projections), and the
same ratio of the unpaired excess for the same cells.

k-diffusion is an optional benchmark dependency: ``pip install --no-deps k-diffusion`` (it uses torchsde).

    python benchmarks/bench_stochastic.py                                # the full study (hours on a loaded machine)
    # what docs/choosing-a-sampler.md reports (NFE <= 5, 10, 20; the named problems, then random mixtures):
    python benchmarks/bench_stochastic.py --budgets 5 10 20 --grids log_snr karras --ref-steps 400
    python benchmarks/bench_stochastic.py --problems --random 4 --seeds 0 1 --budgets 5 10 20 --grids log_snr karras \
        --ref-steps 400 --out benchmarks/results/stochastic_random
    python benchmarks/bench_stochastic.py --problems ring2d_sharp --sdes vp --seeds 0 --n 2000   # a quick look
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
from peers import Counted, load_k_diffusion_sampling, random_mixture, vp_denoiser  # noqa: E402

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


def make_problem_law(name: str):
    """A named law of :mod:`scoreflow.testing`, or ``randomK``: :func:`peers.random_mixture` drawn from seed 10 000 + K."""
    return random_mixture(10_000 + int(name.removeprefix("random")))[0] if name.startswith("random") else make_law(name)


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

    def project(self, x):
        return torch.sort((x.reshape(x.shape[0], -1).double() @ self.theta).T, dim=1).values

    def __call__(self, x, reference=None):
        xf = x.reshape(x.shape[0], -1).double()
        px = self.project(x)
        out = {
            "sw2sq": float((px - self.ref).pow(2).mean()),
            "paired_sq": None if reference is None else float((px - self.project(reference)).pow(2).mean()),
            "mean_error": float((xf.mean(0) - self.mean).norm()),
            "cov_error": float((torch.cov(xf.T).reshape(self.cov.shape) - self.cov).norm()),
        }
        if self.mixture:
            out["mode_error"] = float((mode_weights(self.law, x) - self.law.weights.double()).abs().max())
        return out


REFERENCE = ("dpmpp_3m_sde_pc", "log_snr")


def run_case(kd, problem, sde_name, seed, n, n_floor, n_projections, budgets, grids, sf_samplers, kd_samplers, ref_steps):
    """Every sampler on one problem, SDE and seed: the same x_T and Brownian path, scored against the exact law."""
    law, sde = make_problem_law(problem), make_sde(sde_name)
    score = law.score(sde)
    g = torch.Generator().manual_seed(seed)
    x_T = law.marginal(sde, sde.T).sample(n, generator=g)
    exact = law.marginal(sde, sde.t_min)
    scorer = Scorer(exact, n, seed, n_projections)
    floors = [scorer(exact.sample(n, generator=torch.Generator().manual_seed(1_000_003 * seed + k))) for k in range(n_floor)]
    method, ref_grid = REFERENCE
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
                             path_rms=rms_error(x, reference), **scorer(x, reference)))

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


def _rms(values):
    return math.sqrt(sum(values) / len(values))


def _cell_row(problem, sde, budget, library, key, per_seed, seeds):
    return dict(problem=problem, sde=sde, budget=budget, library=library, method=key[1], grid=key[2],
                nfe=max(per_seed[s]["nfe"] for s in seeds),
                paired=[math.sqrt(per_seed[s]["paired_sq"]) for s in seeds],
                rms_paired=_rms([per_seed[s]["paired_sq"] for s in seeds]),
                excess=[per_seed[s]["excess"] for s in seeds],
                mean_excess=excess(sum(per_seed[s]["excess_sq"] for s in seeds) / len(seeds), 0.0),
                mean_error=[per_seed[s]["mean_error"] for s in seeds], cov_error=[per_seed[s]["cov_error"] for s in seeds],
                mode_error=[per_seed[s].get("mode_error") for s in seeds], path_rms=[per_seed[s]["path_rms"] for s in seeds])


def summarize(cases, budgets):
    """Per (problem, sde): the best cell per library and budget, the reference's check row, and the ratios."""
    groups = {}
    for info, rows in cases:
        groups.setdefault((info["problem"], info["sde"]), []).append((info, rows))
    table, verdicts = [], []
    for (problem, sde), group in groups.items():
        floor_sq = {info["seed"]: sum(info["floor"]["sw2sq"]) / len(info["floor"]["sw2sq"]) for info, _ in group}
        cells = {}
        for info, rows in group:
            for r in rows:
                r["excess_sq"] = r["sw2sq"] - floor_sq[info["seed"]]
                r["excess"] = excess(r["sw2sq"], floor_sq[info["seed"]])
                cells.setdefault((r["library"], r["method"], r["grid"], r["budget"]), {})[info["seed"]] = r
        seeds = sorted(floor_sq)
        for key, per_seed in cells.items():
            if key[0] == "reference":
                table.append(_cell_row(problem, sde, key[3], "reference", key, per_seed, seeds))
        for budget in budgets:
            best = {}
            for lib in ("scoreflow", "k-diffusion"):
                cands = [(k, v) for k, v in cells.items() if k[0] == lib and k[3] == budget and len(v) == len(seeds)]
                if cands:
                    best[lib] = min(cands, key=lambda kv: sum(r["paired_sq"] for r in kv[1].values()))
            for lib, (key, per_seed) in best.items():
                table.append(_cell_row(problem, sde, budget, lib, key, per_seed, seeds))
            if len(best) == 2:
                sf_cell, kd_cell = best["scoreflow"][1], best["k-diffusion"][1]
                kd_excess = excess(sum(kd_cell[s]["excess_sq"] for s in seeds) / len(seeds), 0.0)
                sf_excess = excess(sum(sf_cell[s]["excess_sq"] for s in seeds) / len(seeds), 0.0)
                verdicts.append(dict(
                    problem=problem, sde=sde, budget=budget,
                    ratio=_rms([sf_cell[s]["paired_sq"] for s in seeds]) / _rms([kd_cell[s]["paired_sq"] for s in seeds]),
                    ratios=[math.sqrt(sf_cell[s]["paired_sq"] / kd_cell[s]["paired_sq"]) for s in seeds],
                    excess_ratio=sf_excess / kd_excess if kd_excess > 0 else math.nan,
                    scoreflow=best["scoreflow"][0][1:3], k_diffusion=best["k-diffusion"][0][1:3]))
    return table, verdicts


def floors_table(cases):
    """The unpaired Monte-Carlo floor: SW2 of independent exact samples of size n, and the reference's SW2, per seed."""
    out = {}
    for info, _ in cases:
        key = f"{info['problem']}-{info['sde']}"
        out.setdefault(key, {"floor": [], "reference": []})
        out[key]["floor"] += [math.sqrt(v) for v in info["floor"]["sw2sq"]]
        out[key]["reference"].append(math.sqrt(info["reference"]["sw2sq"]))
    return {k: dict(mean=sum(v["floor"]) / len(v["floor"]), spread=[min(v["floor"]), max(v["floor"])],
                    reference=v["reference"]) for k, v in out.items()}


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def print_tables(table, verdicts, floors):
    lines = ["| problem | SDE | NFE <= | library | best sampler [grid] | paired SW2: rms (per seed) | excess SW2 over floor: of mean^2 (per seed) | mean err | cov err | mode-weight err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        mode = _median(r["mode_error"])
        lines.append(f"| {r['problem']} | {r['sde']} | {r['budget']} | {r['library']} | {r['method']} [{r['grid']}] | "
                     f"{r['rms_paired']:.4f} ({', '.join(f'{e:.4f}' for e in r['paired'])}) | "
                     f"{r['mean_excess']:.4f} ({', '.join(f'{e:.3f}' for e in r['excess'])}) | {_median(r['mean_error']):.3f} | "
                     f"{_median(r['cov_error']):.3f} | {'-' if mode is None else f'{mode:.3f}'} |")
    lines += ["", "| problem | SDE | NFE <= | paired SW2 ratio scoreflow/k-diffusion | per seed | excess ratio | scoreflow best | k-diffusion best |",
              "|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['problem']} | {v['sde']} | {v['budget']} | {v['ratio']:.2f} | "
                     f"{', '.join(f'{r:.2f}' for r in v['ratios'])} | {v['excess_ratio']:.2f} | {v['scoreflow'][0]} [{v['scoreflow'][1]}] | "
                     f"{v['k_diffusion'][0]} [{v['k_diffusion'][1]}] |")
    lines += ["", "| problem | SW2 of independent exact samples (mean, min-max) | SW2 of the reference, per seed |", "|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.4f} ({v['spread'][0]:.4f} to {v['spread'][1]:.4f}) | {', '.join(f'{r:.4f}' for r in v['reference'])} |"
              for k, v in floors.items()]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="*", default=["ring2d_sharp", "mixture16d", "gaussian16d"])
    ap.add_argument("--random", type=int, default=0, help="also this many random mixtures (random0, random1, ...)")
    ap.add_argument("--sdes", nargs="+", default=["vp", "ve"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-floor", type=int, default=8)
    ap.add_argument("--projections", type=int, default=128)
    ap.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    ap.add_argument("--grids", nargs="+", default=list(GRIDS))
    ap.add_argument("--ref-steps", type=int, default=1000, help="steps of the reference solve (its check takes half)")
    ap.add_argument("--out", default="benchmarks/results/stochastic")
    ap.add_argument("--no-k-diffusion", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    kd = None if args.no_k_diffusion else load_k_diffusion_sampling()
    problems = args.problems + [f"random{i}" for i in range(args.random)]
    cases = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Seeds outermost and the results rewritten after every case: an interrupted run leaves complete seeds.
    for seed in args.seeds:
        for problem in problems:
            for sde_name in args.sdes:
                t0 = time.perf_counter()
                info, rows = run_case(kd, problem, sde_name, seed, args.n, args.n_floor, args.projections, args.budgets,
                                      args.grids, SF_SAMPLERS, KD_SAMPLERS, args.ref_steps)
                info["seconds"] = time.perf_counter() - t0
                cases.append((info, rows))
                print(f"{problem}-{sde_name} seed {seed}: {len(rows)} runs, {info['seconds']:.0f} s", file=sys.stderr, flush=True)
                lines = write(cases, args, out)
    print("\n".join(lines))


def write(cases, args, out):
    """Summarize the cases so far into ``out``: results.json, table.md and (with matplotlib) stochastic.png."""
    table, verdicts = summarize(cases, args.budgets)
    lines = print_tables(table, verdicts, floors_table(cases))
    (out / "results.json").write_text(json.dumps({"cases": [{"info": i, "rows": r} for i, r in cases], "table": table,
                                                  "verdicts": verdicts, "args": vars(args)}, indent=1))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(table, out / "stochastic.png")
    return lines


def plot(table, path):
    """Paired SW2 of each library's best sampler against the NFE budget, one panel per problem and SDE."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    panels = sorted({(r["problem"], r["sde"]) for r in table})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (problem, sde) in zip(axes[0], panels):
        for lib, style in (("scoreflow", "o-"), ("k-diffusion", "s--")):
            rows = sorted((r for r in table if (r["problem"], r["sde"], r["library"]) == (problem, sde, lib)), key=lambda r: r["budget"])
            if rows:
                ax.loglog([r["budget"] for r in rows], [r["rms_paired"] for r in rows], style, label=lib)
        for r in table:
            if (r["problem"], r["sde"], r["library"]) == (problem, sde, "reference"):
                ax.axhline(r["rms_paired"], color="grey", lw=0.8, label="reference check")
        ax.set_title(f"{problem} ({sde})", fontsize=9)
        ax.set_xlabel("NFE")
    axes[0][0].set_ylabel("paired sliced W2 of the best sampler")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

if __name__ == "__main__":
    main()
