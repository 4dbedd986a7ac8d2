r"""``scoreflow demo``: sample the 2-D ring mixture by ODE and SDE and judge each sampler against the exact law.

Each sampler draws ``n`` points, whose errors against the exact law at ``t_min`` are

- mean error :math:`\|\bar x - \mu\|`, covariance error :math:`\|\hat C - C\|_F` and
- weight error :math:`\max_k |\hat w_k - w_k|` (points assigned to the component of largest responsibility).

Even exact samples have these errors: they are Monte-Carlo noise of size :math:`O(n^{-1/2})`.
So the verdict compares each error with ``replicates`` independent exact samples of the same
size: a sampler passes when none of its errors is larger than the largest exact one (an exact
sampler fails this with probability ``1/(replicates + 1)`` per error, by exchangeability).  The ODE samplers map the same ``x_T``
deterministically, so they share one draw of that noise and have nearly equal errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..testing import make_problem
from .study import progress_bar

__all__ = ["run_demo", "sample_errors", "ERRORS"]

#: The columns of the demo's table, in the order :func:`sample_errors` returns them.
ERRORS = ("mean err", "cov err", "weight err")


def sample_errors(law, exact, x: torch.Tensor) -> torch.Tensor:
    """Mean, covariance and mode-weight errors of each of ``R`` samples ``x`` of shape ``(R, n, D)``; shape ``(R, 3)``.

    ``law`` is the mixture whose components define the modes and ``exact`` the Gaussian-moment law
    (``mean``, ``covariance``) the samples should follow (the mixture's marginal at ``t_min``).
    """
    n = x.shape[1]
    mean = x.mean(dim=1)
    centred = x - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / (n - 1)
    labels = law.responsibilities(x.reshape(-1, x.shape[-1])).argmax(dim=1).reshape(x.shape[0], n)
    weights = torch.nn.functional.one_hot(labels, law.n_components).to(x.dtype).mean(dim=1)
    return torch.stack(
        [
            (mean - exact.mean).norm(dim=1),
            (cov - exact.covariance).flatten(1).norm(dim=1),
            (weights - law.weights).abs().amax(dim=1),
        ],
        dim=1,
    )


class _Ticking:
    """The model, advancing ``bar`` by one at every evaluation (the solvers' progress, whatever their kind).

    A model that carries a native prediction (``prediction``, ``predict``: e.g. a flow velocity, which is what
    lets a solver start at pure noise) keeps it, and its ``predict`` calls tick too.
    """

    def __init__(self, model: Callable, bar) -> None:
        self.model, self.bar = model, bar
        self.prediction = getattr(model, "prediction", "score")

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.bar.update()
        return self.model(x, t)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.bar.update()
        return self.model.predict(x, t)


def _exact_spread(law, exact, n: int, replicates: int, generator: torch.Generator, bar) -> torch.Tensor:
    """The errors of ``replicates`` exact samples of size ``n``, shape ``(replicates, 3)``; in chunks of ~10^6 points."""
    chunk = max(1, 1_000_000 // n)
    out = []
    for start in range(0, replicates, chunk):
        r = min(chunk, replicates - start)
        out.append(sample_errors(law, exact, exact.sample(r * n, generator=generator).reshape(r, n, -1)))
        bar.update(r)
    return torch.cat(out)


def _verdict(errors: torch.Tensor, largest: torch.Tensor) -> str:
    over = [f"{name} {float(e):.4f} > {float(m):.4f}" for name, e, m in zip(ERRORS, errors, largest) if e > m]
    return "yes" if not over else "no: " + ", ".join(over)


def run_demo(*, sde: str = "vp", n: int = 5000, steps: int = 500, seed: int = 0, replicates: int = 200) -> int:
    """Run the demo and print its table; returns the exit status (0).

    Args:
        sde: the forward SDE (``"vp"``, ``"subvp"`` or ``"ve"``).
        n: samples per sampler, at least 2 (a covariance needs two points).
        steps: Euler-Maruyama steps of the SDE sampler.
        seed: seeds the starting points, the SDE's noise and the exact samples.
        replicates: exact samples of size ``n`` that give the Monte-Carlo spread.
    """
    from .. import sample_ode, sample_sde

    problem = make_problem("ring2d", sde)
    law, process = problem.law, problem.sde
    exact = law.marginal(process, process.t_min)
    g = torch.Generator().manual_seed(seed)
    x_T = process.prior_sample((n, 2), generator=g, dtype=torch.float64)
    sde_row = f"sde euler ({steps} steps)"
    runs: dict[str, tuple[Callable, int | None]] = {
        "ode dopri5 (rtol=atol=1e-5)": (lambda s: sample_ode(s, process, x_T, method="dopri5"), None),
        "ode dpmpp_3m_pc (20 steps)": (lambda s: sample_ode(s, process, x_T, method="dpmpp_3m_pc", steps=20), 20),
        "ode dpmpp_4m_pc_adaptive (1e-3)": (
            lambda s: sample_ode(s, process, x_T, method="dpmpp_4m_pc_adaptive", rtol=1e-3, atol=1e-3),
            None,
        ),
        sde_row: (
            lambda s: sample_sde(s, process, x_T, method="euler", steps=steps, generator=g),
            steps,
        ),
    }
    if process.pure_noise_at_T:  # Euler-Maruyama's reverse SDE has infinite drift and diffusion at pure noise
        del runs[sde_row]
    print(f"problem: {problem.name}  (8-component ring mixture, {n} samples, exact law at t_min={process.t_min:g})")
    bar = progress_bar(replicates, f"{replicates} exact samples of {n}", True, unit="sample", leave=False)
    start = time.perf_counter()
    spread = _exact_spread(law, exact, n, replicates, g, bar)
    spread_seconds = time.perf_counter() - start
    bar.close()
    largest = spread.amax(dim=0)
    print(f"{'sampler':<34}{'NFE':>6}" + "".join(f"{e:>11}" for e in ERRORS) + f"{'seconds':>9}  within exact spread?")
    for name, (run, expected_nfe) in runs.items():
        bar = progress_bar(expected_nfe, name, True, unit="NFE", leave=False)
        start = time.perf_counter()
        res = run(_Ticking(problem.score, bar))
        seconds = time.perf_counter() - start
        bar.close()
        errors = sample_errors(law, exact, res.samples[None])[0]
        cells = "".join(f"{float(e):>11.4f}" for e in errors)
        print(f"{name:<34}{res.nfe:>6}{cells}{seconds:>9.2f}  {_verdict(errors, largest)}", flush=True)
    if process.pure_noise_at_T:
        print(f"{sde_row:<34}  skipped: the reverse SDE of {process!r} has infinite drift and diffusion at T (pure noise)")
    for label, values in (("exact samples: median", spread.median(dim=0).values), ("exact samples: largest", largest)):
        cells = "".join(f"{float(e):>11.4f}" for e in values)
        print(f"{label:<34}{'':>6}{cells}{spread_seconds:>9.2f}")
    print(
        f"A sampler passes when none of its errors exceeds the largest of {replicates} exact samples of {n} points "
        f"(an exact sampler fails one error with probability 1/{replicates + 1}). The ODE rows transport the same "
        "x_T, so they share one draw of the Monte-Carlo noise."
    )
    return 0
