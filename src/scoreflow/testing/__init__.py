"""Reference problems and a testing kit for samplers, schedules, likelihoods and score models.

The assertion helpers and references need only scoreflow's run-time dependencies; the
hypothesis strategies live in :mod:`scoreflow.testing.strategies` (needs hypothesis) and the
pytest fixtures in :mod:`scoreflow.testing.fixtures` (needs pytest), imported explicitly.
"""

from .assertions import assert_flow_map, assert_log_likelihood, assert_schedule_consistent, assert_score_matches
from .consistency_models import assert_consistency_function
from .distribution import assert_samples_follow
from .order import OrderFit, assert_order, empirical_order
from .problems import LAWS, SDES, Problem, make_law, make_problem, make_sde
from .reference import reference_flow_map

__all__ = [
    "Problem", "make_problem", "make_law", "make_sde", "LAWS", "SDES",
    "assert_flow_map", "assert_samples_follow", "assert_order", "empirical_order", "OrderFit",
    "assert_log_likelihood", "assert_score_matches", "assert_consistency_function", "assert_schedule_consistent", "reference_flow_map",
]
