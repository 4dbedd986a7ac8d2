"""Few-NFE stochastic sampling: scoreflow's reverse-SDE solvers against k-diffusion's and diffusers' on the same analytic denoisers.

Every sampler of every library starts from the same draws x_T of the exact law at T and reads the same Brownian path
(scoreflow's, in solver time s = T - t; k-diffusion's samplers through their ``noise_sampler``, diffusers' schedulers
through ``variance_noise`` or ``randn_tensor``), on the same grids ending at t_min (see ``stochastic_peers.py``: the
samplers, the noise each is given, and the reverse SDE each converges to).

Metrics, per sampler, budget and grid (n samples at t_min, P fixed directions shared by every sampler):

- ``paired``: the sliced W2 between the sampler's samples and a fine solve (``--ref-steps`` steps) of the SDE that
  sampler converges to, from the same x_T on the same path: the Monte-Carlo floor cancels, so this is the sampler's
  distributional error with a noise far below the unpaired one (the reference's own error is shown by the reverse
  SDE's fine solve with half the steps).
- ``excess``: the sliced W2 to the exact law (against the quantiles of a 10x larger exact sample) with its Monte-Carlo
  floor removed, ``sqrt(SW2^2 - floor^2)`` (signed), the floor being the mean SW2^2 of K independent exact samples of
  size n.  Below ~the floor's spread it is noise.
- mean and covariance errors against the exact law, the largest error of a mixture's mode weights, and the RMS
  distance to the reference (strong error).

"Best" at a budget is a library's (sampler, grid) cell with the lowest mean paired^2 over the seeds, among the
samplers given the same noise (``eta=1``, ``eta=v``) or any (``any``); the ratio scoreflow / peer of those cells is
reported per case and over the cases (median, range, count <= 0.5).

k-diffusion and diffusers are optional benchmark dependencies: ``pip install --no-deps k-diffusion diffusers``.

    # what docs/choosing-a-sampler.md reports (one seed per problem, 5000 samples, for time):
    python benchmarks/bench_stochastic.py --n 5000 --seeds 0 --ref-steps 256
    python benchmarks/bench_stochastic.py --problems --random 4 --random-start 20 --seeds 0 --n 5000 --ref-steps 256 \
        --budgets 5 10 20 50 --out benchmarks/results/stochastic_random
    python benchmarks/bench_stochastic.py --merge benchmarks/results/stochastic{,_random}/results.json --out benchmarks/results/stochastic_all
    python benchmarks/bench_stochastic.py --problems ring2d_sharp --sdes vp --seeds 0 --n 2000   # a quick look
    # the 16-D Gaussian under VE at 5 NFE, scoreflow's last step lowered (the default) and not:
    python benchmarks/bench_stochastic.py --problems gaussian16d --sdes ve --seeds 0 --n 5000 --ref-steps 256 --budgets 5 \
        --only dpmpp_2m_sde --no-diffusers --out /tmp/g16ve_lof [--no-lower-order-final]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import scoreflow as sf
from scoreflow.metrics import mode_weights, rms_error
from scoreflow.testing import make_law, make_sde

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import load_k_diffusion_sampling, random_mixture, read_json, save_figure, write_json, write_text  # noqa: E402
from stochastic_peers import (  # noqa: E402
    PathNoise, Sampler, diffusers_samplers, kd_samplers, reference_sampler, run_diffusers, run_k_diffusion, scoreflow_samplers,
)

BUDGETS = (5, 10, 20, 50, 100)
GRIDS = ("log_snr", "karras")
#: Reduced noise given to every library alike: the fraction of the reverse SDE's noise variance rate.
REDUCED = (0.1,)


def make_problem_law(name: str):
    """A named law of :mod:`scoreflow.testing`, or ``randomK``: :func:`peers.random_mixture` drawn from seed 10 000 + K."""
    return random_mixture(10_000 + int(name.removeprefix("random")))[0] if name.startswith("random") else make_law(name)


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


REFERENCE_GRID = "log_snr"


def run_case(kd, problem, sde_name, seed, n, n_floor, n_projections, budgets, grids, samplers, ref_steps, long_grids):
    """Every sampler on one problem, SDE and seed: the same x_T and Brownian path, scored against the exact law and
    against a fine solve of the sampler's own limit SDE on that path (one per limit, ``ref_steps`` steps)."""
    law, sde = make_problem_law(problem), make_sde(sde_name)
    score = law.score(sde)
    g = torch.Generator().manual_seed(seed)
    x_T = law.marginal(sde, sde.T).sample(n, generator=g)
    exact = law.marginal(sde, sde.t_min)
    scorer = Scorer(exact, n, seed, n_projections)
    floors = [scorer(exact.sample(n, generator=torch.Generator().manual_seed(1_000_003 * seed + k))) for k in range(n_floor)]
    ref_ts = sf.time_grid(sde, ref_steps, REFERENCE_GRID)
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(seed + 77),
                            step_size=float(ref_ts[0] - ref_ts[1]))
    noise = PathNoise(bm, sde)
    references, rows = {}, []

    def reference(limit):
        # The finest solve of each limit, on the path that every coarser solve then shares; for the reverse SDE also
        # a check with half the steps (the reference's own error).
        if limit not in references:
            method, options = reference_sampler(limit)
            run = lambda steps: sf.sample_sde(score, sde, x_T, method=method, steps=steps, schedule=REFERENCE_GRID, bm=bm,  # noqa: E731
                                              options=options).samples
            references[limit] = run(ref_steps)
            if limit == ("eta", 1.0):
                record(Sampler("reference", f"{method} (half the steps)", method, 1), REFERENCE_GRID, ref_steps // 2,
                       ref_steps // 2, ref_steps // 2, 0.0, run(ref_steps // 2))
        return references[limit]

    def record(sampler, grid, budget, steps, nfe, seconds, x):
        ref = reference(sampler.limit)
        rows.append(dict(library=sampler.library, method=sampler.label, setting=sampler.setting, limit=list(sampler.limit),
                         grid=grid, budget=budget, steps=steps, nfe=nfe, seconds=seconds, path_rms=rms_error(x, ref),
                         **scorer(x, ref)))

    with torch.no_grad():
        reference(("eta", 1.0))
        for sampler in samplers:
            if sampler.library == "diffusers" and sde_name != "vp":
                continue  # diffusers' schedulers are driven on the discrete VP schedule only
            if sampler.library == "k-diffusion" and kd is None:
                continue
            for grid in grids if sampler.method != "DDIMScheduler" else grids[:1]:
                for budget in budgets:
                    steps = budget // sampler.per_step
                    if steps < 1 or (budget > 20 and grid not in long_grids):
                        continue
                    t0 = time.perf_counter()
                    label = grid
                    if sampler.library == "scoreflow":
                        res = sf.sample_sde(score, sde, x_T, method=sampler.method, steps=steps, schedule=grid, bm=bm,
                                            options=sampler.options)
                        x, nfe = res.samples, res.nfe
                    elif sampler.library == "k-diffusion":
                        x, nfe = run_k_diffusion(kd, sampler, law, sde, x_T, sf.time_grid(sde, steps, grid), noise)
                    else:
                        x, nfe, label = run_diffusers(sampler, law, sde, x_T, steps, grid, noise)
                    record(sampler, label, budget, steps, nfe, time.perf_counter() - t0, x)
    floor = {key: [f[key] for f in floors] for key in floors[0]}
    info = dict(problem=problem, sde=sde_name, seed=seed, n=n, dim=law.dim, components=law.n_components, floor=floor,
                reference=scorer(references[("eta", 1.0)]))
    return info, rows


def excess(sw2sq, floor_sq):
    d = sw2sq - floor_sq
    return math.copysign(math.sqrt(abs(d)), d)


def _rms(values):
    return math.sqrt(sum(values) / len(values))


def _cell_row(problem, sde, budget, group, key, per_seed, seeds):
    return dict(problem=problem, sde=sde, budget=budget, group=group, library=key[0], method=key[1], grid=key[2],
                nfe=max(per_seed[s]["nfe"] for s in seeds),
                paired=[math.sqrt(per_seed[s]["paired_sq"]) for s in seeds],
                rms_paired=_rms([per_seed[s]["paired_sq"] for s in seeds]),
                excess=[per_seed[s]["excess"] for s in seeds],
                mean_excess=excess(sum(per_seed[s]["excess_sq"] for s in seeds) / len(seeds), 0.0),
                mean_error=[per_seed[s]["mean_error"] for s in seeds], cov_error=[per_seed[s]["cov_error"] for s in seeds],
                mode_error=[per_seed[s].get("mode_error") for s in seeds], path_rms=[per_seed[s]["path_rms"] for s in seeds])


LIBRARIES = ("scoreflow", "k-diffusion", "diffusers")


def groups_of(setting):
    """The comparisons a sampler's setting takes part in: its own noise setting, and "any" (each library's best at any noise)."""
    return ["any"] if setting == "own" else [setting, "any"]


def summarize(cases, budgets):
    """Per (problem, sde, group, budget): the best cell of each library (lowest mean paired^2 over the seeds, chosen once
    per problem so its noise favours no side), the reference's check row, and the ratios scoreflow / k-diffusion
    (and scoreflow / diffusers)."""
    by_problem = {}
    for info, rows in cases:
        by_problem.setdefault((info["problem"], info["sde"]), []).append((info, rows))
    table, verdicts = [], []
    for (problem, sde), group in by_problem.items():
        floor_sq = {info["seed"]: sum(info["floor"]["sw2sq"]) / len(info["floor"]["sw2sq"]) for info, _ in group}
        cells, settings = {}, {}
        for info, rows in group:
            for r in rows:
                r["excess_sq"] = r["sw2sq"] - floor_sq[info["seed"]]
                r["excess"] = excess(r["sw2sq"], floor_sq[info["seed"]])
                key = (r["library"], r["method"], r["grid"], r["budget"])
                cells.setdefault(key, {})[info["seed"]] = r
                settings[key] = r.get("setting", "eta=1")
        seeds = sorted(floor_sq)
        for key, per_seed in cells.items():
            if key[0] == "reference":
                table.append(_cell_row(problem, sde, key[3], "reference", key, per_seed, seeds))
        names = sorted({g for s in settings.values() for g in groups_of(s)}, key=lambda g: (g == "any", g))
        for name in names:
            for budget in budgets:
                best = {}
                for lib in LIBRARIES:
                    cands = [(k, v) for k, v in cells.items() if k[0] == lib and k[3] == budget and len(v) == len(seeds)
                             and name in groups_of(settings[k])]
                    if cands:
                        best[lib] = min(cands, key=lambda kv: sum(r["paired_sq"] for r in kv[1].values()))
                for lib, (key, per_seed) in best.items():
                    table.append(_cell_row(problem, sde, budget, name, key, per_seed, seeds))
                for peer in LIBRARIES[1:]:
                    if "scoreflow" in best and peer in best:
                        verdicts.append(_verdict(problem, sde, budget, name, best["scoreflow"], best[peer], seeds, peer))
    return table, verdicts


def _verdict(problem, sde, budget, group, ours, theirs, seeds, peer):
    (sf_key, sf_cell), (peer_key, peer_cell) = ours, theirs
    sf_excess = excess(sum(sf_cell[s]["excess_sq"] for s in seeds) / len(seeds), 0.0)
    peer_excess = excess(sum(peer_cell[s]["excess_sq"] for s in seeds) / len(seeds), 0.0)
    return dict(problem=problem, sde=sde, budget=budget, group=group, peer=peer,
                ratio=_rms([sf_cell[s]["paired_sq"] for s in seeds]) / _rms([peer_cell[s]["paired_sq"] for s in seeds]),
                ratios=[math.sqrt(sf_cell[s]["paired_sq"] / peer_cell[s]["paired_sq"]) for s in seeds],
                excess_ratio=sf_excess / peer_excess if peer_excess > 0 else math.nan,
                scoreflow=list(sf_key[1:3]), best_peer=list(peer_key[1:3]))


def aggregate(verdicts):
    """Per peer, group and budget, over the cases (problem, SDE): median, min and max of the ratios, and the count <= 0.5."""
    out = {}
    for v in verdicts:
        out.setdefault((v["peer"], v["group"], v["budget"]), []).append(v)
    rows = []
    for (peer, group, budget), vs in sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] == "any", kv[0][1], kv[0][2])):
        paired = sorted(v["ratio"] for v in vs)
        exc = sorted(v["excess_ratio"] for v in vs if v["excess_ratio"] == v["excess_ratio"])
        rows.append(dict(peer=peer, group=group, budget=budget, cases=len(vs), median=_median(paired), low=paired[0],
                         high=paired[-1], at_most_half=sum(r <= 0.5 for r in paired),
                         excess_median=_median(exc), excess_at_most_half=sum(0 <= r <= 0.5 for r in exc),
                         excess_cases=len(exc)))
    return rows


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
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def print_tables(table, verdicts, floors):
    lines = ["| peer | noise | NFE <= | cases | paired SW2 ratio scoreflow/peer: median (min-max) | cases <= 0.5 | excess SW2 ratio: median | cases <= 0.5 |",
             "|---|---|---|---|---|---|---|---|"]
    for a in aggregate(verdicts):
        exc = "-" if a["excess_median"] is None else f"{a['excess_median']:.2f}"
        lines.append(f"| {a['peer']} | {a['group']} | {a['budget']} | {a['cases']} | {a['median']:.2f} ({a['low']:.2f}-{a['high']:.2f}) | "
                     f"{a['at_most_half']} | {exc} | {a['excess_at_most_half']} of {a['excess_cases']} |")
    lines += ["", "| problem | SDE | noise | NFE <= | library | best sampler [grid] | paired SW2: rms (per seed) | excess SW2 over floor: of mean^2 (per seed) | mean err | cov err | mode-weight err |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        mode = _median(r["mode_error"])
        lines.append(f"| {r['problem']} | {r['sde']} | {r['group']} | {r['budget']} | {r['library']} | {r['method']} [{r['grid']}] | "
                     f"{r['rms_paired']:.4f} ({', '.join(f'{e:.4f}' for e in r['paired'])}) | "
                     f"{r['mean_excess']:.4f} ({', '.join(f'{e:.3f}' for e in r['excess'])}) | {_median(r['mean_error']):.3f} | "
                     f"{_median(r['cov_error']):.3f} | {'-' if mode is None else f'{mode:.3f}'} |")
    lines += ["", "| problem | SDE | noise | NFE <= | peer | paired ratio | per seed | excess ratio | scoreflow best | peer best |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['problem']} | {v['sde']} | {v['group']} | {v['budget']} | {v['peer']} | {v['ratio']:.2f} | "
                     f"{', '.join(f'{r:.2f}' for r in v['ratios'])} | {v['excess_ratio']:.2f} | {v['scoreflow'][0]} [{v['scoreflow'][1]}] | "
                     f"{v['best_peer'][0]} [{v['best_peer'][1]}] |")
    lines += ["", "| problem | SW2 of independent exact samples (mean, min-max) | SW2 of the reference, per seed |", "|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.4f} ({v['spread'][0]:.4f} to {v['spread'][1]:.4f}) | {', '.join(f'{r:.4f}' for r in v['reference'])} |"
              for k, v in floors.items()]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="*", default=["ring2d_sharp", "mixture16d", "gaussian16d"])
    ap.add_argument("--random", type=int, default=0, help="also this many random mixtures (randomK, K from --random-start)")
    ap.add_argument("--random-start", type=int, default=0)
    ap.add_argument("--sdes", nargs="+", default=["vp", "ve"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-floor", type=int, default=8)
    ap.add_argument("--projections", type=int, default=128)
    ap.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    ap.add_argument("--grids", nargs="+", default=list(GRIDS))
    ap.add_argument("--long-grids", nargs="+", default=["log_snr"], help="the grids run at budgets above 20 NFE")
    ap.add_argument("--reduced", nargs="*", type=float, default=list(REDUCED),
                    help="reduced noise variance fractions given to every library alike (eta^2 for ancestral samplers)")
    ap.add_argument("--ref-steps", type=int, default=400, help="steps of the reference solves (the check takes half)")
    ap.add_argument("--out", default="benchmarks/results/stochastic")
    ap.add_argument("--no-k-diffusion", action="store_true")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--only", nargs="*", default=None, help="only scoreflow samplers whose label starts with one of these")
    ap.add_argument("--no-lower-order-final", action="store_true",
                    help="scoreflow's multistep samplers with lower_order_final=False (their last steps keep all their points)")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="compute nothing: merge the rows of these results.json files by (problem, SDE, seed) and summarize")
    args = ap.parse_args(argv)
    if args.merge:
        print("\n".join(write(merge_cases(args.merge), args, Path(args.out))))
        return
    torch.set_num_threads(1)
    kd = None if args.no_k_diffusion else load_k_diffusion_sampling()
    problems = args.problems + [f"random{args.random_start + i}" for i in range(args.random)]
    cases = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Seeds outermost and the results rewritten after every case: an interrupted run leaves complete seeds.
    for seed in args.seeds:
        for problem in problems:
            for sde_name in args.sdes:
                samplers = scoreflow_samplers(args.reduced) + kd_samplers(args.reduced)
                if not args.no_diffusers:
                    samplers += diffusers_samplers(make_sde(sde_name))
                if args.only is not None:
                    samplers = [s for s in samplers if s.library != "scoreflow" or s.label.startswith(tuple(args.only))]
                if args.no_lower_order_final:
                    samplers = [replace(s, options={**s.options, "lower_order_final": False})
                                if s.library == "scoreflow" and "lower_order_final" in sf.get_method("sde", s.method).options else s
                                for s in samplers]
                t0 = time.perf_counter()
                info, rows = run_case(kd, problem, sde_name, seed, args.n, args.n_floor, args.projections, args.budgets,
                                      args.grids, samplers, args.ref_steps, args.long_grids)
                info["seconds"] = time.perf_counter() - t0
                cases.append((info, rows))
                print(f"{problem}-{sde_name} seed {seed}: {len(rows)} runs, {info['seconds']:.0f} s", file=sys.stderr, flush=True)
                lines = write(cases, args, out)
    print("\n".join(lines))


def merge_cases(paths):
    """The cases of several runs, rows joined by (problem, SDE, seed): runs of the same cases (hence the same x_T, path and
    references) with different samplers, and runs of other problems.  A case is kept if every run that has its
    problem has it (an interrupted run's missing cases are dropped from the others too)."""
    merged, seen = {}, []
    for path in paths:
        keys = set()
        for case in read_json(path)["cases"]:
            info = case["info"]
            key = (info["problem"], info["sde"], info["seed"])
            rows = [r for r in case["rows"] if r["library"] != "reference" or key not in merged]
            merged.setdefault(key, (info, []))[1].extend(rows)
            keys.add(key)
        seen.append(keys)
    return [case for key, case in merged.items()
            if all(key in keys for keys in seen if any(k[0] == key[0] for k in keys))]


def write(cases, args, out):
    """Summarize the cases so far into ``out``: results.json, table.md and (with matplotlib) stochastic.png."""
    table, verdicts = summarize(cases, args.budgets)
    lines = print_tables(table, verdicts, floors_table(cases))
    payload = {"cases": [{"info": i, "rows": r} for i, r in cases], "table": table, "verdicts": verdicts,
               "aggregate": aggregate(verdicts), "args": vars(args)}
    write_json(out / "results.json", payload)
    write_text(out / "table.md", "\n".join(lines) + "\n")
    plot(table, out / "stochastic.png")
    return lines


def plot(table, path):
    """Paired SW2 of each library's best sampler (any noise) against the NFE budget, one panel per problem and SDE."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    panels = sorted({(r["problem"], r["sde"]) for r in table})
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    styles = {("scoreflow", "eta=1"): "o-", ("k-diffusion", "eta=1"): "s--", ("scoreflow", "any"): "o:", ("k-diffusion", "any"): "s:",
              ("diffusers", "eta=1"): "^--"}
    for ax, (problem, sde) in zip(axes.flat, panels):
        for (lib, group), style in styles.items():
            rows = sorted((r for r in table if (r["problem"], r["sde"], r["library"], r["group"]) == (problem, sde, lib, group)),
                          key=lambda r: r["budget"])
            if rows:
                ax.loglog([r["budget"] for r in rows], [r["rms_paired"] for r in rows], style, label=f"{lib} ({group})", ms=3)
        for r in table:
            if (r["problem"], r["sde"], r["library"]) == (problem, sde, "reference"):
                ax.axhline(r["rms_paired"], color="grey", lw=0.8, label="reference check")
        ax.set_title(f"{problem} ({sde})", fontsize=9)
        ax.set_xlabel("NFE")
    axes[0][0].set_ylabel("paired sliced W2 of the best sampler")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
