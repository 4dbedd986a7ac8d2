r"""A variance-preserving SDE through the noise levels of a discrete DDPM schedule.

A DDPM with :math:`N` steps and cumulative products :math:`\bar\alpha_i = \prod_{j\le i}(1-\beta_j)`
(``i = 0..N-1``) becomes a continuous VP SDE on :math:`t\in[0, 1]` by placing step ``i`` at
:math:`t_i = (i + 1)/N` and interpolating :math:`\log\alpha(t)^2` linearly between the knots
:math:`(0, 0), (t_0, \log\bar\alpha_0), \dots, (1, \log\bar\alpha_{N-1})`.  Then
:math:`\alpha(t_i)^2 = \bar\alpha_i` exactly and :math:`\beta(t) = -d\log\alpha^2/dt` is piecewise
constant, :math:`-N\log(1-\beta_i) \approx N\beta_i` on :math:`(t_{i-1}, t_i]` — score_sde's
:math:`\beta_{min} = N\beta_1` scaling, for any schedule (cosine, scaled-linear, trained betas).
"""

from __future__ import annotations

import torch

from .._tensor import TimeLike, as_time
from ..sde import ForwardSDE

__all__ = ["DiscreteVPSDE"]


class DiscreteVPSDE(ForwardSDE):
    r"""VP SDE whose :math:`\alpha(t)^2` interpolates a DDPM's :math:`\bar\alpha_i` at :math:`t_i = (i+1)/N`.

    Args:
        alphas_cumprod: :math:`\bar\alpha_0 > \dots > \bar\alpha_{N-1} > 0`, shape ``(N,)``.
        t_min: truncation time; default ``1/N``, the time of the first discrete step.

    Raises:
        ValueError: unless ``alphas_cumprod`` is a 1-D, strictly decreasing sequence in ``(0, 1)``
            (a zero terminal SNR, :math:`\bar\alpha_{N-1} = 0`, has no finite log-SNR at T).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, *, t_min: float | None = None) -> None:
        ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
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
        self._knots = torch.arange(n + 1, dtype=torch.float64) / n
        self._log_alpha2 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(ac)])
        super().__init__(T=1.0, t_min=1.0 / n if t_min is None else t_min)

    def _segment(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Index of the knot interval holding each ``t`` and the interval's end points (in ``t``'s dtype)."""
        knots = self._knots.to(t.device, t.dtype)
        idx = torch.searchsorted(knots, t.detach().contiguous(), right=True).clamp(1, self.n_steps) - 1
        return idx, knots[idx], knots[idx + 1]

    def log_alpha(self, t: TimeLike) -> torch.Tensor:
        t = as_time(t)
        idx, lo, hi = self._segment(t)
        values = self._log_alpha2.to(t.device, t.dtype)
        w = (t - lo) / (hi - lo)
        return 0.5 * ((1 - w) * values[idx] + w * values[idx + 1])

    def beta(self, t: TimeLike) -> torch.Tensor:
        r""":math:`\beta(t) = -d\log\alpha^2/dt`, constant between knots."""
        t = as_time(t)
        idx, lo, hi = self._segment(t)
        values = self._log_alpha2.to(t.device, t.dtype)
        return (values[idx] - values[idx + 1]) / (hi - lo)

    def marginal(self, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor]:
        log_alpha = self.log_alpha(t)
        return torch.exp(log_alpha), torch.sqrt(-torch.expm1(2 * log_alpha))

    def drift_coef(self, t: TimeLike) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        return torch.sqrt(self.beta(t))

    def t_from_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lambda); invert the decreasing piecewise-linear log alpha^2.
        lam = as_time(log_snr)
        target = -torch.nn.functional.softplus(-2 * lam)
        values = self._log_alpha2.to(lam.device, lam.dtype)
        knots = self._knots.to(lam.device, lam.dtype)
        flipped = values.flip(0).contiguous()
        j = torch.searchsorted(flipped, target.contiguous(), right=True).clamp(1, self.n_steps)
        idx = self.n_steps - j
        v0, v1 = values[idx], values[idx + 1]
        return knots[idx] + (v0 - target) / (v0 - v1) * (knots[idx + 1] - knots[idx])

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(n_steps={self.n_steps}, t_min={self.t_min:g})"
