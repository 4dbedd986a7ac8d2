r"""k-diffusion denoisers as scoreflow scores under the EDM process :math:`\sigma(t) = t`.

A k-diffusion model is a denoiser :math:`D(x, \sigma) \approx E[x_0 \mid x_0 + \sigma\varepsilon = x]`
called as ``model(x, sigma, **extra_args)``.  Under :class:`~scoreflow.EDMSDE` time is the noise
level and :math:`\alpha = 1`, so the score is :math:`s(x, \sigma) = (D(x, \sigma) - x)/\sigma^2`.
k-diffusion itself is not imported: any callable with that signature works.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_autocast
from ..parameterizations import score_from_denoiser
from ..sde import EDMSDE
from ._network import NetworkCall

__all__ = ["from_kdiffusion"]


def _prediction(raw: Any, x: torch.Tensor) -> torch.Tensor:
    return raw


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def from_kdiffusion(
    model: Any,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    autocast: torch.dtype | None = None,
    **condition: Any,
) -> tuple[torch.nn.Module, EDMSDE]:
    r"""A scoreflow score :math:`(D(x,\sigma) - x)/\sigma^2` and the :class:`~scoreflow.EDMSDE` it lives under.

    Args:
        model: the denoiser ``model(x, sigma, **condition)`` (e.g. a ``k_diffusion.layers.Denoiser``).
        sigma_min, sigma_max: the noise range; sampling runs from ``sigma_max`` down to ``sigma_min``.
        autocast: run the model alone under ``torch.autocast`` in this dtype; the solver keeps its own.
        **condition: passed to every call (k-diffusion's ``extra_args``, e.g. ``cond=emb``).

    Returns:
        ``(score, sde)`` with ``score(x, t)`` an ``nn.Module`` and ``sde = EDMSDE(sigma_min, sigma_max)``.

    Raises:
        TypeError: if ``model`` is not callable.
        ValueError: unless ``0 < sigma_min < sigma_max``, or for an invalid ``autocast``.
    """
    fn = "from_kdiffusion"
    if not callable(model):
        raise TypeError(f"{fn}: argument 'model' expected a denoiser model(x, sigma), got {type(model).__name__}.")
    check_autocast(fn, autocast)
    sde = EDMSDE(sigma_min=sigma_min, sigma_max=sigma_max)
    net = NetworkCall(
        model, time_input=_identity, condition=condition, output=_prediction, autocast=autocast, fn=fn,
        call="model(x, sigma, **condition)",
    )
    return score_from_denoiser(net, sde), sde
