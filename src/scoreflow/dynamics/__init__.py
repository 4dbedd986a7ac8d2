"""The layer that talks to torchdiffeq and torchsde."""

from .counting import CountedScore
from .probability_flow import ProbabilityFlowODE
from .reverse_sde import ReverseSDE

__all__ = ["CountedScore", "ProbabilityFlowODE", "ReverseSDE"]
