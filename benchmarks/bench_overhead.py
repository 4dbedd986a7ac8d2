"""Per-NFE overhead of every fixed-grid ODE method and dopri5, k-diffusion's samplers beside them, and torch.compile.

The overhead of a solve is its time divided by the time of its score evaluations made bare (1.0 is the physical
limit: nothing but score evaluations).  Two measures of the bare evaluations:

- *replayed*: the very evaluations of the solve (its inputs recorded in a warm-up run), called one after the other
  without the solver.  The cost of a score depends on the states it sees (float32 mixture densities underflow to
  slow subnormal numbers near the data), so this is the like-for-like measure;
- *NFE x call*: NFE times one bare call at (x_T, t = 0.5), the simpler definition, biased when the cost varies.

Times are CPU time of the process (one thread, so equal to wall time on an idle machine, but unaffected by other
processes on a shared one) and wall time.  Scores, on batches of 10 000 in float32:

- ``mixture``: scoreflow's exact score of a random 2-D Gaussian mixture (``law.score(sde)``; 3-10 components,
  random weights, means and covariances per seed, drawn by ``peers.random_mixture``), the cheap score;
- ``lean mixture``: the same law's score written as one chain of tensor operations (no host read), cheaper still;
- ``mlp``: a random MLP of width 512 on (x, t) (two hidden layers, SiLU), the costly score.

Each round runs every solver once, its replay, and the solver again with its set-up made from scratch (the three in
a random order), the solvers in a shuffled order; a method's overhead is the median over rounds.  scoreflow caches a
solve's grid and plan for the next call with the same arguments (``scoreflow._cache``), so the plain solve measures
the repeated call (sampling batch after batch) and *set-up from scratch* the first call of a setting.  Methods run 10 steps (NFE = 10 x the method's evaluations per step; dopri5 at rtol = atol = 1e-5).
k-diffusion's samplers (``pip install --no-deps k-diffusion``) see the same score as a VP denoiser in their
variables, on Karras' grid of 10 steps.  ``torchdiffeq dopri5, plain loop`` is torchdiffeq's dopri5 on the
probability-flow drift written by hand, without scoreflow: the overhead torchdiffeq's own step costs.

torch.compile: the whole ``sample_ode`` call of native methods, compiled once (dynamic=False), against eager, on the
read-free scores (scoreflow's ``mixture`` score reads the host itself, so it graph-breaks on every call).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_overhead.py                 # 3 seeds x 5 rounds
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_overhead.py --seeds 0 --rounds 2 --scores mlp   # quick
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_overhead.py --no-kdiffusion --compile-methods \
        --methods "torchdiffeq dopri5" "torchdiffeq dopri5, plain loop"    # scoreflow's dopri5 beside torchdiffeq's own

Prints markdown tables and writes ``benchmarks/results/bench_overhead.json``.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import scoreflow as sf
from scoreflow._cache import clear_caches
from peers import Counted, load_k_diffusion_sampling, random_mixture, vp_denoiser, write_json

BATCH = 10_000
STEPS = 10
KD_SAMPLERS = ("euler", "heun", "dpm_2", "lms", "dpmpp_2m")
SCORES = ("mixture", "lean mixture", "mlp")


class LeanMixtureScore:
    """The exact score of a Gaussian mixture under ``sde`` at one shared time, as plain tensor operations."""

    def __init__(self, law: sf.analytic.GaussianMixture, sde: sf.ForwardSDE) -> None:
        self.sde, self.log_w, self.means, self.covs = sde, law.weights.log(), law.means, law.covs
        self.eye = torch.eye(law.dim, dtype=law.means.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.sde.marginal(t[0])
        prec = torch.linalg.inv(alpha**2 * self.covs + sigma**2 * self.eye)  # (K, D, D)
        diff = x[:, None, :] - alpha * self.means  # (B, K, D)
        pulled = torch.einsum("kde,bke->bkd", prec, diff)
        logits = self.log_w + 0.5 * torch.logdet(prec) - 0.5 * (diff * pulled).sum(-1)
        return -(torch.softmax(logits, dim=-1)[..., None] * pulled).sum(1)


class MLPScore(torch.nn.Module):
    """A random MLP s(x, t) of width 512 (the costly score; its values only have to stay finite)."""

    def __init__(self, seed: int, dim: int = 2, width: int = 512) -> None:
        super().__init__()
        torch.manual_seed(2000 + seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * self.net(torch.cat([x, t[:, None]], dim=1))


def make_scores(seed: int, which: list[str], sde: sf.ForwardSDE) -> tuple[dict, int]:
    """The scores named in ``which`` for ``seed``, and the mixture's number of components."""
    law, _ = random_mixture(1000 + seed, dims=(2, 2), components=(3, 10), dtype=torch.float32)
    scores = {"mixture": law.score(sde), "lean mixture": LeanMixtureScore(law, sde), "mlp": MLPScore(seed)}
    return {name: scores[name] for name in which}, law.n_components


def solvers(sde, x_T, kd):
    """name -> run(score, cold=False) returning the NFE, for every fixed-grid ODE method, dopri5 and k-diffusion's
    samplers; ``cold=True`` empties scoreflow's caches first (the solve's grid and plan made from scratch)."""
    runs = {}
    for m in sf.list_methods("ode"):
        if m.adaptive and m.name != "dopri5":
            continue
        setting = {"rtol": 1e-5, "atol": 1e-5} if m.adaptive else {"steps": STEPS}

        def run(score, cold=False, m=m, setting=setting):
            if cold:
                clear_caches()
            return sf.sample_ode(score, sde, x_T, method=m.name, **setting).nfe

        runs[f"{m.backend} {m.name}"] = run
    runs["torchdiffeq dopri5, plain loop"] = plain_dopri5(sde, x_T)
    if kd is not None:
        alpha_T = float(sde.marginal(torch.tensor(sde.T, dtype=torch.float64))[0])
        s_min, s_max = torch.exp(-sde.log_snr(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))).tolist()
        # STEPS + 1 sigmas ending at sigma(t_min) (k-diffusion appends a zero, dropped: every sampler stops at t_min)
        sigmas = kd.get_sigmas_karras(STEPS + 1, s_min, s_max, rho=7.0).to(x_T.dtype)[:-1]
        for name in KD_SAMPLERS:
            def run(score, cold=False, sampler=getattr(kd, f"sample_{name}")):  # (no set-up to redo)
                model = Counted(vp_denoiser(SimpleNamespace(score=lambda _: score), sde))
                sampler(model, x_T / alpha_T, sigmas, disable=True)
                return model.calls

            runs[f"k-diffusion {name}"] = run
    return runs


def plain_dopri5(sde, x_T):
    """torchdiffeq's dopri5 on the probability-flow drift written as a user of torchdiffeq writes it (no scoreflow in
    the loop, same tolerances and ends as scoreflow's dopri5): the floor that torchdiffeq's own step sets."""
    import torchdiffeq

    # step_t: stop on t_min (torchdiffeq otherwise steps past it and interpolates back, and the VP score below t = 0
    # is NaN, so its step shrinks to nothing), as scoreflow's dopri5 does
    ends = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)

    def run(score, cold=False):  # (no set-up to redo)
        calls = 0

        def drift(t, x):
            nonlocal calls
            calls += 1
            t = t.to(x.dtype)
            return sde.drift_coef(t) * x - 0.5 * sde.diffusion(t) ** 2 * score(x, t.expand(x.shape[0]))

        torchdiffeq.odeint(drift, x_T, ends, method="dopri5", rtol=1e-5, atol=1e-5, options={"step_t": ends[1:]})
        return calls

    return run


class Recorded:
    """The score, keeping a copy of every input it is called with (to replay the same evaluations bare)."""

    def __init__(self, score):
        self.score, self.inputs = score, []

    def __call__(self, x, t):
        self.inputs.append((x.clone(), t.clone()))
        return self.score(x, t)


def timed(fn):
    """``(result, wall seconds, CPU seconds of this process)`` of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def replay(score, inputs):
    """The score evaluations of a solve, without the solve."""
    for x, t in inputs:
        score(x, t)


def overhead_rounds(score, sde, x_T, kd, rounds, seed, only=None):
    """Per method (those named in ``only``, default all), over shuffled rounds: solve time / replayed evaluations,
    and / (NFE x one call at x_T)."""
    runs = solvers(sde, x_T, kd)
    if only is not None:
        runs = {name: run for name, run in runs.items() if name in only}
    inputs = {}
    for name, run in runs.items():  # warm-up, and the inputs of every evaluation
        recorded = Recorded(score)
        run(recorded)
        inputs[name] = recorded.inputs
    t_mid = torch.full((x_T.shape[0],), 0.5, dtype=x_T.dtype)
    ratios = {name: {k: [] for k in ("replay_cpu", "replay_wall", "naive_cpu", "naive_wall", "cold_cpu")} for name in runs}
    nfe, bare = {}, []
    order = list(runs)
    shuffle = random.Random(seed)
    for _ in range(rounds):
        one = [timed(lambda: score(x_T, t_mid))[1:] for _ in range(5)]
        one_wall, one_cpu = statistics.median(w for w, _ in one), statistics.median(c for _, c in one)
        bare.append(one_wall)
        shuffle.shuffle(order)
        for name in order:
            # solve, replay and the solve with its set-up from scratch in a random order: whichever runs later finds
            # the allocator and caches warm
            jobs = ["solve", "replay", "cold"]
            shuffle.shuffle(jobs)
            for job in jobs:
                if job == "solve":
                    nfe[name], wall, cpu = timed(lambda: runs[name](score))
                elif job == "replay":
                    _, bare_wall, bare_cpu = timed(lambda: replay(score, inputs[name]))
                else:
                    _, _, cold_cpu = timed(lambda: runs[name](score, cold=True))
            r = ratios[name]
            r["cold_cpu"].append(cold_cpu / bare_cpu)
            r["replay_cpu"].append(cpu / bare_cpu)
            r["replay_wall"].append(wall / bare_wall)
            r["naive_cpu"].append(cpu / (nfe[name] * one_cpu))
            r["naive_wall"].append(wall / (nfe[name] * one_wall))
    rows = {name: {"nfe": nfe[name], **{k: statistics.median(v) for k, v in r.items()}, "rounds": r} for name, r in ratios.items()}
    return rows, statistics.median(bare)


def compile_speedups(score, sde, x_T, methods, rounds):
    """Eager and compiled time of whole ``sample_ode`` calls (medians over interleaved rounds), and graph breaks."""
    out = {}
    for method in methods:
        def eager(method=method):
            return sf.sample_ode(score, sde, x_T, method=method, steps=STEPS).samples

        compiled = torch.compile(eager, dynamic=False)
        _, compile_s, _ = timed(compiled)
        explained = torch._dynamo.explain(eager)()
        torch.testing.assert_close(compiled(), eager(), rtol=1e-4, atol=1e-4)
        times = {key: [] for key in ("eager_wall", "eager_cpu", "compiled_wall", "compiled_cpu")}
        for _ in range(rounds):
            for label, fn in (("eager", eager), ("compiled", compiled)):
                _, wall, cpu = timed(fn)
                times[f"{label}_wall"].append(wall)
                times[f"{label}_cpu"].append(cpu)
        out[method] = {
            **{f"{k}_s": statistics.median(v) for k, v in times.items()},
            "speedup_wall": statistics.median(e / c for e, c in zip(times["eager_wall"], times["compiled_wall"])),
            "speedup_cpu": statistics.median(e / c for e, c in zip(times["eager_cpu"], times["compiled_cpu"])),
            "compile_s": compile_s, "graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "break_reasons": [str(r.reason).splitlines()[0] for r in explained.break_reasons],
        }
    return out


def report(results) -> None:
    runs = results["runs"]
    scores = list(dict.fromkeys(r["score"] for r in runs))
    methods = list(dict.fromkeys(m for r in runs for m in r["methods"]))
    columns = (("replay_cpu", "replayed, CPU"), ("cold_cpu", "replayed, CPU, set-up from scratch"),
               ("replay_wall", "replayed, wall"), ("naive_cpu", "NFE x call, CPU"))
    print(f"\nPer-NFE overhead, batch {results['batch']}, {results['steps']} steps (dopri5: rtol = atol = 1e-5), "
          f"{results['threads']} thread; median over rounds, then median [min-max] over seeds {results['config']['seeds']}")
    print("| method | NFE | " + " | ".join(f"{s}: {label}" for s in scores for _, label in columns) + " |")
    print("|---|---:|" + "---:|" * (len(columns) * len(scores)))
    for method in methods:
        cells = []
        for score in scores:
            for key, _ in columns:
                vals = [r["methods"][method][key] for r in runs if r["score"] == score and method in r["methods"]]
                cells.append(f"{statistics.median(vals):.3f} [{min(vals):.3f}-{max(vals):.3f}]" if vals else "-")
        nfe = next(r["methods"][method]["nfe"] for r in runs if method in r["methods"])
        print(f"| {method} | {nfe} | " + " | ".join(cells) + " |")
    bare = {s: [r["bare_call_s"] * 1e3 for r in runs if r["score"] == s] for s in scores}
    print("one bare call at x_T, wall (ms): "
          + ", ".join(f"{s} {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]" for s, v in bare.items()))
    for score, rows in results.get("compile", {}).items():
        print(f"\ntorch.compile of a whole sample_ode call ({score} score, {results['steps']} steps, seed {results['config']['seeds'][0]})")
        print("| method | eager ms (CPU) | compiled ms (CPU) | speed-up, CPU | speed-up, wall | graphs / breaks | compile s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for method, r in rows.items():
            print(f"| {method} | {r['eager_cpu_s'] * 1e3:.1f} | {r['compiled_cpu_s'] * 1e3:.1f} | {r['speedup_cpu']:.2f} | "
                  f"{r['speedup_wall']:.2f} | {r['graphs']} / {r['graph_breaks']} | {r['compile_s']:.0f} |")
        reasons = sorted({reason for r in rows.values() for reason in r["break_reasons"]})
        print("graph breaks: " + "; ".join(reasons))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scores", nargs="+", default=list(SCORES), choices=SCORES)
    parser.add_argument("--compile-methods", nargs="*", default=["ddim", "dpmpp_2m", "dpmpp_3m_pc"])
    parser.add_argument("--no-kdiffusion", action="store_true")
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help="only these rows, named as in the table (e.g. 'torchdiffeq dopri5'); default all")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # the graph breaks are counted, not logged
    kd = None if args.no_kdiffusion else load_k_diffusion_sampling()
    sde = sf.VPSDE()
    rows = solvers(sde, torch.zeros(1, 2), kd)  # (only the names)
    if args.methods is not None and set(args.methods) - set(rows):
        parser.error(f"--methods: {sorted(set(args.methods) - set(rows))} are not rows of this run; its rows: {', '.join(rows)}")
    results = {"config": vars(args), "batch": BATCH, "steps": STEPS, "threads": torch.get_num_threads(), "runs": []}
    with torch.no_grad():
        for seed in args.seeds:
            scores, k = make_scores(seed, args.scores, sde)
            x_T = sde.prior_sample((BATCH, 2), generator=torch.Generator().manual_seed(seed))
            for name, score in scores.items():
                rows, bare = overhead_rounds(score, sde, x_T, kd, args.rounds, seed, args.methods)
                results["runs"].append({"seed": seed, "components": k, "score": name, "bare_call_s": bare, "methods": rows})
                print(f"seed {seed} ({k} components) {name}: one bare call {bare * 1e3:.2f} ms", flush=True)
        for name in [s for s in args.scores if s != "mixture" and args.compile_methods]:
            scores, _ = make_scores(args.seeds[0], [name], sde)
            x_T = sde.prior_sample((BATCH, 2), generator=torch.Generator().manual_seed(args.seeds[0]))
            results.setdefault("compile", {})[name] = compile_speedups(scores[name], sde, x_T, args.compile_methods, args.rounds)
            print(f"compiled with the {name} score", flush=True)
    report(results)
    write_json(args.out, results, indent=2)


if __name__ == "__main__":
    main()
