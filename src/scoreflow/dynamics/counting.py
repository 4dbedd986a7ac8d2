"""Counting score evaluations (NFE) and stopping on non-finite values."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import check_finite
from .._tensor import batch_time

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CountedScore(torch.nn.Module):
    """Wrap a score ``s(x, t)``: broadcast ``t`` to ``(B,)``, count calls in ``nfe``, reject non-finite output.

    Every solver in scoreflow calls the user's score through one of these, so ``nfe`` counts
    every evaluation (rejected adaptive steps included) and a NaN stops the solve with the
    time at which it appeared.
    """

    def __init__(self, score: ScoreFn) -> None:
        super().__init__()
        self.score = score
        self.nfe = 0
        self._primed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def prime(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        """Hand over the front-end's validation call ``out = score(x, t)`` (one NFE).

        Solvers start by evaluating the score at the initial state and time, so calls with
        equal ``x`` and ``t`` reuse ``out`` instead of calling again: checking the model's
        output costs no extra evaluation.
        """
        self.nfe += 1
        self._primed = (x, batch_time(t, x), out)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        if self._primed is not None:
            # torchsde evaluates the drift at the initial state twice (contract check, first
            # step), so the primed value is kept until the first call at another state.
            x0, t0, out0 = self._primed
            if x.shape == x0.shape and torch.equal(t, t0) and torch.equal(x, x0):
                return out0
            self._primed = None
        self.nfe += 1
        out = self.score(x, t)
        check_finite(out, t, what="score")
        return out
