"""Few-NFE probability-flow sampling: scoreflow's solvers against k-diffusion's on the same analytic denoiser.

Every sampler starts from the same prior draws x_T of a VP SDE and is scored by the RMS path error of
x_{t_min} against a float64 reference solve (scipy DOP853, rtol = atol = 1e-10) from the same x_T, and by
the sliced W2 distance to exact samples of the data law diffused to t_min.  k-diffusion samplers see the
exact VP denoiser in their variables: D(y, sigma_k) = E[x_0 | x_t = alpha(t) y] with t the VP time whose
sigma(t)/alpha(t) equals sigma_k (i.e. log-SNR -log sigma_k), and the state y = x / alpha.

k-diffusion is an optional benchmark dependency: ``pip install --no-deps k-diffusion``.

    python benchmarks/bench_few_nfe.py                       # all problems, writes JSON, table and plot
    python benchmarks/bench_few_nfe.py --problems gaussian2d --n 200   # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import scoreflow as sf
from scoreflow.metrics import rms_error, sliced_wasserstein2
from scoreflow.testing import make_law

import peers
from peers import load_k_diffusion_sampling, read_json, reference_solve

BUDGETS = (5, 10, 15, 20, 25, 30, 40, 50, 75, 100)
SCHEDULES = ("log_snr_capped", "log_snr", "karras", "t")
# Score evaluations per step (and extra per solve) of each fixed-step sampler.
SF_COST = {"ddim": (1, 0), "dpm_solver_2": (2, 0), "dpm_solver_3": (3, 0), "dpmpp_2m": (1, 0), "dpmpp_3m": (1, 1), "dpmpp_2m_pc": (1, 0), "dpmpp_3m_pc": (1, 0), "dpmpp_4m_pc": (1, 0), "edm_heun": (2, 0)}
KD_METHODS = ("euler", "heun", "dpm_2", "lms", "dpmpp_2m")
TOLERANCES = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)


def run_scoreflow(law, sde, x_T, budgets):
    score = law.score(sde)
    rows = []
    for method, (per_step, extra) in SF_COST.items():
        for schedule in SCHEDULES:
            for budget in budgets:
                steps = max(1, (budget - extra) // per_step)
                res = sf.sample_ode(score, sde, x_T, method=method, steps=steps, schedule=schedule)
                rows.append(dict(library="scoreflow", method=method, schedule=schedule, steps=steps, nfe=res.nfe, x=res.samples))
    for time_var in ("t", "sigma", "log_snr"):
        for tol in TOLERANCES:
            res = sf.sample_ode(score, sde, x_T, method="dopri5", time=time_var, rtol=tol, atol=tol)
            rows.append(dict(library="scoreflow", method=f"dopri5[{time_var}]", schedule="adaptive", tol=tol, nfe=res.nfe, x=res.samples))
    for tol in TOLERANCES:
        res = sf.sample_ode(score, sde, x_T, method="dpmpp_4m_pc_adaptive", rtol=tol, atol=tol)
        rows.append(dict(library="scoreflow", method="dpmpp_4m_pc_adaptive", schedule="adaptive", tol=tol, nfe=res.nfe, x=res.samples))
    return rows


def run_k_diffusion(kd, law, sde, x_T, budgets):
    # The grids end at sigma_k(t_min) > 0 (no appended zero): every sampler stops at t_min.
    return peers.run_k_diffusion(kd, law, sde, x_T, budgets, schedules=SCHEDULES, methods=KD_METHODS, tolerances=TOLERANCES)


def best_within(rows, library, budget, schedules=None):
    """The lowest path error among ``library``'s runs with NFE <= budget (optionally only some schedules)."""
    cands = [r for r in rows if r["library"] == library and r["nfe"] <= budget
             and (schedules is None or r["schedule"] in schedules or r["schedule"] == "adaptive")]
    return min(cands, key=lambda r: r["path_rms"]) if cands else None


def nfe_to_reach(rows, library, target, schedules=None):
    """Fewest NFE at which one of ``library``'s methods (one schedule) reaches path error <= target, log-log interpolated."""
    best = math.inf
    lines = {}
    for r in rows:
        if r["library"] == library and (schedules is None or r["schedule"] in schedules or r["schedule"] == "adaptive"):
            lines.setdefault((r["method"], r["schedule"]), []).append((r["nfe"], r["path_rms"]))
    for pts in lines.values():
        pts.sort()
        for (n0, e0), (n1, e1) in zip([(None, math.inf)] + pts[:-1], pts):
            if e1 <= target:
                if n0 is None or e0 <= target or n1 == n0:
                    best = min(best, n1)
                else:
                    w = (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
                    best = min(best, math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))))
                break
    return best


def evaluate(problem, n, seed, kd):
    law, sde = make_law(problem, torch.float64), sf.VPSDE()
    g = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, law.dim), generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    ref, ref_nfe = reference_solve(law, sde, x_T)
    info = {"problem": problem, "n": n, "seed": seed, "reference_nfe": ref_nfe, "reference_seconds": time.perf_counter() - t0}
    if hasattr(law, "flow_map") and law.n_components == 1:
        info["reference_vs_closed_form"] = rms_error(ref, law.flow_map(sde, x_T, sde.T, sde.t_min))
    # As many exact draws as samples: SW2 then compares sorted projections directly (no interpolation), which
    # keeps ~300 evaluations cheap; its Monte-Carlo floor is the reference solve's own SW2, reported below.
    exact = law.marginal(sde, sde.t_min).sample(n, generator=torch.Generator().manual_seed(seed + 1))
    info["sw2_of_reference"] = sliced_wasserstein2(ref, exact, n_projections=128, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        rows = run_scoreflow(law, sde, x_T, BUDGETS)
        rows += run_k_diffusion(kd, law, sde, x_T, BUDGETS) if kd is not None else []
    for r in rows:
        x = r.pop("x")
        r["path_rms"] = rms_error(x, ref)
        r["sw2"] = sliced_wasserstein2(x, exact, n_projections=128, generator=torch.Generator().manual_seed(7))
    return info, rows


def summarize(info, rows, report_budgets=(5, 10, 20, 50, 100)):
    """Markdown table: best path error within each NFE budget per method family, and the claims' verdicts."""
    p = info["problem"]
    head = "| " + " | ".join(["problem", "sampler"] + [f"NFE<={b}" for b in report_budgets]) + " |"
    lines = [head, "|" + "---|" * (len(report_budgets) + 2)]

    def fmt(r):
        return f"{r['path_rms']:.1e} ({r['nfe']})" if r else "-"

    def row(label, pick):
        lines.append(f"| {p} | {label} | " + " | ".join(fmt(pick(b)) for b in report_budgets) + " |")

    for lib in ("scoreflow", "k-diffusion"):
        for method in dict.fromkeys(r["method"] for r in rows if r["library"] == lib):
            sub = [r for r in rows if r["library"] == lib and r["method"] == method]
            row(f"{lib} {method}", lambda b, sub=sub: min((r for r in sub if r["nfe"] <= b), key=lambda r: r["path_rms"], default=None))
    row("**scoreflow best**", lambda b: best_within(rows, "scoreflow", b))
    row("**k-diffusion best, Karras grid**", lambda b: best_within(rows, "k-diffusion", b, ("karras",)))
    row("**k-diffusion best, any grid**", lambda b: best_within(rows, "k-diffusion", b))
    claims = {}
    for label, scheds in (("karras", ("karras",)), ("any", None)):
        for b in (10, 20):
            sfb, kdb = best_within(rows, "scoreflow", b), best_within(rows, "k-diffusion", b, scheds)
            claims[f"ratio_nfe<={b}_vs_kd_{label}"] = sfb["path_rms"] / kdb["path_rms"] if sfb and kdb else None
        n_sf, n_kd = nfe_to_reach(rows, "scoreflow", 1e-3), nfe_to_reach(rows, "k-diffusion", 1e-3, scheds)
        claims["nfe_to_1e-3_scoreflow"] = n_sf
        claims[f"nfe_to_1e-3_kd_{label}"] = n_kd
    return lines, claims


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results) + 3, 5.5), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, (info, rows, _) in zip(axes[0], results):
        k = 0
        for lib, style, fill in (("scoreflow", "-", "full"), ("k-diffusion", "--", "none")):
            for method in dict.fromkeys(r["method"] for r in rows if r["library"] == lib):
                sub = [r for r in rows if r["library"] == lib and r["method"] == method]
                # One line per method: its best grid (the lowest error summed in log over the budgets).
                by_sched = {}
                for r in sub:
                    by_sched.setdefault(r["schedule"], []).append(r)
                pts = min(by_sched.values(), key=lambda rs: sum(math.log(r["path_rms"]) for r in rs))
                pts = sorted(pts, key=lambda r: r["nfe"])
                label = f"{lib} {method}" + (f" [{pts[0]['schedule']}]" if pts[0]["schedule"] != "adaptive" else "")
                ax.loglog([r["nfe"] for r in pts], [r["path_rms"] for r in pts], style, color=colors[k % 20],
                          marker="o", ms=4, fillstyle=fill, lw=1.2, label=label)
                k += 1
        ax.axhline(1e-3, color="grey", lw=0.8)
        ax.set(title=f"{info['problem']} (VP, n={info['n']})", xlabel="NFE", ylabel="RMS path error vs DOP853",
               xlim=(3, 200), ylim=(1e-6, 10))
        ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, axes, path)


def save_figure(fig, axes, path):
    """Legend beside the last panel, tight layout, and the PNG at ``path`` (its folder made if needed)."""
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    peers.save_figure(fig, path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["ring2d_sharp", "mixture16d", "gaussian2d"])
    ap.add_argument("--n", type=int, default=1000, help="samples per problem")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/few_nfe")
    ap.add_argument("--plot", default="docs/img/few_nfe.png")
    ap.add_argument("--no-k-diffusion", action="store_true")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from OUT/results.json")
    args = ap.parse_args(argv)
    if args.replot:
        saved = read_json(Path(args.out) / "results.json")
        return plot([(d["info"], d["rows"], d["claims"]) for d in saved], args.plot)
    torch.set_num_threads(1)
    kd = None if args.no_k_diffusion else load_k_diffusion_sampling()
    results, table = [], []
    for problem in args.problems:
        t0 = time.perf_counter()
        info, rows = evaluate(problem, args.n, args.seed, kd)
        lines, claims = summarize(info, rows)
        info["seconds"] = time.perf_counter() - t0
        results.append((info, rows, claims))
        table += lines if not table else lines[2:]
        print(json.dumps({**info, **claims}, default=float), flush=True)
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peers.write_json(out / "results.json", [{"info": i, "claims": c, "rows": r} for i, r, c in results], default=float)
    peers.write_text(out / "table.md", "\n".join(table) + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
