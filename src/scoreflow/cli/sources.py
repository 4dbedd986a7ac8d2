"""Where a ``dist`` command's model and data come from: ``--model package.module:factory`` and ``--data FILE``."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..sde import ForwardSDE
from .options import CLIError

__all__ = ["model_spec", "data_shape", "data_file", "load_model", "load_data"]


def model_spec(text: str) -> str:
    """An argparse type: ``package.module:factory``."""
    module, _, factory = text.partition(":")
    if not (module and factory.isidentifier()):
        raise argparse.ArgumentTypeError(
            f"expected 'package.module:factory', e.g. mypkg.models:load_score, got {text!r}"
        )
    return text


def data_shape(text: str) -> tuple[int, ...]:
    """An argparse type: the shape of one sample, comma-separated (``3,32,32``)."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1 such as 3,32,32, got {text!r}")
    return shape


def data_file(text: str) -> str:
    """An argparse type: a ``.pt`` or ``.npy`` file name."""
    if Path(text).suffix not in (".pt", ".npy"):
        raise argparse.ArgumentTypeError(f"expected a .pt tensor or .npy array of shape (N, *D), got {text!r}")
    return text


def load_model(spec: str, device: torch.device) -> tuple[Callable, ForwardSDE]:
    """``package.module:factory`` -> ``factory(device)``, which must return ``(score, sde)``."""
    module_name, _, name = spec.partition(":")
    debug = "(--debug shows the traceback)"
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module: any failure to import it is reported, not only ImportError
        raise CLIError(
            f"argument --model: cannot import {module_name!r} ({type(e).__name__}: {e}); "
            f"check the name and PYTHONPATH {debug}"
        ) from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise CLIError(
            f"argument --model: module {module_name!r} has no function {name!r}; expected factory(device) -> (score, sde)"
        )
    try:
        made = factory(device)
    except Exception as e:
        raise CLIError(f"argument --model: {spec}({device}) raised {type(e).__name__}: {e} {debug}") from e
    if not (isinstance(made, tuple) and len(made) == 2 and callable(made[0]) and isinstance(made[1], ForwardSDE)):
        raise CLIError(
            f"argument --model: {spec}(device) returned {type(made).__name__}; "
            "expected a pair (score, sde) with a scoreflow ForwardSDE"
        )
    return made


def load_data(path: str, dtype: torch.dtype) -> torch.Tensor:
    """The tensor of a ``.pt`` file or the array of a ``.npy`` file, in ``dtype``."""
    try:
        data = torch.load(path, weights_only=True) if path.endswith(".pt") else torch.from_numpy(np.load(path))
    except Exception as e:  # a missing, unreadable or malformed file: whatever the reader raises for it
        raise CLIError(f"argument --data: cannot read {path!r} ({type(e).__name__}: {e})") from e
    if not torch.is_tensor(data):
        raise CLIError(f"argument --data: {path!r} holds a {type(data).__name__}; expected one tensor of shape (N, *D)")
    return data.to(dtype)
