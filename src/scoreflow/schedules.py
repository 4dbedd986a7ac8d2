r"""Time grids for fixed-step solvers: uniform in t, in log-SNR (plain or with the noise level capped), or Karras et al.'s.

Each grid decreases from :math:`T` to :math:`t_{min}` and its first and last entries are exactly
``T`` and ``t_min`` (the last step lands on ``t_min``; nothing is evaluated beyond it).  Grids in
log-SNR :math:`\lambda = \log(\alpha/\sigma)` and in the scaled noise level
:math:`\bar\sigma = \sigma/\alpha = e^{-\lambda}` are mapped back to t with ``sde.t_from_log_snr``.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_choice, check_int, check_positive
from .sde import ForwardSDE

__all__ = ["SCHEDULES", "time_grid"]

#: Step schedules: uniform in t, uniform in log-SNR, Karras et al. (2022) with exponent rho, uniform in the
#: log of the capped noise level.
SCHEDULES = ("t", "log_snr", "karras", "log_snr_capped")


def time_grid(
    sde: ForwardSDE,
    steps: int,
    schedule: str = "t",
    *,
    t_min: float | None = None,
    rho: float = 7.0,
    sigma_cap: float = 10.0,
    sigma_floor: float = 0.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The ``steps + 1`` times :math:`T = t_0 > t_1 > \dots > t_N = t_{min}` of a step schedule.

    - ``"t"``: :math:`t_i = T + \tfrac iN (t_{min} - T)`.
    - ``"log_snr"``: :math:`\lambda(t_i)` uniform between :math:`\lambda(T)` and :math:`\lambda(t_{min})`.
    - ``"karras"``: :math:`\bar\sigma_i^{1/\rho}` uniform between :math:`\bar\sigma_{max}^{1/\rho}` and
      :math:`\bar\sigma_{min}^{1/\rho}`, with :math:`\bar\sigma = \sigma/\alpha` (EDM's schedule, rho = 7).
    - ``"log_snr_capped"``: uniform in :math:`\log\big(\bar\sigma / (1 + \bar\sigma/\bar\sigma_{cap})\big)
      = -\log(e^{\lambda} + 1/\bar\sigma_{cap})`: log-SNR steps while :math:`\bar\sigma \ll \bar\sigma_{cap}`,
      geometrically longer ones above it, where the data prediction of data of scale
      :math:`\ll \bar\sigma_{cap}` hardly changes.  The default cap 10 suits data scaled to unit variance.

    Args:
        sde: the forward SDE (gives :math:`\alpha, \sigma` and the inverse of the log-SNR).
        steps: number of steps N >= 1.
        schedule: one of ``SCHEDULES``.
        t_min: final time (default ``sde.t_min``).
        rho: exponent of the Karras schedule (ignored by the others).
        sigma_cap: the noise level :math:`\bar\sigma_{cap} = \sigma/\alpha` of ``"log_snr_capped"``, about ten
            times the data's standard deviation (ignored by the others).
        sigma_floor: the lower noise level :math:`\bar\sigma_f \ge 0` of ``"log_snr_capped"`` (default 0: none).
        dtype, device: of the returned tensor (computed in float64, then cast).

    Returns:
        A decreasing tensor of shape ``(steps + 1,)``.

    Raises:
        ValueError: for an unknown schedule, ``steps < 1``, ``rho <= 0``, ``sigma_cap <= 0``, ``sigma_floor < 0`` or ``t_min``
            outside ``(0, T)``.
    """
    fn = "time_grid"
    check_choice(fn, "schedule", schedule, SCHEDULES)
    check_int(fn, "steps", steps)
    check_positive(fn, "rho", rho)
    check_positive(fn, "sigma_cap", sigma_cap)
    check_positive(fn, "sigma_floor", sigma_floor, allow_zero=True)
    t_min = sde.t_min if t_min is None else check_positive(fn, "t_min", t_min)
    if not t_min < sde.T:
        raise ValueError(f"{fn}: argument 't_min' expected a time in (0, T={sde.T:g}), got {t_min!r}.")
    ends = torch.tensor([sde.T, t_min], dtype=torch.float64)
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if schedule == "t":
        ts = ends[0] + ramp * (ends[1] - ends[0])
    else:
        lam_max, lam_min = sde.log_snr(ends).unbind()
        if schedule == "log_snr":
            lam = lam_max + ramp * (lam_min - lam_max)
        elif schedule == "log_snr_capped" and sigma_floor > 0:
            # u = log((s + floor) / (1 + s/cap)) with s = e^-lambda is uniform; s = (e^u - floor) / (1 - e^u / cap).
            s_ends = torch.exp(-torch.stack([lam_max, lam_min]))
            u_ends = torch.log((s_ends + sigma_floor) / (1 + s_ends / sigma_cap))
            e = torch.exp(u_ends[0] + ramp * (u_ends[1] - u_ends[0]))
            lam = -torch.log((e - sigma_floor) / (1 - e / sigma_cap))
        elif schedule == "log_snr_capped":
            # v = log(e^lambda + kappa), kappa = 1/sigma_cap, is uniform; invert stably as v + log(1 - kappa e^-v).
            log_kappa = torch.tensor(-math.log(sigma_cap), dtype=torch.float64)
            v_max, v_min = torch.logaddexp(lam_max, log_kappa), torch.logaddexp(lam_min, log_kappa)
            v = v_max + ramp * (v_min - v_max)
            lam = v + torch.log(-torch.expm1(log_kappa - v))
        else:
            # sigma-bar = exp(-lambda); interpolate sigma-bar^(1/rho) linearly.
            lo, hi = torch.exp(-lam_max / rho), torch.exp(-lam_min / rho)
            lam = -rho * torch.log(lo + ramp * (hi - lo))
        ts = sde.t_from_log_snr(lam)
    ts[0], ts[-1] = ends[0], ends[1]
    return ts.to(dtype=dtype, device=device)
