r"""Adams predictor-correctors in t on the flow velocity: the probability-flow ODE :math:`dx/dt = v(x, t)` as it is.

:math:`v = \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon` is the velocity a flow-matching model predicts (for a score
model, the drift :math:`f x - \tfrac12 g^2 s`).  Replacing v by the polynomial in t through its values at the last
grid times and integrating it exactly gives :math:`x_{i+1} = x_i + \sum_j w_{ij} v_j` with Adams' weights, which
depend on the grid only: the same loop as the exponential predictor-correctors (:class:`.PredictorCorrector`), one
NFE per step, with the integrating factor 1 and t in place of the log-SNR.

Why on flow paths: along a rectified-flow trajectory the velocity is constant where the flow is straight (a point
mass, or a settled component far from the data), so Adams' polynomials in t fit it where the data prediction, as a
function of the log-SNR, still moves: near pure noise :math:`\hat x_0` is linear in :math:`e^\lambda`, not in
:math:`\lambda`, and :math:`\lambda(T) = -\infty` costs the exponential multistep methods an order
(docs/flow-matching.md).  In t, T is a node like any other and the start-up keeps the order.

Their default grid is uniform in t where that grid resolves the data's fine scales (flow paths, sub-VP, VE), and
uniform in log-SNR where it leaves them to its last steps (VP, EDM: :func:`scoreflow.schedules.t_grid_is_coarse`;
measured in docs/choosing-a-sampler.md).
"""

from __future__ import annotations

from typing import Any

from .base import Nodes, register_native
from .multistep import PredictorCorrector, adams_weights, predictor_corrector_points

__all__ = ["VelocityAdamsPC", "Velocity2MPC", "Velocity3MPC", "adams_step_weights"]


def adams_step_weights(nodes: Nodes, points: list[list[int]], width: int) -> list[list[float]]:
    r"""Adams weights :math:`\int_{t_i}^{t_{i+1}} L_j(t)\,dt` of each step i over the Lagrange polynomials through the times
    of ``points[i]`` (node indices, the step's start first), zero-padded to ``width``."""
    t, rows = nodes.t, []
    for i, at in enumerate(points):
        h = t[i + 1] - t[i]
        rows.append(adams_weights(h, [(t[p] - t[i]) / h for p in at]) + [0.0] * (width - len(at)))
    return rows


class VelocityAdamsPC(PredictorCorrector):
    r"""Adams-Bashforth predictor in t on the velocity with ``predictor_points`` points, Adams-Moulton corrector through
    the new point: one NFE per step.

    Order ``predictor_points + 1`` in every step but the first (Euler corrected by the trapezoidal rule, local error
    :math:`O(h^3)`), so the declared global order is 3.
    """

    uses = "flow_velocity"
    default_schedule = "t"
    coarse_t_schedule = "log_snr"
    order = 3
    to_data = True  # the velocity of a flow path is finite at t = 0

    def plan(self, nodes: Nodes, steps: int) -> dict[str, Any]:
        predictor, corrector = predictor_corrector_points(steps, self.predictor_points)
        return {
            "ratio": [1.0] * steps,
            "wp": adams_step_weights(nodes, predictor, self.predictor_points),
            "wc": adams_step_weights(nodes, corrector, self.predictor_points + 1),
            "terms": [len(p) for p in predictor],
        }


class Velocity2MPC(VelocityAdamsPC):
    r"""Two-point Adams-Bashforth predictor and three-point Adams-Moulton corrector in t on the velocity: order 3, one NFE per step.

    On a uniform grid a step is :math:`\tilde x = x_i + \tfrac h2(3v_i - v_{i-1})`, then
    :math:`x_{i+1} = x_i + \tfrac{h}{12}(5\tilde v_{i+1} + 8v_i - v_{i-1})`.
    """

    predictor_points = 2


class Velocity3MPC(VelocityAdamsPC):
    r"""Three-point Adams-Bashforth predictor and four-point Adams-Moulton corrector in t on the velocity: one NFE per step.

    Fourth order in every step but the first (a corrected Euler step), so the declared global order is 3; on fine
    grids it behaves like a fourth-order method until that term dominates.
    """

    predictor_points = 3


register_native("velocity_2m_pc", Velocity2MPC, "Adams predictor-corrector in t on the flow velocity (2-point predictor)")
register_native("velocity_3m_pc", Velocity3MPC, "Adams predictor-corrector in t on the flow velocity (3-point predictor)")
