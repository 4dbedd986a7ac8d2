r"""Conditional scores that turn any sampler into a posterior sampler, by Bayes' rule on the noisy state.

.. math:: \nabla_x \log p_t(x \mid y) = \nabla_x \log p_t(x) + \nabla_x \log p_t(y \mid x)

- classifier guidance (Dhariwal & Nichol 2021): the second term from a differentiable, noise-aware
  :math:`\log p_t(y \mid x)` given by the user, times ``scale``;
- diffusion posterior sampling (DPS, Chung et al. 2023): :math:`p_t(y \mid x) \approx p(y \mid \hat x_0(x))`
  with Tweedie's :math:`\hat x_0 = (x + \sigma^2 s)/\alpha` and a Gaussian measurement
  :math:`y = \mathcal A(x_0) + n`, :math:`n \sim N(0, \sigma_y^2 I)`; the gradient runs through the score
  model (one vector-Jacobian product per evaluation).  It ignores the spread of :math:`x_0` given
  :math:`x_t`, so it is biased wherever that spread is not small against :math:`\sigma_y`.

Both are score modules: pass them to :func:`scoreflow.sample_ode`, :func:`scoreflow.sample_sde`,
:func:`scoreflow.sample_pc` or :func:`scoreflow.inpaint`.  Each call costs one evaluation of the score
(counted as one NFE) plus one backward pass; under a sampler's ``enable_grad=True`` the guidance term keeps
its graph (second-order autograd).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import call_checked, check_callable, check_network_output, check_per_sample, check_positive, check_real
from .._tensor import batch_time, right_pad
from ..dynamics.counting import ScoreFn
from ..methods import Method, register
from ..sde import ForwardSDE, check_sde

__all__ = ["classifier_guided_score", "dps_score"]

LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grad_in_x(fn: str, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(f(x), \nabla_x \sum f(x))``; the gradient keeps its graph when the caller records one."""
    keep = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        value = check_per_sample(fn, "the log-likelihood", f(xg), x)
        (grad,) = torch.autograd.grad(value.sum(), xg, create_graph=keep, allow_unused=True) if value.requires_grad else (None,)
    if grad is None:  # a detached or constant value: guiding by a zero gradient would be silently unguided
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{fn}: guidance differentiates the log-likelihood in x, which torch.inference_mode() forbids. "
                "Fix: sample under torch.no_grad() instead (the samplers' default)."
            )
        raise ValueError(
            f"{fn}: the log-likelihood has no autograd graph from x, so it cannot guide. Fix: compute it from x "
            "with torch operations (not from x.detach(), inside torch.no_grad() or with NumPy)."
        )
    return value, grad


class ClassifierGuidedScore(torch.nn.Module):
    r""":math:`s(x, t) + w\,\nabla_x \log p_t(y \mid x)`."""

    def __init__(self, score: ScoreFn, log_likelihood: LogLikelihood, scale: float) -> None:
        super().__init__()
        self.score, self.log_likelihood, self.scale = score, log_likelihood, scale
        self._checked = False

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        _, grad = _grad_in_x("classifier_guided_score", lambda xg: call_checked(
            "classifier_guided_score", "log_likelihood", "log_likelihood(x, t)", self.log_likelihood, xg, t), x)
        s = call_checked("classifier_guided_score", "score", "score(x, t)", self.score, x, t)
        if not self._checked:  # once: a (B, 1) score would broadcast against the gradient
            self._checked = check_network_output("classifier_guided_score", "the score", s, x, t)
        return s + self.scale * grad.to(x.dtype)


def classifier_guided_score(score: ScoreFn, log_likelihood: LogLikelihood, *, scale: float = 1.0) -> ClassifierGuidedScore:
    r"""Classifier guidance: the score :math:`s(x, t) + w\,\nabla_x \log p_t(y \mid x)`.

    With the exact noise-aware likelihood (for analytic laws
    :func:`scoreflow.analytic.observation_log_likelihood`) and ``scale=1`` this is the exact conditional
    score; ``scale > 1`` sharpens the posterior towards :math:`p_t(x)\,p_t(y \mid x)^w` (over-guidance).

    Args:
        score: the unconditional score ``score(x, t)``.
        log_likelihood: ``log_likelihood(x, t)``, differentiable in x, returning ``(B,)`` (the label y is
            fixed inside it, e.g. a classifier's log-softmax at the wanted class).
        scale: the guidance weight w (a finite real; 1 = Bayes' rule).

    Returns:
        A score module; each call evaluates ``score`` once and differentiates ``log_likelihood`` once.

    Raises:
        TypeError: if ``score`` or ``log_likelihood`` is not callable or ``scale`` is not a number.
        ValueError: if ``scale`` is not finite; when called, if ``log_likelihood`` does not return ``(B,)`` or
            returns a value without an autograd graph from x (detached, constant, NumPy).
        RuntimeError: when called under ``torch.inference_mode()``, which forbids the gradient.
    """
    fn = "classifier_guided_score"
    check_callable(fn, "score", score, "score(x, t)")
    check_callable(fn, "log_likelihood", log_likelihood, "log_likelihood(x, t) -> (B,)")
    return ClassifierGuidedScore(score, log_likelihood, check_real(fn, "scale", scale))


class DPSScore(torch.nn.Module):
    r""":math:`s(x, t) - \frac{w}{2\sigma_y^2}\nabla_x \|y - \mathcal A(\hat x_0(x, t))\|^2`."""

    def __init__(self, score: ScoreFn, sde: ForwardSDE, operator: Callable, y: torch.Tensor, noise_std: float, scale: float) -> None:
        super().__init__()
        self.score, self.sde, self.operator, self.y = score, sde, operator, y
        self.noise_std, self.scale = noise_std, scale
        self._checked = False

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        alpha, sigma = (right_pad(c, x) for c in self.sde.marginal(t))
        s = None

        def log_likelihood(xg: torch.Tensor) -> torch.Tensor:
            nonlocal s
            s = call_checked("dps_score", "score", "score(x, t)", self.score, xg, t)
            if not self._checked:  # once: a (B, 1) score would broadcast into the data prediction
                self._checked = check_network_output("dps_score", "the score", s, x, t)
            x0 = (xg + sigma**2 * s) / alpha
            measured = call_checked("dps_score", "operator", "operator(x0)", self.operator, x0)
            if not torch.is_tensor(measured):
                raise TypeError(f"dps_score: argument 'operator' expected operator(x0) -> tensor (B, *M), got {type(measured).__name__}.")
            if measured.ndim == 0 or measured.shape[0] != x.shape[0]:
                # an operator for one sample (x.flatten()[idx]) or x[mask] mixes the batch: reshaped to (B, -1) below,
                # one sample's measurement would guide another, silently
                raise ValueError(
                    f"dps_score: argument 'operator' expected operator(x0) of shape (B, *M) with B={x.shape[0]} (one measurement "
                    f"per sample), got shape {tuple(measured.shape)}. Fix: keep the batch dimension first (for a mask per "
                    "sample, x0 * mask rather than x0[mask])."
                )
            shape, m = tuple(self.y.shape), tuple(measured.shape)
            if shape not in (m, m[1:], (1, *m[1:])):
                # a shape test: a y of another batch or shape would broadcast into a wrong residual
                raise ValueError(
                    f"dps_score: argument 'y' expected the shape of operator(x0), {m}, or one measurement for all, "
                    f"{m[1:]}, got shape {shape}."
                )
            if self.y.device != measured.device:
                raise ValueError(f"dps_score: argument 'y' expected the device of operator(x0), {measured.device}, got {self.y.device}.")
            resid = (self.y.to(x.dtype) - measured) / self.noise_std
            return -0.5 * resid.reshape(x.shape[0], -1).pow(2).sum(1)

        _, grad = _grad_in_x("dps_score", log_likelihood, x)
        return (s if torch.is_grad_enabled() else s.detach()) + self.scale * grad


def dps_score(
    score: ScoreFn, sde: ForwardSDE, operator: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, *,
    noise_std: float, scale: float = 1.0,
) -> DPSScore:
    r"""Diffusion posterior sampling: :math:`s + w\,\nabla_x \log N(y;\, \mathcal A(\hat x_0(x, t)),\, \sigma_y^2 I)`.

    Args:
        score: the unconditional score ``score(x, t)`` (differentiable in x).
        sde: the forward SDE of the score (for Tweedie's :math:`\hat x_0`).
        operator: the measurement :math:`\mathcal A`, differentiable, mapping ``(B, *D)`` to ``(B, *M)``
            (e.g. ``lambda x: x @ A.T`` or a mask ``lambda x: x[:, mask]``).
        y: the measurement, shape ``(*M)`` (shared) or ``(B, *M)``.
        noise_std: the measurement noise :math:`\sigma_y > 0` (for exact observations a small width, whose
            bias the conditional-sampling benchmark shows).
        scale: the weight w of the likelihood term (1 = DPS's approximation of Bayes' rule).

    Returns:
        A score module; each call evaluates ``score`` once (one NFE) and back-propagates through it once.

    Raises:
        TypeError: if ``score`` or ``operator`` is not callable, ``y`` is not a floating tensor, or ``noise_std``
            or ``scale`` is not a number.
        ValueError: for a non-finite ``y`` or ``scale`` or a ``noise_std`` that is not > 0.
        TypeError, ValueError: when called, for an ``operator`` that does not return a tensor whose first dimension is
            the batch, or a ``y`` whose shape is not that of ``operator(x0)`` (or of one measurement) or which is on
            another device.
    """
    fn = "dps_score"
    check_callable(fn, "score", score, "score(x, t)")
    check_sde(fn, sde)
    check_callable(fn, "operator", operator, "operator(x) -> (B, *M)")
    if not torch.is_tensor(y) or not y.is_floating_point():
        got = f"dtype {y.dtype}" if torch.is_tensor(y) else type(y).__name__
        raise TypeError(f"{fn}: argument 'y' expected a floating-point tensor (the measurement), got {got}.")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{fn}: argument 'y' contains NaN or infinite values.")
    return DPSScore(score, sde, operator, y, check_positive(fn, "noise_std", noise_std), check_real(fn, "scale", scale))


register(Method(
    "classifier_guidance", ("conditional",), "native", classifier_guided_score,
    "classifier guidance: the score plus `scale` times the gradient of a noise-aware log-likelihood of y given x_t; any sampler",
    front_end="classifier_guided_score(score, log_likelihood, scale=w)",
))
register(Method(
    "dps", ("conditional",), "native", dps_score,
    "diffusion posterior sampling: the likelihood of y at Tweedie's x0-prediction, differentiated through the score; any sampler",
    front_end="dps_score(score, sde, operator, y, noise_std=s)",
))
