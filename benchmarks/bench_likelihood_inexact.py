"""Likelihoods of models that are not exact: evaluations at equal error, native expint_pc_adaptive against dopri5.

The likelihood benchmarks run on exact scores.  A trained model is not exact, and the native solvers' smoothness
assumption is about its prediction: towards noise they integrate the data prediction
x0_hat = (x - sigma eps_hat) / alpha in r = alpha / sigma, which carries an error e of the noise prediction as e / r.
This study perturbs the exact model of random Gaussian mixtures in two ways and measures, per problem, the
evaluations each method needs to reach a mean absolute error of the log-likelihood (against dopri8 at
rtol = atol = 1e-11 on the same perturbed model), from a sweep of tolerances:

- ``scaled``: the model's native prediction (the score under VP, the velocity under rectified flow) times 1 + c t,
  c drawn in +-[0.02, 0.1] (an error that grows towards noise);
- ``offset``: the noise prediction plus a fixed vector of norm d in [0.01, 0.05] (under VP the score
  -(eps_hat + delta) / sigma; under rectified flow the velocity u + delta, which moves eps_hat and x0_hat alike);
- ``exact``: the exact model, for reference.

Problems: ``random_mixture(seed)`` for seeds 7100, 7101, ... (D 2-8, 1-4 components), 64 points of the law at
t_min = 1e-3, under VP and rectified flow; nothing here was tuned.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_likelihood_inexact.py            # 8 seeds
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_likelihood_inexact.py --seeds 2  # quick

Prints a table (median [min-max] over seeds of expint_pc_adaptive's evaluations / dopri5's at each error) and writes
``benchmarks/results/likelihood_inexact.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

import scoreflow as sf
from peers import random_mixture, write_json

T_MIN = 1e-3
TOLERANCES = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7)
TARGETS = (1e-3, 1e-4, 1e-5)
METHODS = ("dopri5", "expint_pc_adaptive")
PERTURBATIONS = ("exact", "scaled", "offset")


def perturbed(law, sde, kind: str, g: torch.Generator):
    """The exact model of ``law`` under ``sde``, perturbed as ``kind`` says (module docstring); and what was drawn."""
    flow = sde.pure_noise_at_T
    exact = law.velocity(sde) if flow else law.score(sde)
    if kind == "exact":
        return exact, {}
    if kind == "scaled":
        c = (0.02 + 0.08 * float(torch.rand((), generator=g, dtype=torch.float64))) * (1 if torch.rand((), generator=g) < 0.5 else -1)
        if flow:
            return sf.score_from_flow_velocity(lambda x, t: (1 + c * t[:, None]) * exact.predict(x, t), sde), {"c": c}
        return (lambda x, t: (1 + c * t[:, None]) * exact(x, t)), {"c": c}
    size = 0.01 + 0.04 * float(torch.rand((), generator=g, dtype=torch.float64))
    u = torch.randn(law.dim, generator=g, dtype=torch.float64)
    delta = size * u / u.norm()
    if flow:
        return sf.score_from_flow_velocity(lambda x, t: exact.predict(x, t) + delta, sde), {"d": size}

    def score(x, t):
        sigma = sde.marginal(t)[1][:, None]
        return exact(x, t) - delta / sigma

    return score, {"d": size}


def evaluations_at_error(law, sde, model, n: int = 64) -> dict:
    """Per method, the sweep's (tolerance, mean abs error, NFE) and the fewest NFE reaching each target error."""
    x = law.marginal(sde, T_MIN).sample(n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = sf.log_likelihood(model, sde, x, t_min=T_MIN, method="dopri8", rtol=1e-11, atol=1e-11).log_prob
        out = {}
        for method in METHODS:
            sweep = []
            for tol in TOLERANCES:
                r = sf.log_likelihood(model, sde, x, t_min=T_MIN, method=method, rtol=tol, atol=tol)
                sweep.append({"tol": tol, "error": float((r.log_prob - reference).abs().mean()), "nfe": r.nfe})
            best = {str(e): min((s["nfe"] for s in sweep if s["error"] <= e), default=None) for e in TARGETS}
            out[method] = {"sweep": sweep, "nfe_at_error": best}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="random mixtures (seeds 7100, 7101, ...)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "likelihood_inexact.json"))
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds: expected at least 1, got {args.seeds}")
    torch.set_num_threads(1)
    runs = []
    for i in range(args.seeds):
        seed = 7100 + i
        law, info = random_mixture(seed, dims=(2, 8), components=(1, 4))
        for sde in (sf.VPSDE(), sf.RectifiedFlow()):
            for kind in PERTURBATIONS:
                model, drawn = perturbed(law, sde, kind, torch.Generator().manual_seed(seed))
                result = evaluations_at_error(law, sde, model)
                runs.append({**info, "process": type(sde).__name__, "perturbation": kind, **drawn, **result})
                ratios = [ratio(result, e) for e in TARGETS]
                print(f"seed {seed} D={info['dim']} K={info['components']} {type(sde).__name__} {kind}: "
                      + ", ".join(f"{e:g}: {r:.2f}" if r else f"{e:g}: -" for e, r in zip(TARGETS, ratios)), flush=True)
    print("\nexpint_pc_adaptive's evaluations / dopri5's at equal mean error, median [min-max] over seeds "
          "(below 1: the native solver needs fewer)")
    print("| process | model | " + " | ".join(f"error {e:g}" for e in TARGETS) + " |")
    print("| --- | --- |" + " --- |" * len(TARGETS))
    for process in ("VPSDE", "RectifiedFlow"):
        for kind in PERTURBATIONS:
            cells = []
            for e in TARGETS:
                vals = [r for run in runs if run["process"] == process and run["perturbation"] == kind
                        for r in [ratio(run, e)] if r is not None]
                cells.append(f"{statistics.median(vals):.2f} [{min(vals):.2f}-{max(vals):.2f}] ({len(vals)})" if vals else "-")
            print(f"| {process} | {kind} | " + " | ".join(cells) + " |")
    write_json(args.out, {"config": vars(args), "tolerances": TOLERANCES, "targets": TARGETS, "runs": runs})


def ratio(result: dict, target: float) -> float | None:
    """expint_pc_adaptive's fewest evaluations at ``target`` / dopri5's (None if either sweep never reached it)."""
    a, b = (result[m]["nfe_at_error"][str(target)] for m in ("expint_pc_adaptive", "dopri5"))
    return a / b if a and b else None


if __name__ == "__main__":
    main()
