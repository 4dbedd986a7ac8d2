"""The layer that talks to torchdiffeq and torchsde."""

from .counting import CountedScore
from .divergence import draw_probes, exact_divergence, hutchinson_divergence
from .probability_flow import ProbabilityFlowODE
from .reparameterized import TIME_VARIABLES, ScaledProbabilityFlowODE
from .reverse_sde import ReverseSDE

__all__ = [
    "CountedScore", "ProbabilityFlowODE", "ScaledProbabilityFlowODE", "TIME_VARIABLES", "ReverseSDE",
    "exact_divergence", "hutchinson_divergence", "draw_probes",
]
