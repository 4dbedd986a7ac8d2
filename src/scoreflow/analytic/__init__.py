"""Laws with exact densities, scores and perturbed marginals under every forward SDE, and their exact posteriors."""

from .conditioning import condition, condition_linear, inpainting_score, observation_log_likelihood
from .gaussian import Gaussian
from .mixture import AnalyticScore, AnalyticVelocity, GaussianMixture

__all__ = [
    "Gaussian", "GaussianMixture", "AnalyticScore", "AnalyticVelocity",
    "condition", "condition_linear", "inpainting_score", "observation_log_likelihood",
]
