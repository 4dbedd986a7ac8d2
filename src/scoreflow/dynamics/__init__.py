"""The layer that talks to torchdiffeq and torchsde: vector fields, score counting, divergences, Brownian paths."""

from .counting import CountedScore, FiniteWatch, ScoreFn
from .divergence import draw_probes, exact_divergence, hutchinson_divergence
from .odeint import TorchdiffeqSolver
from .probability_flow import ProbabilityFlowODE
from .reparameterized import TIME_VARIABLES, ScaledProbabilityFlowODE
from .reverse_sde import ReverseSDE
from .sdeint import BrownianPath, TorchsdeSolver, brownian_motion

__all__ = [
    "CountedScore", "FiniteWatch", "ScoreFn", "ProbabilityFlowODE", "ScaledProbabilityFlowODE", "TIME_VARIABLES", "ReverseSDE",
    "exact_divergence", "hutchinson_divergence", "draw_probes",
    "TorchdiffeqSolver", "TorchsdeSolver", "BrownianPath", "brownian_motion",
]
