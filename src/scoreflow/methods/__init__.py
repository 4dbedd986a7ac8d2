"""The method registry and the stepping objects every solver takes (see :mod:`.registry`)."""

from .registry import (
    BACKENDS,
    KINDS,
    Method,
    Option,
    bool_option,
    choice_option,
    get_method,
    int_option,
    interval_option,
    list_methods,
    positive_option,
    register,
)
from .monitor import StepCallback, StepInfo, StepMonitor
from .stepping import DEFAULT_TOLERANCE, Grid, Solution, Stepping, Tolerances, resolve_stepping

__all__ = [
    "KINDS", "BACKENDS", "Method", "Option", "register", "list_methods", "get_method",
    "positive_option", "int_option", "bool_option", "choice_option", "interval_option", "Grid", "Tolerances", "Stepping", "Solution", "resolve_stepping", "DEFAULT_TOLERANCE",
    "StepMonitor", "StepInfo", "StepCallback",
]
