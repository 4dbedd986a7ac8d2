r"""Forward noising processes with linear drift.

Every SDE here has the form :math:`dx = f(t)\,x\,dt + g(t)\,dW` on :math:`t \in [0, T]`,
so its transition from data is Gaussian,

.. math:: x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon,\qquad \varepsilon \sim N(0, I),

with :math:`f = d\log\alpha/dt` and :math:`g^2 = d\sigma^2/dt - 2 f \sigma^2`.
Subclasses give :math:`\alpha, \sigma, f, g` in closed form.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ._cache import LRU, parameters_key
from ._checks import check_generator, check_instance, check_positive, is_int
from ._tensor import TimeLike, as_time, batch_time, flat_dim, right_pad

__all__ = ["ForwardSDE", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "check_sde", "check_diffusion_finite_at_T"]

# ForwardSDE.pure_noise_at_T by process parameters.
_PURE_NOISE = LRU(64)


class ForwardSDE(ABC):
    """A forward SDE :math:`dx = f(t) x\\,dt + g(t)\\,dW` with Gaussian marginals.

    Attributes:
        T: the final time (noise end).
        t_min: the default truncation time at which sampling stops and likelihoods start.
        reaches_data: whether a solve may end at t = 0 exactly (flow paths: their velocity is finite there).
        ancestral: the ancestral step the process admits (``sample_pc(predictor="ancestral")``): ``"vp"`` where
            :math:`\\alpha^2 + \\sigma^2 = 1` (DDPM's), ``"ve"`` where :math:`\\alpha = 1` (SMLD's), ``None`` for neither.
    """

    reaches_data: ClassVar[bool] = False
    ancestral: ClassVar[str | None] = None

    def __init__(self, *, T: float, t_min: float) -> None:
        name = type(self).__name__
        self.T = check_positive(name, "T", T)
        self.t_min = check_positive(name, "t_min", t_min)
        if not self.t_min < self.T:
            raise ValueError(f"{name}: argument 't_min' expected a time in (0, T={self.T:g}), got {self.t_min!r}.")

    @abstractmethod
    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(alpha(t), sigma(t))`` with ``x_t = alpha * x_0 + sigma * eps``; shaped like ``t``."""

    @abstractmethod
    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        """Return :math:`f(t)` in the drift :math:`f(x, t) = f(t)\\,x`; shaped like ``t``."""

    @abstractmethod
    def diffusion(self, t: TimeLike) -> torch.Tensor:
        """Return the diffusion coefficient :math:`g(t)`; shaped like ``t``."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """Invert :meth:`log_snr`: the time at which :math:`\\log(\\alpha/\\sigma)` equals ``log_snr``."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior used in place of :math:`p_T`."""

    def marginal_derivatives(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Return :math:`(\dot\alpha(t), \dot\sigma(t))`: :math:`\dot\alpha = f\alpha`, :math:`\dot\sigma = (g^2 + 2f\sigma^2)/(2\sigma)`."""
        alpha, sigma = self.marginal(t)
        f, g = self.drift_coef(t), self.diffusion(t)
        return f * alpha, (g**2 + 2 * f * sigma**2) / (2 * sigma)

    def singular_flow_at(self, t: float) -> str | None:
        r"""Why the probability-flow velocity :math:`\dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon` is infinite at
        ``t`` for every model: :math:`\dot\alpha` or :math:`\dot\sigma` infinite there (a path such as
        :math:`\alpha = \sqrt{1 - t}` at T, or :math:`\sigma = \sqrt t` at 0); ``None`` where both are finite.
        Computed on the host in float64, only when a solve has failed; the answer ends with the remedy.
        """
        rates = self.marginal_derivatives(torch.tensor(t, dtype=torch.float64))
        infinite = [f"{name}({t:g}) = {float(v):g}" for name, v in zip(("d_alpha", "d_sigma"), rates)
                    if math.isinf(float(v))]
        if not infinite:
            return None
        remedy = ("start below T, e.g. from sde.truncated(T') with T' < T" if t >= self.T * (1 - 1e-6)
                  else "end above it, with a larger t_min")
        return f"{', '.join(infinite)}; {remedy}"

    @property
    def pure_noise_at_T(self) -> bool:
        r"""Whether :math:`\alpha(T) = 0`: then :math:`x_T` is exactly the prior, :math:`\lambda(T) = -\infty`, and
        :math:`f` and :math:`g` are infinite at T (flow paths such as :class:`scoreflow.RectifiedFlow`)."""
        # asked by every front-end's checks: computed once per set of parameters (see scoreflow._cache)
        key = parameters_key(self)
        if key is None:
            return self._alpha_T_is_zero()
        return _PURE_NOISE.get(key, self._alpha_T_is_zero)

    def _alpha_T_is_zero(self) -> bool:
        return bool(self.marginal(torch.tensor(self.T, dtype=torch.float64))[0] == 0)

    def drift(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """Forward drift :math:`f(t)\\,x` for ``x`` of shape ``(B, *D)`` and scalar or ``(B,)`` time."""
        return right_pad(self.drift_coef(batch_time(t, x)), x) * x

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        """Half log signal-to-noise ratio :math:`\\lambda(t) = \\log\\alpha(t) - \\log\\sigma(t)`."""
        alpha, sigma = self.marginal(t)
        return torch.log(alpha) - torch.log(sigma)

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``x_T`` of the given shape ``(B, *D)`` from the prior :math:`N(0, s^2 I)`, s = ``prior_std``.

        Raises:
            TypeError: if ``shape`` is not a tuple, list or ``torch.Size`` of ints (e.g. a bare batch size, 16), or
                ``generator`` is not a ``torch.Generator``.
            ValueError: if ``shape`` has fewer than two entries or one below 1.
        """
        fn = f"{type(self).__name__}.prior_sample"
        check_generator(fn, generator)
        if not isinstance(shape, (tuple, list, torch.Size)) or not all(is_int(n) for n in shape):
            raise TypeError(
                f"{fn}: argument 'shape' expected a tuple of ints (B, *D), e.g. (16, 2), got {type(shape).__name__} {shape!r}."
            )
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"{fn}: argument 'shape' expected (B, *D) with every size >= 1 and a batch first, got {tuple(shape)}.")
        if device is None and generator is not None:
            device = generator.device
        eps = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return self.prior_std * eps

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at ``x`` of shape ``(B, *D)``, summed over data dims; shape ``(B,)``.

        Raises ``TypeError`` for an ``x`` that is not a tensor and ``ValueError`` for one not shaped ``(B, *D)`` (type
        and shape checks: no read of the values)."""
        if not torch.is_tensor(x) or x.ndim < 2 or x.shape[0] == 0:
            fn = f"{type(self).__name__}.prior_log_prob"
            if not torch.is_tensor(x):
                raise TypeError(f"{fn}: argument 'x' expected a tensor of shape (B, *D), got {type(x).__name__}.")
            raise ValueError(f"{fn}: argument 'x' expected a non-empty batch of shape (B, *D), got shape {tuple(x.shape)}.")
        d = flat_dim(x)
        s2 = self.prior_std**2
        sq = x.reshape(x.shape[0], -1).pow(2).sum(dim=1)
        return -0.5 * sq / s2 - 0.5 * d * math.log(2 * math.pi * s2)

    def __repr__(self) -> str:
        # numbers as %g; a subclass's other attributes (a name, a tensor) by their repr, which %g would refuse
        params = ", ".join(
            f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v!r}"
            for k, v in vars(self).items()
        )
        return f"{type(self).__name__}({params})"


class _LinearBetaMixin:
    r"""Shared :math:`\beta(t) = \beta_{min} + t(\beta_{max} - \beta_{min})` schedule of VP and sub-VP."""

    beta_min: float
    beta_max: float

    def _check_betas(self, beta_min: float, beta_max: float, T: float) -> None:
        name = type(self).__name__
        self.beta_min = check_positive(name, "beta_min", beta_min, allow_zero=True)
        self.beta_max = check_positive(name, "beta_max", beta_max)
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"{name}: expected beta_min <= beta_max, got beta_min={beta_min!r} > beta_max={beta_max!r}."
            )
        T = check_positive(name, "T", T)
        # alpha(T)^2 = e^{2 log alpha(T)} must not underflow float64 (e^-708): past it the process is pure noise
        # in floating point long before T, its log-SNR is -inf and every conversion through alpha divides 0 by 0
        log_alpha_T = -0.25 * T**2 * (self.beta_max - self.beta_min) - 0.5 * T * self.beta_min
        if 2 * log_alpha_T < math.log(torch.finfo(torch.float64).tiny):
            raise ValueError(
                f"{name}: beta_min={beta_min!r}, beta_max={beta_max!r} give log alpha(T) = {log_alpha_T:.6g}, so "
                f"alpha(T)^2 underflows float64 and the log-SNR is -inf well before T={T:g}; expected "
                "T^2 (beta_max - beta_min)/4 + T beta_min/2 < 354. Fix: a smaller beta_max (score_sde uses 20) or T."
            )

    def beta(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        r""":math:`\log\alpha(t) = -\tfrac14 t^2 (\beta_{max}-\beta_{min}) - \tfrac12 t\,\beta_{min}`.

        (Here and in VP's marginal and inverse, :math:`t^2` as t * t and 2y as y + y: the same values to the bit, in one
        dispatch without a Python number to wrap, which a solver's node pays at every step on a 0-dim time.)"""
        t = as_time(t)
        return -0.25 * (t * t) * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Solve the quadratic :meth:`log_alpha` ``= log_alpha`` for t >= 0 (cancellation-free root)."""
        a = -log_alpha
        b0, delta = self.beta_min, self.beta_max - self.beta_min
        denom = 0.5 * b0 + torch.sqrt(0.25 * b0**2 + delta * a)
        # t = 0 at a = 0 (the log-SNR +inf of t = 0), where beta_min = 0 makes the root 0/0
        return (a + a) / torch.where(denom > 0, denom, torch.ones_like(denom))

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * self.beta(t)


class VPSDE(_LinearBetaMixin, ForwardSDE):
    r"""Variance-preserving SDE (DDPM in continuous time): :math:`dx = -\tfrac12\beta(t) x\,dt + \sqrt{\beta(t)}\,dW`.

    :math:`\alpha(t) = e^{-\frac14 t^2(\beta_{max}-\beta_{min}) - \frac12 t\beta_{min}}`,
    :math:`\sigma(t)^2 = 1 - \alpha(t)^2`; prior :math:`N(0, I)`.

    Raises:
        ValueError: if ``beta_min < 0``, ``beta_max <= 0``, ``beta_min > beta_max``, the time range is empty, or
            :math:`\alpha(T)^2` underflows float64 (:math:`T^2(\beta_{max}-\beta_{min})/4 + T\beta_{min}/2 \ge 354`).
    """

    ancestral = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, T: float = 1.0, t_min: float = 1e-3) -> None:
        self._check_betas(beta_min, beta_max, T)
        super().__init__(T=T, t_min=t_min)

    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        log_alpha = self.log_alpha(t)
        return torch.exp(log_alpha), torch.sqrt(-torch.expm1(log_alpha + log_alpha))

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(self.beta(t))

    def marginal_derivatives(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\dot\alpha = -\tfrac12\beta\alpha`, :math:`\dot\sigma = \tfrac12\beta\alpha^2/\sigma` (the generic
        :math:`(g^2 + 2f\sigma^2)/(2\sigma) = \beta(1 - \sigma^2)/(2\sigma)` cancels where :math:`\alpha \ll 1`)."""
        alpha, sigma = self.marginal(t)
        beta = self.beta(t)
        return -0.5 * beta * alpha, 0.5 * beta * alpha**2 / sigma

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lambda)  =>  log alpha = -softplus(-2 lambda) / 2
        return self.t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2 * as_time(log_snr)))

    @property
    def prior_std(self) -> float:
        return 1.0


class SubVPSDE(_LinearBetaMixin, ForwardSDE):
    r"""Sub-VP SDE (Song et al. 2021): :math:`dx = -\tfrac12\beta x\,dt + \sqrt{\beta(t)(1 - \alpha(t)^4)}\,dW`.

    Same :math:`\alpha(t)` as :class:`VPSDE`, :math:`\sigma(t) = 1 - \alpha(t)^2`; prior :math:`N(0, I)`.

    Raises:
        ValueError: if ``beta_min < 0``, ``beta_max <= 0``, ``beta_min > beta_max``, the time range is empty, or
            :math:`\alpha(T)^2` underflows float64 (:math:`T^2(\beta_{max}-\beta_{min})/4 + T\beta_{min}/2 \ge 354`).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, T: float = 1.0, t_min: float = 1e-3) -> None:
        self._check_betas(beta_min, beta_max, T)
        super().__init__(T=T, t_min=t_min)

    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        log_alpha = self.log_alpha(t)
        return torch.exp(log_alpha), -torch.expm1(2 * log_alpha)

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_alpha(t)))

    def marginal_derivatives(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\dot\alpha = -\tfrac12\beta\alpha`, :math:`\dot\sigma = -2\alpha\dot\alpha = \beta\alpha^2` (the generic
        :math:`(g^2 + 2f\sigma^2)/(2\sigma)` cancels where :math:`\alpha \ll 1`)."""
        alpha, beta = torch.exp(self.log_alpha(t)), self.beta(t)
        return -0.5 * beta * alpha, beta * alpha**2

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        # (1 - alpha^2) / alpha = e^-lambda  =>  -log alpha = asinh(e^-lambda / 2), with no log of an alpha rounded
        # to 1 near t = 0 (which cost t all its digits in float32) and no e^{2 lambda} overflow at large lambda
        return self.t_from_log_alpha(-torch.asinh(0.5 * torch.exp(-as_time(log_snr))))

    @property
    def prior_std(self) -> float:
        return 1.0


class VESDE(ForwardSDE):
    r"""Variance-exploding SDE (SMLD/NCSN): :math:`dx = \sigma_{min} r^{t/T} \sqrt{2\log(r)/T}\,dW`, :math:`r = \sigma_{max}/\sigma_{min}`.

    The diffusion is score_sde's (T = 1 there; time is scaled by T); the marginal is the exact one of the SDE
    started at clean data, :math:`\alpha = 1`, :math:`\sigma(t)^2 = \sigma_{min}^2 (r^{2t/T} - 1)`, which differs
    from the common approximation :math:`\sigma_{min} r^{t/T}` by :math:`\sigma_{min}^2` in variance.
    Prior :math:`N(0, \sigma_{max}^2 I)` (score_sde's), used in place of :math:`p_T` as VP's :math:`N(0, I)` is:
    not the marginal at T even for data at the origin, whose :math:`p_T` is :math:`N(0, (\sigma_{max}^2 -
    \sigma_{min}^2) I)`.  For the exact value give ``law.marginal(sde, sde.T).log_prob`` as a likelihood's prior.

    Raises:
        ValueError: unless ``0 < sigma_min < sigma_max`` and the time range is non-empty.
    """

    ancestral = "ve"

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, T: float = 1.0, t_min: float = 1e-5
    ) -> None:
        self.sigma_min = check_positive("VESDE", "sigma_min", sigma_min)
        self.sigma_max = check_positive("VESDE", "sigma_max", sigma_max)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(
                f"VESDE: expected sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}."
            )
        super().__init__(T=T, t_min=t_min)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min) / self.T

    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t)
        sigma = self.sigma_min * torch.sqrt(torch.expm1(2 * self._log_ratio * t))
        return torch.ones_like(t), sigma

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(as_time(t))

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        return self.sigma_min * torch.exp(self._log_ratio * t) * math.sqrt(2 * self._log_ratio)

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        sigma = torch.exp(-as_time(log_snr))
        return torch.log1p((sigma / self.sigma_min) ** 2) / (2 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return self.sigma_max


class EDMSDE(ForwardSDE):
    r"""The EDM / k-diffusion process :math:`\sigma(t) = t`: :math:`dx = \sqrt{2t}\,dW`, :math:`\alpha = 1`.

    Time is the noise level, so ``T = sigma_max`` and ``t_min = sigma_min``; prior :math:`N(0, \sigma_{max}^2 I)`.

    Raises:
        ValueError: unless ``0 < sigma_min < sigma_max``.
    """

    ancestral = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        self.sigma_min = check_positive("EDMSDE", "sigma_min", sigma_min)
        self.sigma_max = check_positive("EDMSDE", "sigma_max", sigma_max)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(
                f"EDMSDE: expected sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}."
            )
        super().__init__(T=self.sigma_max, t_min=self.sigma_min)

    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t)
        return torch.ones_like(t), t.clone()

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        return torch.zeros_like(as_time(t))

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(2 * as_time(t))

    def marginal_derivatives(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\dot\alpha = 0`, :math:`\dot\sigma = 1` (the generic :math:`(g^2 + 2f\sigma^2)/(2\sigma) = 2t/2t` is 0/0 at t = 0)."""
        t = as_time(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        return torch.exp(-as_time(log_snr))

    @property
    def prior_std(self) -> float:
        return self.sigma_max


def check_sde(fn: str, sde: Any) -> ForwardSDE:
    """Check that ``sde`` is a :class:`ForwardSDE` (the argument of the public function ``fn``); return it."""
    return check_instance(fn, "sde", sde, ForwardSDE, "scoreflow.VPSDE()")


def check_diffusion_finite_at_T(fn: str, sde: ForwardSDE) -> ForwardSDE:
    r"""Check ``sde`` for the stochastic front-end ``fn``: a :class:`ForwardSDE` whose diffusion is finite at T.

    Where :math:`\alpha(T) = 0` the reverse SDE forgets its start at once (:math:`g(T) = \infty`): it cannot be
    started there.  A path truncated before pure noise (e.g. ``RectifiedFlow(T=0.999)``) has a finite one.
    Raises:
        TypeError: if ``sde`` is not a :class:`ForwardSDE`.
        ValueError: if it reaches pure noise at T.
    """
    if check_sde(fn, sde).pure_noise_at_T:
        raise ValueError(
            f"{fn}: the reverse SDE of {sde!r} has infinite drift and diffusion at t=T={sde.T:g}, where alpha(T) = 0 "
            "(pure noise). Fix: sample it by the probability-flow ODE (sample_ode), or truncate the path before "
            "pure noise, e.g. scoreflow.RectifiedFlow(T=0.999), whose prior N(0, T^2 I) is then approximate."
        )
    return sde
