"""Exceptions raised by scoreflow."""

from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """A score, drift or state became NaN or infinite during a solve.

    The message names the time at which the non-finite value first appeared, so a
    blow-up near ``t_min`` (a typical symptom of a score network evaluated below
    the times it was trained on) can be told apart from one near ``T``.
    """

    def __init__(self, message: str, *, t: float | None = None) -> None:
        super().__init__(message)
        #: the time of the first non-finite value, when the solve knows it
        self.t = t
