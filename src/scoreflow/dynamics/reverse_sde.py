r"""The reverse-time SDE as a torchsde SDE, integrated in :math:`s = T - t`.

Anderson's reverse of :math:`dx = f x\,dt + g\,dW` is
:math:`dx = [f x - g^2 s(x,t)]\,dt + g\,d\bar W` run backwards in t.  torchsde needs
increasing time and a 2-D state, so this object integrates in :math:`s = T - t`:

.. math:: dx = \big[g(t)^2\, s(x, t) - f(t)\,x\big]\,ds + g(t)\,dW_s,\qquad t = T - s,

on the flattened state ``(B, prod(D))``.  The noise is additive (g depends on t only),
so Itô and Stratonovich coincide and the same object may declare either ``sde_type``;
Euler-Maruyama then has strong order 1.
"""

from __future__ import annotations

import torch

from .._tensor import right_pad
from ..sde import ForwardSDE, check_sde
from .counting import CountedScore, ScoreFn

__all__ = ["ReverseSDE"]


class ReverseSDE(torch.nn.Module):
    """torchsde SDE object (``f``, ``g``) for the reverse-time SDE in ``s = T - t``.

    Args:
        score: the score model ``score(x, t)``.
        sde: the forward SDE.
        data_shape: the shape ``D`` of one sample; states are ``(B, prod(D))``.
        sde_type: ``"ito"`` (default) or ``"stratonovich"`` (identical here; torchsde's
            heun, midpoint and reversible_heun require the latter).

    Attributes:
        nfe: number of score evaluations so far.
    """

    noise_type = "diagonal"

    def __init__(
        self, score: ScoreFn, sde: ForwardSDE, data_shape: tuple[int, ...], *, sde_type: str = "ito"
    ) -> None:
        super().__init__()
        self.score = score if isinstance(score, CountedScore) else CountedScore(score, caller="ReverseSDE")
        self.sde = check_sde("ReverseSDE", sde)
        self.data_shape = tuple(data_shape)
        self.sde_type = sde_type
        self._contract: torch.Tensor | None = None

    @property
    def nfe(self) -> int:
        return self.score.nfe

    def forward_time(self, s: torch.Tensor) -> torch.Tensor:
        """Map solver time ``s`` to the SDE's time ``t = T - s``."""
        return self.sde.T - s

    def expect_contract_check(self, y0: torch.Tensor) -> None:
        """The next drift evaluation at ``y0`` is ``torchsde.sdeint``'s contract check, which reads only the shape
        of the drift: it gets a placeholder and costs no score evaluation (one ``sdeint`` call per grid step then
        costs exactly the method's evaluations)."""
        self._contract = y0

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._contract is not None:
            y0, self._contract = self._contract, None
            if y is y0:
                return torch.zeros_like(y)
        t = self.forward_time(s).to(y.dtype)
        x = y.reshape((y.shape[0], *self.data_shape))
        # g(t)^2 s(x, t) - f(t) x, with the coefficients at the (scalar) time
        drift = right_pad(self.sde.drift_coef(t), x) * x
        return torch.addcmul(-drift, self.score(x, t), right_pad(self.sde.diffusion(t) ** 2, x)).reshape(y.shape)

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.forward_time(s).to(y.dtype)
        return self.sde.diffusion(t).expand_as(y)
