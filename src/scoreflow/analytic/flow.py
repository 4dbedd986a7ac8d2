r"""Exact probability-flow maps of analytic laws and the consistency function they define.

The probability-flow ODE :math:`\dot x = f(t)x - \tfrac12 g(t)^2\nabla\log p_t(x)
= \dot\alpha E[x_0|x_t] + \dot\sigma E[\varepsilon|x_t]` carries :math:`p_s` to :math:`p_t` (the second form is finite
on flow paths at pure noise); its flow map :math:`\Phi_{s\to t}` is the closed form of
:meth:`Gaussian.flow_map <scoreflow.analytic.Gaussian.flow_map>` for a Gaussian and, for a mixture, a
float64 DOP853 solve (scipy, 8th order) at tight tolerances on the exact score: not a closed form,
but a solve whose error is set by its tolerances and independent of scoreflow's solvers.

The consistency function of a law is :math:`f^*(x, t) = \Phi_{t\to t_{min}}(x)`: every point of a
trajectory is sent to the trajectory's end, and :math:`f^*(x, t_{min}) = x`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.integrate
import torch

from .._tensor import TimeLike, batch_time, right_pad
from ..sde import ForwardSDE

__all__ = ["solve_flow_map", "ExactConsistencyFunction", "FLOW_RTOL", "FLOW_ATOL"]

#: Default tolerances of the DOP853 solve of a mixture's flow map (relative and absolute, float64).
FLOW_RTOL = 1e-10
FLOW_ATOL = 1e-10

FlowMap = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def solve_flow_map(
    velocity: Velocity, x: torch.Tensor, t_from: TimeLike, t_to: TimeLike,
    *, rtol: float = FLOW_RTOL, atol: float = FLOW_ATOL,
) -> torch.Tensor:
    r"""Transport ``x`` (shape ``(B, *D)``) along :math:`\dot x = v(x, t)` from ``t_from`` to ``t_to``.

    ``velocity(x, t)`` is the probability-flow velocity with ``t`` of shape ``(B,)`` (an analytic law's
    ``law.velocity(sde).predict``).

    ``t_from`` and ``t_to`` may differ per row (``(B,)`` tensors): row i runs on the clock
    :math:`t_i(u) = t_{from,i} + u\,(t_{to,i} - t_{from,i})`, :math:`u \in [0, 1]`, so one DOP853 solve of
    :math:`dx/du = (t_{to,i} - t_{from,i})\,v(x, t_i(u))` in float64 on the CPU carries every row.

    Returns:
        The transported states, shaped, typed and placed like ``x``.

    Raises:
        RuntimeError: if the solve fails.
    """
    x64 = x.detach().to(device="cpu", dtype=torch.float64)
    shape = x64.shape
    start = batch_time(torch.as_tensor(t_from, dtype=torch.float64).cpu(), x64)
    span = batch_time(torch.as_tensor(t_to, dtype=torch.float64).cpu(), x64) - start

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape)
        t = start + u * span
        with torch.no_grad():
            v = velocity(xt, t)
        return (right_pad(span, xt) * v).reshape(-1).numpy()

    sol = scipy.integrate.solve_ivp(rhs, (0.0, 1.0), x64.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_flow_map: the DOP853 solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(dtype=x.dtype, device=x.device)


class ExactConsistencyFunction(torch.nn.Module):
    r"""The exact consistency function :math:`f^*(x, t) = \Phi_{t\to t_{min}}(x)` of an analytic law, ``f(x, t)``.

    Built by :meth:`GaussianMixture.consistency_function <scoreflow.analytic.GaussianMixture.consistency_function>`;
    ``t`` is a scalar or a ``(B,)`` tensor of times in ``[t_min, T]``; rows at ``t_min`` are returned as they are.

    Attributes:
        sde: the forward SDE.
        t_min: the time every point is carried to.
        description: how the flow map is computed (closed form or a solve, with its tolerances).
    """

    def __init__(self, flow_map: FlowMap, sde: ForwardSDE, t_min: float, description: str) -> None:
        super().__init__()
        self.flow_map, self.sde, self.t_min, self.description = flow_map, sde, t_min, description

    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t = batch_time(t, x)
        # A reference, not a solver step: checking its times on the host costs nothing that matters.
        lo, hi = float(t.min()), float(t.max())
        if lo < self.t_min * (1 - 1e-6) or hi > self.sde.T * (1 + 1e-6):
            raise ValueError(
                f"ExactConsistencyFunction: argument 't' expected times in [t_min={self.t_min:g}, T={self.sde.T:g}], "
                f"got times in [{lo:g}, {hi:g}]."
            )
        # Rows at t_min are their own end, exactly (the closed form would round them).
        at_end = right_pad(t == self.t_min, x)
        return torch.where(at_end, x, self.flow_map(x, t, self.t_min))

    def extra_repr(self) -> str:
        return f"t_min={self.t_min:g}, {self.description}"
