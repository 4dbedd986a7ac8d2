r"""A single Gaussian law, whose probability-flow map is known in closed form."""

from __future__ import annotations

import torch

from .._tensor import TimeLike
from ..sde import ForwardSDE
from .mixture import GaussianMixture, _as_float_tensor, _law_dtype

__all__ = ["Gaussian"]


class Gaussian(GaussianMixture):
    r"""The law :math:`N(\mu, C)` on data of shape ``event_shape`` (product D).

    Args:
        mean: ``(D,)`` mean.
        cov: ``(D, D)`` symmetric positive-definite covariance.
        event_shape: shape of one data point; defaults to ``(D,)``.

    The law's dtype is the wider floating dtype of the two (as :class:`GaussianMixture`'s).
    """

    def __init__(self, mean, cov, *, event_shape: tuple[int, ...] | None = None) -> None:
        dtype = _law_dtype("Gaussian", mean=mean, cov=cov)
        # named as given here: GaussianMixture names its means and covs
        mean = _as_float_tensor("Gaussian", "mean", mean, 1, dtype)
        cov = _as_float_tensor("Gaussian", "cov", cov, 2, dtype)
        super().__init__(torch.ones(1, dtype=dtype), mean[None], cov[None], event_shape=event_shape)

    def flow_map(
        self, sde: ForwardSDE, x: torch.Tensor, t_from: TimeLike, t_to: TimeLike,
        *, rtol: float | None = None, atol: float | None = None,
    ) -> torch.Tensor:
        r"""Exact solution of the probability-flow ODE of this law from ``t_from`` to ``t_to`` (scalars or ``(B,)``).

        For Gaussian data the flow is linear: in each eigendirection of C,
        :math:`(x_t - \alpha_t\mu)/\sqrt{\alpha_t^2\lambda + \sigma_t^2}` is constant in t, because
        :math:`v = \alpha^2\lambda + \sigma^2` obeys :math:`\dot v = 2 f v + g^2`.  ``rtol``/``atol`` are
        accepted for the mixture's signature and unused: the map is closed-form.
        """
        t_from, t_to = self._check_flow_map("Gaussian.flow_map", sde, x, t_from, t_to)
        dtype = self.means.dtype
        a0, s0 = (c.reshape(-1, 1) for c in sde.marginal(torch.as_tensor(t_from, dtype=dtype, device=self.means.device)))
        a1, s1 = (c.reshape(-1, 1) for c in sde.marginal(torch.as_tensor(t_to, dtype=dtype, device=self.means.device)))
        lam, mu, u = self.eigvals[0], self.means[0], self.eigvecs[0]
        scale = torch.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
        xf = self._flat(x).to(dtype)
        z = (xf - a0 * mu) @ u
        out = a1 * mu + (scale * z) @ u.T
        return out.to(x.dtype).reshape(x.shape)

    def flow_description(self, rtol: float | None = None, atol: float | None = None) -> str:
        """How :meth:`flow_map` is computed: in closed form."""
        return "closed-form Gaussian.flow_map (linear in each eigendirection of the covariance)"
