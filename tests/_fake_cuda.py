"""A simulated second device on the CPU, for the tests that a solve keeps everything on the device of ``x``.

Inside ``fake_cuda()`` a tensor is "on the device" when it is tagged: created with ``device=DEVICE`` (or
``device="cuda"``), moved there with ``.to``/``.cuda``, or computed from a tagged tensor. A tagged tensor reports
``.device == DEVICE`` while its data stays on the CPU; ``.cpu()``/``.to("cpu")`` give an untagged copy. As CUDA
would, an op raises ``DeviceMismatch`` when it mixes a tagged tensor with an untagged one of dimension >= 1 (0-dim
CPU tensors mix freely), when a generator draws noise for the other device, and on ``.numpy()`` of a tagged tensor.
``FakeCudaGenerator()`` is a generator "on the device".

torch.func transforms hide the tensors they wrap from a ``TorchFunctionMode``; ``fake_cuda(*modules)`` patches the
``vjp``/``vmap``/``jvp``/``grad`` those modules imported (and ``torch.func``'s own) so that their outputs are tagged
like their inputs. ``torch.Generator("cuda")`` (as torchsde builds its own) gives a ``FakeCudaGenerator``.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("cuda", 0)
_TAG = "_fake_cuda"


class DeviceMismatch(RuntimeError):
    """What CUDA would raise: tensors (or a generator) on different devices meet in one op."""


class FakeCudaGenerator(torch.Generator):
    """A CPU generator that reports itself on ``DEVICE`` (a CUDA generator, as a user on a GPU passes)."""

    def __init__(self, device=None):
        super().__init__()

    @property
    def device(self) -> torch.device:
        return DEVICE


_RealGenerator = torch.Generator


class _GeneratorMeta(type(torch.Generator)):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, _RealGenerator)

    def __subclasscheck__(cls, sub) -> bool:
        return issubclass(sub, _RealGenerator)

    def __call__(cls, device=None):
        # torch.Generator("cuda") (as torchsde builds its own) gives a generator on the simulated device
        return FakeCudaGenerator() if _is_fake_device(device) else _RealGenerator(device or "cpu")


class _Generator(_RealGenerator, metaclass=_GeneratorMeta):
    """``torch.Generator`` inside ``fake_cuda()``."""


def _chain(t: torch.Tensor):
    """``t`` and the tensors a torch.func transform wrapped it around."""
    yield t
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
        yield t


def is_tagged(t) -> bool:
    return isinstance(t, torch.Tensor) and any(getattr(u, _TAG, False) for u in _chain(t))


def _tag(out):
    def tag(t):
        if isinstance(t, torch.Tensor):
            setattr(t, _TAG, True)
        return t

    return tree_map(tag, out)


def _is_fake_device(device) -> bool:
    if device is None or isinstance(device, torch.dtype):
        return False
    if isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"


def _is_cpu_device(device) -> bool:
    if device is None or isinstance(device, (torch.dtype, int)):
        return False
    return torch.device(device).type == "cpu"


_GETTERS = {torch.Tensor.device.__get__: "device", torch.Tensor.is_cuda.__get__: "is_cuda"}
# Ops that move data between devices by design (a CUDA tensor indexed by CPU indices is allowed too).
_CROSSING = {
    torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.__getitem__,
    torch.Tensor.__setitem__, torch.Tensor.new_tensor, torch.Tensor.type_as,
}
_MOVES_TO_CPU = {torch.Tensor.cpu}
_RANDOM_SELF = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.bernoulli_, torch.Tensor.random_,
                torch.Tensor.exponential_}


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
        if func in _GETTERS:
            if is_tagged(args[0]):
                return DEVICE if _GETTERS[func] == "device" else True
            return func(*args, **kwargs)
        if func is torch.Tensor.get_device and is_tagged(args[0]):
            return 0
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        tagged = any(is_tagged(t) for t in tensors)
        if func is torch.Tensor.numpy and tagged:
            raise DeviceMismatch(f"{name}: .numpy() of a tensor on {DEVICE} (call .cpu() first)")
        to_fake = to_cpu = False
        if "device" in kwargs:
            to_fake, to_cpu = _is_fake_device(kwargs["device"]), _is_cpu_device(kwargs["device"])
            if to_fake:
                kwargs["device"] = "cpu"
        if func is torch.Tensor.to:
            rest = list(args[1:])
            for i, a in enumerate(rest):
                if isinstance(a, torch.Tensor):
                    to_fake, to_cpu = is_tagged(a), not is_tagged(a)
                elif isinstance(a, (str, torch.device, int)) and not isinstance(a, bool):
                    if _is_fake_device(a):
                        to_fake, rest[i] = True, "cpu"
                    elif _is_cpu_device(a):
                        to_cpu = True
            args = (args[0], *rest)
        if func is torch.Tensor.cuda:
            to_fake, func, args, kwargs = True, torch.Tensor.clone, args[:1], {}
        if func in _MOVES_TO_CPU:
            to_cpu = True
        if func is torch.Tensor.__getitem__ and not is_tagged(args[0]) and args[0].dim() >= 1 and tagged:
            raise DeviceMismatch(f"{name}: a CPU tensor of shape {tuple(args[0].shape)} indexed by indices on {DEVICE}")
        if func is torch.Tensor.__getitem__:
            tagged = is_tagged(args[0])
        if tagged and func not in _CROSSING:
            small = [tuple(t.shape) for t in tensors if not is_tagged(t) and t.dim() >= 1]
            if small:
                raise DeviceMismatch(
                    f"{name}: tensors on {DEVICE} meet CPU tensors of shapes {small} (only 0-dim CPU tensors may)"
                )
        generator = kwargs.get("generator")
        if generator is not None:
            on_fake = to_fake or (tagged and not to_cpu) or (func in _RANDOM_SELF and is_tagged(args[0]))
            if on_fake != isinstance(generator, FakeCudaGenerator):
                where = DEVICE if on_fake else "cpu"
                raise DeviceMismatch(f"{name}: noise on {where} drawn from a generator on {generator.device}")
        out = func(*args, **kwargs)
        if to_fake and not tagged and out is args[0]:  # a move to another device is a copy, never the tensor itself
            out = out.clone()
        if to_cpu and tagged and out is args[0]:
            out = out.detach().clone().requires_grad_(out.requires_grad) if out.is_leaf else out.clone()
        if to_fake or (tagged and not to_cpu):
            _tag(out)
        return out


def _transform(fn):
    @functools.wraps(fn)
    def wrapped(f, *a, **k):
        inner = fn(f, *a, **k)

        @functools.wraps(inner)
        def call(*args, **kwargs):
            tagged = any(is_tagged(t) for t in tree_flatten((args, kwargs))[0])
            out = inner(*args, **kwargs)
            return _tag_calls(out) if tagged else out

        return call

    return wrapped


def _tag_calls(out):
    """Tag the tensors of a transform's output, and what the functions in it (a vjp's pullback) return."""
    if callable(out) and not isinstance(out, torch.Tensor):
        @functools.wraps(out)
        def pull(*args, **kwargs):
            return _tag_calls(out(*args, **kwargs))
        return pull
    if isinstance(out, (tuple, list)):
        return type(out)(_tag_calls(o) for o in out)
    return _tag(out)


def _direct(fn):
    """``vjp(f, *primals)``/``jvp(f, primals, tangents)``: outputs tagged when a primal is."""
    @functools.wraps(fn)
    def wrapped(f, *args, **kwargs):
        tagged = any(is_tagged(t) for t in tree_flatten((args, kwargs))[0])
        out = fn(f, *args, **kwargs)
        return _tag_calls(out) if tagged else out

    return wrapped


@contextlib.contextmanager
def fake_cuda(*modules):
    """Run the block with the simulated device; ``modules`` are those whose torch.func imports are patched."""
    patches = {"vmap": _transform, "grad": _transform, "vjp": _direct, "jvp": _direct}
    saved = []
    for module in modules:
        for attr, wrap in patches.items():
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, wrap(getattr(module, attr)))
    func_saved = [(torch.func, a, getattr(torch.func, a)) for a in patches]
    for _, a, f in func_saved:
        setattr(torch.func, a, patches[a](f))
    torch.Generator = _Generator
    try:
        with _Mode():
            yield
    finally:
        torch.Generator = _RealGenerator
        for module, attr, value in saved + func_saved:
            setattr(module, attr, value)


def on_device(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` on the simulated device (to be used inside ``fake_cuda()``)."""
    return _tag(t.clone())
