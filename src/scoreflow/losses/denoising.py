r"""Denoising score matching (Vincent 2011) at one noise level, over many levels (NCSN) and in continuous time.

With :math:`\tilde x = \alpha x + \sigma\varepsilon` the conditional score is
:math:`\nabla_{\tilde x}\log q(\tilde x\mid x) = -\varepsilon/\sigma`, and

.. math:: \tfrac12 E\,\|s(\tilde x) + \varepsilon/\sigma\|^2
          = \tfrac12 E\,\|s(\tilde x) - \nabla\log q_\sigma(\tilde x)\|^2 + C,

so the minimizer is the score of the perturbed law :math:`q_\sigma`.  A weight
:math:`\lambda` turns the summand into :math:`\tfrac12 (\lambda/\sigma^2)\|\sigma s + \varepsilon\|^2`,
the form computed here (no division of the noise by a small :math:`\sigma`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .._checks import (
    check_batch, check_choice, check_generator, check_noise_levels, check_positive, check_time, resolve_t_min,
)
from .._tensor import TimeLike, batch_time, right_pad, standard_normal
from ..dynamics.counting import ScoreFn
from ..sde import ForwardSDE, check_sde
from ._common import call_score, call_weighting, check_reduction, check_score, reduce, sq_norm

__all__ = [
    "dsm_loss", "multiscale_dsm_loss", "sde_dsm_loss", "MULTISCALE_WEIGHTINGS", "SDE_WEIGHTINGS", "TIME_SAMPLINGS",
]

Weighting = str | Callable[[torch.Tensor], torch.Tensor]
#: Named weightings of :func:`multiscale_dsm_loss`: lambda(sigma) = sigma^2 (NCSN) or 1.
MULTISCALE_WEIGHTINGS = ("sigma2", "none")
#: Named weightings of :func:`sde_dsm_loss`: lambda(t) = sigma(t)^2 or g(t)^2.
SDE_WEIGHTINGS = ("sigma2", "likelihood")
#: How :func:`sde_dsm_loss` draws t: uniformly in time, or uniformly in the log-SNR (importance sampling).
TIME_SAMPLINGS = ("uniform", "log_snr")


def _denoising_terms(
    fn: str, score: ScoreFn, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
    cond: torch.Tensor, eps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-sample :math:`\tfrac12\|\sigma s(\alpha x + \sigma\varepsilon, c) + \varepsilon\|^2` for ``(B,)`` alpha, sigma, c,
    and the score's output."""
    a, s = right_pad(alpha, x), right_pad(sigma, x)
    out = call_score(fn, score, a * x + s * eps, cond)
    return 0.5 * sq_norm(s * out + eps), out


def dsm_loss(
    score: ScoreFn,
    x: torch.Tensor,
    sigma: float,
    *,
    t: TimeLike | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Denoising score matching at one noise level: :math:`\tfrac12 E\|s(x + \sigma\varepsilon, \sigma) + \varepsilon/\sigma\|^2`.

    Minimized by the score of :math:`q_\sigma = q * N(0, \sigma^2 I)`.

    Args:
        score: score model ``score(x, t)``.
        x: clean data of shape ``(B, *D)``.
        sigma: the noise level, > 0.
        t: the conditioning value handed to the score; by default the noise level ``sigma``
            (the NCSN / EDM convention, and :class:`scoreflow.EDMSDE`'s time).
        generator: draws the noise :math:`\varepsilon`.
        reduction: ``"mean"`` over the batch or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss, summed over data dimensions.

    Raises:
        ValueError: if ``sigma <= 0`` or is not finite, ``x`` is empty or malformed, or the score's output is not shaped like ``x``.
        TypeError: for a non-callable score, a wrong generator or mismatched dtypes.
    """
    fn = "dsm_loss"
    check_score(fn, score)
    check_batch(fn, "x", x)
    sigma = check_positive(fn, "sigma", sigma)
    check_generator(fn, generator, x)
    check_reduction(fn, reduction)
    sig = batch_time(sigma, x)
    eps = standard_normal(x, generator)
    cond = sig if t is None else batch_time(check_time(fn, "t", t, x), x)
    per, out = _denoising_terms(fn, score, x, torch.ones_like(sig), sig, cond, eps)
    return reduce(fn, per / sigma**2, reduction, score=out)


def multiscale_dsm_loss(
    score: ScoreFn,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    *,
    weighting: Weighting = "sigma2",
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-scale DSM for noise-conditional scores (NCSN): :math:`E_{i}\,\lambda(\sigma_i)\,\tfrac12 E\|s(x+\sigma_i\varepsilon, \sigma_i) + \varepsilon/\sigma_i\|^2`.

    Each sample gets one level :math:`\sigma_i` drawn uniformly from ``sigmas``; the score is
    conditioned on it (``score(x_noisy, sigma_i)`` with a ``(B,)`` tensor of levels).

    Args:
        score: noise-conditional score ``score(x, sigma)``.
        x: clean data of shape ``(B, *D)``.
        sigmas: the noise levels, a non-empty 1-D sequence or tensor of values > 0.
        weighting: ``"sigma2"`` (:math:`\lambda = \sigma^2`, which makes every level's loss O(1)),
            ``"none"`` (:math:`\lambda = 1`) or a callable ``weighting(sigma) -> (B,)`` of weights >= 0.
        generator: draws the levels, then the noise.
        reduction: ``"mean"`` over the batch or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss, summed over data dimensions.

    Raises:
        ValueError: for empty, non-1-D, non-positive or non-finite ``sigmas``, an unknown weighting,
            weights of the wrong shape or sign, or a malformed ``x``.
        TypeError: for a non-callable score, a wrong generator or mismatched dtypes.
    """
    fn = "multiscale_dsm_loss"
    check_score(fn, score)
    check_batch(fn, "x", x)
    levels = check_noise_levels(fn, "sigmas", sigmas, x)
    if not callable(weighting):
        check_choice(fn, "weighting", weighting, MULTISCALE_WEIGHTINGS)
    check_generator(fn, generator, x)
    check_reduction(fn, reduction)
    index = torch.randint(levels.numel(), (x.shape[0],), generator=generator, device=x.device)
    sig = levels[index]
    eps = standard_normal(x, generator)
    per, out = _denoising_terms(fn, score, x, torch.ones_like(sig), sig, sig, eps)
    if callable(weighting):
        per = per * call_weighting(fn, weighting, "weighting(sigma)", sig, like=x) / sig**2
    elif weighting == "none":
        per = per / sig**2
    return reduce(fn, per, reduction, score=out)


def sde_dsm_loss(
    score: ScoreFn,
    sde: ForwardSDE,
    x: torch.Tensor,
    *,
    weighting: Weighting = "sigma2",
    t_min: float | None = None,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Continuous-time DSM: :math:`E_{t\sim U[t_{min},T]}\,\lambda(t)\,\tfrac12 E\|s(x_t, t) + \varepsilon/\sigma(t)\|^2`, :math:`x_t = \alpha(t)x + \sigma(t)\varepsilon`.

    With ``weighting="sigma2"`` this is the noise-prediction loss
    :math:`\tfrac12 E\|\sigma s + \varepsilon\|^2`; with ``"likelihood"`` (:math:`\lambda = g^2`),
    ``(T - t_min)`` times the loss is Song et al.'s (2021) :math:`J_{DSM}(\theta; g^2)`, which bounds
    the negative log-likelihood of the SDE model up to a constant.

    ``time_sampling="log_snr"`` draws t with density :math:`p(t) \propto g^2/\sigma^2 = -\tfrac{d}{dt}\log\mathrm{SNR}`
    (uniform in the log-SNR, Song et al. 2021; Kingma et al. 2021) and weights each sample by
    :math:`\lambda(t)/((T - t_{min})\,p(t))`: the same expectation, and for ``"likelihood"`` a constant weight,
    which removes the variance that the :math:`g^2/\sigma^2` spike near ``t_min`` gives uniform times.

    Args:
        score: score model ``score(x, t)``.
        sde: the forward SDE giving :math:`\alpha(t), \sigma(t), g(t)`.
        x: clean data of shape ``(B, *D)``.
        weighting: ``"sigma2"``, ``"likelihood"`` or a callable ``weighting(t) -> (B,)`` of weights >= 0.
        t_min: smallest training time, in ``(0, T)``; default ``sde.t_min``.
        time_sampling: ``"uniform"`` in ``[t_min, T]`` or ``"log_snr"`` (importance sampling, see above).
        generator: draws the times, then the noise.
        reduction: ``"mean"`` over the batch or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss, summed over data dimensions.

    Raises:
        ValueError: for ``t_min`` outside ``(0, T)``, an unknown weighting or time sampling, ``"log_snr"`` times
            where the log-SNR is infinite at ``t_min`` or T (a path reaching pure noise), weights of the wrong shape
            or sign, or a malformed ``x``.
        TypeError: for a non-callable score, a wrong sde or generator, or mismatched dtypes.
    """
    fn = "sde_dsm_loss"
    check_score(fn, score)
    check_sde(fn, sde)
    check_batch(fn, "x", x)
    t_min = resolve_t_min(fn, sde, t_min)
    if t_min <= 0:  # a flow path takes t_min = 0 elsewhere; here sigma(0) = 0 puts the target -eps/sigma at infinity
        raise ValueError(
            f"{fn}: argument 't_min' expected a time in (0, T={sde.T:g}), got {t_min!r}: at t = 0 sigma = 0, where the "
            "denoising target -eps/sigma is infinite and the likelihood weight g^2/sigma^2 is not integrable. "
            f"Fix: t_min > 0, e.g. the process's own t_min={sde.t_min:g}."
        )
    if not callable(weighting):
        check_choice(fn, "weighting", weighting, SDE_WEIGHTINGS)
    check_choice(fn, "time_sampling", time_sampling, TIME_SAMPLINGS)
    check_generator(fn, generator, x)
    check_reduction(fn, reduction)
    if time_sampling == "log_snr":
        _check_log_snr_range(fn, sde, t_min)
    u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
    if time_sampling == "uniform":
        t = t_min + (sde.T - t_min) * u
    else:
        t, span = _log_snr_times(sde, t_min, u)
    alpha, sigma = sde.marginal(t)
    eps = standard_normal(x, generator)
    per, out = _denoising_terms(fn, score, x, alpha, sigma, t, eps)
    if callable(weighting):
        per = per * call_weighting(fn, weighting, "weighting(t)", t, like=x) / sigma**2
    elif weighting == "likelihood":
        per = per * sde.diffusion(t) ** 2 / sigma**2
    if time_sampling == "log_snr":  # divide by (T - t_min) p(t), p(t) = (g^2/sigma^2) / span
        per = per * (sigma**2 / sde.diffusion(t) ** 2) * (span / (sde.T - t_min))
    return reduce(fn, per, reduction, score=out)


def _check_log_snr_range(fn: str, sde: ForwardSDE, t_min: float) -> None:
    """Uniform log-SNR times need finite ends: not at pure noise (alpha(T) = 0) nor at the data (sigma(t_min) = 0)."""
    ends = sde.log_snr(torch.tensor([t_min, sde.T], dtype=torch.float64)).tolist()
    for lam, where in zip(ends, (f"t_min={t_min:g}", f"T={sde.T:g}")):
        if not math.isfinite(lam):
            raise ValueError(
                f"{fn}: argument 'time_sampling' 'log_snr' draws t uniformly in the log-SNR, but on {sde!r} the log-SNR "
                f"is {lam:g} at {where}. Fix: time_sampling='uniform', or a finite range (t_min > 0, and a path "
                "truncated before pure noise, e.g. scoreflow.RectifiedFlow(T=0.999))."
            )


def _log_snr_times(sde: ForwardSDE, t_min: float, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Times whose half log-SNR :math:`\lambda = \log(\alpha/\sigma)` is uniform between its values at T and ``t_min``
    (``u ~ U[0, 1)``), and the span :math:`2(\lambda(t_{min}) - \lambda(T)) = \int_{t_{min}}^T g^2/\sigma^2\,dt`."""
    ends = sde.log_snr(torch.tensor([t_min, sde.T], dtype=torch.float64, device=u.device))
    lam = ends[1] + (ends[0] - ends[1]) * u.to(torch.float64)
    times = sde.t_from_log_snr(lam).clamp(t_min, sde.T).to(u.dtype)
    return times, (2 * (ends[0] - ends[1])).to(u.dtype)
