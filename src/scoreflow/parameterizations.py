r"""Turn a network's prediction into a score :math:`s(x, t) \approx \nabla_x \log p_t(x)`.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon` the common targets are related by

- noise:     :math:`s = -\hat\varepsilon / \sigma`
- data (x0): :math:`s = (\alpha\hat x_0 - x) / \sigma^2`
- velocity:  :math:`v = \alpha\varepsilon - \sigma x_0`, so
  :math:`\hat\varepsilon = (\sigma x + \alpha\hat v)/(\alpha^2+\sigma^2)`
- energy:    :math:`s = -\nabla_x E(x, t)`

The wrappers are ``torch.nn.Module`` s, so a wrapped network's parameters stay visible
(to optimizers and to ``odeint_adjoint``).  Each also converts back (``eps``/``denoise``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._tensor import TimeLike, batch_time, right_pad
from .sde import ForwardSDE, check_sde

__all__ = [
    "score_from_eps",
    "score_from_denoiser",
    "score_from_velocity",
    "score_from_energy",
    "eps_from_score",
    "denoiser_from_score",
    "velocity_from_score",
]

Net = Callable[..., torch.Tensor]


class _Parameterized(torch.nn.Module):
    """A score built from a net that predicts something else, under a forward SDE."""

    def __init__(self, net: Net, sde: ForwardSDE) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"{type(self).__name__}: argument 'net' expected a callable net(x, t), got {type(net).__name__}.")
        check_sde(type(self).__name__, sde)
        self.net, self.sde = net, sde

    def _coefs(self, x: torch.Tensor, t: TimeLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = batch_time(t, x)
        alpha, sigma = self.sde.marginal(t)
        return t, right_pad(alpha, x), right_pad(sigma, x)


class _EpsScore(_Parameterized):
    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t, _, sigma = self._coefs(x, t)
        return -self.net(x, t) / sigma


class _DenoiserScore(_Parameterized):
    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t, alpha, sigma = self._coefs(x, t)
        return (alpha * self.net(x, t) - x) / sigma**2


class _VelocityScore(_Parameterized):
    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t, alpha, sigma = self._coefs(x, t)
        eps = (sigma * x + alpha * self.net(x, t)) / (alpha**2 + sigma**2)
        return -eps / sigma


class _EnergyScore(torch.nn.Module):
    def __init__(self, energy: Net) -> None:
        super().__init__()
        if not callable(energy):
            raise TypeError(f"score_from_energy: argument 'energy' expected a callable energy(x, t), got {type(energy).__name__}.")
        self.energy = energy

    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t = batch_time(t, x)
        # torch.func.grad is a function transform: it differentiates even under torch.no_grad()
        # (sampling code), composes with vmap/jvp/vjp (exact traces), and its output stays
        # differentiable in the energy's parameters (losses need second derivatives).
        return -torch.func.grad(lambda y: self.energy(y, t).sum())(x)


def score_from_eps(net: Net, sde: ForwardSDE) -> torch.nn.Module:
    r"""Score of a noise-prediction net :math:`\hat\varepsilon(x, t)`: :math:`s = -\hat\varepsilon/\sigma(t)`."""
    return _EpsScore(net, sde)


def score_from_denoiser(net: Net, sde: ForwardSDE) -> torch.nn.Module:
    r"""Score of a data-prediction (x0) net :math:`\hat x_0(x, t)`: :math:`s = (\alpha\hat x_0 - x)/\sigma^2`."""
    return _DenoiserScore(net, sde)


def score_from_velocity(net: Net, sde: ForwardSDE) -> torch.nn.Module:
    r"""Score of a v-prediction net, :math:`v = \alpha\varepsilon - \sigma x_0`:
    :math:`s = -(\sigma x + \alpha\hat v) / ((\alpha^2+\sigma^2)\sigma)`."""
    return _VelocityScore(net, sde)


def score_from_energy(energy: Net) -> torch.nn.Module:
    r"""Score of an energy model :math:`E(x, t)` returning shape ``(B,)``: :math:`s = -\nabla_x E`.

    Usable inside ``torch.no_grad()`` sampling code and inside the losses, which
    differentiate it again.
    """
    return _EnergyScore(energy)


def eps_from_score(score: Net, sde: ForwardSDE) -> Net:
    r"""Noise prediction :math:`\hat\varepsilon = -\sigma s` of a score."""

    def eps(x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t = batch_time(t, x)
        return -right_pad(sde.marginal(t)[1], x) * score(x, t)

    return eps


def denoiser_from_score(score: Net, sde: ForwardSDE) -> Net:
    r"""Data prediction (Tweedie) :math:`\hat x_0 = (x + \sigma^2 s)/\alpha` of a score."""

    def denoise(x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t = batch_time(t, x)
        alpha, sigma = sde.marginal(t)
        return (x + right_pad(sigma**2, x) * score(x, t)) / right_pad(alpha, x)

    return denoise


def velocity_from_score(score: Net, sde: ForwardSDE) -> Net:
    r"""Velocity :math:`\hat v = \alpha\hat\varepsilon - \sigma\hat x_0` of a score."""

    def velocity(x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t = batch_time(t, x)
        alpha, sigma = sde.marginal(t)
        a, s = right_pad(alpha, x), right_pad(sigma, x)
        sc = score(x, t)
        eps = -s * sc
        x0 = (x + s**2 * sc) / a
        return a * eps - s * x0

    return velocity
