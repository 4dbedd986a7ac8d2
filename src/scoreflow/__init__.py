"""scoreflow: numerical solvers for score-based generative models."""

# Importing the solver layers registers their methods (scoreflow.methods); importing scoreflow registers them all.
from . import analytic, dynamics, losses, solvers
from .errors import NonFiniteError
from .parameterizations import (
    denoiser_from_score,
    eps_from_score,
    flow_velocity_from_score,
    score_from_denoiser,
    score_from_energy,
    score_from_eps,
    score_from_flow_velocity,
    score_from_velocity,
    velocity_from_score,
)
from .dynamics import CountedScore, ProbabilityFlowODE, ReverseSDE, exact_divergence, hutchinson_divergence
from .bits import bits_per_dim, dequantize
from .likelihood import LikelihoodResult, log_likelihood
from .methods import Method, get_method, list_methods
from .sampling import BrownianPath, FittedSchedule, SampleResult, fit_schedule, brownian_motion, sample_ode, sample_sde, time_grid
from .sampling import annealed_langevin, geometric_sigmas, langevin, sample_pc
from .sde import EDMSDE, VESDE, VPSDE, ForwardSDE, SubVPSDE
from .paths import AffinePath, RectifiedFlow
from . import adapters, distributed
from .adapters import guided_score
from .conditional import classifier_guided_score, dps_score, inpaint, x0_correction

__version__ = "0.1.0"

__all__ = [
    "analytic", "adapters", "distributed", "dynamics", "solvers", "guided_score",
    "losses",
    "NonFiniteError",
    "ForwardSDE", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "AffinePath", "RectifiedFlow",
    "score_from_eps", "score_from_denoiser", "score_from_velocity", "score_from_flow_velocity", "score_from_energy",
    "eps_from_score", "denoiser_from_score", "velocity_from_score", "flow_velocity_from_score",
    "CountedScore", "ProbabilityFlowODE", "ReverseSDE",
    "exact_divergence", "hutchinson_divergence",
    "list_methods", "get_method", "Method",
    "sample_ode", "sample_sde", "fit_schedule", "FittedSchedule", "brownian_motion", "BrownianPath", "SampleResult", "time_grid",
    "langevin", "annealed_langevin", "geometric_sigmas", "sample_pc",
    "log_likelihood", "LikelihoodResult", "bits_per_dim", "dequantize",
    "inpaint", "classifier_guided_score", "dps_score", "x0_correction",
]
