r"""Exact posteriors of Gaussian mixtures, and the exact conditional scores and likelihoods of noisy states.

Given component k, an observation is jointly Gaussian with the data, so conditioning a mixture
:math:`\sum_k w_k N(\mu_k, C_k)` gives the mixture of the components' Gaussian conditionals with the
weights reweighted by each component's evidence, :math:`w_k' \propto w_k\,p_k(\text{observation})`:

- observed coordinates :math:`x_o = v` (``condition``): the law of the unobserved block,
  :math:`N\big(\mu_u + C_{uo}C_{oo}^{-1}(v - \mu_o),\; C_{uu} - C_{uo}C_{oo}^{-1}C_{ou}\big)`,
  evidence :math:`N(v; \mu_o, C_{oo})`;
- :math:`y = A x + n`, :math:`n \sim N(0, R)` (``condition_linear``): with :math:`S = A C A^\top + R` and
  gain :math:`G = C A^\top S^{-1}`, :math:`N\big(\mu + G(y - A\mu),\; (I - GA)C(I - GA)^\top + G R G^\top\big)`
  (Joseph's form, symmetric positive definite in floating point), evidence :math:`N(y; A\mu, S)`.

Under the forward process :math:`x_t = \alpha x_0 + \sigma\varepsilon` of the full data the noisy state given
the observation has the law :math:`p_t(x_t \mid \text{obs})`: for a linear observation it is the posterior
diffused (so ``posterior.score(sde)`` is its exact score), for observed coordinates it is
:math:`N(x_{t,o}; \alpha v, \sigma^2 I)` times the posterior of the unobserved block diffused
(:func:`inpainting_score`).  Dividing by :math:`p_t(x_t)` gives the likelihood of the observation given the
noisy state, :math:`p_t(\text{obs} \mid x_t)` (:func:`observation_log_likelihood`), the ideal noise-aware
classifier of classifier guidance.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._checks import check_instance, check_shaped
from .._tensor import TimeLike, batch_time, right_pad
from ..sde import ForwardSDE, check_sde

if TYPE_CHECKING:
    from .mixture import GaussianMixture

__all__ = ["condition", "condition_linear", "inpainting_score", "observation_log_likelihood"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class _Posterior:
    law: GaussianMixture  # the posterior law
    log_evidence: torch.Tensor  # log p(observation), shape (*b,)


def _check_unbatched(fn: str, law: GaussianMixture) -> None:
    from .mixture import GaussianMixture  # (mixture imports this module)

    # (the methods name themselves "<law's class>.condition": a non-law came through the function, named bare)
    check_instance(fn.rpartition(".")[2], "law", law, GaussianMixture, "scoreflow.testing.make_law('ring2d')")
    if law.batch_shape:
        raise ValueError(
            f"{fn}: conditions a data law, got a law batched over {law.batch_shape}; condition the unbatched law "
            "(e.g. before taking law.marginal(sde, t) at a batch of times)."
        )


def _as_data(fn: str, name: str, value, law: GaussianMixture, trailing: tuple[int, ...], *, finite: bool = True) -> torch.Tensor:
    """``value`` (a tensor or nested sequence of numbers) as a tensor in the law's dtype and device, of shape
    ``trailing`` or ``(B, *trailing)``, finite unless ``finite=False`` (the caller checks the entries it reads)."""
    if not torch.is_tensor(value):
        try:
            value = torch.as_tensor(value, dtype=law.means.dtype)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{fn}: argument '{name}' expected a tensor of shape {trailing}, got {type(value).__name__}.") from None
    value = check_shaped(fn, name, value, [trailing, (-1, *trailing)]).to(dtype=law.means.dtype, device=law.means.device)
    if finite and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{fn}: argument '{name}' contains NaN or infinite values.")
    return value


def _check_mask(fn: str, mask, law: GaussianMixture) -> torch.Tensor:
    """The boolean ``mask`` of the law's event shape, flattened to ``(D,)``."""
    flat = check_shaped(fn, "mask", mask, [law.event_shape], boolean=True).reshape(-1).to(law.means.device)
    if bool(flat.all()) or not bool(flat.any()):
        raise ValueError(
            f"{fn}: argument 'mask' expected at least one observed (True) and one unobserved (False) coordinate, "
            f"got {int(flat.sum())} of {flat.numel()} observed."
        )
    return flat


def _gaussian_log_prob(resid: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """:math:`\\log N(r; 0, LL^\\top)` of residuals ``(*b, K, M)`` under Cholesky factors ``(K, M, M)``; ``(*b, K)``."""
    white = torch.linalg.solve_triangular(chol, resid.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (white.pow(2).sum(-1) + logdet + resid.shape[-1] * _LOG_2PI)


def _mixture(law: GaussianMixture, log_w: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, event_shape) -> _Posterior:
    """The posterior mixture from reweighted log-weights ``(*b, K)``, means ``(*b, K, D')`` and shared covariances."""
    from .mixture import GaussianMixture

    log_evidence = torch.logsumexp(log_w, dim=-1)
    weights = torch.exp(log_w - log_evidence.unsqueeze(-1))
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(-1, -2)))
    batched = means.ndim == 3
    # An unbatched posterior keeps the law's class (a Gaussian stays a Gaussian with its flow map).
    cls = GaussianMixture if batched else type(law)
    eigvals = eigvals.expand(means.shape) if batched else eigvals
    return _Posterior(cls._from_eig(weights, means, eigvecs, eigvals, event_shape), log_evidence)


def _masked_posterior(fn: str, law: GaussianMixture, mask, values) -> tuple[_Posterior, torch.Tensor, torch.Tensor]:
    """The posterior of the unobserved block, with the flattened mask and the observed values ``(*b, O)``."""
    _check_unbatched(fn, law)
    flat = _check_mask(fn, mask, law)
    values = _as_data(fn, "values", values, law, law.event_shape, finite=False)
    v_o = values.reshape(values.shape[: values.ndim - len(law.event_shape)] + (-1,))[..., flat]
    if not bool(torch.isfinite(v_o).all()):  # the entries off the mask are ignored, NaN included
        raise ValueError(f"{fn}: argument 'values' contains NaN or infinite values where 'mask' is True.")
    obs, unobs = flat.nonzero().squeeze(-1), (~flat).nonzero().squeeze(-1)
    covs = law.covs  # (K, D, D)
    c_oo = covs[:, obs][:, :, obs]
    c_uo = covs[:, unobs][:, :, obs]
    c_uu = covs[:, unobs][:, :, unobs]
    chol = torch.linalg.cholesky(c_oo)
    gain = torch.cholesky_solve(c_uo.transpose(-1, -2), chol).transpose(-1, -2)  # C_uo C_oo^{-1}, (K, U, O)
    resid = v_o.unsqueeze(-2) - law.means[:, obs]  # (*b, K, O)
    means = law.means[:, unobs] + torch.einsum("kuo,...ko->...ku", gain, resid)
    log_w = torch.log(law.weights) + _gaussian_log_prob(resid, chol)
    post = _mixture(law, log_w, means, c_uu - gain @ c_uo.transpose(-1, -2), (int(unobs.numel()),))
    return post, flat, v_o


def condition(law: GaussianMixture, mask: torch.Tensor, values) -> GaussianMixture:
    r"""The exact law of the unobserved coordinates given the observed ones, :math:`p(x_u \mid x_o = v)`.

    Args:
        law: an unbatched data law.
        mask: boolean tensor of the law's event shape, True where a coordinate is observed (at least one
            True and one False).
        values: the data point(s) whose masked entries are observed, shape ``event_shape`` (one observation)
            or ``(B, *event_shape)`` (one observation per row; the entries where ``mask`` is False are ignored and
            may be NaN).

    Returns:
        A mixture on vectors of the unobserved coordinates, flattened in the mask's (row-major) order:
        unbatched for one observation, batched over B observations otherwise (row i of its ``log_prob``,
        ``sample`` and ``score`` belongs to observation i).

    Raises:
        TypeError: if ``mask`` is not a boolean tensor or ``values`` is not real.
        ValueError: for shapes that do not match the law, a mask that observes all or no coordinates, non-finite
            values, or a batched ``law``.
    """
    return _masked_posterior(f"{type(law).__name__}.condition", law, mask, values)[0].law


def _noise_std(fn: str, noise_std, m: int, law: GaussianMixture) -> torch.Tensor:
    """The noise standard deviations ``(M,)`` from a number or an ``(M,)`` tensor, all finite and > 0."""
    if isinstance(noise_std, (int, float)) and not isinstance(noise_std, bool):
        noise_std = torch.tensor(float(noise_std), dtype=law.means.dtype)  # not rounded through float32
    elif not torch.is_tensor(noise_std):
        raise TypeError(f"{fn}: argument 'noise_std' expected a number or a tensor of shape ({m},), got {type(noise_std).__name__}.")
    std = check_shaped(fn, "noise_std", noise_std, [(), (m,)]).to(dtype=law.means.dtype, device=law.means.device)
    if not bool((torch.isfinite(std) & (std > 0)).all()):
        raise ValueError(f"{fn}: argument 'noise_std' expected finite values > 0, got {std.tolist()}. Use condition() for exact observations.")
    return std.expand(m)


def _check_matrix(fn: str, A: torch.Tensor, dim: int) -> torch.Tensor:
    if A.ndim != 2 or A.shape[1] != dim:
        raise ValueError(f"{fn}: argument 'A' expected a matrix of shape (M, {dim}) acting on flattened x, got {tuple(A.shape)}.")
    return A


def _linear_posterior(fn: str, law: GaussianMixture, A, y, noise_std) -> _Posterior:
    _check_unbatched(fn, law)
    if torch.is_tensor(A):  # before _as_data, whose message would call the rows of A a batch
        _check_matrix(fn, A, law.dim)
    A = _check_matrix(fn, _as_data(fn, "A", A, law, (law.dim,)), law.dim)
    m = A.shape[0]
    y = _as_data(fn, "y", y, law, (m,))
    noise_cov = torch.diag_embed(_noise_std(fn, noise_std, m, law) ** 2)
    covs = law.covs  # (K, D, D)
    s = A @ covs @ A.T + noise_cov  # (K, M, M)
    chol = torch.linalg.cholesky(s)
    gain = torch.cholesky_solve(A @ covs, chol).transpose(-1, -2)  # C A^T S^{-1}, (K, D, M)
    resid = y.unsqueeze(-2) - law.means @ A.T  # (*b, K, M)
    means = law.means + torch.einsum("kdm,...km->...kd", gain, resid)
    keep = torch.eye(law.dim, dtype=A.dtype, device=A.device) - gain @ A
    covs_post = keep @ covs @ keep.transpose(-1, -2) + gain @ noise_cov @ gain.transpose(-1, -2)
    log_w = torch.log(law.weights) + _gaussian_log_prob(resid, chol)
    return _mixture(law, log_w, means, covs_post, law.event_shape)


def condition_linear(law: GaussianMixture, A, y, noise_std) -> GaussianMixture:
    r"""The exact posterior :math:`p(x \mid y)` of data x given :math:`y = A x + n`, :math:`n \sim N(0, \mathrm{diag}(s^2))`.

    Args:
        law: an unbatched data law.
        A: ``(M, D)`` matrix acting on flattened x.
        y: the observation, shape ``(M,)``, or ``(B, M)`` for one observation per row.
        noise_std: the noise standard deviation s > 0, a number or an ``(M,)`` tensor.

    Returns:
        A mixture on the law's event shape (batched over B observations if ``y`` is), whose ``score(sde)`` is
        the exact score of the noisy states given y.

    Raises:
        TypeError: for a non-real ``A``, ``y`` or ``noise_std``.
        ValueError: for mismatched shapes, non-finite values, a non-positive ``noise_std`` or a batched ``law``.
    """
    return _linear_posterior(f"{type(law).__name__}.condition_linear", law, A, y, noise_std).law


def check_model_call(fn: str, x, t) -> None:
    """The arguments of an analytic model's call ``model(x, t)``: a tensor x and a number or tensor t (type tests, no
    read: this runs at every evaluation of the model)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{fn}: argument 'x' expected a tensor of shape (B, *D), got {type(x).__name__}.")
    if not torch.is_tensor(t) and (not isinstance(t, numbers.Real) or isinstance(t, bool)):
        raise TypeError(f"{fn}: argument 't' expected a number or a tensor of times, got {type(t).__name__} {t!r}.")


def _check_observations(fn: str, post: GaussianMixture, x: torch.Tensor) -> None:
    """One row of ``x`` per observation when the observations are batched (a shape test, no tensor read)."""
    if post.batch_shape and x.shape[0] != post.batch_shape[0]:
        raise ValueError(
            f"{fn}: x expected one row per observation, batch {post.batch_shape[0]} (the batched values or y it was "
            f"built with), got shape {tuple(x.shape)}."
        )


class InpaintingScore:
    r"""The exact score of :math:`p_t(x_t \mid x_{0,o} = v)` on the full state, callable as ``score(x, t)``.

    Its observed block is :math:`-(x_{t,o} - \alpha v)/\sigma^2` and its unobserved block the diffused
    posterior's score, because :math:`x_{t,o} = \alpha v + \sigma\varepsilon_o` does not depend on :math:`x_{0,u}`.
    """

    def __init__(self, posterior: GaussianMixture, sde: ForwardSDE, mask: torch.Tensor, observed: torch.Tensor, event_shape) -> None:
        self.posterior, self.posterior_score = posterior, posterior.score(sde)
        self.sde, self.mask, self.observed, self.event_shape = sde, mask, observed, event_shape

    def __call__(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        check_model_call("inpainting_score", x, t)
        _check_observations("inpainting_score", self.posterior, x)
        t = batch_time(t, x)
        xf = x.reshape(x.shape[0], -1)
        alpha, sigma = self.sde.marginal(t)
        alpha, sigma = right_pad(alpha, xf), right_pad(sigma, xf)
        out = torch.empty_like(xf)
        out[:, self.mask] = -(xf[:, self.mask] - alpha * self.observed.to(x.dtype)) / sigma**2
        out[:, ~self.mask] = self.posterior_score(xf[:, ~self.mask].contiguous(), t)
        return out.reshape(x.shape)


def inpainting_score(law: GaussianMixture, sde: ForwardSDE, mask: torch.Tensor, values) -> InpaintingScore:
    r"""The exact conditional score :math:`\nabla_{x_t}\log p_t(x_t \mid x_{0,o} = v)` under ``sde`` on the full data.

    Sampling with it targets :math:`x_o \approx \alpha v + \sigma\varepsilon` and, on the unobserved block,
    ``law.condition(mask, values).marginal(sde, t_min)``.

    Args:
        law: an unbatched data law.
        sde: the forward SDE that noises every coordinate.
        mask, values: as in :func:`condition`; batched values give a score for batches of that size.

    Returns:
        A callable ``score(x, t)`` on ``x`` of shape ``(B, *event_shape)``.

    Raises:
        TypeError, ValueError: as :func:`condition`, or if ``sde`` is not a ForwardSDE; when called, ValueError for
            an ``x`` whose batch is not that of batched ``values``.
    """
    fn = "inpainting_score"
    check_sde(fn, sde)
    post, flat, v_o = _masked_posterior(fn, law, mask, values)
    return InpaintingScore(post.law, sde, flat, v_o, law.event_shape)


class ObservationLogLikelihood:
    r""":math:`\log p_t(\text{obs} \mid x_t) = \log p_t(x_t \mid \text{obs}) - \log p_t(x_t) + \log p(\text{obs})`,
    callable as ``log_likelihood(x, t)`` returning ``(B,)``."""

    def __init__(self, law: GaussianMixture, sde: ForwardSDE, post: _Posterior, mask: torch.Tensor | None, observed: torch.Tensor | None) -> None:
        self.law, self.sde, self.post, self.mask, self.observed = law, sde, post, mask, observed

    def __call__(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        check_model_call("observation_log_likelihood", x, t)
        _check_observations("observation_log_likelihood", self.post.law, x)
        t = batch_time(t, x).to(self.law.means.dtype)
        xf = x.reshape(x.shape[0], -1)
        if self.mask is None:
            joint = self.post.law._marginal(self.sde, t).log_prob(x)
        else:
            alpha, sigma = self.sde.marginal(t)
            alpha, sigma = right_pad(alpha, xf), right_pad(sigma, xf)
            resid = (xf[:, self.mask] - alpha * self.observed) / sigma
            # log N(x_{t,o}; alpha v, sigma^2 I)
            observed = -0.5 * (resid.pow(2) + _LOG_2PI).sum(-1) - resid.shape[-1] * torch.log(sigma).squeeze(-1)
            joint = observed + self.post.law._marginal(self.sde, t).log_prob(xf[:, ~self.mask].contiguous())
        return joint - self.law._marginal(self.sde, t).log_prob(x) + self.post.log_evidence


def observation_log_likelihood(
    law: GaussianMixture,
    sde: ForwardSDE,
    *,
    mask: torch.Tensor | None = None,
    values=None,
    A=None,
    y=None,
    noise_std=None,
) -> ObservationLogLikelihood:
    r"""The exact log-likelihood :math:`\log p_t(\text{obs} \mid x_t)` of an observation of the clean data given a noisy state.

    Give either observed coordinates (``mask``, ``values``, as in :func:`condition`) or a linear observation
    (``A``, ``y``, ``noise_std``, as in :func:`condition_linear`).  Its gradient in :math:`x_t` is the exact
    conditional score minus the unconditional one, so classifier guidance with it
    (:func:`scoreflow.classifier_guided_score`) samples the exact posterior.

    Returns:
        A callable ``log_likelihood(x, t)`` returning ``(B,)`` for ``x`` of shape ``(B, *event_shape)``.

    Raises:
        ValueError: unless exactly one kind of observation is given; otherwise as :func:`condition` or
            :func:`condition_linear`; when called, for an ``x`` whose batch is not that of batched observations.
    """
    fn = "observation_log_likelihood"
    check_sde(fn, sde)
    masked = mask is not None or values is not None
    linear = A is not None or y is not None or noise_std is not None
    if masked == linear or masked and (mask is None or values is None) or linear and (A is None or y is None or noise_std is None):
        raise ValueError(f"{fn}: give either 'mask' and 'values' (observed coordinates) or 'A', 'y' and 'noise_std' (a linear observation).")
    if masked:
        post, flat, v_o = _masked_posterior(fn, law, mask, values)
        return ObservationLogLikelihood(law, sde, post, flat, v_o)
    return ObservationLogLikelihood(law, sde, _linear_posterior(fn, law, A, y, noise_std), None, None)
