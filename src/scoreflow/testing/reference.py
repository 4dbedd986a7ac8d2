r"""Reference solutions of the probability-flow ODE for analytic laws.

For a :class:`~scoreflow.analytic.Gaussian` the flow map is linear and known in closed form
(:meth:`Gaussian.flow_map`); for a mixture it is solved by scipy's DOP853 (8th order) at tight
tolerances on the exact score, independently of torchdiffeq and of scoreflow's samplers.
"""

from __future__ import annotations

import numpy as np
import scipy.integrate
import torch

from .._tensor import batch_time
from ..analytic import Gaussian, GaussianMixture
from ..sde import ForwardSDE

__all__ = ["reference_flow_map", "describe_reference"]

#: Tolerances of the DOP853 reference solve (relative and absolute, in float64).
REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-10


def describe_reference(law: GaussianMixture) -> str:
    """One line saying how :func:`reference_flow_map` computes the map of ``law``."""
    if isinstance(law, Gaussian):
        return "closed-form Gaussian.flow_map (linear in each eigendirection of the covariance)"
    return f"scipy DOP853 solve of the exact-score probability-flow ODE, rtol={REFERENCE_RTOL:g}, atol={REFERENCE_ATOL:g}"


def reference_flow_map(
    law: GaussianMixture, sde: ForwardSDE, x: torch.Tensor, t_from: float, t_to: float
) -> torch.Tensor:
    r"""Transport ``x`` (shape ``(B, *D)``) along the exact probability-flow ODE of ``law`` from ``t_from`` to ``t_to``.

    :math:`\dot x = f(t)x - \tfrac12 g(t)^2 \nabla\log p_t(x)`, written as the exact flow velocity
    :math:`\dot\alpha E[x_0|x_t] + \dot\sigma E[\varepsilon|x_t]` (finite on flow paths at pure noise). Gaussians use the closed form;
    other mixtures a float64 DOP853 solve with ``REFERENCE_RTOL``/``REFERENCE_ATOL``.

    Returns:
        The transported states, shaped and typed like ``x``.

    Raises:
        RuntimeError: if the reference solve fails.
    """
    law64 = law.to(torch.float64)
    x64 = x.detach().to(torch.float64).cpu()
    if isinstance(law, Gaussian):
        return law64.flow_map(sde, x64, t_from, t_to).to(dtype=x.dtype, device=x.device)
    velocity = law64.velocity(sde)
    shape = x64.shape

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape)
        return velocity.predict(xt, batch_time(torch.tensor(t, dtype=torch.float64), xt)).reshape(-1).numpy()

    sol = scipy.integrate.solve_ivp(
        rhs, (float(t_from), float(t_to)), x64.reshape(-1).numpy(), method="DOP853",
        rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL,
    )
    if not sol.success:
        raise RuntimeError(f"reference_flow_map: the DOP853 reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(dtype=x.dtype, device=x.device)
