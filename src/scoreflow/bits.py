r"""Bits per dimension of discretized data, and uniform dequantization.

Data with ``n_bins`` levels per dimension stored in the range ``[lo, hi]`` is dequantized to
:math:`y = lo + (hi - lo)(k + u)/n_{bins}`, :math:`u \sim U[0, 1)^D`, where k is the integer level.
A density :math:`p_y` then bounds the probability of the levels (Jensen; Theis et al. 2016):

.. math:: \log P(k) \ge E_u\big[\log p_y(y)\big] + D \log\frac{hi - lo}{n_{bins}},

since one bin has volume :math:`((hi - lo)/n_{bins})^D` in y.  In bits per dimension,

.. math:: \mathrm{bpd} = -\frac{\log p_y(y)}{D \ln 2} + \log_2 n_{bins} - \log_2 (hi - lo).

For 8-bit data in ``[0, 1]`` the offset is 8 bits, in ``[-1, 1]`` it is 7.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._checks import check_data_range, check_generator, check_int, is_int

__all__ = ["bits_per_dim", "dequantize"]


def bits_per_dim(
    log_prob: torch.Tensor,
    x_shape: Sequence[int] | int,
    n_bins: int | None = 256,
    data_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    r"""Convert log-densities (nats) of dequantized data to bits per dimension.

    :math:`\mathrm{bpd} = -\log p(y)/(D\ln 2) + \log_2 n_{bins} - \log_2(hi - lo)`; with ``n_bins=None``
    the data is continuous and only :math:`-\log p(y)/(D\ln 2)` is returned (``data_range`` is then left at its
    default: the continuous value has no offset).

    Args:
        log_prob: log-densities of the dequantized points in the scaling of ``data_range``, any shape.
        x_shape: the shape ``D`` of ONE data point (e.g. ``(3, 32, 32)``, i.e. ``x.shape[1:]``), or D as an int.
        n_bins: number of quantization levels per dimension (256 for 8-bit data), or ``None``.
        data_range: the interval ``(lo, hi)`` the levels were scaled to before modelling.

    Returns:
        Bits per dimension, shaped like ``log_prob``.

    Raises:
        TypeError: if ``log_prob`` is not a tensor or ``x_shape``/``n_bins`` are not integers.
        ValueError: if ``n_bins < 2``, ``x_shape`` has a non-positive entry, ``data_range`` is not ``lo < hi``, or
            ``data_range`` is not ``(0, 1)`` with ``n_bins=None`` (it would be ignored).
    """
    fn = "bits_per_dim"
    if not torch.is_tensor(log_prob):
        raise TypeError(f"{fn}: argument 'log_prob' expected a tensor of log-densities, got {type(log_prob).__name__}.")
    single = _is_int(x_shape)  # ints, NumPy's included (np.prod(x.shape[1:]) is an np.int64)
    if not single and not isinstance(x_shape, (tuple, list, torch.Size)):
        raise TypeError(
            f"{fn}: argument 'x_shape' expected the shape of one data point (an int or a tuple of ints, e.g. "
            f"x.shape[1:]), got {type(x_shape).__name__} {x_shape!r}."
        )
    dims = (x_shape,) if single else tuple(x_shape)
    if not dims or not all(_is_int(d) and d >= 1 for d in dims):
        raise ValueError(
            f"{fn}: argument 'x_shape' expected the shape of one data point (positive ints, e.g. x.shape[1:]), "
            f"got {x_shape!r}."
        )
    d = math.prod(int(d) for d in dims)
    bpd = -log_prob / (d * math.log(2))
    lo, hi = check_data_range(fn, data_range)
    if n_bins is None:
        if (lo, hi) != (0.0, 1.0):
            raise ValueError(
                f"{fn}: argument 'data_range' applies to discrete data (an int n_bins); with n_bins=None the continuous "
                f"-log p/(D ln 2) has no offset, got data_range={data_range!r}. Fix: pass the n_bins the data was "
                "quantized with, or omit data_range."
            )
        return bpd
    check_int(fn, "n_bins", n_bins, minimum=2)
    return bpd + math.log2(n_bins) - math.log2(hi - lo)


def _is_int(value: object) -> bool:
    """An integer (:func:`~scoreflow._checks.is_int`) that is not a tensor: a tensor is not a size of ``x_shape``."""
    return is_int(value) and not torch.is_tensor(value)


def dequantize(
    x: torch.Tensor,
    n_bins: int = 256,
    *,
    data_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Uniform dequantization: :math:`y = lo + (hi - lo)(k + u)/n_{bins}`, :math:`u \sim U[0, 1)`.

    Args:
        x: quantized data, either integer levels k in ``[0, n_bins)`` (e.g. a ``uint8`` image) or
            floats on the grid :math:`lo + (hi - lo)k/(n_{bins} - 1)` (e.g. ``torchvision``'s ``ToTensor``
            output ``k/255`` for ``data_range=(0, 1)``).
        n_bins: number of levels per dimension.
        data_range: the interval ``(lo, hi)`` of the result (and of float input).
        generator: seeds the uniform noise.

    Returns:
        Dequantized data shaped like ``x``; float32/float64 input keeps its dtype, float16 input (an 8-bit image
        in half precision) becomes float32, and integer input the default float dtype.

    Raises:
        ValueError: if ``x`` is off the grid of ``n_bins`` levels in ``data_range`` (a mismatched scaling)
            or ``n_bins < 2``.
        TypeError: if ``x`` is not a tensor, ``generator`` is not a ``torch.Generator``, or ``x``'s floating dtype
            cannot hold ``n_bins`` levels (bfloat16 for 8-bit data).
    """
    fn = "dequantize"
    if not torch.is_tensor(x):
        raise TypeError(f"{fn}: argument 'x' expected a tensor of quantized data, got {type(x).__name__}.")
    check_int(fn, "n_bins", n_bins, minimum=2)
    lo, hi = check_data_range(fn, data_range)
    check_generator(fn, generator, x)
    tol = 1e-3
    if x.is_floating_point():
        # a level k/(n_bins - 1) stored in x's dtype is off by up to half its spacing: eps/2 relative, eps*(n_bins-1)/2 levels
        tol = max(tol, torch.finfo(x.dtype).eps * (n_bins - 1))
        if tol >= 0.5:
            raise TypeError(
                f"{fn}: argument 'x' of dtype {x.dtype} cannot hold {n_bins} distinct levels in data_range "
                f"(its spacing near the top is {torch.finfo(x.dtype).eps:g} of the range). Fix: pass the integer levels "
                "(e.g. the uint8 image) or float16/float32 data."
            )
        # half precision cannot resolve the uniform noise inside a bin: the result is float32 then
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        level = (x.double() - lo) / (hi - lo) * (n_bins - 1)
    else:
        dtype = torch.get_default_dtype()
        level = x.double()
    k = level.round()
    if not bool(((level - k).abs() <= tol).all() & (k >= 0).all() & (k <= n_bins - 1).all()):
        finite = bool(torch.isfinite(level).all())  # a NaN made the range read [nan, nan], whatever the other values
        got = f"values in [{float(x.min()):g}, {float(x.max()):g}]" if finite else "NaN or infinite values"
        raise ValueError(
            f"{fn}: argument 'x' is not on the grid of {n_bins} levels spanning data_range=({lo:g}, {hi:g}) "
            f"(got {got}). Fix: pass the n_bins and data_range the data was quantized with, or integer levels."
        )
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    return (lo + (hi - lo) * (k + u) / n_bins).to(dtype)
