r"""Conditional flow matching (Lipman et al. 2023; Liu et al. 2023; Tong et al. 2024).

On a path :math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon` the conditional velocity is
:math:`\dot\alpha x_0 + \dot\sigma\varepsilon`, and

.. math:: E\,\|u(x_t, t) - (\dot\alpha x_0 + \dot\sigma\varepsilon)\|^2
          = E\,\|u(x_t, t) - u^*(x_t, t)\|^2 + C,\qquad u^* = E[\dot\alpha x_0 + \dot\sigma\varepsilon \mid x_t],

so the minimiser is the flow velocity of the path (:math:`E[\varepsilon - x_0|x_t]` under rectified flow).  With
the minibatch optimal-transport coupling the pairs :math:`(x_0, \varepsilon)` of a batch are matched to minimise
:math:`\sum\|x_0 - \varepsilon\|^2` first, which straightens the learned flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .._checks import call_checked, check_batch, check_callable, check_choice, check_generator, check_instance, check_like, resolve_t_min
from .._tensor import right_pad, standard_normal
from ..parameterizations import convert, prediction_of
from ..sde import ForwardSDE
from ._common import check_reduction, reduce, sq_norm

__all__ = ["cfm_loss", "COUPLINGS", "ot_pairing"]

#: How data and noise are paired: independently, or by a minibatch optimal-transport assignment.
COUPLINGS = ("independent", "ot")


def ot_pairing(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""The permutation :math:`\pi` minimising :math:`\sum_i \|x_{0,i} - \varepsilon_{\pi(i)}\|^2` (scipy's assignment solver).

    Returns:
        A ``(B,)`` long tensor on ``noise``'s device: ``noise[perm]`` is the noise paired with each ``x0``.
    """
    a = x0.detach().reshape(x0.shape[0], -1).to("cpu", torch.float64)
    b = noise.detach().reshape(noise.shape[0], -1).to("cpu", torch.float64)
    _, cols = linear_sum_assignment(torch.cdist(a, b).square().numpy())
    return torch.from_numpy(np.asarray(cols)).to(noise.device)


def _native(velocity: object) -> tuple[str, Callable]:
    """The prediction :func:`cfm_loss` reads and the callable giving it: a model's declared ``prediction`` (from its
    ``predict``, or from the model itself for a score), else the callable's output, taken to be the velocity."""
    if not hasattr(velocity, "prediction"):
        return "flow_velocity", velocity
    kind = prediction_of(velocity)
    return kind, (velocity if kind == "score" else velocity.predict)


def _check_conversion(fn: str, kind: str, path: ForwardSDE, t_lo: float) -> None:
    r"""Refuse a prediction :math:`p` whose coefficient in the velocity, :math:`u = a x + b p`, is infinite at an end of
    ``[t_lo, T]``: a noise prediction where :math:`\alpha = 0` (pure noise), a data prediction where :math:`\sigma = 0`
    (the data).  The loss weights the error of :math:`p` by :math:`b(t)^2`, which grows like :math:`1/\alpha^2` or
    :math:`1/\sigma^2` there and is not integrable: the expected loss is infinite."""
    ends = torch.tensor([t_lo, path.T], dtype=torch.float64)
    x = torch.zeros(2, 1, dtype=torch.float64)
    b = convert(torch.ones_like(x), kind, "flow_velocity", x, ends, path)[:, 0]
    for coef, t in zip(b.tolist(), ends.tolist()):
        if not math.isfinite(coef):
            raise ValueError(
                f"{fn}: argument 'velocity' predicts {kind!r}, whose conversion to the flow velocity is infinite at "
                f"t={t:g} on {path!r} (alpha or sigma is 0 there): the loss weights the prediction's error by the square "
                "of that factor, so its expectation is infinite and rare draws near that end dominate it. Fix: train "
                "the network as a flow velocity (scoreflow.score_from_flow_velocity) or a v prediction, or keep away "
                "from that end (t_min > 0; path.truncated(T) below pure noise)."
            )


def cfm_loss(
    velocity: object,
    path: ForwardSDE,
    x0: torch.Tensor,
    *,
    coupling: str = "independent",
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Conditional flow matching :math:`E_{t, x_0, \varepsilon}\|u(x_t, t) - (\dot\alpha(t)x_0 + \dot\sigma(t)\varepsilon)\|^2`.

    :math:`t \sim U[t_{min}, T]`, :math:`x_t = \alpha(t)x_0 + \sigma(t)\varepsilon`; under
    :class:`scoreflow.RectifiedFlow` the target is :math:`\varepsilon - x_0`.  Minimised by the exact flow
    velocity of the path (for the independent coupling; the OT coupling changes the joint law of the pairs).

    Args:
        velocity: the velocity net ``u(x, t)``, or a model carrying a native prediction (e.g. built by
            :func:`scoreflow.score_from_flow_velocity`, or ``law.velocity(path)``), whose prediction is converted
            to the flow velocity (a score too, when the model declares ``prediction == "score"``).  A plain callable,
            without a ``prediction``, is taken to return the velocity: nothing cheap tells it from a score.  A prediction
            whose conversion is infinite at an end of the time range (a noise prediction at pure noise, a data
            prediction at t = 0) is refused: its loss would have an infinite expectation.
        path: the forward process (e.g. ``scoreflow.RectifiedFlow()``).
        x0: clean data of shape ``(B, *D)``.
        coupling: ``"independent"`` or ``"ot"`` (minibatch optimal transport, ``scipy.optimize.linear_sum_assignment``
            on squared distances, computed on the CPU).
        t_min: smallest training time; default 0 on a flow path (``path.reaches_data``), else ``path.t_min``.
        generator: draws the noise, then the times.
        reduction: ``"mean"`` over the batch or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss, summed over data dimensions.

    Raises:
        ValueError: for an unknown coupling or reduction, ``t_min`` outside the process's range, a malformed
            ``x0``, a velocity not shaped like ``x0``, or a prediction whose velocity is infinite at ``t_min`` or T.
        TypeError: for a non-callable velocity, a wrong path or generator, or mismatched dtypes.
    """
    fn = "cfm_loss"
    check_callable(fn, "velocity", velocity, "u(x, t)")
    check_instance(fn, "path", path, ForwardSDE, "scoreflow.RectifiedFlow()")
    check_batch(fn, "x0", x0)
    check_choice(fn, "coupling", coupling, COUPLINGS)
    t_lo = resolve_t_min(fn, path, 0.0 if t_min is None and path.reaches_data else t_min)
    check_generator(fn, generator, x0, "x0")
    check_reduction(fn, reduction)
    kind, native = _native(velocity)
    if kind != "flow_velocity":
        _check_conversion(fn, kind, path, t_lo)
    noise = standard_normal(x0, generator)
    if coupling == "ot":
        noise = noise[ot_pairing(x0, noise)]
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    t = t_lo + (path.T - t_lo) * u
    alpha, sigma = (right_pad(c, x0) for c in path.marginal(t))
    d_alpha, d_sigma = (right_pad(c, x0) for c in path.marginal_derivatives(t))
    xt = alpha * x0 + sigma * noise
    pred = check_like(fn, "velocity", call_checked(fn, "velocity", "velocity(x, t)", native, xt, t), xt, what="the velocity")
    if kind != "flow_velocity":
        pred = convert(pred, kind, "flow_velocity", xt, t, path)
    return reduce(fn, sq_norm(pred - (d_alpha * x0 + d_sigma * noise)), reduction, velocity=pred)
