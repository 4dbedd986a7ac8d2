"""Input validation, kept in one place.

Every front-end calls these once, at the boundary, before any solve starts; nothing
here runs inside a step loop.  Messages follow one pattern: ``"<function>: argument
'<name>' expected <what>, got <what was received>. <How to fix it>."``
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .errors import NonFiniteError


def _describe(x: Any) -> str:
    if torch.is_tensor(x):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    return f"{type(x).__name__} {x!r}"


def check_choice(fn: str, name: str, value: Any, valid: Iterable[str]) -> str:
    """Check that ``value`` is one of ``valid`` (strings); return it."""
    valid = list(valid)
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"{fn}: argument '{name}' expected one of {', '.join(repr(v) for v in valid)}, got {value!r}."
        )
    return value


def check_positive(fn: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Check that ``value`` is a finite real number > 0 (or >= 0); return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        torch.is_tensor(value) and value.numel() == 1
    ):
        raise TypeError(f"{fn}: argument '{name}' expected a real number, got {_describe(value)}.")
    v = float(value)
    ok = v >= 0 if allow_zero else v > 0
    if not math.isfinite(v) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: argument '{name}' expected a finite number {bound}, got {v!r}.")
    return v


def check_int(fn: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """Check that ``value`` is an integer >= ``minimum``; return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: argument '{name}' expected an int, got {_describe(value)}.")
    if value < minimum:
        raise ValueError(f"{fn}: argument '{name}' expected an int >= {minimum}, got {value}.")
    return value


def check_batch(fn: str, name: str, x: Any) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor of shape ``(B, *D)`` with B >= 1 and at least one data dim."""
    if not torch.is_tensor(x):
        raise TypeError(f"{fn}: argument '{name}' expected a torch.Tensor of shape (B, *D), got {_describe(x)}.")
    if x.ndim < 2:
        raise ValueError(
            f"{fn}: argument '{name}' expected a tensor of shape (B, *D) with at least 2 dimensions "
            f"(a batch dimension first), got shape {tuple(x.shape)}. Fix: add a batch dimension, e.g. {name}[None]."
        )
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{fn}: argument '{name}' expected a non-empty batch, got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(
            f"{fn}: argument '{name}' expected a floating-point tensor (float32 or float64), got dtype {x.dtype}. "
            f"Fix: {name}.to(torch.float32) or .double()."
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{fn}: argument '{name}' contains NaN or infinite values.")
    return x


def check_generator(fn: str, generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: argument 'generator' expected a torch.Generator or None, got {_describe(generator)}.")
    return generator


def check_time_interval(fn: str, name: str, value: Any, t_lo: float, t_hi: float) -> float:
    """Check that a time lies in the closed interval ``[t_lo, t_hi]``; return it as float."""
    v = check_positive(fn, name, value, allow_zero=True)
    if not t_lo <= v <= t_hi:
        raise ValueError(f"{fn}: argument '{name}' expected a time in [{t_lo:g}, {t_hi:g}], got {v!r}.")
    return v


def check_score_output(fn: str, score: Callable, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Call ``score(x, t)`` once and check it returns a finite tensor shaped, typed and placed like ``x``."""
    if not callable(score):
        raise TypeError(f"{fn}: argument 'score' expected a callable score(x, t), got {_describe(score)}.")
    with torch.no_grad():
        out = score(x, t)
    if not torch.is_tensor(out):
        raise TypeError(f"{fn}: the score returned {_describe(out)}; expected a tensor shaped like x.")
    if out.shape != x.shape:
        raise ValueError(
            f"{fn}: the score returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; "
            "a score s(x, t) must return a tensor shaped like x."
        )
    if out.dtype != x.dtype:
        raise TypeError(
            f"{fn}: the score returned dtype {out.dtype} for x of dtype {x.dtype}; "
            "cast the model or x so that both use the same dtype."
        )
    if out.device != x.device:
        raise ValueError(
            f"{fn}: the score returned a tensor on device {out.device} for x on {x.device}; "
            "move the model and x to the same device."
        )
    check_finite(out, t, what="score")
    return out


def check_finite(value: torch.Tensor, t: Any, *, what: str) -> None:
    """Raise :class:`NonFiniteError` naming the time if ``value`` has a NaN or infinity."""
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        n_bad = int((~finite).reshape(value.shape[0], -1).any(dim=1).sum()) if value.ndim > 0 else 1
        t_val = float(t.reshape(-1)[0]) if torch.is_tensor(t) else float(t)
        raise NonFiniteError(
            f"{what} became non-finite (NaN or inf) at t={t_val:.6g} in {n_bad} of "
            f"{value.shape[0] if value.ndim else 1} samples; check the score model at this time "
            "(e.g. evaluated below the smallest time it was trained on) or use a larger t_min."
        )


def check_callable(fn: str, name: str, value: Any, signature: str) -> Callable:
    """Check that ``value`` is callable; ``signature`` (e.g. ``"sampler(score, sde, x_T)"``) names the expected call."""
    if not callable(value):
        raise TypeError(f"{fn}: argument '{name}' expected a callable {signature}, got {_describe(value)}.")
    return value


def check_instance(fn: str, name: str, value: Any, cls: type, example: str) -> Any:
    """Check that ``value`` is an instance of ``cls``; ``example`` shows how to build one."""
    if not isinstance(value, cls):
        raise TypeError(f"{fn}: argument '{name}' expected a {cls.__name__} (e.g. {example}), got {_describe(value)}.")
    return value


def check_probability(fn: str, name: str, value: Any) -> float:
    """Check that ``value`` is a number in the open interval (0, 1); return it as float."""
    v = check_positive(fn, name, value)
    if not v < 1:
        raise ValueError(f"{fn}: argument '{name}' expected a probability in (0, 1), got {v!r}.")
    return v


def check_output(fn: str, what: str, out: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """Check that a user function's output ``out`` is a finite tensor of the given ``shape``."""
    if not torch.is_tensor(out):
        raise TypeError(f"{fn}: {what} returned {_describe(out)}; expected a tensor of shape {shape}.")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{fn}: {what} returned shape {tuple(out.shape)}; expected shape {tuple(shape)}.")
    if not bool(torch.isfinite(out).all()):
        raise AssertionError(f"{fn}: {what} returned NaN or infinite values.")
    return out


def check_data_range(fn: str, data_range: Any) -> tuple[float, float]:
    """Check that ``data_range`` is a pair of finite numbers ``(lo, hi)`` with ``lo < hi``; return it as floats."""
    try:
        lo, hi = (float(v) for v in data_range) if isinstance(data_range, (tuple, list)) else (math.nan,) * 2
    except (TypeError, ValueError):
        lo, hi = math.nan, math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"{fn}: argument 'data_range' expected a pair (lo, hi) of finite numbers with lo < hi, "
            f"got {data_range!r}. Fix: e.g. (0.0, 1.0) for data scaled to [0, 1], (-1.0, 1.0) for [-1, 1]."
        )
    return lo, hi


def check_per_sample(fn: str, what: str, value: Any, like: torch.Tensor) -> torch.Tensor:
    """Check that ``value`` (returned by the user's ``what``) is a ``(B,)`` tensor for the batch ``like``."""
    if not torch.is_tensor(value) or value.shape != like.shape[:1]:
        got = f"shape {tuple(value.shape)}" if torch.is_tensor(value) else _describe(value)
        raise ValueError(
            f"{fn}: {what} must return one value per sample, shape ({like.shape[0]},), got {got}. "
            "Fix: sum log-densities over the data dimensions."
        )
    return value
