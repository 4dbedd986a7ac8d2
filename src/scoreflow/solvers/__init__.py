"""Probability-flow ODE solvers that torchdiffeq lacks: exponential integrators and EDM's Heun sampler.

Each solver declares its global ``order`` and the ``default_schedule`` it was designed for;
``SOLVERS`` maps the ``sample_ode`` method names to them.
"""

from .adaptive import AdaptiveExponentialPC
from .base import NativeSolver, ScorePredictions
from .edm import EDMHeun
from .multistep import (
    DPMSolverPP2M,
    DPMSolverPP2MPC,
    DPMSolverPP3M,
    DPMSolverPP3MPC,
    DPMSolverPP4MPC,
)
from .singlestep import DDIM, DPMSolver2, DPMSolver3

#: Method name -> solver class, as accepted by ``sample_ode(method=...)``.
SOLVERS: dict[str, type[NativeSolver]] = {
    "ddim": DDIM,
    "dpm_solver_2": DPMSolver2,
    "dpm_solver_3": DPMSolver3,
    "dpmpp_2m": DPMSolverPP2M,
    "dpmpp_3m": DPMSolverPP3M,
    "dpmpp_2m_pc": DPMSolverPP2MPC,
    "dpmpp_3m_pc": DPMSolverPP3MPC,
    "dpmpp_4m_pc": DPMSolverPP4MPC,
    "edm_heun": EDMHeun,
}
#: Declared global order of every native solver.
SOLVER_ORDERS = {name: cls.order for name, cls in SOLVERS.items()}
#: Method name -> error-controlled native solver (takes ``rtol``/``atol`` instead of a grid).
ADAPTIVE_SOLVERS = {"dpmpp_4m_pc_adaptive": AdaptiveExponentialPC}

__all__ = [
    "SOLVERS", "SOLVER_ORDERS", "ADAPTIVE_SOLVERS", "AdaptiveExponentialPC", "NativeSolver", "ScorePredictions",
    "DDIM", "DPMSolver2", "DPMSolver3", "DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP2MPC", "DPMSolverPP3MPC", "DPMSolverPP4MPC", "EDMHeun",
]
