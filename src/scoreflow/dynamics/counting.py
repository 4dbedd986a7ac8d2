"""Counting score evaluations (NFE), checking the model's first output, and watching for non-finite values.

Nothing here reads a tensor on the host during a solve: finiteness is recorded on the device at every
evaluation and read once, when the solve ends (:meth:`CountedScore.guard`), or once every
:attr:`FiniteWatch.CHUNK` evaluations in a longer run, to bound its memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .._checks import call_mismatch, check_callable, check_like
from .._tensor import ScoreFn, batch_time
from ..errors import NonFiniteError
from ..parameterizations import prediction_of

__all__ = ["ScoreFn", "CountedScore", "FiniteWatch"]


class FiniteWatch:
    r"""Non-finite values seen during a solve: recorded on the device, read once when the solve ends.

    Each :meth:`record` keeps :math:`\sum_i 0\cdot v_i`, which is 0 when every entry of ``v`` is finite and NaN
    otherwise (and, unlike :math:`\sum_i v_i`, cannot overflow), together with the time of the value.  Two kernels
    and no host read per record; :meth:`check` stacks the records and reads them once.  A long run (a Langevin chain
    of millions of steps) reads them every :attr:`CHUNK` records instead, keeping only the first non-finite one, so
    that the record's memory stays bounded: one host read per ``CHUNK`` evaluations.
    """

    #: records kept before they are read and dropped (those of any solve of fewer evaluations are read once, at its end)
    CHUNK = 4096

    def __init__(self) -> None:
        self._records: list[tuple[str, Any, torch.Tensor]] = []
        self._failed = False  # the first non-finite record is found (and is the only one kept)
        self._zero: torch.Tensor | None = None
        self._paused = False
        #: ``singular(t)``: why the process itself has no finite flow at time t, or None (read only on failure)
        self.singular: Callable[[float], str | None] | None = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Record nothing inside: for a solver that reduces every value it computes to a norm it reads at every step
        (a NaN or inf anywhere makes the norm NaN) and names the step's time itself."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def record(self, what: str, value: torch.Tensor, t: Any, *, nan_only: bool = False) -> None:
        """Record whether ``value`` (the ``what`` at time ``t``) is finite; ``nan_only`` lets infinities pass."""
        if self._paused or self._failed:
            return
        if value.requires_grad:
            value = value.detach()
        if nan_only:
            value = value.nan_to_num(nan=float("nan"), posinf=0.0, neginf=0.0)
        zero = self._zero
        if zero is None or zero.dtype != value.dtype or zero.device != value.device:
            # a 0-dim tensor, not the number 0, which torch would wrap into a new tensor at every record
            zero = self._zero = torch.zeros((), dtype=value.dtype, device=value.device)
        self._records.append((what, t, value.mul(zero).sum()))
        if len(self._records) >= self.CHUNK:
            self._compact()

    def _first_bad(self) -> int | None:
        """The index of the first non-finite record, or None (one host read)."""
        bad = torch.isnan(torch.stack([flag for _, _, flag in self._records]))
        return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None

    def _compact(self) -> None:
        """Read the records and drop them, keeping the first non-finite one if there is one (then nothing more is
        recorded: it is the one :meth:`check` names)."""
        first = self._first_bad()
        self._records = [] if first is None else [self._records[first]]
        self._failed = first is not None

    def check(self, *, cause: BaseException | None = None) -> None:
        """Raise :class:`NonFiniteError` naming the time of the first non-finite record (one host read).

        Args:
            cause: an error the solve stopped with; the non-finite value is raised from it.
        """
        if not self._records:
            return
        first = self._first_bad()
        if first is None:
            return
        what, t, _ = self._records[first]
        t = float(t.reshape(-1)[0]) if torch.is_tensor(t) else float(t)
        why = self.singular(t) if self.singular is not None else None
        advice = (
            "check the score model at this time (e.g. evaluated below the smallest time it was trained on) "
            "or use a larger t_min." if why is None else
            f"the process itself is singular there (its probability-flow velocity is infinite whatever the model): "
            f"{why}."
        )
        raise NonFiniteError(
            f"{what} became non-finite (NaN or inf) at t={t:.6g} (its first non-finite value in this solve); {advice}",
            t=t,
        ) from cause


class CountedScore(torch.nn.Module):
    """Wrap a score ``s(x, t)``: broadcast ``t`` to ``(B,)``, count calls in ``nfe``, watch for non-finite output.

    Every solver in scoreflow calls the user's score through one of these, so ``nfe`` counts every
    evaluation (rejected adaptive steps included).  The first call is the front-end's check of the model:
    its output must be a tensor with the shape, dtype and device of ``x`` (the message names ``caller``;
    the check reads no tensor values).  Non-finite outputs are recorded in ``finite`` (a
    :class:`FiniteWatch`) without a host read; run the solve inside :meth:`guard` to have them raised.
    A model that carries a native prediction (:mod:`scoreflow.parameterizations`) keeps it:
    ``prediction`` names it and ``predict`` evaluates it, counted and checked alike.

    A call at the very tensor ``x`` (unmodified) and time object ``t`` of the previous call of the same
    kind returns the previous output without evaluating again: a step callback asking for the prediction
    at the state the next step starts from then costs no evaluation (not under ``torch.inference_mode()``,
    whose tensors do not count their in-place changes).

    Args:
        score: the score model.
        caller: the public function the score was given to, named in error messages.
        signature: how the score is called, shown in error messages (``"score(x, sigma)"`` for a noise level).
        sde: the process of the solve, if any: a non-finite value at a time where its flow is singular
            (:meth:`~scoreflow.ForwardSDE.singular_flow_at`) is reported as the process's, not the model's.

    Attributes:
        nfe: score evaluations so far.
        prediction: the model's native prediction (``"score"`` for a plain callable).
        finite: the record of non-finite values.

    Raises:
        TypeError: if ``score`` is not callable, or (when called) cannot be called as ``score(x, t)``: the message
            names ``caller``, the signature found and the arguments passed.
    """

    def __init__(
        self, score: ScoreFn, *, caller: str, signature: str = "score(x, t)", sde: Any = None
    ) -> None:
        super().__init__()
        self.score = check_callable(caller, "score", score, signature)
        self.caller = caller
        self.__dict__["_signature"] = signature
        self.prediction = prediction_of(score)
        self.nfe = 0
        self.finite = FiniteWatch()
        if sde is not None:  # a failure at a time where the process itself is singular is named as such
            self.finite.singular = sde.singular_flow_at
        self._last: tuple[bool, torch.Tensor, Any, int, torch.Tensor] | None = None
        # Under torch.inference_mode() the states are inference tensors, which have no version counter to tell an
        # in-place change: evaluations are then never reused.
        self.__dict__["_versioned"] = not torch.is_inference_mode_enabled()
        # the model's two entry points, called by index (``native``) without Module.__getattr__'s lookup
        self.__dict__["_evaluate"] = (self.score, getattr(self.score, "predict", None))

    def forward(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self._call(False, x, t)

    def predict(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """The model's native prediction (the score for a plain score callable), counted and checked."""
        return self._call(self.prediction != "score", x, t)

    def _call(self, native: bool, x: torch.Tensor, t: Any) -> torch.Tensor:
        # The hot path of every solve: plain attribute writes through __dict__ (nn.Module.__setattr__ checks for
        # parameters and submodules on every write).
        state = self.__dict__
        last = state["_last"]
        seen = x._version if state["_versioned"] else None
        if last is not None and last[1] is x and last[2] is t and last[0] == native and seen is not None and last[3] == seen:
            return last[4]
        # a solver's 0-dim time in x's dtype and device is broadcast by a view (the general path costs a dispatch more)
        same = torch.is_tensor(t) and t.ndim == 0 and t.dtype == x.dtype and t.device == x.device
        tb = t.expand(x.shape[0]) if same else batch_time(t, x)
        evaluate = state["_evaluate"][native]
        try:
            out = evaluate(x, tb)
        except TypeError as err:  # only a failing call pays for the look at the signature
            mismatch = call_mismatch(self.caller, "score", state["_signature"], evaluate, (x, tb), err)
            if mismatch is None:
                raise
            raise mismatch from err
        nfe = state["nfe"] = state["nfe"] + 1
        if nfe == 1:
            check_like(self.caller, "score", out, x, what="the score")
        state["finite"].record("score", out, tb)
        state["_last"] = (native, x, t, seen, out)
        return out

    def count(self, evaluations: int) -> None:
        """Add ``evaluations`` to :attr:`nfe` (evaluations a call made beyond the one it counted itself, such as
        the points of central differences stacked in one call); a plain write, as in the hot path."""
        self.__dict__["nfe"] += evaluations

    @contextlib.contextmanager
    def guard(self) -> Iterator[CountedScore]:
        """Run a solve, then raise :class:`NonFiniteError` if any recorded value was non-finite.

        If the solve stops with an error after a non-finite value (torchdiffeq's step control fails on NaN
        with an assertion of its own), the :class:`NonFiniteError` naming the first bad time is raised from it.
        """
        try:
            yield self
        except Exception as err:
            self.finite.check(cause=err)
            raise
        self.finite.check()
