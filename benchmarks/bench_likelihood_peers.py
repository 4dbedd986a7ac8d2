"""Likelihood benchmark: scoreflow's Hutchinson estimate against score_sde's likelihood and flow_matching's, at equal accuracy.

On 16-D Gaussian mixtures (the testing kit's ``mixture16d`` and random ones drawn by ``peers.random_mixture``: 2-6
components, random weights, means and covariances per seed), batch 1000, float64, VP, every method integrates the probability-flow ODE with its
divergence from t_min to T with one Rademacher probe per sample, the *same* probe for all (so the probe's own
error, which dominates the error to the exact log p, is the same for all), and the exact p_T as prior:

- scoreflow dopri5: ``log_likelihood(trace="hutchinson")`` (torchdiffeq's dopri5, one forward pass and one VJP of
  the score per evaluation);
- scoreflow expint_pc_adaptive: ``log_likelihood(trace="hutchinson", method="expint_pc_adaptive")``, scoreflow's
  native exponential predictor-corrector with the divergence quadrature on its nodes (the same work per evaluation,
  fewer evaluations);
- scoreflow expint_pc_adaptive fd: the same with ``trace="hutchinson_fd"``, the probe's :math:`v^\top J v` by
  central differences (two forward passes of the score, no VJP, no graph; its bias, ~1e-10 nats here, is part of
  its solver error, measured against the VJP estimator's reference);
- score_sde as written: scipy ``solve_ivp`` (RK45) on a flattened numpy state with a numpy -> torch -> numpy round
  trip per evaluation, the drift from one model call and the divergence from a second (its ``ode_func``), as
  re-implemented call for call in ``bench_likelihood.py``;
- flow_matching: ``ODESolver.compute_likelihood`` (Hutchinson mode, dopri5; ``pip install --no-deps flow-matching``)
  on the same velocity, the probability-flow field with time mapped to its [0, 1] (data at 1); its probe is drawn
  inside with ``torch.randn_like``, which the benchmark makes return the shared probe (and it builds the probe and
  the log-density state in the default dtype, which is set to float64 for its calls).

Each method runs at rtol = atol from 1e-3 to 1e-6 (the native solver, whose error at a given tolerance is smaller,
from 1e-2 to 1e-5), half a decade apart (with every other point dropped, the interpolated time to a target moved by
a median 2 % and up to 22 %: where a sweep's points fall decided too much); its *solver error* is the mean |difference| from the
same estimator solved at 1e-10 (same probe), its total error the mean |difference| from the exact log p.  Equal
accuracy: the wall time each method needs to reach a solver error (1e-3 and 1e-4 nats, well below the probe's own
error), interpolated log-log along its tolerance sweep.  Times are medians over interleaved rounds, CPU time of the
process (one thread) and wall time.  Random mixtures: seeds 0-2 (used while developing the native solver), 3-4 and
10-12 (not looked at before the run that produced the docs' table).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_likelihood_peers.py                 # mixture16d + 8 seeds
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_likelihood_peers.py --seeds --rounds 1   # mixture16d only

Prints tables and writes ``benchmarks/results/bench_likelihood_peers.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from unittest import mock

import torch

import scoreflow as sf
from bench_likelihood import baseline_log_likelihood
from peers import random_mixture, write_json
from scoreflow.dynamics.divergence import draw_probes
from scoreflow.testing import make_law

TOLERANCES = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
NATIVE_TOLERANCES = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
TARGETS = (1e-3, 1e-4)
BATCH = 1000
OURS = ("scoreflow hutchinson", "scoreflow expint_pc_adaptive", "scoreflow expint_pc_adaptive fd")
PEERS = ("score_sde as written", "flow_matching compute_likelihood")


def score_sde_log_likelihood(score, sde, x, probe, *, rtol, atol, prior_log_prob):
    """score_sde's likelihood as written (``bench_likelihood.baseline_log_likelihood``: scipy RK45, numpy<->torch on
    each call, drift and divergence from two model calls); returns the log-likelihoods and the model calls."""
    log_p, nfev = baseline_log_likelihood(score, sde, x, probe, rtol=rtol, atol=atol, prior_log_prob=prior_log_prob,
                                          as_written=True)
    return log_p, 2 * nfev


def flow_matching_log_likelihood(score, sde, x, probe, *, rtol, atol, prior_log_prob):
    """flow_matching's ``ODESolver.compute_likelihood`` (Hutchinson) on the probability-flow velocity in its time
    tau in [0, 1] (t = T - tau (T - t_min), data at tau = 1), with its probe made the shared one."""
    from flow_matching.solver import ODESolver

    span = sde.T - sde.t_min
    calls = [0]

    def velocity(x, t):  # dx/dtau = -(T - t_min) F(x, t(tau))
        calls[0] += 1
        tt = (sde.T - t * span).to(x.dtype)
        g2 = sde.diffusion(tt) ** 2
        return -span * (sde.drift_coef(tt) * x - 0.5 * g2 * score(x, tt.expand(x.shape[0])))

    # compute_likelihood draws z = (randn_like(x) < 0) * 2 - 1: returning -probe makes z the shared probe.  It makes
    # z and its log-density state in the default dtype, so that is set to x's for the call.
    default = torch.get_default_dtype()
    torch.set_default_dtype(x.dtype)
    try:
        with mock.patch("torch.randn_like", lambda *args, **kwargs: -probe):
            _, log_p = ODESolver(velocity).compute_likelihood(
                x, prior_log_prob, step_size=None, method="dopri5", atol=atol, rtol=rtol,
                time_grid=torch.tensor([1.0, 0.0], dtype=x.dtype),
            )
    finally:
        torch.set_default_dtype(default)
    return log_p, calls[0]


def scoreflow_log_likelihood(score, sde, x, probe, *, rtol, atol, prior_log_prob, probe_seed, method="dopri5",
                             trace="hutchinson"):
    """scoreflow's Hutchinson estimate; its probe, drawn from ``probe_seed``, is the shared one."""
    res = sf.log_likelihood(score, sde, x, trace=trace, method=method, rtol=rtol, atol=atol,
                            prior_log_prob=prior_log_prob, generator=torch.Generator().manual_seed(probe_seed))
    return res.log_prob, res.nfe


def native_log_likelihood(score, sde, x, probe, **kwargs):
    return scoreflow_log_likelihood(score, sde, x, probe, method="expint_pc_adaptive", **kwargs)


def native_fd_log_likelihood(score, sde, x, probe, **kwargs):
    return scoreflow_log_likelihood(score, sde, x, probe, method="expint_pc_adaptive", trace="hutchinson_fd", **kwargs)


METHODS = {
    "scoreflow hutchinson": scoreflow_log_likelihood,
    "scoreflow expint_pc_adaptive": native_log_likelihood,
    "scoreflow expint_pc_adaptive fd": native_fd_log_likelihood,
    "score_sde as written": score_sde_log_likelihood,
    "flow_matching compute_likelihood": flow_matching_log_likelihood,
}


def time_at(points, target):
    """Time to reach solver error ``target``, log-log interpolated along (error, time) points sorted by tolerance."""
    points = sorted(points, key=lambda p: -p[0])  # decreasing error
    for (e0, t0), (e1, t1) in zip(points, points[1:]):
        if e1 <= target <= e0 and e1 < e0:
            w = (math.log(target) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    return points[0][1] if points and points[0][0] <= target else math.nan


def run_problem(name, law, rounds, probe_seed=1):
    sde = sf.VPSDE()
    law = law.to(torch.float64)
    score = law.score(sde)
    x = law.marginal(sde, sde.t_min).sample(BATCH, generator=torch.Generator().manual_seed(0))
    exact = law.marginal(sde, sde.t_min).log_prob(x)
    p_T = law.marginal(sde, sde.T).log_prob
    probe = draw_probes(x, 1, "rademacher", torch.Generator().manual_seed(probe_seed))[0]
    kwargs = {m: {"probe_seed": probe_seed} for m in OURS}
    with torch.no_grad():
        reference, _ = scoreflow_log_likelihood(score, sde, x, probe, rtol=1e-10, atol=1e-10, prior_log_prob=p_T,
                                                probe_seed=probe_seed)
    sweeps = {m: NATIVE_TOLERANCES if "expint" in m else TOLERANCES for m in METHODS}
    runs = {(m, tol): {"wall": [], "cpu": []} for m in METHODS for tol in sweeps[m]}
    results = {}
    for _ in range(rounds):
        for (method, tol), times in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                log_p, nfe = METHODS[method](score, sde, x, probe, rtol=tol, atol=tol, prior_log_prob=p_T,
                                             **kwargs.get(method, {}))
            times["wall"].append(time.perf_counter() - wall)
            times["cpu"].append(time.process_time() - cpu)
            results[(method, tol)] = {
                "nfe": nfe, "solver_error": float((log_p - reference).abs().mean()),
                "error_to_exact": float((log_p - exact).abs().mean()),
            }
    rows = []
    for (method, tol), times in runs.items():
        rows.append({"problem": name, "method": method, "tol": tol, **results[(method, tol)],
                     "wall_s": statistics.median(times["wall"]), "cpu_s": statistics.median(times["cpu"])})
    probe_error = float((reference - exact).abs().mean())
    return rows, probe_error, law.n_components


def summarize(all_rows, clock):
    """Per problem: time at each target solver error, and the ratios of every method's time to each of scoreflow's."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in all_rows):
        rows = [r for r in all_rows if r["problem"] == problem]
        entry = {"problem": problem}
        for target in TARGETS:
            times = {m: time_at([(r["solver_error"], r[clock]) for r in rows if r["method"] == m], target) for m in METHODS}
            entry[target] = {m: {"time_s": t, **{f"ratio_to_{ours}": t / times[ours] for ours in OURS}}
                             for m, t in times.items()}
        out.append(entry)
    return out


def spread(entries, method, ours, target):
    """min, median and max over the problems of ``method``'s time / ``ours``'s at ``target``."""
    values = sorted(e[target][method][f"ratio_to_{ours}"] for e in entries)
    return values[0], statistics.median(values), values[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4, 10, 11, 12],
                        help="random 16-D mixtures (besides mixture16d)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_likelihood_peers.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    problems = {"mixture16d": make_law("mixture16d")}
    problems.update({f"random16d seed {s}": random_mixture(3000 + s, dims=(16, 16), components=(2, 6))[0] for s in args.seeds})
    all_rows, info = [], {}
    load = {"start": os.getloadavg()}
    for name, law in problems.items():
        rows, probe_error, k = run_problem(name, law, args.rounds)
        all_rows += rows
        info[name] = {"components": k, "probe_error_nats": probe_error}
        print(f"{name}: {k} components, error of the one-probe estimate itself {probe_error:.3f} nats", flush=True)

    load["end"] = os.getloadavg()
    print(f"\nBatch {BATCH}, float64, VP, one shared Rademacher probe, exact p_T; medians of {args.rounds} interleaved rounds; "
          f"load average (1, 5, 15 min) at start {load['start']}, at end {load['end']} on {os.cpu_count()} cores")
    print("| problem | method | rtol=atol | NFE | CPU s | wall s | solver error | error to exact log p |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in all_rows:
        print(f"| {r['problem']} | {r['method']} | {r['tol']:.0e} | {r['nfe']} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | "
              f"{r['solver_error']:.2e} | {r['error_to_exact']:.3f} |")
    summary = {clock: summarize(all_rows, clock) for clock in ("cpu_s", "wall_s")}
    for clock, entries in summary.items():
        for ours in OURS:
            print(f"\nEqual accuracy ({clock[:-2]} time): time / {ours}'s time to reach a solver error of 1e-3 | 1e-4 nats")
            others = [m for m in METHODS if m != ours]
            print("| problem | " + " | ".join(others) + " |")
            print("|---|" + "---:|" * len(others))
            for e in entries:
                cells = [" / ".join(f"{e[t][m][f'ratio_to_{ours}']:.2f}" for t in TARGETS) for m in others]
                print(f"| {e['problem']} | " + " | ".join(cells) + " |")
            print("| min / median / max | " + " | ".join(
                " ; ".join("/".join(f"{v:.2f}" for v in spread(entries, m, ours, t)) for t in TARGETS) for m in others) + " |")
    write_json(args.out, {"config": vars(args), "load_average": load, "problems": info, "rows": all_rows,
                               "equal_accuracy": {c: [{k if isinstance(k, str) else f"{k:g}": v for k, v in e.items()}
                                                      for e in entries] for c, entries in summary.items()}}, indent=2)


if __name__ == "__main__":
    main()
