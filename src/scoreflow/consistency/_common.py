"""Checks shared by the consistency sampler and losses."""

from __future__ import annotations

from .._checks import resolve_t_min
from ..sde import ForwardSDE


def boundary_time(fn: str, f: object, sde: ForwardSDE, t_min: object, name: str = "f") -> float:
    """``t_min`` (default ``f.t_min``, else ``sde.t_min``), which must agree with ``f.t_min`` when f declares one."""
    own = getattr(f, "t_min", None)
    t = resolve_t_min(fn, sde, float(own) if t_min is None and own is not None else t_min)
    if own is not None and abs(float(own) - t) > 1e-9 * t:
        raise ValueError(
            f"{fn}: argument 't_min' expected the boundary time of {name}, {name}.t_min={float(own):g}, got {t:g}. "
            f"Fix: omit t_min or build {name} with the same t_min."
        )
    return t


def default_schedule(sde: ForwardSDE) -> str:
    """EDM's Karras grid, or, for a process that ends in pure noise (infinite sigma/alpha at T), the capped log-SNR grid."""
    return "log_snr_capped" if sde.pure_noise_at_T else "karras"
