"""Input validation, kept in one place.

Every front-end calls these once, at the boundary, before any solve starts; nothing
here runs inside a step loop.  Messages follow one pattern: ``"<function>: argument
'<name>' expected <what>, got <what was received>. <How to fix it>."``
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .errors import NonFiniteError

#: The dtypes a solver state may have (see :func:`check_state_dtype`).
STATE_DTYPES = (torch.float32, torch.float64)


def _describe(x: Any) -> str:
    if torch.is_tensor(x):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
    if isinstance(x, (tuple, list)) and any(torch.is_tensor(v) or hasattr(v, "shape") for v in x):
        # a network's tuple output: its items' shapes, not their values (a repr would print every number)
        items = ", ".join(_describe(v) for v in x[:3]) + (", ..." if len(x) > 3 else "")
        return f"{type(x).__name__} of {len(x)} item(s) ({items})"
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # a NumPy (or other) array
        return f"{type(x).__name__} of shape {tuple(x.shape)}, dtype {x.dtype} (from {type(x).__module__}, not a torch.Tensor)"
    return f"{type(x).__name__} {x!r}"


def check_choice(fn: str, name: str, value: Any, valid: Iterable[str], *, kind: str = "argument") -> str:
    """Check that ``value`` is one of ``valid`` (strings); return it (``kind`` as in :func:`check_positive`)."""
    valid = list(valid)
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"{fn}: {kind} '{name}' expected one of {', '.join(repr(v) for v in valid)}, got {value!r}."
        )
    return value


def _as_real(fn: str, name: str, value: Any, kind: str = "argument") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
        torch.is_tensor(value) and value.numel() == 1
    ):
        raise TypeError(f"{fn}: {kind} '{name}' expected a real number, got {_describe(value)}.")
    return float(value)


def check_real(fn: str, name: str, value: Any) -> float:
    """Check that ``value`` is a finite real number (a Python number or a one-element tensor); return it as float."""
    v = _as_real(fn, name, value)
    if not math.isfinite(v):
        raise ValueError(f"{fn}: argument '{name}' expected a finite number, got {v!r}.")
    return v


def check_positive(fn: str, name: str, value: Any, *, allow_zero: bool = False, kind: str = "argument") -> float:
    """Check that ``value`` is a finite real number > 0 (or >= 0); return it as float.

    ``kind`` names what ``name`` is in the message (``"argument"``, or ``"option"`` for an entry of ``options=``).
    """
    v = _as_real(fn, name, value, kind)
    ok = v >= 0 if allow_zero else v > 0
    if not (math.isfinite(v) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{fn}: {kind} '{name}' expected a finite number {bound}, got {v!r}.")
    return v


def check_positive_values(fn: str, name: str, value: Any) -> Any:
    """Check that ``value`` is a finite real number > 0 (as :func:`check_positive`) or a floating-point tensor whose
    entries all are (one host read: at entry, never per step); return it unchanged."""
    if not torch.is_tensor(value) or value.numel() == 1:
        check_positive(fn, name, value)
    elif not value.is_floating_point():
        raise TypeError(f"{fn}: argument '{name}' expected a real number or a floating-point tensor, got {_describe(value)}.")
    elif not bool(torch.isfinite(value).all() and (value > 0).all()):
        raise ValueError(f"{fn}: argument '{name}' expected finite values > 0, got {_describe(value)} with entries outside.")
    return value


def check_int(fn: str, name: str, value: Any, *, minimum: int = 1, kind: str = "argument") -> int:
    """Check that ``value`` is an integer >= ``minimum``; return it (``kind`` as in :func:`check_positive`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {kind} '{name}' expected an int, got {_describe(value)}.")
    if value < minimum:
        raise ValueError(f"{fn}: {kind} '{name}' expected an int >= {minimum}, got {value}.")
    return value


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer, Python's or NumPy's (anything with ``__index__``, e.g. ``np.prod`` of a
    shape), and not a bool: the test of a size in a shape."""
    return hasattr(value, "__index__") and not isinstance(value, bool)


def check_bool(fn: str, name: str, value: Any) -> bool:
    """Check that ``value`` is ``True`` or ``False`` (a string such as ``"no"`` would read as true); return it."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: argument '{name}' expected True or False, got {_describe(value)}.")
    return value


def check_batch(fn: str, name: str, x: Any, *, state: bool = False) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor of shape ``(B, *D)`` with B >= 1 and at least one data dim.

    ``state=True`` for the initial state of a solve: float32 or float64 only (:func:`check_state_dtype`).
    """
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
    if state:
        check_state_dtype(fn, name, x)
    if not all_finite(x):
        raise ValueError(f"{fn}: argument '{name}' contains NaN or infinite values.")
    return x


def all_finite(x: torch.Tensor) -> bool:
    r"""Whether every entry of ``x`` is finite: :math:`\sum_i 0\cdot x_i` is 0 then and NaN otherwise (two passes and
    no overflow; ``isfinite(x).all()`` takes four, a measurable part of a short solve's set-up).  One host read."""
    return not bool(torch.isnan(x.detach().mul(0.0).sum()))


def check_state_dtype(fn: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """Check that a solver state ``x`` is float32 or float64.

    Half precision belongs to the network, not to the state: a float16/bfloat16 state loses the small
    increments of a solve (and an adaptive solver's error estimate underflows), so scoreflow refuses it and
    says how to run the network in half while the state stays in float32.
    """
    if x.dtype not in STATE_DTYPES:
        raise TypeError(
            f"{fn}: argument '{name}' expected a float32 or float64 tensor (the solver state), got dtype {x.dtype}. "
            f"Fix: pass {name}.float(); the network may still run in half precision (scoreflow.adapters' "
            "autocast=torch.float16/bfloat16, or a half network wrapped by from_diffusers/from_kdiffusion, which "
            "casts the state to the network's dtype and its output back)."
        )
    return x


def check_float_dtype(fn: str, name: str, dtype: Any) -> torch.dtype:
    """Check that ``dtype`` is a floating-point ``torch.dtype``; return it."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"{fn}: argument '{name}' expected a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}. "
            "Times and noise levels are not integers."
        )
    return dtype


def check_time(fn: str, name: str, t: Any, x: torch.Tensor) -> Any:
    """Check that a time is a finite real number or a finite tensor of one element or of shape ``(B,)`` for the batch ``x``."""
    if torch.is_tensor(t):
        if t.numel() != 1 and tuple(t.shape) != (x.shape[0],):
            raise ValueError(
                f"{fn}: argument '{name}' expected a scalar or a tensor of shape ({x.shape[0]},) (one time per "
                f"sample of x, shape {tuple(x.shape)}), got shape {tuple(t.shape)}."
            )
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{fn}: argument '{name}' expected a real time, got {_describe(t)}.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{fn}: argument '{name}' contains NaN or infinite times.")
        return t
    return check_real(fn, name, t)


def check_network_output(fn: str, what: str, out: Any, x: torch.Tensor, t: Any) -> bool:
    """A wrapper's first-call check of the network output ``out`` at ``(x, t)``: the shape, dtype and device of
    ``x`` (:func:`check_like`, the check :class:`scoreflow.CountedScore` makes on a solve's first call) and finite.

    One host read, on the first call only; inside a ``torch.func`` transform (``vmap`` cannot read values) the
    finiteness is left to the next plain call's caller.

    Raises:
        ValueError, TypeError: as :func:`check_like`.
        NonFiniteError: if ``out`` has a NaN or infinite entry; the message names the times of the batch.

    Returns:
        Whether the values were checked (False inside a ``torch.func`` transform: check again at the next call).
    """
    check_like(fn, what, out, x, what=what)
    if torch._C._functorch.is_functorch_wrapped_tensor(out):
        return False
    if not bool(torch.isfinite(out).all()):
        ts = t.detach().reshape(-1).double() if torch.is_tensor(t) else torch.tensor([float(t)])
        at = f"t={ts.min().item():.6g}" if ts.min() == ts.max() else f"times t in [{ts.min().item():.6g}, {ts.max().item():.6g}]"
        raise NonFiniteError(
            f"{fn}: {what} is not finite (NaN or inf) at {at}. "
            "Fix: check the network at these times; a conversion that divides by sigma(t) is infinite where "
            "sigma(t) = 0 (t = 0), so evaluate at t >= sde.t_min."
        )
    return True


def check_options(fn: str, options: Any, valid: Iterable[str]) -> dict[str, Any]:
    """Check that ``options`` is None or a dict whose keys are among ``valid``; return it as a dict."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"{fn}: argument 'options' expected a dict or None, got {_describe(options)}.")
    valid = list(valid)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        accepted = ", ".join(repr(v) for v in valid) or "none"
        raise TypeError(f"{fn}: argument 'options' got unknown option(s) {', '.join(map(repr, unknown))}; accepted: {accepted}.")
    return dict(options)


def check_generator(fn: str, generator: Any, like: Any = None, name: str = "x") -> torch.Generator | None:
    """A ``torch.Generator`` or None; with ``like`` (the tensor argument ``name`` the noise is drawn for), one on
    its device type: torch draws noise only from a generator of the device it draws on, and says so without
    naming the caller."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: argument 'generator' expected a torch.Generator or None, got {_describe(generator)}.")
    if generator is not None and torch.is_tensor(like) and generator.device.type != like.device.type:
        raise ValueError(
            f"{fn}: argument 'generator' expected a generator on {like.device.type!r}, the device of '{name}' (its noise "
            f"is drawn there), got one on {str(generator.device)!r}. "
            f"Fix: torch.Generator(device={str(like.device)!r}).manual_seed(seed)."
        )
    return generator


def check_schedule_name(fn: str, name: str, value: Any, valid: Iterable[str], *, increasing: bool = False) -> str:
    """Check a named schedule (one of ``valid``) where a 1-D tensor of times is the other accepted form: a list or
    tuple of times is a ``TypeError`` saying how to pass it (``increasing`` for a likelihood's grid)."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__array__") and not torch.is_tensor(value)):
        order = "increasing from t_min to T" if increasing else "decreasing from T to t_min"
        raise TypeError(
            f"{fn}: argument '{name}' expected a schedule name ({', '.join(repr(v) for v in valid)}) or a 1-D tensor "
            f"of times {order}, got {type(value).__name__} {value!r}. Fix: pass torch.tensor({name}, dtype=torch.float64)."
        )
    return check_choice(fn, name, value, valid)


def first_unordered_step(ts: torch.Tensor) -> int | None:
    """The index i of the first step ``(ts[i], ts[i + 1])`` of a grid that should decrease strictly whose times are
    not finite or do not decrease (a tie in the grid's dtype included), or None (one synchronisation: ``nonzero``)."""
    bad = torch.nonzero(~torch.isfinite(ts[:-1]) | ~torch.isfinite(ts[1:]) | (ts[1:] >= ts[:-1])).flatten()
    return int(bad[0]) if len(bad) else None


def check_time_grid(fn: str, name: str, value: Any, t_start: float, t_end: float, *, increasing: bool = False) -> torch.Tensor:
    """Check a custom step grid: a 1-D floating tensor of >= 2 finite, strictly decreasing times from ``t_start``
    to ``t_end`` (ends within 1e-6 relative); return a float64 copy whose ends are exactly ``t_start`` and ``t_end``.
    ``increasing``: a likelihood's grid, from ``t_end`` up to ``t_start``, checked and described in that direction
    (the copy returned is still decreasing)."""
    flip = ".flip(0)" if increasing else ""
    fix = f"Fix: pass e.g. scoreflow.time_grid(sde, steps, 'log_snr_capped', sigma_cap=3.0, t_min={t_end:g}){flip}."
    if not torch.is_tensor(value):
        raise TypeError(f"{fn}: argument '{name}' expected a schedule name or a 1-D tensor of times, got {_describe(value)}. {fix}")
    if value.dim() != 1 or value.numel() < 2 or not value.is_floating_point():
        raise ValueError(f"{fn}: argument '{name}' expected a 1-D floating tensor of >= 2 times, got {_describe(value)}. {fix}")
    given = value.detach().to(device="cpu", dtype=torch.float64).clone()
    ts = given.flip(0) if increasing else given
    if first_unordered_step(ts) is not None:
        order = "increasing" if increasing else "decreasing"
        raise ValueError(f"{fn}: argument '{name}' expected finite, strictly {order} times, got {given.tolist()}. {fix}")
    (first, first_name), (last, last_name) = ((t_end, "t_min"), (t_start, "T")) if increasing else ((t_start, "T"), (t_end, "t_min"))
    for which, got, want in (("start", given[0].item(), first), ("end", given[-1].item(), last)):
        if abs(got - want) > 1e-6 * want:
            raise ValueError(
                f"{fn}: argument '{name}' expected a grid that starts at {first_name}={first:g} and ends at "
                f"{last_name}={last:g}, got {which} {got!r}. {fix}"
            )
    ts[0], ts[-1] = t_start, t_end
    return ts


def check_save_at(fn: str, name: str, value: Any, t_start: float, t_end: float) -> list[float]:
    """Check output times of a solve from ``t_start`` to ``t_end``: a 1-D floating tensor of finite times, strictly
    monotone in the direction of the solve and between its ends (within 1e-9 relative, then snapped to them); return
    them as Python floats."""
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    order = "decreasing" if t_start > t_end else "increasing"
    if not torch.is_tensor(value) or value.dim() != 1 or value.numel() < 1 or not value.is_floating_point():
        raise TypeError(f"{fn}: argument '{name}' expected a 1-D floating tensor of times, got {_describe(value)}.")
    times = value.detach().to(device="cpu", dtype=torch.float64).tolist()
    steps = [b - a for a, b in zip(times, times[1:])]
    slack = 1e-9 * max(abs(lo), abs(hi))
    if not all(math.isfinite(t) and lo - slack <= t <= hi + slack for t in times) or not all(
        d < 0 if order == "decreasing" else d > 0 for d in steps
    ):
        raise ValueError(
            f"{fn}: argument '{name}' expected finite, strictly {order} times between {t_start:g} and {t_end:g}, "
            f"got {times}."
        )
    return [min(max(t, lo), hi) for t in times]


def check_instance(fn: str, name: str, value: Any, cls: type, example: str) -> Any:
    """Check that ``value`` is an instance of ``cls``; ``example`` shows how to build one."""
    if not isinstance(value, cls):
        raise TypeError(f"{fn}: argument '{name}' expected a {cls.__name__} (e.g. {example}), got {_describe(value)}.")
    return value


def check_probability(fn: str, name: str, value: Any) -> float:
    """Check that ``value`` is a number in the open interval (0, 1); return it as float."""
    v = _as_real(fn, name, value)
    if not 0 < v < 1:  # (NaN fails too) one message for either end
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


def check_autocast(fn: str, dtype: Any) -> torch.dtype | None:
    """Check an ``autocast`` argument: ``None`` or a reduced floating dtype accepted by ``torch.autocast``."""
    valid = (torch.bfloat16, torch.float16)
    if dtype is not None and dtype not in valid:
        raise ValueError(
            f"{fn}: argument 'autocast' expected None, torch.bfloat16 or torch.float16, got {_describe(dtype)}. "
            "It is the reduced dtype the network runs in; the solver state keeps the dtype of x."
        )
    return dtype


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


def check_like(fn: str, name: str, value: Any, x: torch.Tensor, *, what: str | None = None) -> torch.Tensor:
    """Check that ``value`` is a tensor with the shape, dtype and device of ``x``; return it.

    ``what`` names the producer in the message (e.g. ``"the score"``) when ``value`` is not an argument.
    """
    who = what or f"argument '{name}'"
    if not torch.is_tensor(value):
        raise TypeError(f"{fn}: {who} expected a tensor shaped like x {tuple(x.shape)}, got {_describe(value)}.")
    if value.shape != x.shape:
        raise ValueError(
            f"{fn}: {who} expected shape {tuple(x.shape)} (the shape of {'x' if what is None else 'the x it was called with'}), "
            f"got shape {tuple(value.shape)}. "
            + ("Fix: pass a tensor shaped like x." if what is None else f"Fix: {what} must come out shaped like x, (B, *D).")
        )
    if value.dtype != x.dtype:
        raise TypeError(
            f"{fn}: {who} expected dtype {x.dtype} (the dtype of x), got {value.dtype}. "
            "Fix: cast the model or x so that both use the same dtype."
        )
    if value.device != x.device:
        raise ValueError(f"{fn}: {who} expected device {x.device} (the device of x), got {value.device}.")
    return value


def check_callable(fn: str, name: str, value: Any, signature: str) -> Callable:
    """Check that ``value`` is callable; ``signature`` (e.g. ``"score(x, t)"``) is shown in the message."""
    if not callable(value):
        raise TypeError(f"{fn}: argument '{name}' expected a callable {signature}, got {_describe(value)}.")
    return value


def call_mismatch(
    fn: str, name: str, signature: str, f: Callable, args: tuple, err: TypeError, *, fix: str | None = None
) -> TypeError | None:
    """The error to raise when calling the user's ``f(*args)`` raised ``err`` because ``f`` does not take these
    arguments (too few or too many positional parameters, a keyword-only one, ...), or ``None`` when ``f``'s
    signature accepts them (the ``TypeError`` came from inside ``f``: re-raise it as it is).

    Called in an ``except TypeError`` clause only, so a call that works costs nothing; ``signature`` (e.g.
    ``"score(x, t)"``) is the call scoreflow makes, shown in the message with the arguments it passed; ``fix``
    replaces the general advice.
    """
    found = signature_refusing(f, args)
    if found is None:
        return None
    label, own = found
    given = ", ".join(f"a tensor of shape {tuple(a.shape)}" if torch.is_tensor(a) else f"a {type(a).__name__}" for a in args)
    return TypeError(
        f"{fn}: argument '{name}' expected a callable {signature}, called with {len(args)} positional "
        f"argument(s) ({given}); got {label} with signature {own}, which cannot take them ({err}). Fix: "
        + (fix or "give a callable with exactly these positional parameters; bind any further input (a class "
           "label, a condition) beforehand, e.g. with a lambda or functools.partial.")
    )


def signature_refusing(f: Callable, args: tuple, kwargs: dict | None = None) -> tuple[str, inspect.Signature] | None:
    """``(name, signature)`` of the user's ``f`` when its signature cannot take ``f(*args, **kwargs)``; ``None``
    when it can (a ``TypeError`` of the call came from inside ``f``) or the signature cannot be read (a builtin).
    A module is read through its ``forward`` (its ``__call__`` takes anything), a ``torch.compile`` d one through
    the original module's."""
    f = getattr(f, "_orig_mod", f)
    target = f.forward if isinstance(f, torch.nn.Module) else f
    try:
        own = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    try:
        own.bind(*args, **(kwargs or {}))
    except TypeError:
        return getattr(target, "__qualname__", None) or type(f).__name__, own
    return None


def call_checked(fn: str, name: str, signature: str, f: Callable, *args: Any, fix: str | None = None) -> Any:
    """``f(*args)``, the user's ``name`` given to ``fn``; a call ``f``'s signature cannot take raises the
    :func:`call_mismatch` error instead of Python's bare ``TypeError`` (any other error passes unchanged)."""
    try:
        return f(*args)
    except TypeError as err:
        mismatch = call_mismatch(fn, name, signature, f, args, err, fix=fix)
        if mismatch is None:
            raise
        raise mismatch from err


def check_noise_levels(fn: str, name: str, value: Any, like: torch.Tensor) -> torch.Tensor:
    """Check a non-empty 1-D sequence or tensor of finite noise levels > 0; return it as a tensor like ``like``."""
    try:
        levels = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{fn}: argument '{name}' expected a 1-D sequence or tensor of noise levels, got {_describe(value)}."
        ) from None
    if levels.ndim != 1 or levels.numel() == 0:
        raise ValueError(
            f"{fn}: argument '{name}' expected a non-empty 1-D sequence of noise levels, got shape {tuple(levels.shape)}."
        )
    if not (torch.isfinite(levels).all() and (levels > 0).all()):
        raise ValueError(f"{fn}: argument '{name}' expected finite noise levels > 0, got {levels.tolist()}.")
    return levels


def check_sigmas(fn: str, name: str, value: Any) -> torch.Tensor:
    """Check noise levels as :func:`check_noise_levels` does, and strictly decreasing; return them in float64."""
    sigmas = check_noise_levels(fn, name, value, torch.empty(0, dtype=torch.float64))
    if (sigmas[1:] >= sigmas[:-1]).any():
        raise ValueError(
            f"{fn}: argument '{name}' expected strictly decreasing noise levels (largest first), "
            f"got {sigmas.tolist()}. "
            "Fix: sort them in decreasing order, e.g. scoreflow.geometric_sigmas(sigma_min, sigma_max, n)."
        )
    return sigmas


def check_log_prob_output(fn: str, log_prob: Callable, x: torch.Tensor) -> torch.Tensor:
    """Call ``log_prob(x)`` once and check it returns a finite ``(B,)`` tensor in ``x``'s dtype and device."""
    if not callable(log_prob):
        raise TypeError(
            f"{fn}: argument 'log_prob' expected a callable log_prob(x) or None, got {_describe(log_prob)}."
        )
    with torch.no_grad():
        out = call_checked(fn, "log_prob", "log_prob(x)", log_prob, x)
    if not torch.is_tensor(out) or out.shape != (x.shape[0],):
        raise ValueError(
            f"{fn}: log_prob returned {_describe(out)} for x of shape {tuple(x.shape)}; "
            f"expected a tensor of shape ({x.shape[0]},), one log-density per sample (sum over data dims)."
        )
    if out.dtype != x.dtype or out.device != x.device:
        raise TypeError(
            f"{fn}: log_prob returned dtype {out.dtype} on {out.device} for x of dtype {x.dtype} on {x.device}; "
            "cast the model or x so that both agree."
        )
    if not torch.isfinite(out).all():
        raise ValueError(
            f"{fn}: log_prob is not finite at the initial states; start the chains where the density is positive."
        )
    return out


def check_distinct(fn: str, name: str, values: Sequence[Any], what: str) -> None:
    """Check that no entry of argument ``name`` (a list of ``what`` names) is repeated: a repeated method or trace
    would be solved twice for the same result."""
    repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
    if repeated:
        raise ValueError(
            f"{fn}: argument '{name}' expected each {what} once, got {list(values)!r} ({', '.join(map(repr, repeated))} repeated)."
        )


def check_broadcastable(fn: str, name: str, value: Any, shape: tuple[int, ...], *, boolean: bool = False) -> torch.Tensor:
    """Check that ``value`` is a floating-point (or, with ``boolean``, a boolean) tensor that broadcasts to ``shape``
    (the batch's ``(B, *D)``) without growing it: ``(*D)``, ``(B, *D)``, or either with size-1 dimensions, as a
    ``(B, 1, H, W)`` mask shared by the channels; return it."""
    shape = tuple(shape)
    forms = "(*D), (B, *D) or either with size-1 dimensions"
    kind = "a boolean" if boolean else "a floating-point"
    if not torch.is_tensor(value) or (value.dtype == torch.bool) != boolean or not (boolean or value.is_floating_point()):
        raise TypeError(f"{fn}: argument '{name}' expected {kind} tensor that broadcasts to {shape} ({forms}), got {_describe(value)}.")
    trailing = shape[len(shape) - value.ndim:] if value.ndim <= len(shape) else None
    if trailing is None or any(m not in (1, n) for m, n in zip(value.shape, trailing)):
        raise ValueError(f"{fn}: argument '{name}' expected a shape that broadcasts to {shape} ({forms}), got {tuple(value.shape)}.")
    return value


def resolve_t_min(fn: str, sde: Any, t_min: Any) -> float:
    """The truncation time: ``sde.t_min`` by default, else a value in ``(0, T)`` (``[0, T)`` for a process whose
    ``reaches_data`` is true: a flow path, whose velocity models are finite at t = 0)."""
    if t_min is None:
        return sde.t_min
    t = check_real(fn, "t_min", t_min)
    lowest = 0.0 if getattr(sde, "reaches_data", False) else math.nextafter(0.0, 1.0)
    if not lowest <= t < sde.T:
        interval = "[0" if lowest == 0.0 else "(0"
        raise ValueError(f"{fn}: argument 't_min' expected a time in {interval}, T={sde.T:g}), got {t!r}.")
    return t


def check_shaped(fn: str, name: str, value: Any, shapes: Iterable[tuple[int, ...]], *, boolean: bool = False) -> torch.Tensor:
    """Check that ``value`` is a floating-point (or, with ``boolean``, a boolean) tensor of one of ``shapes``
    (``-1`` matches any size, e.g. a batch); return it."""
    shapes = [tuple(s) for s in shapes]
    shown = " or ".join("(" + ", ".join("B" if n == -1 else str(n) for n in s) + ("," if len(s) == 1 else "") + ")" for s in shapes)
    kind = "a boolean" if boolean else "a floating-point"
    if not torch.is_tensor(value) or (value.dtype == torch.bool) != boolean or not (boolean or value.is_floating_point()):
        raise TypeError(f"{fn}: argument '{name}' expected {kind} tensor of shape {shown}, got {_describe(value)}.")
    if not any(len(s) == value.ndim and all(n in (-1, m) for n, m in zip(s, value.shape)) for s in shapes):
        raise ValueError(f"{fn}: argument '{name}' expected shape {shown}, got {tuple(value.shape)}.")
    return value
