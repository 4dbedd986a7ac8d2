"""Sampling front-ends."""

from ..dynamics.sdeint import BrownianPath, brownian_motion
from ..schedules import SCHEDULES, time_grid
from .fit import FittedSchedule, fit_schedule
from .langevin import annealed_langevin, geometric_sigmas, langevin
from .ode import sample_ode
from .pc import sample_pc
from .result import SampleResult
from .sde import sample_sde

__all__ = [
    "sample_ode", "sample_sde", "fit_schedule", "FittedSchedule", "brownian_motion", "BrownianPath", "SampleResult", "time_grid", "SCHEDULES",
    "langevin", "annealed_langevin", "geometric_sigmas", "sample_pc",
]
