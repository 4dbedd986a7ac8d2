"""Reference problems and helpers for testing samplers, schedules, likelihoods and score models."""

from .problems import LAWS, SDES, Problem, make_law, make_problem, make_sde

__all__ = ["Problem", "make_problem", "make_law", "make_sde", "LAWS", "SDES"]
