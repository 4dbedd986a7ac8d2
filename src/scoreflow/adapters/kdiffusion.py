r"""k-diffusion denoisers as scoreflow scores under the EDM process :math:`\sigma(t) = t`.

A k-diffusion model is a denoiser :math:`D(x, \sigma) \approx E[x_0 \mid x_0 + \sigma\varepsilon = x]`
called as ``model(x, sigma, **extra_args)``.  Under :class:`~scoreflow.EDMSDE` time is the noise
level and :math:`\alpha = 1`, so the score is :math:`s(x, \sigma) = (D(x, \sigma) - x)/\sigma^2`.
k-diffusion itself is not imported: any callable with that signature works.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._checks import check_autocast, check_positive
from ..parameterizations import score_from_denoiser
from ..sde import EDMSDE
from ._network import NetworkCall

__all__ = ["from_kdiffusion"]


def _prediction(raw: Any, x: torch.Tensor) -> torch.Tensor:
    return raw


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


#: EDM's noise range, for a model that does not state its own.
_SIGMA_MIN, _SIGMA_MAX = 0.002, 80.0


def _model_range(model: Any) -> tuple[float, float] | None:
    """The ``(sigma_min, sigma_max)`` a model states (k-diffusion's ``DiscreteSchedule`` wrappers), else ``None``."""
    ends = []
    for name in ("sigma_min", "sigma_max"):
        value = getattr(model, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ends.append(float(value))
        elif torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point():
            ends.append(float(value))  # once, when the adapter is built
        else:
            return None
    return ends[0], ends[1]


def from_kdiffusion(
    model: Any,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    autocast: torch.dtype | None = None,
    **condition: Any,
) -> tuple[torch.nn.Module, EDMSDE]:
    r"""A scoreflow score :math:`(D(x,\sigma) - x)/\sigma^2` and the :class:`~scoreflow.EDMSDE` it lives under.

    Args:
        model: the denoiser ``model(x, sigma, **condition)`` (e.g. a ``k_diffusion.layers.Denoiser``).
        sigma_min, sigma_max: the noise range; sampling runs from ``sigma_max`` down to ``sigma_min``. Default: the
            model's own ``sigma_min``/``sigma_max`` when it has them (k-diffusion's ``CompVisDenoiser`` and other
            ``DiscreteSchedule`` wrappers), else (or where they are 0 or infinite, as EDM's networks state) EDM's
            ``0.002`` and ``80``.
        autocast: run the model alone under ``torch.autocast`` in this dtype; the solver keeps its own.
        **condition: passed to every call (k-diffusion's ``extra_args``, e.g. ``cond=emb``).

    Returns:
        ``(score, sde)`` with ``score(x, t)`` an ``nn.Module`` and ``sde = EDMSDE(sigma_min, sigma_max)``.

    Raises:
        TypeError: if ``model`` is not callable.
        ValueError: unless ``0 < sigma_min < sigma_max``, for a range outside the model's own (a ``DiscreteSchedule``
            wrapper clamps other noise levels to its ends), or for an invalid ``autocast``.
    """
    fn = "from_kdiffusion"
    if not callable(model):
        raise TypeError(f"{fn}: argument 'model' expected a denoiser model(x, sigma), got {type(model).__name__}.")
    check_autocast(fn, autocast)
    # named here (EDMSDE would name itself), and as floats: a tensor must meet the range check below as well
    sigma_min = None if sigma_min is None else check_positive(fn, "sigma_min", sigma_min)
    sigma_max = None if sigma_max is None else check_positive(fn, "sigma_max", sigma_max)
    own = _model_range(model)
    # EDM's own networks state sigma_min = 0 and sigma_max = inf (no limit): EDM's defaults stand in for those.
    usable = [v if own is not None and 0 < v < math.inf else None for v in (own or (None, None))]
    sigma_min = (usable[0] or _SIGMA_MIN) if sigma_min is None else sigma_min
    sigma_max = (usable[1] or _SIGMA_MAX) if sigma_max is None else sigma_max
    if own is not None:
        for name, value, outside in (
            ("sigma_min", sigma_min, lambda v: v < own[0] * (1 - 1e-6)),
            ("sigma_max", sigma_max, lambda v: v > own[1] * (1 + 1e-6)),
        ):
            if outside(value):
                raise ValueError(
                    f"{fn}: argument '{name}' = {value:g} lies outside the model's own noise levels [{own[0]:g}, "
                    f"{own[1]:g}] (its sigma_min, sigma_max): a k-diffusion DiscreteSchedule wrapper maps any other "
                    "sigma to its nearest end, so the denoiser would be evaluated at the wrong noise level. Fix: leave "
                    f"'{name}' unset (the model's range is the default) or pass a value inside it."
                )
    sde = EDMSDE(sigma_min=sigma_min, sigma_max=sigma_max)
    net = NetworkCall(
        model, time_input=_identity, condition=condition, output=_prediction, autocast=autocast, fn=fn,
        call="model(x, sigma, **condition)",
    )
    return score_from_denoiser(net, sde), sde
