"""Helpers shared by the test modules."""

from __future__ import annotations

import torch


class RecordingScore:
    """Wrap a score: count its calls and record the times asked for, independently of scoreflow's counter."""

    def __init__(self, score):
        self.score, self.calls, self.times = score, 0, []

    def __call__(self, x, t):
        assert t.shape == (x.shape[0],)
        self.calls += 1
        self.times.append(float(t.min()))
        return self.score(x, t)

    @property
    def t_lowest(self) -> float:
        """The smallest time the score was evaluated at."""
        return min(self.times, default=float("inf"))


def non_finite_after(score, t_break: float, value: float = float("nan")) -> RecordingScore:
    """``score`` turned ``value`` (NaN or an infinity) at every time above ``t_break``, its calls recorded (for the
    tests that a non-finite model stops a solve at the time where it appeared)."""
    return RecordingScore(lambda x, t: torch.where(t[:, None] > t_break, value, score(x, t)))


def diffusers_on_grid(scheduler, law, sde, x_T: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Drive a diffusers multistep scheduler (epsilon prediction) on scoreflow's ``grid`` of times under a VP ``sde``.

    Its ``sigmas`` become :math:`\\sigma/\\alpha` of the grid, the noise levels it integrates in (its timesteps only
    index them), and the model is the exact noise prediction :math:`-\\sigma(t_i)\\,s(x, t_i)` of ``law``.
    """
    scheduler.set_timesteps(len(grid) - 1)
    alpha, sigma = sde.marginal(grid)
    scheduler.sigmas = sigma / alpha
    scheduler.set_begin_index(0)
    score, x = law.score(sde), x_T.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        eps = -sigma[i] * score(x, grid[i].expand(x.shape[0]))
        x = scheduler.step(eps, timestep, x).prev_sample
    return x
