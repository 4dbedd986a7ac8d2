r"""Likelihood study: error of :math:`\log p_{t_{min}}(x)` against the exact log-density, against NFE.

Points are drawn from the exact law at ``t_min`` and the prior term is the exact
:math:`\log p_T`, so the error is the solver's (and, for Hutchinson, the probe's) alone.  The
exact trace converges at the solver's order; a Hutchinson estimate stops falling at the probe's
standard deviation, which the rows report as ``probe_std`` (one probe per solve).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .._checks import check_choice
from ..likelihood import TRACES, log_likelihood
from ..methods import get_method
from ..testing import Problem
from .ode import step_grid, tolerance_grid
from .study import Study, check_names, check_study_arguments, progress_bar
from .verdict import order_record

__all__ = ["run_likelihood_study", "LIKELIHOOD_METHODS"]

#: Solvers the likelihood study sweeps by default: one adaptive, one fixed-step.
LIKELIHOOD_METHODS = ("dopri5", "rk4")


def run_likelihood_study(
    problem: Problem,
    *,
    methods: Sequence[str] = LIKELIHOOD_METHODS,
    traces: Sequence[str] = ("exact", "hutchinson"),
    n: int = 64,
    max_nfe: int = 256,
    min_steps: int = 4,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    progress: bool = False,
) -> Study:
    """Compute log-likelihoods with every method and trace over its grid and fit orders.

    Args:
        problem: a reference problem (:func:`scoreflow.testing.make_problem`).
        methods: ``"likelihood"`` methods of the registry (adaptive ones are swept over tolerances, fixed-step
            ones over steps).
        traces: any of :data:`scoreflow.likelihood.TRACES` (the Hutchinson ones with one Rademacher probe).
        n: number of points.
        max_nfe: NFE budget of one solve.
        min_steps: the coarsest step count of fixed-step methods.
        dtype: float64 or float32.
        seed: seeds the points and the probes.
        progress: show a progress bar.

    Returns:
        A :class:`Study` with metric ``"error"``, the mean absolute error in nats; methods are
        named ``"<method>/<trace>"``.

    Raises:
        ValueError: for an unknown method or trace (the message lists the valid ones).
        TypeError, ValueError: for a bad problem, methods list, n, max_nfe, min_steps, dtype or seed (:func:`.study.check_study_arguments`).
    """
    methods = check_study_arguments("run_likelihood_study", problem, methods, n=n, max_nfe=max_nfe, min_steps=min_steps, dtype=dtype, seed=seed, progress=progress)
    specs = {m: get_method("likelihood", m, caller="run_likelihood_study", argument="methods") for m in methods}
    for tr in check_names("run_likelihood_study", "traces", traces, "trace"):
        check_choice("run_likelihood_study", "traces", tr, TRACES)
    law, sde = problem.law.to(dtype), problem.sde
    x = law.marginal(sde, sde.t_min).sample(n, generator=torch.Generator().manual_seed(seed))
    exact = problem.law.marginal(sde, sde.t_min).log_prob(x.double())
    prior = law.marginal(sde, sde.T).log_prob
    score = law.score(sde)
    scale, eps = float(exact.abs().mean()), torch.finfo(dtype).eps
    grids = {
        m: tolerance_grid(dtype)[:7] if spec.adaptive else step_grid(spec.nfe_per_step, max_nfe, min_steps)
        for m, spec in specs.items()
    }
    study = Study(
        "likelihood",
        problem.name,
        ("error",),
        config={"n": n, "max_nfe": max_nfe, "dtype": str(dtype).removeprefix("torch."), "seed": seed},
    )
    bar = progress_bar(len(traces) * sum(map(len, grids.values())), f"likelihood {problem.name}", progress)
    for trace in traces:
        for method in methods:
            adaptive = specs[method].adaptive
            name = f"{method}/{trace}"
            for i, value in enumerate(grids[method]):
                bar.set_postfix_str(f"{name} {'tol' if adaptive else 'steps'}={value:g}")
                setting = {"rtol": value, "atol": value} if adaptive else {"steps": value}
                start = time.perf_counter()
                with torch.no_grad():
                    res = log_likelihood(
                        score,
                        sde,
                        x,
                        trace=trace,
                        method=method,
                        prior_log_prob=prior,
                        generator=torch.Generator().manual_seed(seed + 1),
                        **setting,
                    )
                err = (res.log_prob.double() - exact).abs()
                study.rows.append(
                    {
                        "study": "likelihood",
                        "problem": problem.name,
                        "method": name,
                        "trace": trace,
                        "kind": "adaptive" if adaptive else "fixed",
                        "setting": "tol" if adaptive else "steps",
                        "value": value,
                        "nfe": res.nfe,
                        "nfe_vjp": res.nfe_vjp,
                        "error": float(err.mean()),
                        "max_error": float(err.max()),
                        "seconds": time.perf_counter() - start,
                    }
                )
                bar.update()
                if adaptive and res.nfe > max_nfe:
                    bar.update(len(grids[method]) - i - 1)
                    break
            rows = [r for r in study.rows if r["method"] == name]
            kind = "adaptive" if adaptive else "fixed"
            record = order_record(
                name, "error", kind, specs[method].order if trace == "exact" else None, rows, scale=scale, eps=eps
            )
            if trace != "exact":
                record["measured"] = None
                record["reason"] = (
                    "one probe per point: the error is the probe's noise, which no number of steps removes "
                    "(average probes with n_probes, or points, to reduce it)"
                )
            study.orders.append(record)
    bar.close()
    return study
