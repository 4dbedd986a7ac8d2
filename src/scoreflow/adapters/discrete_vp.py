r"""A variance-preserving SDE through the noise levels of a discrete DDPM schedule.

A DDPM with :math:`N` steps and cumulative products :math:`\bar\alpha_i = \prod_{j\le i}(1-\beta_j)`
(``i = 0..N-1``) becomes a continuous VP SDE on :math:`t\in[0, 1]` by placing step ``i`` at
:math:`t_i = (i + 1)/N` and interpolating :math:`\log\alpha(t)^2` through the knots
:math:`(0, 0), (t_0, \log\bar\alpha_0), \dots, (1, \log\bar\alpha_{N-1})` with a monotone cubic
(PCHIP).  Then :math:`\alpha(t_i)^2 = \bar\alpha_i` exactly, and :math:`\beta(t) = -d\log\alpha^2/dt`
is continuous and non-negative, close to :math:`-N\log(1-\beta_i) \approx N\beta_i` near
:math:`t_i` — score_sde's :math:`\beta_{min} = N\beta_1` scaling — for any schedule (cosine,
scaled-linear, trained betas).  A continuous :math:`\beta` keeps adaptive ODE solvers from
stalling at the knots (a piecewise-linear :math:`\log\alpha^2` makes the drift jump at each one).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator

from .._tensor import TimeLike, as_time
from ..sde import ForwardSDE

__all__ = ["DiscreteVPSDE"]

#: Bisection steps of t_from_log_snr inside one knot interval (2^-60 of its width).
_BISECTION_STEPS = 60


class DiscreteVPSDE(ForwardSDE):
    r"""VP SDE whose :math:`\alpha(t)^2` passes through a DDPM's :math:`\bar\alpha_i` at :math:`t_i = (i+1)/N`.

    Args:
        alphas_cumprod: :math:`\bar\alpha_0 > \dots > \bar\alpha_{N-1} > 0`, shape ``(N,)``.
        t_min: truncation time; default ``1/N``, the time of the first discrete step.

    Raises:
        TypeError: if ``alphas_cumprod`` is not a tensor or sequence of numbers.
        ValueError: unless ``alphas_cumprod`` is a 1-D, strictly decreasing sequence in ``(0, 1)``
            (a zero terminal SNR, :math:`\bar\alpha_{N-1} = 0`, has no finite log-SNR at T).
    """

    ancestral = "vp"  # alpha^2 + sigma^2 = 1: DDPM's step on the schedule's own betas

    def __init__(self, alphas_cumprod: torch.Tensor, *, t_min: float | None = None) -> None:
        try:
            ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"DiscreteVPSDE: argument 'alphas_cumprod' expected a 1-D tensor of noise levels (a diffusers scheduler's "
                f"alphas_cumprod), got {type(alphas_cumprod).__name__} {alphas_cumprod!r:.60}."
            ) from None
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError(
                f"DiscreteVPSDE: argument 'alphas_cumprod' expected a 1-D tensor of at least 2 noise levels, "
                f"got shape {tuple(ac.shape)}."
            )
        if not (bool((ac > 0).all()) and bool((ac < 1).all()) and bool((ac[1:] < ac[:-1]).all())):
            raise ValueError(
                "DiscreteVPSDE: argument 'alphas_cumprod' expected a strictly decreasing sequence in (0, 1), "
                f"got values from {float(ac.max()):.6g} down to {float(ac.min()):.6g}. A zero terminal SNR "
                "(alphas_cumprod[-1] == 0, e.g. rescale_betas_zero_snr=True) has no finite prior; clip it first."
            )
        n = ac.numel()
        self.n_steps = n
        knots = np.arange(n + 1) / n
        values = np.concatenate([[0.0], np.log(ac.numpy())])
        # Power-basis coefficients per interval, highest power first: shape (4, n).
        coefs = PchipInterpolator(knots, values).c
        self._knots = torch.from_numpy(knots)
        self._log_alpha2 = torch.from_numpy(values)
        self._coefs = torch.from_numpy(np.ascontiguousarray(coefs))
        super().__init__(T=1.0, t_min=1.0 / n if t_min is None else t_min)

    def _local(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cubic's coefficients ``(4, *t.shape)`` on each ``t``'s knot interval and the offset into it."""
        knots = self._knots.to(t.device, t.dtype)
        idx = torch.searchsorted(knots, t.detach().contiguous(), right=True).clamp(1, self.n_steps) - 1
        return self._coefs.to(t.device, t.dtype)[:, idx], t - knots[idx]

    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        (c3, c2, c1, c0), h = self._local(t)
        return 0.5 * (((c3 * h + c2) * h + c1) * h + c0)

    def beta(self, t: TimeLike) -> torch.Tensor:
        r""":math:`\beta(t) = -d\log\alpha^2/dt` (continuous, non-negative)."""
        t = as_time(t)
        (c3, c2, c1, _), h = self._local(t)
        return -((3 * c3 * h + 2 * c2) * h + c1)

    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        log_alpha = self.log_alpha(t)
        return torch.exp(log_alpha), torch.sqrt(-torch.expm1(2 * log_alpha))

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(self.beta(t).clamp_min(0))

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lambda); find the knot interval of the decreasing log alpha^2, then bisect.
        lam = as_time(log_snr)
        target = -torch.nn.functional.softplus(-2 * lam)
        values = self._log_alpha2.to(lam.device, lam.dtype)
        knots = self._knots.to(lam.device, lam.dtype)
        j = torch.searchsorted(values.flip(0).contiguous(), target.contiguous(), right=True).clamp(1, self.n_steps)
        lo, hi = knots[self.n_steps - j], knots[self.n_steps - j + 1]
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            above = 2 * self.log_alpha(mid) > target
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(n_steps={self.n_steps}, t_min={self.t_min:g})"
