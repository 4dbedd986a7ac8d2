r"""Hypothesis strategies for forward SDEs, times and analytic laws.

Needs ``hypothesis`` (scoreflow's ``test`` extra).  Every drawn object is a deterministic
function of the values hypothesis draws (random rotations come from a drawn integer seed),
so examples reproduce and shrink.

>>> from hypothesis import given
>>> from scoreflow.testing import strategies as sfst
>>> @given(sfst.forward_sdes(), sfst.gaussians(dim=2))
... def test_something(sde, law): ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from .._checks import check_choice, check_int, check_positive, check_real
from ..analytic import Gaussian, GaussianMixture
from ..sde import VESDE, VPSDE, ForwardSDE, SubVPSDE

__all__ = ["forward_sdes", "times", "sdes_and_times", "gaussians", "gaussian_mixtures", "random_rotation"]

SDE_KINDS = ("vp", "subvp", "ve")


def _dims(fn: str, dim: int | tuple[int, int], name: str = "dim") -> st.SearchStrategy[int]:
    """Integers in ``[lo, hi]`` from an int or a ``(lo, hi)`` pair given as argument ``name``."""
    if not isinstance(dim, int) and not (isinstance(dim, (tuple, list)) and len(dim) == 2):
        raise TypeError(f"{fn}: argument '{name}' expected an int or a pair (lo, hi), got {type(dim).__name__} {dim!r}.")
    lo, hi = (dim, dim) if isinstance(dim, int) else dim
    check_int(fn, name, lo)
    check_int(fn, name, hi, minimum=lo)
    return st.integers(lo, hi)


def _interval(fn: str, name: str, value: tuple[float, float], minimum: float) -> tuple[float, float]:
    """Check that ``value`` is a pair ``(lo, hi)`` of finite numbers with ``minimum <= lo <= hi``; return it."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"{fn}: argument '{name}' expected a pair (lo, hi), got {type(value).__name__} {value!r}.")
    lo, hi = (check_real(fn, name, v) for v in value)
    if not minimum <= lo <= hi:
        raise ValueError(f"{fn}: argument '{name}' expected a pair (lo, hi) with {minimum:g} <= lo <= hi, got {tuple(value)!r}.")
    return lo, hi


@st.composite
def forward_sdes(draw, kinds: Sequence[str] = SDE_KINDS) -> ForwardSDE:
    """Valid forward SDEs of the given kinds with random parameters.

    VP and sub-VP: ``beta_min`` in [0.01, 1], ``beta_max`` in [5, 25]; VE: ``sigma_min`` in
    [0.005, 0.1], ``sigma_max`` in [5, 100]; each with its class's ``T`` and ``t_min``.
    """
    if isinstance(kinds, str) or not kinds:
        raise ValueError(f"forward_sdes: argument 'kinds' expected a non-empty sequence of {SDE_KINDS}, got {kinds!r}.")
    for kind in kinds:
        check_choice("forward_sdes", "kinds", kind, SDE_KINDS)
    kind = draw(st.sampled_from(tuple(kinds)))
    if kind == "ve":
        return VESDE(sigma_min=draw(st.floats(0.005, 0.1)), sigma_max=draw(st.floats(5.0, 100.0)))
    cls = VPSDE if kind == "vp" else SubVPSDE
    return cls(beta_min=draw(st.floats(0.01, 1.0)), beta_max=draw(st.floats(5.0, 25.0)))


def times(sde: ForwardSDE, *, t_min: float | None = None, t_max: float | None = None) -> st.SearchStrategy[float]:
    """Times in ``[t_min, t_max]``, by default ``[sde.t_min, sde.T]``."""
    lo = sde.t_min if t_min is None else t_min
    hi = sde.T if t_max is None else t_max
    if not 0 < lo <= hi <= sde.T:
        raise ValueError(f"times: expected 0 < t_min <= t_max <= T={sde.T:g}, got t_min={lo!r}, t_max={hi!r}.")
    return st.floats(lo, hi)


@st.composite
def sdes_and_times(draw, kinds: Sequence[str] = SDE_KINDS) -> tuple[ForwardSDE, float]:
    """A forward SDE from :func:`forward_sdes` and a time in its ``[t_min, T]``."""
    sde = draw(forward_sdes(kinds))
    return sde, draw(times(sde))


def random_rotation(d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random ``(d, d)`` orthogonal matrix: QR of a seeded Gaussian matrix with the signs of R fixed."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))


def _covariance(draw, d: int, scale: float, condition: float, dtype: torch.dtype) -> torch.Tensor:
    """``scale^2 * U diag(lambda) U^T`` with eigenvalues in ``[1/condition, 1]``, both ends attained when d > 1.

    Built in float64 and symmetrized exactly before the cast, so that it is symmetric in every dtype.
    """
    u = draw(st.lists(st.floats(0.0, 1.0), min_size=d, max_size=d))
    if d > 1:
        u[0], u[-1] = 0.0, 1.0
    eig = torch.tensor([condition ** (-v) for v in u], dtype=torch.float64)
    rot = random_rotation(d, draw(st.integers(0, 2**31 - 1)))
    cov = scale**2 * (rot * eig) @ rot.T
    return ((cov + cov.T) / 2).to(dtype)


def _at_least_one(fn: str, name: str, value: float) -> float:
    """Check that a largest condition number ``value`` is a finite number >= 1; return it."""
    v = check_real(fn, name, value)
    if v < 1:
        raise ValueError(f"{fn}: argument '{name}' expected a condition number >= 1, got {value!r}.")
    return v


@st.composite
def gaussians(
    draw,
    dim: int | tuple[int, int] = (1, 4),
    *,
    max_condition: float = 100.0,
    scale: tuple[float, float] = (0.1, 2.0),
    max_mean: float = 2.0,
    dtype: torch.dtype = torch.float64,
) -> Gaussian:
    """Well-conditioned Gaussian laws ``N(m, C)``.

    Args:
        dim: the dimension, or a ``(lo, hi)`` range.
        max_condition: largest condition number of C, >= 1 (drawn log-uniformly from ``[1, max_condition]``).
        scale: range of the largest standard deviation.
        max_mean: bound on ``|m_i|``.
        dtype: parameter dtype.
    """
    fn = "gaussians"
    d = draw(_dims(fn, dim))
    max_condition = _at_least_one(fn, "max_condition", max_condition)
    lo, hi = _interval(fn, "scale", scale, 0.0)
    if lo == 0:
        raise ValueError(f"{fn}: argument 'scale' expected standard deviations > 0, got {tuple(scale)!r}.")
    max_mean = check_positive(fn, "max_mean", max_mean, allow_zero=True)
    condition = math.exp(draw(st.floats(0.0, math.log(max_condition))))
    s = draw(st.floats(lo, hi))
    mean = torch.tensor(draw(st.lists(st.floats(-max_mean, max_mean), min_size=d, max_size=d)), dtype=dtype)
    return Gaussian(mean, _covariance(draw, d, s, condition, dtype))


@st.composite
def gaussian_mixtures(
    draw,
    dim: int | tuple[int, int] = (1, 4),
    n_components: int | tuple[int, int] = (2, 4),
    *,
    separation: tuple[float, float] = (0.0, 4.0),
    max_anisotropy: float = 10.0,
    min_weight: float = 0.1,
    dtype: torch.dtype = torch.float64,
) -> GaussianMixture:
    """Gaussian mixtures with controlled separation and anisotropy.

    Components have largest standard deviation ``s`` in [0.2, 1]; their means lie at distance
    ``separation * s`` from the origin in random directions.

    Args:
        dim, n_components: each an int or a ``(lo, hi)`` range.
        separation: range of the distance of the means from the origin, in units of ``s``.
        max_anisotropy: largest condition number of each component covariance.
        min_weight: smallest unnormalized weight (weights are drawn in ``[min_weight, 1]``).
        dtype: parameter dtype.
    """
    fn = "gaussian_mixtures"
    d = draw(_dims(fn, dim))
    k = draw(_dims(fn, n_components, "n_components"))
    lo, hi = _interval(fn, "separation", separation, 0.0)
    max_anisotropy = _at_least_one(fn, "max_anisotropy", max_anisotropy)
    min_weight = check_positive(fn, "min_weight", min_weight)
    if min_weight > 1:
        raise ValueError(f"{fn}: argument 'min_weight' expected a number in (0, 1] (weights are drawn in [min_weight, 1]), got {min_weight!r}.")
    s = draw(st.floats(0.2, 1.0))
    weights = torch.tensor(draw(st.lists(st.floats(min_weight, 1.0), min_size=k, max_size=k)), dtype=dtype)
    directions = random_rotation(max(d, k), draw(st.integers(0, 2**31 - 1)), dtype)[:k, :d]
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radii = torch.tensor(draw(st.lists(st.floats(lo, hi), min_size=k, max_size=k)), dtype=dtype)
    means = s * radii[:, None] * directions
    covs = []
    for _ in range(k):
        condition = math.exp(draw(st.floats(0.0, math.log(max_anisotropy))))
        covs.append(_covariance(draw, d, s, condition, dtype))
    return GaussianMixture(weights, means, torch.stack(covs))
