"""Sampling front-ends."""

from .ode import ADAPTIVE_ODE_METHODS, FIXED_ODE_METHODS, NATIVE_ODE_METHODS, ODE_ORDERS, sample_ode
from .result import SampleResult
from .schedules import SCHEDULES, time_grid
from .sde import SDE_METHODS, SDE_STRONG_ORDERS, brownian_motion, sample_sde

__all__ = [
    "sample_ode", "sample_sde", "brownian_motion", "SampleResult", "time_grid", "SCHEDULES",
    "ADAPTIVE_ODE_METHODS", "FIXED_ODE_METHODS", "NATIVE_ODE_METHODS", "ODE_ORDERS", "SDE_METHODS", "SDE_STRONG_ORDERS",
]
