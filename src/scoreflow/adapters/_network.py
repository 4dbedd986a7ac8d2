"""Calling a foreign network: its own dtype and autocast inside, the solver's dtype outside."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .._checks import check_network_output, signature_refusing

Output = Callable[[Any, torch.Tensor], torch.Tensor]


def _network_dtype(net: Any) -> torch.dtype | None:
    """The floating dtype of a module's first floating parameter (works for ``torch.compile`` d modules)."""
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def _expand_condition(value: Any, batch: int, dtype: torch.dtype | None) -> Any:
    """Broadcast a conditioning tensor with a leading dimension of 1 to the batch and give a floating one the
    module's parameter dtype ``dtype`` (as ``x``; ``None``: a plain function, which gets its conditions as given);
    the same for the tensors in a dict (SDXL's ``added_cond_kwargs``); leave anything else (integer class labels,
    non-tensors) alone."""
    if isinstance(value, Mapping):
        return {k: _expand_condition(v, batch, dtype) for k, v in value.items()}
    if torch.is_tensor(value):
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        if value.ndim > 0 and value.shape[0] == 1 and batch != 1:
            return value.expand(batch, *value.shape[1:])
    return value


def _condition_tensors(condition: Mapping[str, Any], prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``condition`` with their names (``added_cond_kwargs['time_ids']`` inside a dict)."""
    found = []
    for k, v in condition.items():
        name = f"{prefix}[{k!r}]" if prefix else str(k)
        if isinstance(v, Mapping):
            found += _condition_tensors(v, name)
        elif torch.is_tensor(v):
            found.append((name, v))
    return found


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value) if isinstance(value, (bool, int, float, str, type(None))) else f"a {type(value).__name__}"


def _call_mismatch(fn: str, call: str, net: Any, args: tuple, kwargs: dict, err: TypeError) -> TypeError | None:
    """The error for a network whose signature cannot take ``net(*args, **kwargs)``, or ``None`` when it can (the
    ``TypeError`` came from inside the network) or its signature cannot be read. Runs only after a failed call."""
    found = signature_refusing(net, args, kwargs)
    if found is None:
        return None
    label, own = found
    made = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
    return TypeError(
        f"{fn}: the network is called as {call}, here ({made}), but {label} has the signature {own}, which cannot "
        f"take it ({err}). Fix: give a network that takes this call, or wrap it (e.g. in a function that takes "
        "these arguments and drops what the network does not use)."
    )


class NetworkCall(torch.nn.Module):
    """``net(x, time_input(t), **condition)`` evaluated in the network's dtype, returned in ``x``'s dtype.

    The solver state keeps the dtype the user chose (float64 state with a float32 network,
    or any state with a bfloat16/float16 ``autocast`` confined to the network call), so the
    solver's own arithmetic never runs in reduced precision.

    Args:
        net: the network (a module, a ``torch.compile`` d module or any callable).
        time_input: maps scoreflow time ``t`` of shape ``(B,)`` to the network's time argument.
        condition: keyword arguments passed through on every call (class labels, text
            embeddings); a tensor with leading dimension 1, also one in a dict, is broadcast to the batch.
        output: extracts the prediction tensor from the network's return value.
        autocast: if given, a reduced dtype (``torch.bfloat16``/``torch.float16``) under which
            the network alone runs via ``torch.autocast``.
        fn: the adapter that built this call, named in the first call's check of the output.
        call: how the network is called (e.g. ``"unet(x, timestep, **condition, return_dict=False)"``), named in
            the error for a network whose signature cannot take the call.
    """

    def __init__(
        self,
        net: Callable[..., Any],
        time_input: Callable[[torch.Tensor], torch.Tensor],
        condition: Mapping[str, Any],
        output: Output,
        autocast: torch.dtype | None,
        fn: str,
        call: str,
    ) -> None:
        super().__init__()
        self.fn = fn
        self.call = call
        self._checked = False
        self.net = net
        self.time_input = time_input
        self.condition = dict(condition)
        self.output = output
        self.autocast = autocast

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        own = _network_dtype(self.net)
        dtype = own or x.dtype
        condition = {k: _expand_condition(v, x.shape[0], own) for k, v in self.condition.items()}
        for k, v in _condition_tensors(condition):  # shapes only (no tensor read)
            if v.ndim > 0 and v.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{self.fn}: condition '{k}' holds {v.shape[0]} rows, but the network is called on {x.shape[0]}: a "
                    "per-sample condition needs the batch's rows as they are in every call, and this solver evaluates "
                    "others (subsets for per-sample adaptive steps and teacher_step's rows grouped by their times, "
                    "stacked copies for trace='hutchinson_fd'). Fix: give one condition for all (leading dimension 1) "
                    "or solve each condition's samples in a call of their own."
                )
        ctx = (
            torch.autocast(device_type=x.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with ctx:
            # Time goes in at least float32: a timestep near 999 does not survive bfloat16.
            time = self.time_input(t).to(torch.promote_types(dtype, torch.float32))
            x_in = x.to(dtype)
            try:
                raw = self.net(x_in, time, **condition)
            except TypeError as err:
                mismatch = _call_mismatch(self.fn, self.call, self.net, (x_in, time), condition, err)
                if mismatch is None:
                    raise
                raise mismatch from err
        out = self.output(raw, x)
        if not torch.is_tensor(out):
            raise TypeError(
                f"{self.fn}: the network returned {type(raw).__name__}; expected a tensor shaped like x {tuple(x.shape)}."
            )
        out = out.to(x.dtype)
        if not self._checked:
            self._checked = check_network_output(self.fn, "the network", out, x, t)
        return out
