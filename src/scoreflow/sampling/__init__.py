"""Sampling front-ends."""

from .langevin import annealed_langevin, geometric_sigmas, langevin
from .ode import (
    ADAPTIVE_ODE_METHODS,
    FIXED_ODE_METHODS,
    NATIVE_ADAPTIVE_ODE_METHODS,
    NATIVE_ODE_METHODS,
    ODE_ORDERS,
    sample_ode,
)
from .pc import CORRECTORS, PREDICTORS, sample_pc
from .result import SampleResult
from .schedules import SCHEDULES, time_grid
from .sde import SDE_METHODS, SDE_STRONG_ORDERS, brownian_motion, sample_sde

__all__ = [
    "sample_ode", "sample_sde", "brownian_motion", "SampleResult", "time_grid", "SCHEDULES",
    "langevin", "annealed_langevin", "geometric_sigmas", "sample_pc", "PREDICTORS", "CORRECTORS",
    "ADAPTIVE_ODE_METHODS", "FIXED_ODE_METHODS", "NATIVE_ODE_METHODS", "NATIVE_ADAPTIVE_ODE_METHODS", "ODE_ORDERS", "SDE_METHODS", "SDE_STRONG_ORDERS",
]
