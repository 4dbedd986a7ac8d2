"""Few-NFE round two: scoreflow against diffusers' and k-diffusion's best on random Gaussian mixtures nobody tuned on.

Per problem (random mixtures from ``peers.random_mixture`` over held-out seeds, plus the fixed ring2d_sharp,
mixture16d and gaussian2d): the same ``--n`` prior draws x_T of the VP SDE for every sampler, float64, path error =
RMS of ``x_{t_min} - x_ref`` against scipy's DOP853 at 1e-10.  Samplers:

- scoreflow: its user-choosable rule, ``dpmpp_3m_pc`` below 25 NFE and ``dpmpp_4m_pc`` from 25 on a grid from
  ``sf.fit_schedule`` (fitted on ``--pilot`` separate prior draws; its cost is reported), the fixed-grid methods on
  the ``log_snr_capped`` grid (with ``unipc``'s bh1 variant and ``deis``, orders 2 and 3), ``dpmpp_4m_pc_adaptive`` (one grid for the batch) and
  ``dpmpp_4m_pc_adaptive_per_sample`` over a tolerance sweep;
- diffusers: UniPC (bh1, bh2; orders 2, 3), DPM-Solver++ (2M, 3M), DEIS (2, 3), SA-Solver (tau = 0; p2c2, p3c4), on
  a discrete schedule that coincides with the VP SDE, on diffusers' own grid ("linspace"), the Karras grid and
  scoreflow's capped log-SNR grid (``peers.run_diffusers``);
- k-diffusion: lms, dpmpp_2m, dpmpp_3m (dpmpp_3m_sde with eta = 0) on the Karras and the capped grid, and
  dpm_adaptive over the same tolerance sweep.

The peers' best at a budget is the best of all their configurations and grids chosen per problem against the
reference (an oracle); scoreflow's "rule" is one method and schedule rule, chosen before the held-out seeds.  The
oracle-against-oracle view is reported too.  A convergence check runs every diffusers configuration with 500 steps
on the first problem: on the float64 Karras and log-SNR grids each must land within 1e-4 of the reference (on
diffusers' own float32 grid the error is reported, not checked: its third-order DEIS and SA-Solver stall there).
``--ipndm`` runs the cheap supplement: iPNDM (``peers.sample_ipndm``) against scoreflow's fixed-grid methods on the
log-SNR and capped grids.

    pip install --no-deps k-diffusion diffusers
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_few_nfe_random.py --out benchmarks/results/few_nfe_random
    python benchmarks/bench_few_nfe_random.py --random 2 --fixed --n 100      # quick look
    python benchmarks/bench_few_nfe_random.py --random 20 --fixed --n 200 --ipndm   # iPNDM on scoreflow's grids
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import scoreflow as sf
from scoreflow.metrics import rms_error
from scoreflow.testing import make_law

from peers import (
    DIFFUSERS_CONFIGS, diffusers_sample, load_k_diffusion_sampling, make_scheduler, random_mixture, read_json, reference_solve,
    run_diffusers, run_ipndm, run_k_diffusion, save_figure, write_json, write_text,
)

BUDGETS = (5, 10, 15, 20, 30)
CURVE_BUDGETS = BUDGETS + (40, 60)
TOLERANCES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
FIXED = ("ring2d_sharp", "mixture16d", "gaussian2d")
# Seeds of the random problems: 1000 + i.  Seed 12345 was the one looked at while designing fit_schedule.
SEED_BASE = 1000
# scoreflow's rule (fixed on the design seed): dpmpp_3m_pc below 25 NFE, dpmpp_4m_pc from 25, on a fitted grid.
RULE_SWITCH = 25
PEERS_OWN_GRIDS = ("linspace", "karras", "adaptive")


def run_scoreflow(law, sde, x_T, x_pilot, budgets):
    score = law.score(sde)
    rows, reference = [], None
    for budget in budgets:
        for method in ("dpmpp_3m_pc" if budget < RULE_SWITCH else "dpmpp_4m_pc",):
            fit = sf.fit_schedule(score, sde, x_pilot, budget, method=method, reference=reference)
            reference = fit.reference
            res = sf.sample_ode(score, sde, x_T, method=method, schedule=fit.times)
            rows.append(dict(library="scoreflow", method=method, schedule="fitted", steps=budget, nfe=res.nfe, x=res.samples,
                             pilot_nfe=fit.nfe, pilot_rows=fit.rows, sigma_cap=fit.sigma_cap, sigma_floor=fit.sigma_floor))
        for method in ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_pc", "dpmpp_3m_pc", "dpmpp_4m_pc"):
            for schedule in ("log_snr_capped",):
                steps = budget - 1 if method == "dpmpp_3m" else budget
                res = sf.sample_ode(score, sde, x_T, method=method, steps=steps, schedule=schedule)
                rows.append(dict(library="scoreflow", method=method, schedule=schedule, steps=steps, nfe=res.nfe, x=res.samples))
        # UniPC's bh2 is dpmpp_{2,3}m_pc to round-off (tests/test_unipc.py): its bh1 variant, and DEIS
        for method, label, options in [("unipc", f"unipc_bh1_{p}", {"order": p, "variant": "bh1"}) for p in (2, 3)] + [
                ("deis", f"deis_{p}", {"order": p}) for p in (2, 3)]:
            res = sf.sample_ode(score, sde, x_T, method=method, steps=budget, schedule="log_snr_capped", options=options)
            rows.append(dict(library="scoreflow", method=label, schedule="log_snr_capped", steps=budget, nfe=res.nfe,
                             x=res.samples))
    for method in ("dpmpp_4m_pc_adaptive", "dpmpp_4m_pc_adaptive_per_sample"):
        for tol in TOLERANCES:
            res = sf.sample_ode(score, sde, x_T, method=method, rtol=tol, atol=tol)
            extra = {"nfe_mean": res.stats["nfe_mean"]} if "nfe_mean" in res.stats else {}
            rows.append(dict(library="scoreflow", method=method, schedule="adaptive", tol=tol, nfe=res.nfe, x=res.samples, **extra))
    return rows


def convergence_check(law, sde, n=20, steps=(500,)):
    """Every diffusers configuration on its own, the log-SNR and the Karras grid at 500 steps, against the reference."""
    x_T = sde.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    ref, _ = reference_solve(law, sde, x_T)
    out = {}
    for name in DIFFUSERS_CONFIGS:
        for schedule in ("linspace", "log_snr", "karras"):
            out[f"{name}[{schedule}]"] = [rms_error(diffusers_sample(make_scheduler(name, sde), law, sde, x_T, s, schedule)[0], ref) for s in steps]
    return out


def best_at(rows, budget, keep):
    cands = [r for r in rows if keep(r) and r["nfe"] <= budget]
    return min(cands, key=lambda r: r["path_rms"]) if cands else None


def nfe_to(rows, target, keep):
    """Fewest NFE at which one configuration (method, schedule; the rule as one) reaches ``target``, log-log
    interpolated between its budgets; inf if none."""
    lines, best = {}, math.inf
    for r in rows:
        if keep(r):
            line = "rule" if is_rule(r) else (r["library"], r["method"], r["schedule"])
            lines.setdefault(line, []).append((r["nfe"], r["path_rms"]))
    for pts in lines.values():
        pts.sort()
        prev = None
        for n1, e1 in pts:
            if e1 <= target:
                if prev is None or prev[1] <= target or prev[0] == n1:
                    best = min(best, n1)
                else:
                    n0, e0 = prev
                    w = (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
                    best = min(best, math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))))
                break
            prev = (n1, e1)
    return best


def is_rule(r):
    method = "dpmpp_3m_pc" if r.get("steps", 0) < RULE_SWITCH else "dpmpp_4m_pc"
    return r["library"] == "scoreflow" and r["schedule"] == "fitted" and r["method"] == method


def is_peer(r):
    return r["library"] != "scoreflow"


def is_peer_own(r):
    return is_peer(r) and (r["library"] == "diffusers" and r["schedule"] in PEERS_OWN_GRIDS
                           or r["library"] == "k-diffusion" and r["schedule"] in ("karras", "adaptive"))


def is_scoreflow(r):
    return r["library"] == "scoreflow"


def summarize(rows):
    """Per budget: errors of the rule, scoreflow's oracle, the peers' oracle (any grid / own grids), and NFE to 1e-3."""
    out = {}
    for b in BUDGETS:
        picks = {name: best_at(rows, b, keep) for name, keep in
                 (("rule", is_rule), ("scoreflow_oracle", is_scoreflow), ("peer", is_peer), ("peer_own", is_peer_own))}
        out[b] = {name: (r["path_rms"] if r else None) for name, r in picks.items()}
        out[b]["peer_config"] = f"{picks['peer']['library']} {picks['peer']['method']}[{picks['peer']['schedule']}]" if picks["peer"] else None
        out[b]["scoreflow_config"] = f"{picks['scoreflow_oracle']['method']}[{picks['scoreflow_oracle']['schedule']}]"
    out["nfe_to_1e-3"] = {name: nfe_to(rows, 1e-3, keep) for name, keep in
                          (("rule", is_rule), ("scoreflow_oracle", is_scoreflow), ("peer", is_peer), ("peer_own", is_peer_own),
                           ("adaptive_batch", lambda r: r["method"] == "dpmpp_4m_pc_adaptive"),
                           ("adaptive_per_sample", lambda r: r["method"] == "dpmpp_4m_pc_adaptive_per_sample"))}
    mean_rows = [{**r, "nfe": r["nfe_mean"]} for r in rows if "nfe_mean" in r]
    out["nfe_to_1e-3"]["adaptive_per_sample_mean"] = nfe_to(mean_rows, 1e-3, lambda r: True)
    return out


FAMILIES = {
    "UniPC (diffusers)": lambda r: r["library"] == "diffusers" and r["method"].startswith("unipc"),
    "SA-Solver tau=0 (diffusers)": lambda r: r["library"] == "diffusers" and r["method"].startswith("sa_"),
    "DEIS (diffusers)": lambda r: r["library"] == "diffusers" and r["method"].startswith("deis"),
    "DPM-Solver++ (diffusers)": lambda r: r["library"] == "diffusers" and r["method"].startswith("dpmpp"),
    "k-diffusion lms / dpmpp_2m / dpmpp_3m": lambda r: r["library"] == "k-diffusion",
    "iPNDM (peers.sample_ipndm)": lambda r: r["library"] == "ipndm",
    "UniPC bh1 (scoreflow's unipc)": lambda r: r["library"] == "scoreflow" and r["method"].startswith("unipc_bh1"),
    "DEIS (scoreflow's deis)": lambda r: r["library"] == "scoreflow" and r["method"].startswith("deis"),
}
SF_FIXED = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_pc", "dpmpp_3m_pc", "dpmpp_4m_pc")


def same_grid(results, grids=("log_snr", "log_snr_capped"), budgets=BUDGETS):
    """Each peer family against scoreflow's fixed-grid methods on the same grid (log-SNR and capped), per budget.

    Returns family -> list of (best family error / best scoreflow error) over problems, budgets and the two grids.
    """
    out = {name: [] for name in FAMILIES}
    for _, rows, _ in results:
        for grid in grids:
            for b in budgets:
                sf_best = best_at(rows, b, lambda r: r["library"] == "scoreflow" and r["method"] in SF_FIXED and r["schedule"] == grid)
                for name, keep in FAMILIES.items():
                    fam = best_at(rows, b, lambda r: keep(r) and r["schedule"] == grid)
                    if sf_best and fam:
                        out[name].append(fam["path_rms"] / sf_best["path_rms"])
    return out


def evaluate_ipndm(name, law, info, n):
    """The cheap supplement ``--ipndm``: iPNDM and scoreflow's fixed-grid methods on the same draws and grids."""
    sde = sf.VPSDE()
    score = law.score(sde)
    x_T = sde.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(info.get("seed", 0)), dtype=torch.float64)
    ref, _ = reference_solve(law, sde, x_T)
    rows = run_ipndm(law, sde, x_T, BUDGETS, schedules=("log_snr", "log_snr_capped"))
    for b in BUDGETS:
        for method in SF_FIXED:
            for schedule in ("log_snr", "log_snr_capped"):
                res = sf.sample_ode(score, sde, x_T, method=method, steps=b - (method == "dpmpp_3m"), schedule=schedule)
                rows.append(dict(library="scoreflow", method=method, schedule=schedule, nfe=res.nfe, x=res.samples))
    for r in rows:
        r["path_rms"] = rms_error(r.pop("x"), ref)
    return {**info, "problem": name}, rows


def evaluate(name, law, info, n, kd):
    sde = sf.VPSDE()
    seed = info.get("seed", 0)
    x_T = sde.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_pilot = sde.prior_sample((ARGS.pilot, law.dim), generator=torch.Generator().manual_seed(seed + 10**6), dtype=torch.float64)
    t0 = time.perf_counter()
    ref, ref_nfe = reference_solve(law, sde, x_T)
    with torch.no_grad():
        rows = run_scoreflow(law, sde, x_T, x_pilot, CURVE_BUDGETS)
        rows += run_diffusers(law, sde, x_T, CURVE_BUDGETS, schedules=("linspace", "karras", "log_snr_capped"))
        rows += run_k_diffusion(kd, law, sde, x_T, CURVE_BUDGETS, schedules=("karras", "log_snr_capped"),
                                methods=("lms", "dpmpp_2m", "dpmpp_3m"), tolerances=TOLERANCES)
    for r in rows:
        r["path_rms"] = rms_error(r.pop("x"), ref)
    info = {**info, "problem": name, "dim": law.dim, "components": law.n_components, "n": n, "reference_nfe": ref_nfe,
            "seconds": time.perf_counter() - t0}
    return info, rows


def fmt_ratio(values, goal):
    if not values:
        return "-"
    med, worst = statistics.median(values), max(values)
    return f"{med:.2f} / {worst:.2f}"


def report(results):
    lines = ["| NFE | rule / best peer, any grid: median / worst | rule / best peer, own grids: median / worst "
             "| scoreflow oracle / peer oracle: median / worst | goal (median / worst) |", "|---|---|---|---|---|"]
    summary = {}
    random_only = [s for i, r, s in results if i.get("random")]
    for b in BUDGETS:
        cols = []
        for num, den in (("rule", "peer"), ("rule", "peer_own"), ("scoreflow_oracle", "peer")):
            vals = [s[b][num] / s[b][den] for s in random_only if s[b][num] and s[b][den]]
            summary[f"{num}/{den}@{b}"] = vals
            cols.append(fmt_ratio(vals, None))
        goal = "<= 0.3 / <= 0.5" if b in (10, 20) else "-"
        lines.append(f"| {b} | " + " | ".join(cols) + f" | {goal} |")
    nfe_lines = ["| NFE to path error 1e-3 | median ratio to best peer (any grid) | worst | median ratio (own grids) | worst |", "|---|---|---|---|---|"]
    for who in ("rule", "scoreflow_oracle", "adaptive_batch", "adaptive_per_sample", "adaptive_per_sample_mean"):
        vals = [s["nfe_to_1e-3"][who] / s["nfe_to_1e-3"]["peer"] for s in random_only if math.isfinite(s["nfe_to_1e-3"]["peer"])]
        own = [s["nfe_to_1e-3"][who] / s["nfe_to_1e-3"]["peer_own"] for s in random_only if math.isfinite(s["nfe_to_1e-3"]["peer_own"])]
        summary[f"nfe_to_1e-3 {who}/peer"] = vals
        summary[f"nfe_to_1e-3 {who}/peer_own"] = own
        show = lambda v: f"{statistics.median(v):.2f}" if v else "-"
        nfe_lines.append(f"| {who} | {show(vals)} | {max(vals, default=float('nan')):.2f} | {show(own)} | {max(own, default=float('nan')):.2f} |")
    per_problem = ["| problem | d | K | NFE 10: rule / peer (peer config) | NFE 20: rule / peer (peer config) | NFE to 1e-3: rule / adaptive / peer |",
                   "|---|---|---|---|---|---|"]
    for info, _, s in results:
        cells = []
        for b in (10, 20):
            cells.append(f"{s[b]['rule']:.1e} / {s[b]['peer']:.1e} = {s[b]['rule'] / s[b]['peer']:.2f} ({s[b]['peer_config']})")
        n = s["nfe_to_1e-3"]
        per_problem.append(f"| {info['problem']} | {info['dim']} | {info['components']} | " + " | ".join(cells)
                           + f" | {n['rule']:.1f} / {n['adaptive_batch']:.1f} / {n['peer']:.1f} |")
    cost = ["| NFE | median fit cost: score calls on the pilot | = NFE per sample of a batch of 1000 |", "|---|---|---|"]
    for b in BUDGETS:
        fits = [r for _, rows, _ in results for r in rows if is_rule(r) and r["steps"] == b]
        if fits:
            calls, rows_ = [r["pilot_nfe"] for r in fits], fits[0]["pilot_rows"]
            cost.append(f"| {b} | {statistics.median(calls):.0f} on {rows_} draws | {statistics.median(calls) * rows_ / 1000:.1f} |")
    fam = ["| peer family on scoreflow's grids | median error ratio to scoreflow's fixed-grid best | best (lowest) ratio | cells with ratio < 0.9 |",
           "|---|---|---|---|"]
    for name, vals in same_grid(results).items():
        if vals:
            fam.append(f"| {name} | {statistics.median(vals):.2f} | {min(vals):.2f} | {sum(v < 0.9 for v in vals)} of {len(vals)} |")
    return lines, nfe_lines + [""] + cost + [""] + fam, per_problem, summary


def plot_adaptive(results, path):
    """Path error against NFE of the batch-wide and the per-sample adaptive solver (mean and largest NFE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    shown = [res for res in results if not res[0].get("random")] + [res for res in results if res[0].get("random")][:3]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.6), squeeze=False)
    for ax, (info, rows, _) in zip(axes[0], shown):
        for method, key, style, label in (("dpmpp_4m_pc_adaptive", "nfe", "o-", "batch-wide"),
                                          ("dpmpp_4m_pc_adaptive_per_sample", "nfe_mean", "s--", "per sample, mean NFE"),
                                          ("dpmpp_4m_pc_adaptive_per_sample", "nfe", "^:", "per sample, largest NFE")):
            pts = sorted((r[key], r["path_rms"]) for r in rows if r["method"] == method)
            ax.loglog(*zip(*pts), style, ms=4, label=label)
        ax.axhline(1e-3, color="grey", lw=0.8)
        ax.set(title=f"{info['problem']} (d={info['dim']}, K={info['components']})", xlabel="NFE", ylim=(1e-6, 1))
        ax.set_xticks([5, 10, 20, 50, 100], ["5", "10", "20", "50", "100"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("RMS path error")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def main(argv=None):
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random", type=int, default=20, help="number of random problems (seeds SEED_BASE + i)")
    ap.add_argument("--seed-base", type=int, default=SEED_BASE)
    ap.add_argument("--fixed", action="store_true", help="also the fixed problems ring2d_sharp, mixture16d, gaussian2d")
    ap.add_argument("--n", type=int, default=300, help="prior draws per problem")
    ap.add_argument("--pilot", type=int, default=64, help="pilot draws of fit_schedule")
    ap.add_argument("--out", default="benchmarks/results/few_nfe_random")
    ap.add_argument("--no-check", action="store_true", help="skip the 500-step convergence check of the diffusers peers")
    ap.add_argument("--plot", default="docs/img/few_nfe_per_sample.png", help="NFE-to-error plot of the adaptive solvers")
    ap.add_argument("--report", action="store_true", help="only rebuild the tables and the plot from OUT/results.json")
    ap.add_argument("--ipndm", action="store_true", help="only iPNDM against scoreflow's fixed-grid methods on the same grids")
    ARGS = ap.parse_args(argv)
    if ARGS.report:
        saved = read_json(Path(ARGS.out) / "results.json")
        results = [(p["info"], p["rows"], summarize(p["rows"])) for p in saved["problems"]]
        return finish(results, saved["check"], Path(ARGS.out))
    torch.set_num_threads(1)
    kd = load_k_diffusion_sampling()
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    problems = [(f"random{ARGS.seed_base + i}", *random_mixture(ARGS.seed_base + i)) for i in range(ARGS.random)]
    problems = [(name, law, {**info, "random": True}) for name, law, info in problems]
    if ARGS.fixed:
        problems += [(name, make_law(name), {}) for name in FIXED]
    if ARGS.ipndm:
        evaluated = [(None, evaluate_ipndm(name, law, info, ARGS.n)[1], None) for name, law, info in problems]
        print("| grid | NFE | iPNDM / scoreflow's fixed-grid best: median | lowest | cells < 0.9 |\n|---|---|---|---|---|")
        for grid in ("log_snr", "log_snr_capped"):
            for b in BUDGETS:
                vals = same_grid([res for res in evaluated], grids=(grid,), budgets=(b,))["iPNDM (peers.sample_ipndm)"]
                print(f"| {grid} | {b} | {statistics.median(vals):.2f} | {min(vals):.2f} | {sum(v < 0.9 for v in vals)} of {len(vals)} |")
        return
    check = {} if ARGS.no_check else convergence_check(problems[0][1], sf.VPSDE())
    if check:
        worst = max(v[-1] for k, v in check.items() if "linspace" not in k)
        print(json.dumps({"convergence_check": check, "worst_at_500_steps_float64_grids": worst}), flush=True)
        if worst > 1e-4:
            raise SystemExit(f"a diffusers peer does not converge to the reference (error {worst:.1e} at 500 steps)")
    results = []
    for name, law, info in problems:
        info, rows = evaluate(name, law, info, ARGS.n, kd)
        s = summarize(rows)
        results.append((info, rows, s))
        print(json.dumps({"problem": name, "dim": info["dim"], "K": info["components"], "seconds": round(info["seconds"]),
                          **{f"{b}": {k: v for k, v in s[b].items()} for b in (10, 20)}, "nfe_to_1e-3": s["nfe_to_1e-3"]},
                         default=str), flush=True)
        write_json(out / "results.json", {"check": check, "problems": [
            {"info": i, "summary": {str(k): v for k, v in sm.items()}, "rows": r} for i, r, sm in results]}, default=float, indent=None)
    finish(results, check, out)


def finish(results, check, out):
    lines, nfe_lines, per_problem, _ = report(results)
    text = "\n".join(lines + [""] + nfe_lines + [""] + per_problem)
    if check:
        text += "\n\nConvergence check (RMS error at 500 steps): " + ", ".join(f"{k} {v[0]:.1e}" for k, v in check.items())
    print(text)
    write_text(out / "table.md", text + "\n")
    if ARGS.plot:
        plot_adaptive(results, ARGS.plot)


if __name__ == "__main__":
    main()
