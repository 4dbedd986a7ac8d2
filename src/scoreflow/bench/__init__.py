"""Convergence studies of quality against NFE on problems with exact answers (``scoreflow bench``).

The package itself never imports this module; it needs the ``bench`` extra (matplotlib, tqdm).
"""

from .likelihood import run_likelihood_study
from .ode import reference_flow, run_ode_study
from .registry import (
    DEFAULT_ODE_METHODS,
    DEFAULT_SDE_METHODS,
    ODE_METHODS,
    SDE_METHODS,
    ODEMethod,
    SDEMethod,
    register_ode_method,
    register_sde_method,
)
from .sde import run_sde_study
from .study import Study, measured_order, order_agrees

__all__ = [
    "run_ode_study",
    "run_sde_study",
    "run_likelihood_study",
    "reference_flow",
    "Study",
    "measured_order",
    "order_agrees",
    "ODEMethod",
    "SDEMethod",
    "ODE_METHODS",
    "SDE_METHODS",
    "register_ode_method",
    "register_sde_method",
    "DEFAULT_ODE_METHODS",
    "DEFAULT_SDE_METHODS",
]
