r"""Distances between sample sets and laws, and convergence-order fits.

Used by the tests, the benchmarks and :mod:`scoreflow.testing`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_batch, check_generator, check_instance, check_int, check_positive
from .analytic import GaussianMixture

__all__ = [
    "sliced_wasserstein2",
    "gaussian_w2",
    "mode_weights",
    "rms_error",
    "fit_order",
    "moment_standard_errors",
]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _quantile_w2sq(px: torch.Tensor, py: torch.Tensor, trim: float) -> torch.Tensor:
    r"""Per row, :math:`\frac{1}{1 - 2\tau}\int_\tau^{1-\tau} (F^{-1}(u) - G^{-1}(u))^2\,du` for the empirical quantile
    functions of the sorted rows ``px`` (P, m) and ``py`` (P, n): exact, whatever m and n.

    Both quantile functions are steps, :math:`F^{-1}(u) = x_{(\lceil um \rceil)}`, constant between consecutive
    points of :math:`\{k/m\} \cup \{j/n\}`; each such interval (clipped to the trimmed range) contributes its
    length times the squared difference of the two values there, found from the interval's midpoint.
    """
    m, n = px.shape[-1], py.shape[-1]
    kw = {"dtype": px.dtype, "device": px.device}
    if m == n and trim * n == int(trim * n):  # every step shared: the sorted matching
        k = int(trim * n)
        return (px - py)[:, k : n - k].pow(2).mean(dim=1)
    edges = torch.cat([torch.arange(m + 1, **kw) / m, torch.arange(1, n, **kw) / n]).sort().values
    edges = edges.clamp(trim, 1.0 - trim)
    width = edges[1:] - edges[:-1]
    middle = 0.5 * (edges[1:] + edges[:-1])
    ix = (middle * m).long().clamp(max=m - 1)
    iy = (middle * n).long().clamp(max=n - 1)
    return ((px[:, ix] - py[:, iy]).pow(2) * width).sum(dim=1) / (1.0 - 2.0 * trim)


def sliced_wasserstein2(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
    trim: float = 0.0,
) -> float:
    r"""Sliced Wasserstein-2 distance :math:`\big(E_\theta W_2^2(\theta^\top x, \theta^\top y)\big)^{1/2}`.

    Directions θ are uniform on the sphere; each 1-D W2 is exact between the two empirical laws,
    :math:`W_2^2 = \int_0^1 (F^{-1}(u) - G^{-1}(u))^2\,du` over their quantile functions (steps; for samples of
    equal size the sorted matching), whatever the two sample sizes.  ``trim`` in [0, 0.5) integrates over
    :math:`[\tau, 1 - \tau]` only, divided by its length (a trimmed distance whose sampling error is not
    dominated by the few most extreme points).
    """
    check_int("sliced_wasserstein2", "n_projections", n_projections)
    check_generator("sliced_wasserstein2", generator)
    check_positive("sliced_wasserstein2", "trim", trim, allow_zero=True)
    if not trim < 0.5:
        raise ValueError(f"sliced_wasserstein2: argument 'trim' expected a fraction in [0, 0.5), got {trim!r}.")
    for name, v in (("x", x), ("y", y)):
        if not torch.is_tensor(v):
            raise TypeError(f"sliced_wasserstein2: argument {name!r} expected a tensor of samples (B, *D), got {type(v).__name__}.")
        if v.ndim < 1 or v.numel() == 0:
            raise ValueError(f"sliced_wasserstein2: argument {name!r} expected a non-empty batch of samples (B, *D), got shape {tuple(v.shape)}.")
    xf, yf = _flat(x).double(), _flat(y).double()
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"sliced_wasserstein2: x has {xf.shape[1]} dims per sample, y has {yf.shape[1]}.")
    theta = torch.randn(
        xf.shape[1], n_projections, generator=generator, dtype=torch.float64, device=generator.device if generator else "cpu"
    ).to(xf.device)  # drawn where the generator is, so a seed gives the same directions for data on any device
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort((xf @ theta).T, dim=1).values
    py = torch.sort((yf @ theta).T, dim=1).values
    return math.sqrt(float(_quantile_w2sq(px, py, trim).mean()))


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_w2(mean1, cov1, mean2, cov2) -> float:
    r"""Wasserstein-2 distance between Gaussians:
    :math:`\|m_1-m_2\|^2 + \mathrm{tr}(C_1 + C_2 - 2(C_2^{1/2} C_1 C_2^{1/2})^{1/2})`, square-rooted."""
    (m1, c1, m2, c2) = (_as_array("gaussian_w2", name, v) for name, v in
                        (("mean1", mean1), ("cov1", cov1), ("mean2", mean2), ("cov2", cov2)))
    m1, m2 = m1.ravel(), m2.ravel()
    d = m1.size
    for name, value, shape in (("mean2", m2, (d,)), ("cov1", c1, (d, d)), ("cov2", c2, (d, d))):
        if value.shape != shape:
            raise ValueError(f"gaussian_w2: argument {name!r} expected shape {shape} (mean1 has {d} entries), got {value.shape}.")
    for name, value in (("mean1", m1), ("mean2", m2), ("cov1", c1), ("cov2", c2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"gaussian_w2: argument {name!r} contains NaN or infinite values.")
    s2 = _sqrtm_psd(c2)
    cross = _sqrtm_psd(s2 @ c1 @ s2)
    w2sq = float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * cross))
    return math.sqrt(max(w2sq, 0.0))


def _as_array(fn: str, name: str, value) -> np.ndarray:
    """``value`` (a tensor, array or nested sequence of numbers) as a float64 NumPy array."""
    try:
        return np.asarray(torch.as_tensor(value).double().cpu())
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{fn}: argument '{name}' expected a tensor or nested sequence of numbers, got {type(value).__name__} {value!r}.") from None


def mode_weights(law, x: torch.Tensor) -> torch.Tensor:
    """Fraction of samples assigned to each component of a mixture ``law`` by maximum responsibility.

    Raises:
        TypeError: if ``law`` is not a :class:`~scoreflow.analytic.GaussianMixture`.
        ValueError: if ``x`` is empty or holds NaN or infinite values (they have no component).
    """
    check_instance("mode_weights", "law", law, GaussianMixture, "scoreflow.testing.make_law('ring2d')")
    check_batch("mode_weights", "x", x)
    k = law.responsibilities(x).argmax(dim=1)
    return torch.bincount(k, minlength=law.n_components).to(torch.float64) / x.shape[0]


def rms_error(x: torch.Tensor, y: torch.Tensor) -> float:
    r"""Root-mean-square difference :math:`\sqrt{\tfrac{1}{BD}\sum (x - y)^2}` of two equally shaped batches.

    Raises:
        TypeError: if ``x`` or ``y`` is not a tensor.
        ValueError: if the shapes differ (a broadcast would average something else) or the batches are empty (the
            mean of nothing is NaN).  A NaN in the samples is the result's, as a diverged solve's error.
    """
    for name, value in (("x", x), ("y", y)):
        if not torch.is_tensor(value):
            raise TypeError(f"rms_error: argument '{name}' expected a tensor, got {type(value).__name__}.")
    if x.numel() == 0:
        raise ValueError(f"rms_error: arguments 'x' and 'y' expected non-empty batches, got shape {tuple(x.shape)}.")
    if x.shape != y.shape:
        raise ValueError(
            f"rms_error: arguments 'x' and 'y' expected the same shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    return float((x.double() - y.double()).pow(2).mean().sqrt())


def fit_order(step_sizes, errors) -> float:
    r"""Least-squares slope of :math:`\log(\text{error})` against :math:`\log(h)`: the empirical order."""
    h = np.asarray(step_sizes, dtype=float).ravel()
    e = np.asarray(errors, dtype=float).ravel()
    if h.size != e.size:
        raise ValueError(f"fit_order: expected one error per step size, got {h.size} step sizes and {e.size} errors.")
    if not np.all(np.isfinite(h) & (h > 0)) or np.unique(h).size < 2:
        raise ValueError(f"fit_order: argument 'step_sizes' expected >= 2 distinct positive finite step sizes, got {h.tolist()}.")
    if not np.all(np.isfinite(e) & (e > 0)):
        raise ValueError(f"fit_order: need >= 2 positive finite errors, got {list(errors)}.")
    return float(np.polyfit(np.log(h), np.log(e), 1)[0])


def moment_standard_errors(reference: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Monte-Carlo standard errors of the sample mean and sample covariance of ``n`` draws.

    Estimated from a (large) exact ``reference`` sample: :math:`\mathrm{sd}(x_i)/\sqrt n` and
    :math:`\mathrm{sd}((x_i-\mu_i)(x_j-\mu_j))/\sqrt n`.  Returns ``(se_mean (D,), se_cov (D, D))``.

    Raises:
        ValueError: if ``n < 1`` or ``reference`` has fewer than 2 draws (no standard deviation) or non-finite values.
    """
    fn = "moment_standard_errors"
    check_batch(fn, "reference", reference)
    check_int(fn, "n", n)
    if reference.shape[0] < 2:
        raise ValueError(f"{fn}: argument 'reference' expected >= 2 draws to estimate a standard deviation, got shape {tuple(reference.shape)}.")
    r = _flat(reference).double()
    c = r - r.mean(0)
    prods = c.unsqueeze(2) * c.unsqueeze(1)
    return r.std(0) / math.sqrt(n), prods.std(0) / math.sqrt(n)
