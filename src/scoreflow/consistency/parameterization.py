r"""A consistency model :math:`f(x, t) = c_{skip}(t)\,x + c_{out}(t)\,F(x, t)` with the boundary condition built in.

EDM's parameterization (Song et al. 2023, Karras et al. 2022) is written in the scaled variables of any
forward SDE, :math:`y = x/\alpha(t)` and :math:`\bar\sigma = \sigma(t)/\alpha(t)`, in which
:math:`y = x_0 + \bar\sigma\varepsilon` as in EDM.  With :math:`\bar\sigma_{min} = \bar\sigma(t_{min})`,
data scale :math:`\sigma_d` and :math:`a(t) = \alpha(t_{min})/\alpha(t)`,

.. math::
    c_{skip}(t) = a(t)\,\frac{\sigma_d^2}{(\bar\sigma - \bar\sigma_{min})^2 + \sigma_d^2},\qquad
    c_{out}(t) = \alpha(t_{min})\,\frac{\sigma_d\,(\bar\sigma - \bar\sigma_{min})}{\sqrt{\bar\sigma^2 + \sigma_d^2}},

i.e. :math:`f(x, t) = \alpha(t_{min})\,[c^{EDM}_{skip}(\bar\sigma)\,y + c^{EDM}_{out}(\bar\sigma)\,F]`: EDM's formulas in
:math:`(y, \bar\sigma)`, mapped back to :math:`x` at :math:`t_{min}`.  For :class:`scoreflow.EDMSDE` (:math:`\alpha = 1`,
:math:`\bar\sigma = t`) they are exactly Song et al.'s.  They are computed through
:math:`\gamma = \sigma\,\alpha(t_{min}) - \alpha\,\sigma(t_{min}) = \alpha\,\alpha(t_{min})(\bar\sigma - \bar\sigma_{min})` as
:math:`c_{skip} = \alpha(t_{min})^3\alpha\sigma_d^2/(\gamma^2 + \alpha^2\alpha(t_{min})^2\sigma_d^2)` and
:math:`c_{out} = \sigma_d\gamma/\sqrt{\sigma^2 + \alpha^2\sigma_d^2}`, finite where :math:`\alpha = 0` (a flow path at pure
noise: :math:`c_{skip} = 0`, :math:`c_{out} = \sigma_d\,\alpha(t_{min})`).  At :math:`t = t_{min}` they are set to 1 and 0, so
:math:`f(x, t_{min}) = x` exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import call_checked, check_callable, check_like, check_positive, resolve_t_min
from .._tensor import TimeLike, batch_time, right_pad
from ..sde import ForwardSDE, check_sde

__all__ = ["ConsistencyModel", "parameterize"]

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ConsistencyModel(torch.nn.Module):
    r"""The consistency function :math:`f(x, t) = c_{skip}(t)\,x + c_{out}(t)\,F(x, t)` of a network F.

    Build it with :func:`parameterize`.  The network's parameters are this module's, so an optimizer,
    ``copy.deepcopy`` (an EMA target) and ``state_dict`` see them.

    Attributes:
        net: the network ``F(x, t)``, called with the unscaled state and ``(B,)`` times.
        sde: the forward SDE.
        sigma_data: the data scale :math:`\sigma_d`.
        t_min: the boundary time, where :math:`f(x, t_{min}) = x`.
    """

    def __init__(self, net: Net, sde: ForwardSDE, sigma_data: float, t_min: float) -> None:
        super().__init__()
        self.net, self.sde, self.sigma_data, self.t_min = net, sde, sigma_data, t_min

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(c_skip(t), c_out(t))`` at times ``t`` (any shape), in ``t``'s dtype."""
        alpha, sigma = self.sde.marginal(t)
        alpha_min, sigma_min = self.sde.marginal(torch.full_like(t, self.t_min))
        sd = self.sigma_data
        gap = sigma * alpha_min - alpha * sigma_min
        c_skip = alpha_min**3 * alpha * sd**2 / (gap**2 + (alpha * alpha_min * sd) ** 2)
        c_out = sd * gap / torch.sqrt(sigma**2 + (alpha * sd) ** 2)
        boundary = t == self.t_min
        return torch.where(boundary, 1.0, c_skip), torch.where(boundary, 0.0, c_out)

    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        if not torch.is_tensor(x) or not x.is_floating_point():  # (dtype only: no host read on this hot path)
            raise TypeError(
                f"ConsistencyModel: argument 'x' expected a floating-point tensor of shape (B, *D), got "
                f"{f'dtype {x.dtype}' if torch.is_tensor(x) else type(x).__name__}. Fix: x.float() or x.double()."
            )
        t = batch_time(t, x)
        c_skip, c_out = self.coefficients(t)
        out = check_like(
            "ConsistencyModel", "net", call_checked("ConsistencyModel", "net", "net(x, t)", self.net, x, t), x,
            what="the network",
        )
        return right_pad(c_skip, x) * x + right_pad(c_out, x) * out

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data:g}, t_min={self.t_min:g}"


def parameterize(net: Net, sde: ForwardSDE, sigma_data: float = 0.5, *, t_min: float | None = None) -> ConsistencyModel:
    r"""Turn a network ``net(x, t)`` into a consistency model with :math:`f(x, t_{min}) = x` built in.

    :math:`f(x, t) = c_{skip}(t)\,x + c_{out}(t)\,\mathrm{net}(x, t)` with EDM's coefficients written for any
    forward SDE (see :mod:`scoreflow.consistency.parameterization` for the formulas); under
    :class:`scoreflow.EDMSDE` they are Song et al.'s (2023).  The network sees ``x`` and ``t`` as they are: scale
    its input itself (e.g. by :math:`1/\sqrt{\alpha^2\sigma_d^2 + \sigma^2}`) if it needs to.

    Args:
        net: the network ``net(x, t) -> tensor shaped like x``, with ``x`` of shape ``(B, *D)`` and ``t`` of shape ``(B,)``.
        sde: the forward SDE whose probability-flow trajectories ``f`` follows.
        sigma_data: the data's standard deviation :math:`\sigma_d` (per coordinate), > 0.
        t_min: the boundary time (default ``sde.t_min``).

    Returns:
        A :class:`ConsistencyModel` (a ``torch.nn.Module``), callable as ``f(x, t)``.

    Raises:
        TypeError: if ``net`` is not callable or ``sde`` is not a forward SDE.
        ValueError: if ``sigma_data <= 0`` or ``t_min`` is outside ``(0, T)``.
    """
    fn = "parameterize"
    check_callable(fn, "net", net, "net(x, t)")
    check_sde(fn, sde)
    sigma_data = check_positive(fn, "sigma_data", sigma_data)
    return ConsistencyModel(net, sde, sigma_data, resolve_t_min(fn, sde, t_min))
