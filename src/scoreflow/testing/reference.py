r"""Reference solutions of the probability-flow ODE for analytic laws.

For a :class:`~scoreflow.analytic.Gaussian` the flow map is linear and known in closed form
(:meth:`Gaussian.flow_map`); for a mixture it is solved by scipy's DOP853 (8th order) at tight
tolerances on the exact score, independently of torchdiffeq and of scoreflow's samplers.
"""

from __future__ import annotations

import torch

from ..analytic import GaussianMixture
from ..sde import ForwardSDE

__all__ = ["reference_flow_map", "describe_reference"]

#: Tolerances of the DOP853 reference solve (relative and absolute, in float64).
REFERENCE_RTOL = 1e-10
REFERENCE_ATOL = 1e-10


def describe_reference(law: GaussianMixture) -> str:
    """One line saying how :func:`reference_flow_map` computes the map of ``law``."""
    return law.flow_description(REFERENCE_RTOL, REFERENCE_ATOL)


def reference_flow_map(
    law: GaussianMixture, sde: ForwardSDE, x: torch.Tensor, t_from: float, t_to: float
) -> torch.Tensor:
    r"""Transport ``x`` (shape ``(B, *D)``) along the exact probability-flow ODE of ``law`` from ``t_from`` to ``t_to``.

    :math:`\dot x = f(t)x - \tfrac12 g(t)^2 \nabla\log p_t(x)`, written as the exact flow velocity
    :math:`\dot\alpha E[x_0|x_t] + \dot\sigma E[\varepsilon|x_t]` (finite on flow paths at pure noise): ``law.flow_map``
    in float64, closed-form for Gaussians and a DOP853 solve with ``REFERENCE_RTOL``/``REFERENCE_ATOL`` for other mixtures.

    Returns:
        The transported states, shaped and typed like ``x``.

    Raises:
        RuntimeError: if the reference solve fails.
    """
    law64 = law.to(torch.float64)
    x64 = x.detach().to(torch.float64).cpu()
    out = law64.flow_map(sde, x64, t_from, t_to, rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL)
    return out.to(dtype=x.dtype, device=x.device)
