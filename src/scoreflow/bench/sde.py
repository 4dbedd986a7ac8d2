r"""SDE convergence study: strong, weak and distribution error of reverse-SDE samplers against NFE.

Pathwise methods (torchsde's) are driven by one Brownian path per method, shared by all step
counts: the path is fixed by a solve on a grid ``ref_factor`` times finer than the finest one,
which is also the reference.  Then

- strong error :math:`\big(E|X_h - X_{ref}|^2 / D\big)^{1/2}` (RMS per coordinate over the paths);
- weak error :math:`\|\bar X_h - \bar X_{ref}\| + \|\mathrm{Cov}X_h - \mathrm{Cov}X_{ref}\|_F`, the
  moment error with the reference as a control variate: on common paths the Monte-Carlo noise
  of the difference is O(strong error)/sqrt(n), far below the noise of either moment alone;
- distribution errors against the exact law at ``t_min`` for every method: mean and covariance
  error, the closed-form Gaussian W2 of the sample moments (exact W2 for Gaussian data) and the
  sliced W2 against a large exact sample.  These stop falling at their Monte-Carlo floor, which
  the study reports as the median and the range of the same distances for ``replicates``
  exact samples of the same size: one sample's distance is random, so a converged sampler's
  distance lands anywhere in that band, below the median as often as above it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .._checks import check_choice
from ..metrics import gaussian_w2, rms_error, sliced_wasserstein2
from ..sampling import brownian_motion
from ..testing import Problem
from .ode import step_grid
from .registry import DEFAULT_SDE_METHODS, SDE_METHODS, SDEMethod
from .study import Study, check_study_arguments, progress_bar
from .verdict import order_record

__all__ = ["run_sde_study", "distribution_errors"]


#: Where the SDE study starts on a path that reaches pure noise at T (its reverse SDE is stiff near there:
#: drift and diffusion grow like 1/(T - t)).
PURE_NOISE_TRUNCATION = 0.95

def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.reshape(x.shape[0], -1).double()
    return xf.mean(0), torch.cov(xf.T).reshape(xf.shape[1], xf.shape[1])


def distribution_errors(x: torch.Tensor, exact, exact_sample: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """Mean, covariance, Gaussian-W2-of-moments and sliced-W2 (64 directions) errors of samples ``x`` against a law ``exact``."""
    mean, cov = _moments(x)
    m, c = exact.mean.double(), exact.covariance.double()
    return {
        "mean_error": float((mean - m).norm()),
        "cov_error": float((cov - c).norm()),
        "w2": gaussian_w2(mean, cov, m, c),
        "sw2": sliced_wasserstein2(x, exact_sample, n_projections=64, generator=torch.Generator().manual_seed(seed)),
    }


def run_sde_study(
    problem: Problem,
    *,
    methods: Sequence[str] = DEFAULT_SDE_METHODS,
    n: int = 256,
    max_nfe: int = 128,
    min_steps: int = 8,
    ref_factor: int = 8,
    n_exact: int = 4096,
    replicates: int = 100,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    progress: bool = False,
) -> Study:
    """Sample the reverse SDE with every method over a grid of steps and fit strong and weak orders.

    Args:
        problem: a reference problem (:func:`scoreflow.testing.make_problem`).
        methods: names in :data:`SDE_METHODS`.
        n: number of paths.
        max_nfe: NFE budget of one solve (each method still gets at least 4 step counts).
        min_steps: the coarsest step count.
        ref_factor: the reference solve takes this many times the finest step count.
        n_exact: size of the exact sample the sliced W2 compares with.
        replicates: exact samples of size ``n`` whose distribution errors give the Monte-Carlo spread.
        dtype: float64 or float32.
        seed: seeds starting points, Brownian paths and projections.
        progress: show a progress bar.

    Returns:
        A :class:`Study` (on a process that reaches pure noise at T, of the reverse SDE from
        ``T = PURE_NOISE_TRUNCATION`` with the exact marginal there) with metrics ``strong_error``, ``weak_error``, ``w2``, ``sw2`` (plus
        ``mean_error``, ``cov_error`` in the rows); orders are fitted for the first two.

    Raises:
        ValueError: for a method not in the registry (the message lists them).
        TypeError, ValueError: for a bad problem, methods list, n, max_nfe, min_steps, dtype or seed (:func:`.study.check_study_arguments`).
    """
    # n >= 2: the weak error compares sample covariances
    methods = check_study_arguments("run_sde_study", problem, methods, n=n, max_nfe=max_nfe, min_steps=min_steps, dtype=dtype, seed=seed, progress=progress, min_n=2)
    specs = [SDE_METHODS[check_choice("run_sde_study", "methods", m, SDE_METHODS)] for m in methods]
    law = problem.law.to(dtype)
    # The reverse SDE of a path that reaches pure noise has infinite drift and diffusion at T: study it truncated.
    sde = problem.sde.truncated(PURE_NOISE_TRUNCATION) if problem.sde.pure_noise_at_T else problem.sde
    x_T = law.marginal(sde, sde.T).sample(n, generator=torch.Generator().manual_seed(seed))
    exact = problem.law.marginal(sde, sde.t_min)
    exact_sample = exact.sample(n_exact, generator=torch.Generator().manual_seed(seed + 1))
    spread = _monte_carlo_spread(exact, exact_sample, n, replicates, seed)
    score = law.score(sde)
    duration = float(torch.tensor(sde.T - sde.t_min, dtype=dtype))
    # RMS per coordinate of the exact law: the scale against which errors are "large" or at round-off
    scale = float(((exact.covariance.trace() + exact.mean.pow(2).sum()) / law.dim).sqrt())
    grids = {s.name: step_grid(s.nfe_per_step, max_nfe, min_steps) for s in specs}
    study = Study(
        "sde",
        problem.name,
        ("strong_error", "weak_error", "w2", "sw2"),
        config={
            "T": sde.T,
            "n": n,
            "max_nfe": max_nfe,
            "ref_factor": ref_factor,
            "n_exact": n_exact,
            "dtype": str(dtype).removeprefix("torch."),
            "seed": seed,
            "monte_carlo_floor": {k: v[1] for k, v in spread.items()},
            "monte_carlo_range": {k: (v[0], v[2]) for k, v in spread.items()},
            "monte_carlo_replicates": replicates,
        },
    )
    bar = progress_bar(sum(len(g) + s.pathwise for s, g in zip(specs, grids.values())), f"SDE {problem.name}", progress)
    for spec in specs:
        reference = noise = None
        if spec.pathwise:
            bar.set_postfix_str(f"{spec.name} reference steps={ref_factor * grids[spec.name][-1]}")
            noise = brownian_motion(
                x_T, duration, generator=torch.Generator().manual_seed(seed + 3), levy_area=spec.levy_area
            )
            # The finest solve runs first so that it fixes the path all coarser grids then share.
            reference = spec.run(score, sde, x_T, ref_factor * grids[spec.name][-1], noise).samples
            bar.update()
        for steps in grids[spec.name]:
            bar.set_postfix_str(f"{spec.name} steps={steps}")
            start = time.perf_counter()
            if not spec.pathwise:
                noise = torch.Generator().manual_seed(seed + 3)
            res = spec.run(score, sde, x_T, steps, noise)
            seconds = time.perf_counter() - start
            row = {
                "study": "sde",
                "problem": problem.name,
                "method": spec.name,
                "setting": "steps",
                "value": steps,
                "nfe": res.nfe,
            }
            row["strong_error"] = rms_error(res.samples, reference) if spec.pathwise else None
            row["weak_error"] = _weak_error(res.samples, reference) if spec.pathwise else None
            row.update(distribution_errors(res.samples, exact, exact_sample, seed=seed))
            row["seconds"] = seconds
            study.rows.append(row)
            bar.update()
        if spec.pathwise:
            _fit_orders(study, spec, scale, torch.finfo(dtype).eps)
    bar.close()
    study.notes += _identical_methods(study)
    return study


def _fit_orders(study: Study, spec: SDEMethod, scale: float, eps: float) -> None:
    """Strong and weak orders of a pathwise method (samplers with their own noise have neither).

    Both may rise above their declared order up to the method's drift order (the weak error here,
    a moment error on common paths, is at most a constant times the strong error).
    """
    rows = [r for r in study.rows if r["method"] == spec.name]
    for metric, declared in (("strong_error", spec.strong_order), ("weak_error", spec.weak_order)):
        study.orders.append(
            order_record(
                spec.name, metric, "pathwise", declared, rows, scale=scale, eps=eps, upper=spec.drift_order
            )
        )


def _monte_carlo_spread(exact, exact_sample: torch.Tensor, n: int, replicates: int, seed: int) -> dict[str, tuple]:
    """The smallest, median and largest of each distribution error of ``replicates`` exact samples of size ``n``.

    One exact sample's error is itself random; the range shows how far below or above its median a
    sampler's error may fall by chance: a converged sampler's error lands inside it (outside with
    probability ``2/(replicates + 1)``), not on the median.
    """
    g = torch.Generator().manual_seed(seed + 2)
    runs = [distribution_errors(exact.sample(n, generator=g), exact, exact_sample, seed=seed) for _ in range(replicates)]
    values = {k: torch.tensor([r[k] for r in runs], dtype=torch.float64) for k in runs[0]}
    return {k: (float(v.min()), float(v.median()), float(v.max())) for k, v in values.items()}


def _identical_methods(study: Study) -> list[str]:
    """Notes on methods whose samples equal an earlier method's at every step count (e.g. Milstein = Euler-Maruyama)."""
    by_method: dict[str, list] = {}
    for r in study.rows:
        by_method.setdefault(r["method"], []).append((r["value"], r["strong_error"], r["sw2"]))
    notes, seen = [], {}
    for method, errors in by_method.items():
        twin = next((m for m, e in seen.items() if e == errors), None)
        if twin is not None and errors[0][1] is not None:
            notes.append(
                f"{method} gives exactly the errors of {twin} at every step count: for additive noise (g depends on t "
                "only) the schemes coincide (Milstein's correction g g' vanishes), so the two lines overlap."
            )
        seen[method] = errors
    return notes


def _weak_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    mean, cov = _moments(x)
    ref_mean, ref_cov = _moments(reference)
    return float((mean - ref_mean).norm() + (cov - ref_cov).norm())
