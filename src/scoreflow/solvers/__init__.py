"""Probability-flow ODE solvers that torchdiffeq lacks: exponential integrators and EDM's Heun sampler.

Each solver registers its method record (declared order, score evaluations per step, default
schedule, options) with :mod:`scoreflow.methods` where it is defined.
"""

from .adaptive import AdaptiveExponentialPC
from .base import NativeSolver, ScorePredictions, register_native
from .edm import EDMHeun
from .ipndm import IPNDM
from .multistep import (
    DPMSolverPP2M,
    DPMSolverPP2MPC,
    DPMSolverPP3M,
    DPMSolverPP3MPC,
    DPMSolverPP4MPC,
)
from .per_sample import PerSampleExponentialPC
from .singlestep import DDIM, DPMSolver2, DPMSolver3

__all__ = [
    "AdaptiveExponentialPC", "PerSampleExponentialPC", "NativeSolver", "ScorePredictions", "register_native",
    "DDIM", "DPMSolver2", "DPMSolver3", "DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP2MPC", "DPMSolverPP3MPC", "DPMSolverPP4MPC", "EDMHeun", "IPNDM",
]
