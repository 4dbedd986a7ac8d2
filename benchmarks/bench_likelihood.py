"""Likelihood benchmark: scoreflow's exact and Hutchinson traces against a score_sde-style baseline.

On the 16-D four-component mixture (exact log p_{t_min} known), every method integrates the
augmented probability-flow ODE from t_min to T at the same rtol/atol.  The baseline does what
score_sde's ``likelihood.py`` does: scipy ``solve_ivp`` (RK45) on a flattened numpy state, a
numpy -> torch -> numpy round trip, the drift from one model call and one Rademacher Hutchinson
VJP from a second on every evaluation; a leaner variant (one model call for both) is run too.
All methods use the exact p_T as prior, so the errors are solver + trace-estimator error only
(the mismatch of the N(0, s^2 I) prior is printed separately).

    PYTHONPATH=src python benchmarks/bench_likelihood.py            # batch 1000, VP, float64
    PYTHONPATH=src python benchmarks/bench_likelihood.py --sde ve --batch 200

Prints a table and writes ``benchmarks/results/bench_likelihood.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

import scoreflow as sf
from scoreflow.dynamics.divergence import draw_probes
from scoreflow.testing import make_problem

from peers import write_json


def baseline_log_likelihood(score, sde, x, probe, *, rtol, atol, prior_log_prob, as_written=False):
    """score_sde-style likelihood: scipy RK45, numpy<->torch on each call, one fixed Hutchinson probe.

    ``as_written=True`` follows score_sde's ``ode_func`` call for call: the drift comes from one
    model call and the divergence from a second (``drift_fn`` then ``div_fn``), i.e. two score
    evaluations per right-hand side.  ``False`` is a leaner variant that reuses one evaluation
    for both, a stronger baseline than score_sde itself.  Both keep ``x``'s dtype (score_sde
    casts to float32) so that the accuracy comparison is like for like.
    """
    shape, batch, n_state = x.shape, x.shape[0], x.numel()
    dims = tuple(range(1, x.ndim))

    def drift_fn(xt, tt):
        g2 = (sde.diffusion(tt) ** 2).reshape((batch,) + (1,) * len(dims))
        return sde.drift(xt, tt) - 0.5 * g2 * score(xt, tt)

    def rhs(t, y):
        xt = torch.from_numpy(y[:n_state]).reshape(shape).to(x.dtype)
        tt = torch.full((batch,), t, dtype=x.dtype)
        if as_written:
            with torch.no_grad():
                drift_out = drift_fn(xt, tt)
        with torch.enable_grad():
            xt.requires_grad_(True)
            drift = drift_fn(xt, tt)
            vjp = torch.autograd.grad((drift * probe).sum(), xt)[0]
        if not as_written:
            drift_out = drift.detach()
        div = (vjp * probe).sum(dim=dims)
        return np.concatenate([drift_out.numpy().reshape(-1), div.numpy()])

    y0 = np.concatenate([x.numpy().reshape(-1), np.zeros(batch)])
    sol = solve_ivp(rhs, (sde.t_min, sde.T), y0, method="RK45", rtol=rtol, atol=atol)
    z = torch.from_numpy(sol.y[:n_state, -1]).reshape(shape).to(x.dtype)
    delta = torch.from_numpy(sol.y[n_state:, -1]).to(x.dtype)
    return prior_log_prob(z) + delta, sol.nfev


def round_trip_seconds(x, reps=200):
    """Time of the baseline's per-evaluation plumbing alone: state numpy -> torch -> numpy."""
    y = np.concatenate([x.numpy().reshape(-1), np.zeros(x.shape[0])])
    start = time.perf_counter()
    for _ in range(reps):
        xt = torch.from_numpy(y[: x.numel()]).reshape(x.shape).to(x.dtype)
        np.concatenate([xt.numpy().reshape(-1), xt[:, 0].numpy()])
    return (time.perf_counter() - start) / reps


def _errors(log_prob, exact):
    err = (log_prob - exact).double()
    return {"mean_abs_err": float(err.abs().mean()), "rmse": float(err.pow(2).mean().sqrt()),
            "max_abs_err": float(err.abs().max()), "bias": float(err.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--law", default="mixture16d")
    parser.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="report the fastest of this many runs (shared machines)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_likelihood.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    problem = make_problem(args.law, args.sde)
    law, sde = problem.law.to(dtype), problem.sde
    score = law.score(sde)
    x = law.marginal(sde, sde.t_min).sample(args.batch, generator=torch.Generator().manual_seed(args.seed))
    exact = law.marginal(sde, sde.t_min).log_prob(x)
    p_T = law.marginal(sde, sde.T).log_prob
    tol = dict(rtol=args.tol, atol=args.tol)

    def run_scoreflow(**kw):
        with torch.no_grad():
            res = sf.log_likelihood(score, sde, x, prior_log_prob=p_T, generator=torch.Generator().manual_seed(args.seed + 1), **tol, **kw)
        se = None if res.std_error is None else float(res.std_error.mean())
        return res.log_prob, {"nfe": res.nfe, "nfe_vjp": res.nfe_vjp, "mean_std_error": se}, res.latent

    def run_baseline(as_written):
        # the same probe draw as scoreflow's Rademacher run, so the two differ only in the solver plumbing
        probe = draw_probes(x, 1, "rademacher", torch.Generator().manual_seed(args.seed + 1))[0]
        log_prob, nfev = baseline_log_likelihood(score, sde, x, probe, prior_log_prob=p_T, as_written=as_written, **tol)
        calls = 2 * nfev if as_written else nfev
        return log_prob, {"nfe": calls, "nfe_vjp": nfev, "mean_std_error": None}, None

    methods = {
        "scoreflow exact": lambda: run_scoreflow(trace="exact"),
        "scoreflow hutchinson rademacher P=1": lambda: run_scoreflow(trace="hutchinson", probe="rademacher"),
        "scoreflow hutchinson gaussian P=1": lambda: run_scoreflow(trace="hutchinson", probe="gaussian"),
        "scoreflow hutchinson rademacher P=4": lambda: run_scoreflow(trace="hutchinson", probe="rademacher", n_probes=4),
        "scoreflow hutchinson gaussian P=4": lambda: run_scoreflow(trace="hutchinson", probe="gaussian", n_probes=4),
        "baseline score_sde as written RK45 P=1": lambda: run_baseline(True),
        "baseline lean score_sde-style RK45 P=1": lambda: run_baseline(False),
    }
    run_scoreflow(trace="hutchinson", probe="rademacher")  # warm-up (imports, allocator)
    # rounds interleave the methods, so a burst of load on a shared machine hits all of them alike
    walls = {name: [] for name in methods}
    cpus = {name: [] for name in methods}
    rows, latent = {}, None
    for _ in range(args.repeats):
        for name, run in methods.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            log_prob, stats, z = run()
            walls[name].append(time.perf_counter() - wall0)
            cpus[name].append(time.process_time() - cpu0)
            latent = z if z is not None else latent
            rows[name] = {"wall_s": min(walls[name]), "cpu_s": min(cpus[name]), **stats, **_errors(log_prob, exact)}

    base = rows["baseline score_sde as written RK45 P=1"]
    lean = rows["baseline lean score_sde-style RK45 P=1"]
    ours = rows["scoreflow hutchinson rademacher P=1"]
    ratio = base["wall_s"] / ours["wall_s"]
    cpu_ratio = base["cpu_s"] / ours["cpu_s"]
    lean_ratio = lean["wall_s"] / ours["wall_s"]
    prior_gap = float((sde.prior_log_prob(latent) - p_T(latent)).abs().mean())
    d = law.dim
    print(f"{args.law} under {args.sde}, batch {args.batch}, {args.dtype}, rtol=atol={args.tol:g}, "
          f"{args.threads} thread(s), best of {args.repeats}; errors vs exact log p_t_min (nats), exact p_T as prior")
    print(f"{'method':<46}{'wall s':>8}{'CPU s':>8}{'NFE':>6}{'VJPs':>7}{'mean|err|':>11}{'RMSE':>10}{'max|err|':>10}{'bias':>10}{'mean SE':>9}")
    for name, r in rows.items():
        se = "" if r["mean_std_error"] is None else f"{r['mean_std_error']:.3g}"
        print(f"{name:<46}{r['wall_s']:>8.2f}{r['cpu_s']:>8.2f}{r['nfe']:>6}{r['nfe_vjp']:>7}{r['mean_abs_err']:>11.3g}"
              f"{r['rmse']:>10.3g}{r['max_abs_err']:>10.3g}{r['bias']:>10.2g}{se:>9}")
    print(f"time ratio score_sde as written / scoreflow Hutchinson Rademacher P=1: wall {ratio:.2f}x, CPU {cpu_ratio:.2f}x")
    print(f"time ratio lean baseline / scoreflow Hutchinson Rademacher P=1: wall {lean_ratio:.2f}x")
    print(f"RMSE ratio baseline / scoreflow (same probes): {base['rmse'] / ours['rmse']:.3f}")
    trip = round_trip_seconds(x)
    print(f"baseline numpy<->torch round trip alone: {trip * 1e6:.0f} us per evaluation "
          f"({trip * base['nfe'] / base['wall_s']:.1%} of its wall time)")
    print(f"prior mismatch |log N(0, prior_std^2) - log p_T| at x_T: {prior_gap:.3g} nats "
          f"({prior_gap / (d * math.log(2)):.3g} bits/dim), excluded above")

    write_json(args.out, {"config": vars(args), "rows": rows, "wall_ratio_baseline_over_hutchinson": ratio,
                               "cpu_ratio_baseline_over_hutchinson": cpu_ratio,
                               "wall_ratio_lean_baseline_over_hutchinson": lean_ratio,
                               "prior_mismatch_nats": prior_gap,
                               "round_trip_s_per_eval": trip}, indent=2)


if __name__ == "__main__":
    main()
