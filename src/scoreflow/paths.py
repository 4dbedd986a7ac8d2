r"""Affine Gaussian probability paths (flow matching, rectified flow) as forward processes.

A path :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\varepsilon` is the marginal law of the linear SDE with
:math:`f = \dot\alpha/\alpha` and :math:`g^2 = \tfrac{d\sigma^2}{dt} - 2f\sigma^2 = -2\sigma^2\dot\lambda`,
:math:`\lambda = \log(\alpha/\sigma)`, so every front-end that takes a forward SDE takes a path.  Flow paths
usually end in pure noise, :math:`\alpha(T) = 0`: there :math:`\lambda = -\infty` and :math:`f, g` are infinite,
so a model is integrated from T through its own prediction (a flow velocity, a data or v prediction;
see :func:`scoreflow.score_from_flow_velocity`), never through a score turned into a drift.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ._checks import call_checked, check_callable, check_positive
from ._tensor import TimeLike, as_time
from .sde import ForwardSDE

__all__ = ["AffinePath", "RectifiedFlow"]

Schedule = Callable[[torch.Tensor], torch.Tensor]
#: Bisection steps of the generic inverse log-SNR (2^-80 of T: below float64 resolution).
_BISECTION_STEPS = 80
#: Times at which a path's coefficients are checked when it is built.
_CHECK_POINTS = 257
#: Relative tolerance of the check of a derivative against the schedule's difference quotients (step: the square
#: root of the schedule's precision): far above the quotients' error, far below a wrong derivative's.
_DIFF_RTOL = 1e-3


def _derivative(fn: Schedule, t: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative of a schedule by forward-mode autograd (works under ``torch.no_grad``)."""
    t = t.contiguous()  # an expanded (B,) time would alias one element in the tangent computation
    with warnings.catch_warnings():
        # torch's first forward-mode call scripts its own decompositions; its deprecation warning is not ours to act on
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        return torch.func.jvp(fn, (t,), (torch.ones_like(t),))[1]


class AffinePath(ForwardSDE):
    r"""The Gaussian path :math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon` on :math:`t \in [0, T]` as a forward process.

    Args:
        alpha, sigma: the schedules, elementwise functions of a time tensor (torch operations, so that they
            can be differentiated), with :math:`\alpha \ge 0`, :math:`\sigma > 0` on :math:`(0, T]` and a strictly
            decreasing log-SNR :math:`\log(\alpha/\sigma)`.
        d_alpha, d_sigma: their time derivatives; by default computed by autograd (``torch.func.jvp``).  Given or
            not, they are checked against the schedules' difference quotients (relative tolerance 1e-3) when the path
            is built (at a kink either side's will do; they may be infinite at an end, as that of sqrt(t) at 0).
        T: the noise end; the prior is :math:`N(0, \sigma(T)^2 I)` (exact when :math:`\alpha(T) = 0`).  An
            :math:`\alpha(T)` that is 0 up to the rounding of T (:math:`|\alpha(T)| \le \epsilon T|\dot\alpha(T)|`, as
            ``cos(pi/2) = 6e-17``) is taken as 0: the path reaches pure noise.
        t_min: the default time at which sampling stops and likelihoods start.

    Raises:
        TypeError: if a schedule is not callable, or cannot be called as ``alpha(t)``.
        ValueError: if a schedule does not return a finite tensor shaped like t (a derivative: not NaN),
            :math:`\sigma \le 0` or :math:`\alpha < 0` somewhere in ``(0, T]``, the log-SNR is not strictly
            decreasing there, or a derivative (given, or by autograd) is not its schedule's.
    """

    reaches_data = True

    def __init__(
        self,
        alpha: Schedule,
        sigma: Schedule,
        *,
        d_alpha: Schedule | None = None,
        d_sigma: Schedule | None = None,
        T: float = 1.0,
        t_min: float = 1e-3,
    ) -> None:
        name = type(self).__name__
        self._alpha = check_callable(name, "alpha", alpha, "alpha(t)")
        self._sigma = check_callable(name, "sigma", sigma, "sigma(t)")
        self._d_alpha = None if d_alpha is None else check_callable(name, "d_alpha", d_alpha, "d_alpha(t)")
        self._d_sigma = None if d_sigma is None else check_callable(name, "d_sigma", d_sigma, "d_sigma(t)")
        super().__init__(T=T, t_min=t_min)
        self._zero_at_T = False
        self._check_schedules(name)

    def _check_schedules(self, name: str) -> None:
        t = torch.linspace(0.0, self.T, _CHECK_POINTS, dtype=torch.float64)[1:]
        t[-1] = self.T
        values = {}
        schedules = (("alpha", self._alpha), ("sigma", self._sigma), ("d_alpha", self._d_alpha), ("d_sigma", self._d_sigma))
        for key, fn in schedules:
            if fn is None:
                continue
            out = call_checked(name, key, f"{key}(t)", fn, t)
            if not torch.is_tensor(out) or out.shape != t.shape:
                got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else type(out).__name__
                raise ValueError(f"{name}: argument '{key}' must map a (N,) time tensor to a (N,) tensor, got {got}.")
            # a derivative may be infinite at an end (sigma = sqrt(t) at 0, alpha = sqrt(1 - t) at T), never NaN
            if not bool((torch.isfinite(out) if key in ("alpha", "sigma") else ~torch.isnan(out)).all()):
                raise ValueError(f"{name}: argument '{key}' returned non-finite values on (0, T={self.T:g}].")
            values[key] = out
        for key, fn in (("alpha", self._alpha), ("sigma", self._sigma)):
            self._check_derivative(name, key, fn, values.get(f"d_{key}"), t, values[key])
        # A schedule that is 0 at T may miss it by round-off either way (cos(pi/2) = 6e-17, 0.3 - 0.1 * 3 = -6e-17):
        # alpha(T) within one rounding of T along the slope is taken as the 0 it is, so the path reaches pure noise
        # (and lambda(T) = -inf) as it should.
        alpha_T = float(values["alpha"][-1])
        slope_T = abs(float(self.marginal_derivatives(t[-1:])[0]))
        self._zero_at_T = alpha_T != 0.0 and abs(alpha_T) <= torch.finfo(torch.float64).eps * self.T * slope_T
        alpha, sigma = self.marginal(t)[0], values["sigma"]
        if bool((sigma <= 0).any()) or bool((alpha < 0).any()):
            raise ValueError(
                f"{name}: expected alpha(t) >= 0 and sigma(t) > 0 on (0, T={self.T:g}], got alpha down to "
                f"{float(alpha.min()):.3g} and sigma down to {float(sigma.min()):.3g}."
            )
        lam = torch.log(alpha) - torch.log(sigma)
        if bool((lam[1:] >= lam[:-1]).any()):
            raise ValueError(
                f"{name}: expected a strictly decreasing log-SNR log(alpha/sigma) on (0, T={self.T:g}] (noise must "
                "grow relative to signal), got one that does not decrease."
            )

    def _check_derivative(self, name: str, key: str, fn: Schedule, given: torch.Tensor | None, t: torch.Tensor,
                          value: torch.Tensor) -> None:
        """The derivative used, given or by autograd, must be the schedule's.

        At every check point it must match one of the schedule's central, forward or backward difference quotients
        (one of them: a kink is no false alarm) within ``_DIFF_RTOL`` of the quotient plus ``_DIFF_RTOL`` of the
        quotients' largest value; the step is the square root of the schedule's precision, so float32 schedules pass
        too. A derivative may be infinite at an end (that of sqrt(t) at 0) but not NaN."""
        arg = f"d_{key}"
        out = _derivative(fn, t) if given is None else given
        if given is None and bool(torch.isnan(out).any()):
            raise ValueError(f"{name}: autograd's derivative of '{key}' returned non-finite values on (0, T={self.T:g}].")
        h = torch.finfo(value.dtype).eps ** 0.5 * self.T
        up, down = fn(t + h), fn(t - h)  # beyond T a schedule may be NaN: that side is then not used
        quotients = torch.stack([(up - down) / (2 * h), (up - value) / h, (value - down) / h]).double()
        scale = quotients[0].abs().nan_to_num(nan=0.0).max()
        gap = ((quotients - out.double()).abs() - _DIFF_RTOL * quotients.abs()).nan_to_num(nan=torch.inf).min(dim=0).values
        bad = (gap > _DIFF_RTOL * scale) & torch.isfinite(out)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            where = f"at t={float(t[i]):.6g}, where the difference quotient of '{key}' is {float(quotients[0, i]):.6g}"
            if given is None:
                raise ValueError(
                    f"{name}: argument '{key}' is not differentiable by autograd: its derivative by torch.func.jvp is "
                    f"{float(out[i]):.6g} {where}. Fix: write it in differentiable torch operations (no .detach(), "
                    f"numpy or rounding), or give its derivative as '{arg}'."
                )
            raise ValueError(
                f"{name}: argument '{arg}' expected the time derivative of '{key}', got {float(out[i]):.6g} {where}. "
                f"Fix: correct '{arg}' (a sign or a factor of the chain rule), or leave it out to have it computed by "
                "autograd."
            )

    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t)
        alpha = self._alpha(t)
        if self._zero_at_T:
            alpha = torch.where(t == self.T, torch.zeros_like(alpha), alpha)
        return alpha, self._sigma(t)

    def marginal_derivatives(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        t = as_time(t)
        d_alpha = _derivative(self._alpha, t) if self._d_alpha is None else self._d_alpha(t)
        d_sigma = _derivative(self._sigma, t) if self._d_sigma is None else self._d_sigma(t)
        return d_alpha, d_sigma

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        r""":math:`f = \dot\alpha/\alpha` (:math:`-\infty` where :math:`\alpha = 0`)."""
        alpha, _ = self.marginal(t)
        return self.marginal_derivatives(t)[0] / alpha

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        r""":math:`g = \sqrt{2\sigma(\alpha\dot\sigma - \sigma\dot\alpha)/\alpha}` (infinite where :math:`\alpha = 0`)."""
        alpha, sigma = self.marginal(t)
        d_alpha, d_sigma = self.marginal_derivatives(t)
        return torch.sqrt(2 * sigma * (alpha * d_sigma - sigma * d_alpha) / alpha)

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """Invert the (strictly decreasing) log-SNR by bisection on ``[0, T]``."""
        lam = as_time(log_snr)
        lo, hi = torch.zeros_like(lam), torch.full_like(lam, self.T)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def prior_std(self) -> float:
        return float(self.marginal(torch.tensor(self.T, dtype=torch.float64))[1])

    def truncated(self, T: float) -> AffinePath:
        """The same path on ``[0, T]``, ``T`` below this one's (e.g. to stop short of pure noise for the reverse SDE)."""
        if not check_positive(type(self).__name__ + ".truncated", "T", T) <= self.T:
            raise ValueError(f"{type(self).__name__}.truncated: argument 'T' expected a time in (t_min, {self.T:g}], got {T!r}.")
        return self._on(T)

    def _on(self, T: float) -> AffinePath:
        return AffinePath(self._alpha, self._sigma, d_alpha=self._d_alpha, d_sigma=self._d_sigma, T=T, t_min=self.t_min)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T:g}, t_min={self.t_min:g})"


def _one_minus(t: torch.Tensor) -> torch.Tensor:
    return torch.rsub(t, 1)  # 1 - t (without Tensor.__rsub__'s Python wrapper: a solver's node pays it every step)


def _minus_one(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, -1.0)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t.clone()


class RectifiedFlow(AffinePath):
    r"""Rectified flow / flow matching's linear path :math:`x_t = (1 - t)\,x_0 + t\,\varepsilon`, prior :math:`N(0, I)` at t = 1.

    Its flow velocity is :math:`u(x, t) = E[\varepsilon - x_0 \mid x_t = x]`; :math:`\lambda = \log((1-t)/t)`,
    :math:`f = -1/(1-t)`, :math:`g^2 = 2t/(1-t)`.  ``T < 1`` truncates the path before pure noise, which the
    reverse SDE needs (its diffusion is infinite at t = 1); the prior :math:`N(0, T^2 I)` is then approximate,
    as VP's is.

    Args:
        T: the noise end, in ``(0, 1]``.
        t_min: the default time at which sampling stops and likelihoods start.

    Raises:
        ValueError: unless ``0 < t_min < T <= 1``.
    """

    def __init__(self, *, T: float = 1.0, t_min: float = 1e-3) -> None:
        if not check_positive("RectifiedFlow", "T", T) <= 1.0:
            raise ValueError(f"RectifiedFlow: argument 'T' expected a time in (0, 1], got {T!r}.")
        super().__init__(_one_minus, _identity, d_alpha=_minus_one, d_sigma=torch.ones_like, T=T, t_min=t_min)

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        return torch.sigmoid(-as_time(log_snr))

    def _on(self, T: float) -> RectifiedFlow:
        return RectifiedFlow(T=T, t_min=self.t_min)
