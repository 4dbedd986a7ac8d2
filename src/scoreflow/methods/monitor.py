"""How a solver reports its steps: the one object every solver loop calls after each accepted step.

A front-end builds a :class:`StepMonitor` from its ``callback``, ``progress`` and ``return_trajectory``
arguments and hands it to the solver, which calls ``x = monitor.step(i, t, x, denoised)`` after every
accepted step and continues from the state returned.  With none of the three the call returns ``x``
at once: a monitor that nobody asked for reads nothing and costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .._checks import call_checked, check_callable, check_like

__all__ = ["StepMonitor", "StepInfo", "StepCallback", "Denoised"]

#: What a solver knows of the prediction at the state it reports: the tensor, a function computing it, or nothing.
Denoised = torch.Tensor | Callable[[], torch.Tensor] | None
#: ``callback(info) -> None or a replacement state``, ``info`` a :class:`StepInfo`.
StepCallback = Callable[[Mapping[str, Any]], Any]


class StepInfo(Mapping):
    r"""One accepted step as a callback sees it: a mapping with k-diffusion's keys.

    - ``"i"``: the step index (0 for the first step);
    - ``"t"``: the time reached, a 0-dim tensor;
    - ``"x"``: the state at ``t``, shape ``(B, *D)``;
    - ``"denoised"``: the prediction :math:`\hat x_0 = E[x_0 \mid x_t = x]` at that state, computed on first
      access when the solver has not computed it (one score evaluation, counted in the NFE).
    """

    __slots__ = ("_values", "_denoised", "_denoise")
    _KEYS = ("i", "t", "x", "denoised")

    def __init__(self, i: int, t: torch.Tensor, x: torch.Tensor, denoised: Denoised, denoise: Callable | None) -> None:
        self._values = {"i": i, "t": t, "x": x}
        self._denoised = denoised
        self._denoise = denoise

    def __getitem__(self, key: str) -> Any:
        if key != "denoised":
            if key not in self._values:
                hint = (" k-diffusion's 'sigma' is 't' here, a time (its noise level is sde.marginal(t)[1])."
                        if key in ("sigma", "sigma_hat") else "")
                raise KeyError(f"a step callback's info has the keys 'i', 't', 'x' and 'denoised', got {key!r}.{hint}")
            return self._values[key]
        if self._denoised is None:
            self._denoised = self._denoise(self._values["x"], self._values["t"])
        elif not torch.is_tensor(self._denoised):
            self._denoised = self._denoised()
        return self._denoised

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    def __repr__(self) -> str:
        return f"StepInfo(i={self._values['i']}, t={self._values['t']!r}, x of shape {tuple(self._values['x'].shape)})"


def _tqdm(fn: str) -> Callable[..., Any]:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            f"{fn}: progress=True needs tqdm, an optional dependency: pip install 'scoreflow[progress]' "
            "(or pip install tqdm), or pass progress=False."
        ) from None
    return tqdm


class StepMonitor:
    """Calls the user's callback, advances the progress bar and keeps the trajectory, once per accepted step.

    Use it as a context manager around the solve (the progress bar is closed on the way out).  Solvers call
    :meth:`step` after each accepted step and continue from the state it returns; the front-end calls
    :meth:`start` with the initial state before the solve.

    Args:
        fn: the front-end, named in messages and on the progress bar.
        callback: ``callback(info)`` with ``info`` a :class:`StepInfo`; it may return a replacement state
            (a tensor with the shape, dtype and device of ``info["x"]``) or ``None``.
        progress: show a tqdm progress bar (in steps for fixed grids, in time for adaptive solves).
        trajectory: keep the state after every accepted step (see :meth:`trajectory`).
        denoise: ``denoise(x, t) -> x0_hat``, for callbacks that read ``"denoised"`` where the solver has none.

    Attributes:
        live: whether :meth:`step` must be called as the steps happen (a callback or a progress bar); a
            solver may take a faster path when it is not (and report the steps afterwards if ``keeps``).
        keeps: whether the trajectory is kept.

    Raises:
        TypeError: if ``callback`` is not callable or ``progress`` is not a bool.
        ImportError: if ``progress=True`` and tqdm is not installed (the message names the extra).
    """

    def __init__(
        self,
        fn: str,
        *,
        callback: StepCallback | None = None,
        progress: bool = False,
        trajectory: bool = False,
        denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if callback is not None:
            check_callable(fn, "callback", callback, "callback(info) returning None or a state")
        if not isinstance(progress, bool):
            raise TypeError(f"{fn}: argument 'progress' expected True or False, got {type(progress).__name__} {progress!r}.")
        self.fn, self.callback, self.denoise = fn, callback, denoise
        self._tqdm = _tqdm(fn) if progress else None
        self.live = callback is not None or progress
        self.keeps = bool(trajectory)
        self._times: list[torch.Tensor] = []
        self._states: list[torch.Tensor] = []
        self._bar: Any = None
        self._t_last: torch.Tensor | None = None
        self._in_steps = True

    def start(self, t: torch.Tensor, x: torch.Tensor, *, steps: int | None = None, span: float | None = None) -> None:
        """The solve starts from ``x`` at time ``t``: ``steps`` steps on a grid, or ``span`` in time (adaptive)."""
        if self.keeps:
            self._times, self._states = [t], [x]
        if self._tqdm is not None:
            self._in_steps = steps is not None
            total, unit = (steps, "step") if self._in_steps else (span, "t")
            self._bar = self._tqdm(total=total, desc=self.fn, unit=unit, dynamic_ncols=True)
            self._t_last = t

    def step(self, i: int, t: torch.Tensor, x: torch.Tensor, denoised: Denoised = None) -> torch.Tensor:
        """Report accepted step ``i``, which reached ``x`` at time ``t``; return the state to continue from.

        Args:
            i: the step index, from 0.
            t: the time reached, a 0-dim tensor.
            x: the state at ``t``.
            denoised: the prediction at ``(x, t)`` if the solver has it (a tensor), or a function computing it
                only if asked; ``None`` lets the monitor compute it with ``denoise`` if the callback asks.

        Returns:
            The callback's replacement state, a copy of ``x`` if the callback changed it in place (a replacement
            too: the solver tells one by identity), or ``x``.

        Raises:
            TypeError / ValueError: if the callback cannot be called as ``callback(info)``, or returns something
                other than ``None`` or a tensor shaped, typed and placed like ``x``.
        """
        if not (self.live or self.keeps):
            return x
        if self.callback is not None:
            # the version counter (a host integer, no device read) tells a state the callback changed in place
            seen = None if x.is_inference() else x._version
            out = call_checked(
                self.fn, "callback", "callback(info)", self.callback, StepInfo(i, t, x, denoised, self.denoise),
                fix="a callback takes one argument, a mapping with keys 'i', 't', 'x' and 'denoised' (k-diffusion's "
                "convention), e.g. def callback(info): print(info['i'], float(info['t'])).",
            )
            if out is not None and out is not x:
                x = check_like(self.fn, "callback", out, x, what="the state the callback returned")
            elif seen is not None and x._version != seen:
                # changed in place (and returned or not): a replacement, which solvers tell by identity (``is not x``)
                x = x.clone()
        if self._bar is not None:
            self._advance(t)
        if self.keeps:
            self._times.append(t)
            self._states.append(x)
        return x

    def _advance(self, t: torch.Tensor) -> None:
        if self._in_steps:
            self._bar.update(1)
        else:  # a bar in time reads the time reached (adaptive solvers read their error norms anyway)
            self._bar.update(abs(float(self._t_last - t)))
            self._t_last = t

    def trajectory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept times, shape ``(K + 1,)``, and states, shape ``(K + 1, B, *D)``: the start and every accepted step."""
        times = torch.stack([torch.as_tensor(t, dtype=self._states[0].dtype, device=self._states[0].device) for t in self._times])
        return times, torch.stack(self._states)

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> StepMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
