"""Counting score evaluations (NFE), checking the model's first output, and stopping on non-finite values."""

from __future__ import annotations

import torch

from .._checks import check_callable, check_finite, check_like
from .._tensor import ScoreFn, batch_time
from ..parameterizations import prediction_of

__all__ = ["ScoreFn", "CountedScore"]


class CountedScore(torch.nn.Module):
    """Wrap a score ``s(x, t)``: broadcast ``t`` to ``(B,)``, count calls in ``nfe``, reject bad output.

    Every solver in scoreflow calls the user's score through one of these, so ``nfe`` counts
    every evaluation (rejected adaptive steps included) and a NaN stops the solve with the
    time at which it appeared.  The first call is the front-end's check of the model: its output
    must be a tensor with the shape, dtype and device of ``x`` (the message names ``caller``).
    A model that carries a native prediction (:mod:`scoreflow.parameterizations`) keeps it:
    ``prediction`` names it and ``predict`` evaluates it, counted and checked alike.

    Args:
        score: the score model.
        caller: the public function the score was given to, named in error messages.

    Raises:
        TypeError: if ``score`` is not callable.
    """

    def __init__(self, score: ScoreFn, *, caller: str) -> None:
        super().__init__()
        self.score = check_callable(caller, "score", score, "score(x, t)")
        self.caller = caller
        self.prediction = prediction_of(score)
        self.nfe = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        return self._checked(self.score(x, t), x, t)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's native prediction (the score for a plain score callable), counted and checked."""
        t = batch_time(t, x)
        native = self.score.predict if self.prediction != "score" else self.score
        return self._checked(native(x, t), x, t)

    def _checked(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if self.nfe == 1:
            check_like(self.caller, "score", out, x, what="the score")
        check_finite(out, t, what="score")
        return out
