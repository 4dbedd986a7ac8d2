"""Laws with exact densities, scores and perturbed marginals under every forward SDE."""

from .gaussian import Gaussian
from .mixture import AnalyticScore, AnalyticVelocity, GaussianMixture

__all__ = ["Gaussian", "GaussianMixture", "AnalyticScore", "AnalyticVelocity"]
