"""Solvers that torchdiffeq and torchsde lack: exponential integrators of the probability-flow ODE and of the
reverse SDE, EDM's deterministic and stochastic samplers, and exponential predictor-correctors for likelihoods.

Each solver registers its method record (declared order, score evaluations per step, default
schedule, options) with :mod:`scoreflow.methods` where it is defined.
"""

from .adaptive import AdaptiveExponentialPC
from .ancestral import AncestralDDIM, DPMSolverPPSDE
from .base import NativeSolver, ScorePredictions, register_native
from .deis import DEIS
from .edm import EDMHeun
from .edm_stochastic import EDMStochastic
from .extended_sde import ERSDESolver, SASolver
from .ipndm import IPNDM
from .likelihood import LikelihoodPC
from .likelihood_adaptive import AdaptiveLikelihoodPC
from .multistep import (
    DPMSolverPP2M,
    DPMSolverPP2MPC,
    DPMSolverPP3M,
    DPMSolverPP3MPC,
    DPMSolverPP4MPC,
)
from .multistep_sde import DPMSolverPP2MSDE, DPMSolverPP2MSDEPC, DPMSolverPP3MSDE, DPMSolverPP3MSDEPC
from .per_sample import PerSampleExponentialPC
from .singlestep import DDIM, DPMSolver2, DPMSolver3
from .stochastic import StochasticSolver, register_stochastic
from .unipc import UniPC
from .velocity import Velocity2MPC, Velocity3MPC

__all__ = [
    "AdaptiveExponentialPC", "PerSampleExponentialPC", "NativeSolver", "ScorePredictions", "register_native",
    "DDIM", "DEIS", "DPMSolver2", "DPMSolver3", "DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP2MPC", "DPMSolverPP3MPC", "DPMSolverPP4MPC", "EDMHeun", "IPNDM",
    "StochasticSolver", "register_stochastic", "LikelihoodPC", "AdaptiveLikelihoodPC", "AncestralDDIM", "DPMSolverPPSDE",
    "DPMSolverPP2MSDE", "DPMSolverPP3MSDE", "DPMSolverPP2MSDEPC", "DPMSolverPP3MSDEPC", "EDMStochastic", "ERSDESolver", "SASolver", "UniPC", "Velocity2MPC", "Velocity3MPC",
]
