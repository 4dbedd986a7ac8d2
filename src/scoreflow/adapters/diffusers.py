r"""diffusers UNets with a discrete DDPM schedule as a scoreflow score and forward SDE.

A scheduler with :math:`N` training steps, betas :math:`\beta_1..\beta_N` and
:math:`\bar\alpha_i` becomes a continuous VP SDE on :math:`t \in [0, 1]`:

- linear betas (``schedule="linear"``, score_sde's mapping): :class:`~scoreflow.VPSDE` with
  :math:`\beta_{min} = N\beta_1`, :math:`\beta_{max} = N\beta_N`; the UNet is called with the
  continuous timestep :math:`t\,(N-1)`, so index ``i`` sits at :math:`t = i/(N-1)`.
- any schedule (``schedule="discrete"``): :class:`DiscreteVPSDE` interpolating :math:`\log\bar\alpha`
  with index ``i`` at :math:`t = (i+1)/N` (so :math:`\alpha(t)^2 = \bar\alpha_i` exactly); the UNet
  is called with :math:`tN - 1`.

A flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``, or any with ``use_flow_sigmas``) becomes
:class:`~scoreflow.RectifiedFlow`, :math:`x_t = (1 - t)x_0 + t\varepsilon` with t the scheduler's sigma, and the
network is called with the timestep :math:`tN`; its shift only places the sampling steps, which
``scoreflow.time_grid(path, steps, "shift", shift=scheduler.config.shift)`` reproduces.

The UNet's prediction is converted by the scheduler's ``prediction_type``:
``epsilon`` :math:`s = -\hat\varepsilon/\sigma`, ``sample`` :math:`s = (\alpha\hat x_0 - x)/\sigma^2`,
``v_prediction`` :math:`s = -(\sigma x + \alpha\hat v)/\sigma` (here :math:`\alpha^2+\sigma^2 = 1`), and
``flow_prediction`` (the velocity :math:`\varepsilon - x_0`) is integrated as itself
(:func:`scoreflow.score_from_flow_velocity`).
diffusers is only needed to build the model; this module never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._checks import check_autocast, check_choice, check_positive, check_real
from ..parameterizations import score_from_denoiser, score_from_eps, score_from_flow_velocity, score_from_velocity
from ..paths import RectifiedFlow
from ..sde import VPSDE, ForwardSDE
from ._network import NetworkCall
from .discrete_vp import DiscreteVPSDE

__all__ = ["from_diffusers", "sde_from_scheduler", "PREDICTION_TYPES", "SCHEDULES"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
SCHEDULES = ("auto", "linear", "discrete")
#: The last alphas_cumprod of a zero-terminal-SNR schedule (diffusers' EulerDiscreteScheduler's: float16's smallest
#: subnormal), so that T has a finite log-SNR and the prior N(0, I) is off by alpha(T) = 2^-12 in the mean.
_ZERO_SNR_LEVEL = 2.0**-24
_CONVERSIONS = {
    "epsilon": score_from_eps, "sample": score_from_denoiser, "v_prediction": score_from_velocity,
    "flow_prediction": score_from_flow_velocity,
}


def _is_flow_matching(scheduler: Any) -> bool:
    """A flow-matching scheduler: diffusers' FlowMatch* schedulers (a ``shift`` and no DDPM schedule), or ``use_flow_sigmas``."""
    config = getattr(scheduler, "config", None)
    if getattr(config, "use_flow_sigmas", False):
        return True
    return getattr(config, "shift", None) is not None and getattr(scheduler, "alphas_cumprod", None) is None


def _flow_path(fn: str, scheduler: Any, t_min: float | None) -> tuple[ForwardSDE, float, float]:
    config = scheduler.config
    if getattr(config, "invert_sigmas", False):
        raise ValueError(f"{fn}: a flow-matching scheduler with invert_sigmas=True (data at sigma = 1) is not supported.")
    kwargs = {} if t_min is None else {"t_min": t_min}
    return RectifiedFlow(**kwargs), float(config.num_train_timesteps), 0.0


def _schedule_arrays(fn: str, scheduler: Any) -> tuple[torch.Tensor, torch.Tensor]:
    betas = getattr(scheduler, "betas", None)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if not (torch.is_tensor(betas) and torch.is_tensor(alphas_cumprod)):
        raise TypeError(
            f"{fn}: argument 'scheduler' expected a discrete-time diffusers scheduler with 'betas' and "
            f"'alphas_cumprod' (e.g. DDPMScheduler, DDIMScheduler), got {type(scheduler).__name__}. "
            "Continuous-time schedulers (e.g. ScoreSdeVeScheduler) have no DDPM schedule to map."
        )
    return betas.detach().to("cpu", torch.float64), alphas_cumprod.detach().to("cpu", torch.float64)


def _is_linear(betas: torch.Tensor) -> bool:
    ref = torch.linspace(float(betas[0]), float(betas[-1]), betas.numel(), dtype=torch.float64)
    # diffusers builds betas in float32: allow its rounding, nothing more.
    return bool(torch.allclose(betas, ref, rtol=1e-5, atol=1e-9))


def sde_from_scheduler(
    scheduler: Any, *, schedule: str = "auto", t_min: float | None = None
) -> tuple[ForwardSDE, float, float]:
    r"""The continuous process of a diffusers scheduler and the map from ``t`` to the UNet's timestep.

    A DDPM schedule becomes a VP SDE (below); a flow-matching scheduler becomes :class:`~scoreflow.RectifiedFlow`
    with the timestep :math:`tN` (``num_train_timesteps`` N), whatever its shift (which places sampling steps only).

    Args:
        scheduler: a diffusers scheduler with ``betas`` and ``alphas_cumprod``, or a flow-matching one.
        schedule: ``"linear"`` (score_sde's :class:`~scoreflow.VPSDE`; linear betas only),
            ``"discrete"`` (:class:`DiscreteVPSDE`, any betas) or ``"auto"`` (linear when the betas are).
        t_min: truncation time (default: ``VPSDE``'s ``1e-3``, or ``1/N`` for ``"discrete"``).

    A zero terminal SNR (``alphas_cumprod[-1] == 0``, from ``rescale_betas_zero_snr=True``) has no finite log-SNR
    at T; its last level becomes :math:`2^{-24}` (as in diffusers' Euler schedulers), so :math:`\alpha(T) = 2^{-12}`.

    Returns:
        ``(sde, scale, shift)``: the UNet's timestep at time ``t`` is ``scale * t + shift``.

    Raises:
        TypeError: if the scheduler has no discrete schedule and is not a flow-matching one.
        ValueError: for an unknown ``schedule``, ``"linear"`` with non-linear betas, or a flow-matching scheduler
            with ``invert_sigmas`` or a ``schedule`` other than ``"auto"``.
    """
    fn = "sde_from_scheduler"
    check_choice(fn, "schedule", schedule, SCHEDULES)
    if t_min is not None:  # named here: the process built below would name itself
        check_real(fn, "t_min", t_min)
    if _is_flow_matching(scheduler):
        if schedule != "auto":
            raise ValueError(
                f"{fn}: argument 'schedule' = {schedule!r} maps a DDPM schedule, but {type(scheduler).__name__} is a "
                "flow-matching scheduler (its path is RectifiedFlow whatever the shift). Fix: leave schedule='auto'."
            )
        return _flow_path(fn, scheduler, t_min)
    if t_min is not None:  # (a flow path may start at 0; a DDPM schedule's sigma is 0 there)
        check_positive(fn, "t_min", t_min)
    betas, alphas_cumprod = _schedule_arrays(fn, scheduler)
    if alphas_cumprod.numel() > 1 and float(alphas_cumprod[-1]) == 0.0:
        # A zero terminal SNR (rescale_betas_zero_snr=True: pure noise at the last step) has log alpha^2 = -inf
        # there; as diffusers' Euler schedulers do, put its last level just above 0 (alpha = 2^-12 at T).
        alphas_cumprod = alphas_cumprod.clone()
        alphas_cumprod[-1] = min(_ZERO_SNR_LEVEL, 0.5 * float(alphas_cumprod[-2]))
    n = betas.numel()
    linear = _is_linear(betas)
    if schedule == "linear" and not linear:
        raise ValueError(
            f"{fn}: schedule='linear' needs linearly spaced betas, but this scheduler's betas "
            f"({getattr(getattr(scheduler, 'config', None), 'beta_schedule', 'unknown')!r}) are not. "
            "Use schedule='discrete' (or 'auto') to interpolate its alphas_cumprod instead."
        )
    if schedule == "linear" or (schedule == "auto" and linear):
        kwargs = {} if t_min is None else {"t_min": t_min}
        return VPSDE(beta_min=n * float(betas[0]), beta_max=n * float(betas[-1]), **kwargs), float(n - 1), 0.0
    return DiscreteVPSDE(alphas_cumprod, t_min=t_min), float(n), -1.0


def _first_output(raw: Any, x: torch.Tensor) -> Any:
    """The prediction in a diffusers output (a tuple, an object or a dict with ``sample``, or the tensor itself); a
    learned-variance UNet's second half of channels is dropped. Anything else is returned for the caller to refuse."""
    if isinstance(raw, tuple) and raw:
        out = raw[0]
    elif isinstance(raw, Mapping) and "sample" in raw:
        out = raw["sample"]
    else:
        out = getattr(raw, "sample", raw)
    if torch.is_tensor(out) and out.ndim == x.ndim and out.ndim > 1 and out.shape[1] == 2 * x.shape[1]:
        out = out[:, : x.shape[1]]
    return out


def from_diffusers(
    unet: torch.nn.Module,
    scheduler: Any,
    *,
    prediction_type: str | None = None,
    schedule: str = "auto",
    t_min: float | None = None,
    autocast: torch.dtype | None = None,
    **condition: Any,
) -> tuple[torch.nn.Module, ForwardSDE]:
    r"""A scoreflow score and forward SDE for a diffusers ``UNet2DModel``/``UNet2DConditionModel``.

    Args:
        unet: the network (also a ``torch.compile`` d one), called as
            ``unet(x, timestep, **condition, return_dict=False)``.
        scheduler: its scheduler (e.g. ``DDPMScheduler``, or ``FlowMatchEulerDiscreteScheduler`` for a flow model);
            see :func:`sde_from_scheduler`.
        prediction_type: ``"epsilon"``, ``"sample"``, ``"v_prediction"`` or ``"flow_prediction"``; default the
            scheduler's (``"flow_prediction"`` for a flow-matching scheduler).
        schedule, t_min: how the discrete schedule becomes continuous; see :func:`sde_from_scheduler`.
        autocast: run the UNet alone under ``torch.autocast`` in this dtype; the solver keeps its own.
        **condition: passed to every UNet call, e.g. ``class_labels=y`` or ``encoder_hidden_states=emb``.

    Returns:
        ``(score, sde)`` with ``score(x, t)`` an ``nn.Module`` holding the UNet.

    Raises:
        TypeError: if ``unet`` is not callable or the scheduler has no discrete schedule.
        ValueError: for an unknown prediction type (given, or read from the scheduler's config) or schedule (see
            :func:`sde_from_scheduler`), ``"flow_prediction"`` with a scheduler that is not a flow-matching one, or a
            UNet whose learned time embedding cannot take continuous timesteps.
    """
    fn = "from_diffusers"
    if not callable(unet):
        raise TypeError(f"{fn}: argument 'unet' expected a diffusers UNet, got {type(unet).__name__}.")
    if prediction_type is None:
        default = "flow_prediction" if _is_flow_matching(scheduler) else "epsilon"
        prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", default)
        if prediction_type not in PREDICTION_TYPES:  # not given: name where it was read
            raise ValueError(
                f"{fn}: the scheduler's prediction_type {prediction_type!r} ({type(scheduler).__name__}.config) is not "
                f"one of {', '.join(map(repr, PREDICTION_TYPES))}. Fix: pass prediction_type= the network's own "
                "prediction, or the scheduler it was trained with."
            )
    check_choice(fn, "prediction_type", prediction_type, PREDICTION_TYPES)
    check_autocast(fn, autocast)
    if getattr(getattr(unet, "config", None), "time_embedding_type", None) == "learned":
        raise ValueError(
            f"{fn}: the UNet has a learned (lookup-table) time embedding, which accepts integer timesteps only; "
            "scoreflow's solvers evaluate it at continuous times. Use a model with positional or Fourier time embeddings."
        )
    if prediction_type == "flow_prediction" and not _is_flow_matching(scheduler):
        raise ValueError(
            f"{fn}: prediction_type='flow_prediction' (the velocity eps - x0 of x_t = (1 - t) x0 + t eps) needs a "
            f"flow-matching scheduler, got {type(scheduler).__name__} without use_flow_sigmas, whose DDPM schedule "
            "has no such velocity. Fix: pass the scheduler the model was trained with (e.g. "
            "FlowMatchEulerDiscreteScheduler, or use_flow_sigmas=True), or the model's own prediction type."
        )
    sde, scale, shift = sde_from_scheduler(scheduler, schedule=schedule, t_min=t_min)
    config = getattr(scheduler, "config", None)
    if getattr(config, "timestep_type", None) == "continuous" and getattr(config, "prediction_type", None) == "v_prediction":
        # EulerDiscreteScheduler(timestep_type="continuous") calls its v-prediction UNet with EDM's c_noise,
        # 0.25 log(sigma / alpha), not with a training-step index.
        def time_input(t: torch.Tensor) -> torch.Tensor:
            alpha, sigma = sde.marginal(t)
            return 0.25 * torch.log(sigma / alpha)
    else:
        def time_input(t: torch.Tensor) -> torch.Tensor:
            return scale * t + shift
    net = NetworkCall(
        unet,
        time_input=time_input,
        condition={**condition, "return_dict": False},
        output=_first_output,
        autocast=autocast,
        fn=fn,
        call="unet(x, timestep, **condition, return_dict=False)",
    )
    return _CONVERSIONS[prediction_type](net, sde), sde
