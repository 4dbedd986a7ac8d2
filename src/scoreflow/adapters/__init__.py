"""Adapters from other libraries' models to scoreflow scores (their libraries are never imported here)."""

from .diffusers import PREDICTION_TYPES, SCHEDULES, from_diffusers, sde_from_scheduler
from .discrete_vp import DiscreteVPSDE
from .guidance import guided_score
from .kdiffusion import from_kdiffusion

__all__ = [
    "from_diffusers", "sde_from_scheduler", "DiscreteVPSDE", "PREDICTION_TYPES", "SCHEDULES",
    "from_kdiffusion", "guided_score",
]
