r"""ODE convergence study: error of :math:`x_{t_{min}}` against an exact flow from the same :math:`x_T`, against NFE.

The reference is the closed-form probability-flow map for Gaussian data
(:meth:`scoreflow.analytic.Gaussian.flow_map`) and otherwise scipy's DOP853 in float64 at
``rtol = atol = 1e-12`` (an integrator independent of torchdiffeq).  Starting points are drawn
from the exact :math:`p_T`, so the error is the solver's alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .._checks import check_choice
from ..metrics import rms_error
from ..testing import Problem
from .registry import DEFAULT_ODE_METHODS, ODE_METHODS, ODEMethod
from .study import Study, check_study_arguments, progress_bar
from .verdict import order_record

__all__ = ["run_ode_study", "reference_flow", "step_grid", "tolerance_grid"]


def reference_flow(problem: Problem, x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow solution at ``sde.t_min`` from ``x_T`` at ``sde.T``, in float64."""
    sde, law = problem.sde, problem.law.to(torch.float64)
    return law.flow_map(sde, x_T.to(torch.float64), sde.T, sde.t_min, rtol=1e-12, atol=1e-12)


def step_grid(nfe_per_step: int, max_nfe: int, min_steps: int = 4, min_points: int = 4) -> list[int]:
    """Step counts ``min_steps * 2^k`` whose NFE stays within ``max_nfe`` (at least ``min_points`` of them, for a fit)."""
    steps, out = min_steps, []
    while steps * nfe_per_step <= max_nfe or len(out) < min_points:
        out.append(steps)
        steps *= 2
    return out


def tolerance_grid(dtype: torch.dtype) -> list[float]:
    """Tolerances ``1e-2, 1e-3, ...`` down to what the dtype resolves (1e-10 in float64, 1e-5 in float32)."""
    last = 10 if dtype == torch.float64 else 5
    return [10.0**-k for k in range(2, last + 1)]


def run_ode_study(
    problem: Problem,
    *,
    methods: Sequence[str] = DEFAULT_ODE_METHODS,
    n: int = 512,
    max_nfe: int = 512,
    min_steps: int = 4,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    progress: bool = False,
) -> Study:
    """Solve the probability-flow ODE with every method over its grid and fit orders.

    Args:
        problem: a reference problem (:func:`scoreflow.testing.make_problem`).
        methods: names in :data:`ODE_METHODS`.
        n: number of trajectories.
        max_nfe: NFE budget of one solve: fixed-step grids stop below it, tolerance sweeps stop after exceeding it.
        min_steps: the coarsest step count.
        dtype: float64 or float32 for the solves (the reference is always float64).
        seed: seeds the starting points.
        progress: show a progress bar.

    Returns:
        A :class:`Study` with metric ``"error"`` (RMS error per coordinate against the reference).

    Raises:
        ValueError: for a method not in the registry (the message lists them).
        TypeError, ValueError: for a bad problem, methods list, n, max_nfe, min_steps, dtype or seed (:func:`.study.check_study_arguments`).
    """
    methods = check_study_arguments("run_ode_study", problem, methods, n=n, max_nfe=max_nfe, min_steps=min_steps, dtype=dtype, seed=seed, progress=progress)
    specs = [_lookup(m) for m in methods]
    law = problem.law.to(dtype)
    sde = problem.sde
    x_T = law.marginal(sde, sde.T).sample(n, generator=torch.Generator().manual_seed(seed))
    reference = reference_flow(problem, x_T)
    score = law.score(sde)
    scale, eps = float(reference.pow(2).mean().sqrt()), torch.finfo(dtype).eps
    grids = {
        s.name: tolerance_grid(dtype) if s.adaptive else step_grid(s.nfe_per_step, max_nfe, min_steps) for s in specs
    }
    study = Study(
        "ode",
        problem.name,
        ("error",),
        config={
            "n": n,
            "max_nfe": max_nfe,
            "dtype": str(dtype).removeprefix("torch."),
            "seed": seed,
        },
    )
    bar = progress_bar(sum(map(len, grids.values())), f"ODE {problem.name}", progress)
    for spec in specs:
        for i, value in enumerate(grids[spec.name]):
            bar.set_postfix_str(f"{spec.name} {'tol' if spec.adaptive else 'steps'}={value:g}")
            start = time.perf_counter()
            res = spec.run(score, sde, x_T, value)
            study.rows.append(
                {
                    "study": "ode",
                    "problem": problem.name,
                    "method": spec.name,
                    "kind": "adaptive" if spec.adaptive else "fixed",
                    "setting": "tol" if spec.adaptive else "steps",
                    "value": value,
                    "nfe": res.nfe,
                    "error": rms_error(res.samples, reference),
                    "seconds": time.perf_counter() - start,
                }
            )
            bar.update()
            if spec.adaptive and res.nfe > max_nfe:
                bar.update(len(grids[spec.name]) - i - 1)
                break
        rows = [r for r in study.rows if r["method"] == spec.name]
        kind = "adaptive" if spec.adaptive else "fixed"
        study.orders.append(order_record(spec.name, "error", kind, spec.order, rows, scale=scale, eps=eps))
    bar.close()
    return study


def _lookup(name: str) -> ODEMethod:
    return ODE_METHODS[check_choice("run_ode_study", "methods", name, ODE_METHODS)]
