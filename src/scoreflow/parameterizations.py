r"""A network's prediction turned into a score :math:`s(x, t) \approx \nabla_x \log p_t(x)`, and back: one conversion table.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon`, the posterior means :math:`\hat x_0 = E[x_0|x_t]`,
:math:`\hat\varepsilon = E[\varepsilon|x_t]` satisfy :math:`x = \alpha\hat x_0 + \sigma\hat\varepsilon`, and every
prediction is an affine function of the pair:

- ``"score"``:         :math:`s = -\hat\varepsilon/\sigma`
- ``"eps"``:           :math:`\hat\varepsilon`
- ``"x0"``:            :math:`\hat x_0`
- ``"v"`` (diffusion v-prediction): :math:`v = \alpha\hat\varepsilon - \sigma\hat x_0`
- ``"flow_velocity"``: :math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon = dx/dt` along the probability-flow ODE
  (:math:`E[\varepsilon - x_0|x_t]` under :class:`scoreflow.RectifiedFlow`).

Given u, :math:`\hat x_0 = (\dot\sigma x - \sigma u)/\Delta`, :math:`\hat\varepsilon = (\alpha u - \dot\alpha x)/\Delta`
with :math:`\Delta = \alpha\dot\sigma - \sigma\dot\alpha > 0`, finite where :math:`\alpha = 0` (pure noise).

A model built here is a ``torch.nn.Module`` that returns the score when called and carries its native
prediction (``model.prediction``, ``model.predict(x, t)``): solvers ask :func:`convert` for what they need
from it, so a flow velocity is integrated as itself (the route score -> drift cancels catastrophically
where :math:`\alpha \to 0`).  An energy model :math:`E(x, t)` gives :math:`s = -\nabla_x E`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import call_checked, check_callable, check_choice, check_instance, check_network_output
from ._tensor import TimeLike, batch_time, right_pad
from .sde import ForwardSDE, check_sde

__all__ = [
    "PREDICTIONS",
    "convert",
    "affine_map_values",
    "prediction_of",
    "score_from_eps",
    "score_from_denoiser",
    "score_from_velocity",
    "score_from_flow_velocity",
    "score_from_energy",
    "eps_from_score",
    "denoiser_from_score",
    "velocity_from_score",
    "flow_velocity_from_score",
    "check_native_at_pure_noise",
]

Net = Callable[..., torch.Tensor]

#: What a model may predict natively (see the module docstring).
PREDICTIONS = ("score", "eps", "x0", "v", "flow_velocity")


def prediction_of(model: object) -> str:
    """The native prediction a model carries (``model.prediction``), ``"score"`` for a plain callable."""
    kind = getattr(model, "prediction", "score")
    return check_choice(type(model).__name__, "prediction", kind, PREDICTIONS)


def _pair(kind: str, value: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sde: ForwardSDE):
    """:math:`(\\hat x_0, \\hat\\varepsilon)` from a prediction of ``kind``."""
    alpha, sigma = (right_pad(c, x) for c in sde.marginal(t))
    derivatives = (lambda: tuple(right_pad(c, x) for c in sde.marginal_derivatives(t))) if kind == "flow_velocity" else None
    return _pair_at(kind, value, x, alpha, sigma, derivatives)


def _pair_at(kind: str, value, x, alpha, sigma, derivatives: Callable[[], tuple] | None):
    """:math:`(\\hat x_0, \\hat\\varepsilon)` from a prediction of ``kind`` given the coefficients (tensors or floats);
    ``derivatives()`` gives :math:`(\\dot\\alpha, \\dot\\sigma)`, asked for a flow velocity only."""
    if kind == "flow_velocity":
        d_alpha, d_sigma = derivatives()
        det = alpha * d_sigma - sigma * d_alpha
        return (d_sigma * x - sigma * value) / det, (alpha * value - d_alpha * x) / det
    if kind == "v":
        norm = alpha**2 + sigma**2
        return (alpha * x - sigma * value) / norm, (sigma * x + alpha * value) / norm
    if kind == "x0":
        return value, (x - alpha * value) / sigma
    eps = value if kind == "eps" else -sigma * value
    return (x - sigma * eps) / alpha, eps


def affine_map_values(kind: str, alpha: float, sigma: float, d_alpha: float = math.nan,
                      d_sigma: float = math.nan) -> list[float]:
    r"""``[a_x0, b_x0, a_eps, b_eps]`` with :math:`\hat x_0 = a_{x_0} x + b_{x_0} p` and
    :math:`\hat\varepsilon = a_\varepsilon x + b_\varepsilon p` for a prediction p of ``kind``, in plain float
    arithmetic from the coefficients at one time (the derivatives are read for a flow velocity only): the conversion
    table of :func:`convert`, evaluated at x = 1, p = 0 and at x = 0, p = 1.  Raises ``ValueError`` for a ``kind``
    not in :data:`PREDICTIONS`."""
    check_choice("affine_map_values", "kind", kind, PREDICTIONS)
    derivatives = lambda: (d_alpha, d_sigma)  # noqa: E731
    a_x0, a_eps = _pair_at(kind, 0.0, 1.0, alpha, sigma, derivatives)
    b_x0, b_eps = _pair_at(kind, 1.0, 0.0, alpha, sigma, derivatives)
    return [a_x0, b_x0, a_eps, b_eps]


def convert(
    value: torch.Tensor, source: str, target: str, x: torch.Tensor, t: TimeLike, sde: ForwardSDE
) -> torch.Tensor:
    """Convert the prediction ``value`` of kind ``source`` at ``(x, t)`` into the prediction of kind ``target``.

    Both kinds are from :data:`PREDICTIONS`; ``t`` is a scalar or ``(B,)``.  The score's own routes keep their
    classic forms (:math:`\\hat\\varepsilon = -\\sigma s`, Tweedie's :math:`\\hat x_0 = (x + \\sigma^2 s)/\\alpha`,
    the probability-flow drift :math:`f x - \\tfrac12 g^2 s`); every other route goes through
    :math:`(\\hat x_0, \\hat\\varepsilon)`.

    Raises:
        ValueError: if ``source`` or ``target`` is not one of :data:`PREDICTIONS` (e.g. diffusers' ``"epsilon"``: an
            unknown kind was converted as a score, silently).
    """
    check_choice("convert", "source", source, PREDICTIONS)  # strings only: no read of a device, at every call
    check_choice("convert", "target", target, PREDICTIONS)
    if source == target:
        return value
    t = batch_time(t, x)
    if source == "score" and target == "flow_velocity":
        return sde.drift(x, t) - right_pad(0.5 * sde.diffusion(t) ** 2, x) * value
    if target == "score" and source in ("eps", "x0"):
        alpha, sigma = (right_pad(c, x) for c in sde.marginal(t))
        return -value / sigma if source == "eps" else (alpha * value - x) / sigma**2
    x0, eps = _pair(source, value, x, t, sde)
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    alpha, sigma = (right_pad(c, x) for c in sde.marginal(t))
    if target == "score":
        return -eps / sigma
    if target == "v":
        return alpha * eps - sigma * x0
    d_alpha, d_sigma = (right_pad(c, x) for c in sde.marginal_derivatives(t))
    return d_alpha * x0 + d_sigma * eps


def check_native_at_pure_noise(fn: str, model: object, sde: ForwardSDE) -> None:
    r"""Refuse, for the front-end ``fn``, a model that cannot give the flow at T where the process is pure noise.

    At :math:`\alpha(T) = 0` a score or noise prediction carries no information on :math:`x_0`
    (:math:`s = -x/\sigma^2` for every law) and :math:`f, g` are infinite; a flow velocity, data or v prediction
    gives the flow there.

    Raises:
        ValueError: if ``sde.pure_noise_at_T`` and the model predicts a score or noise.
    """
    kind = prediction_of(model)
    if kind in ("score", "eps") and sde.pure_noise_at_T:
        raise ValueError(
            f"{fn}: a model predicting {kind!r} cannot be integrated from t=T={sde.T:g} under {sde!r}, where alpha(T) = 0: there "
            "the score of every law is -x/sigma^2 and the drift is infinite. Fix: wrap the network's own prediction, "
            "e.g. scoreflow.score_from_flow_velocity(net, path) or score_from_denoiser, or use law.velocity(path) "
            "for an analytic law."
        )


class _Parameterized(torch.nn.Module):
    """A score built from a net that predicts ``prediction`` under a forward process; ``predict`` is the net."""

    prediction: str

    def __init__(self, net: Net, sde: ForwardSDE, fn: str) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"{fn}: argument 'net' expected a callable net(x, t), got {type(net).__name__}.")
        check_sde(fn, sde)
        self.net, self.sde, self.fn = net, sde, fn
        self._checked = False

    def predict(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """The network's own prediction at ``(x, t)``."""
        t = batch_time(t, x)
        out = call_checked(self.fn, "net", "net(x, t)", self.net, x, t)
        if not self._checked:
            self._checked = check_network_output(self.fn, "the network", out, x, t)
        return out

    def forward(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        if isinstance(t, (int, float)) and t <= 0:
            # a number is read for free: sigma(0) = 0, where the score of every conversion is infinite
            raise ValueError(
                f"{self.fn}: argument 't' expected a time > 0 (sigma(0) = 0 makes the score infinite), got {t!r}. "
                "Fix: evaluate at t >= sde.t_min, or use model.predict(x, t) for the network's own prediction."
            )
        t = batch_time(t, x)
        first = not self._checked
        score = convert(self.predict(x, t), self.prediction, "score", x, t, self.sde)
        if first:
            # once: the network was finite, but the conversion divides by sigma(t), which is 0 at t = 0
            check_network_output(self.fn, f"the score converted from the {self.prediction!r} prediction", score, x, t)
        return score


class _EpsScore(_Parameterized):
    prediction = "eps"


class _DenoiserScore(_Parameterized):
    prediction = "x0"


class _VelocityScore(_Parameterized):
    prediction = "v"


class _FlowVelocityScore(_Parameterized):
    prediction = "flow_velocity"


class _EnergyScore(torch.nn.Module):
    prediction = "score"  # declared: cfm_loss converts it rather than taking it for a velocity

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
        return -torch.func.grad(lambda y: self._energy(y, t).sum())(x)

    def _energy(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        energy = self.energy(x, t)
        # a shape test (no value read): a (B, D) "energy" would be summed into a wrong gradient without a word
        if not torch.is_tensor(energy) or energy.shape != x.shape[:1]:
            got = f"shape {tuple(energy.shape)}" if torch.is_tensor(energy) else type(energy).__name__
            raise ValueError(f"score_from_energy: the energy expected one value per sample, shape ({x.shape[0]},), got {got}.")
        return energy


def score_from_eps(net: Net, sde: ForwardSDE) -> torch.nn.Module:
    r"""Score of a noise-prediction net :math:`\hat\varepsilon(x, t)`: :math:`s = -\hat\varepsilon/\sigma(t)`."""
    return _EpsScore(net, sde, "score_from_eps")


def score_from_denoiser(net: Net, sde: ForwardSDE) -> torch.nn.Module:
    r"""Score of a data-prediction (x0) net :math:`\hat x_0(x, t)`: :math:`s = (\alpha\hat x_0 - x)/\sigma^2`."""
    return _DenoiserScore(net, sde, "score_from_denoiser")


def score_from_velocity(net: Net, sde: ForwardSDE) -> torch.nn.Module:
    r"""Score of a diffusion v-prediction net, :math:`v = \alpha\varepsilon - \sigma x_0`:
    :math:`s = -(\sigma x + \alpha\hat v) / ((\alpha^2+\sigma^2)\sigma)`.  (A flow-matching velocity
    :math:`dx/dt` is :func:`score_from_flow_velocity`.)"""
    return _VelocityScore(net, sde, "score_from_velocity")


def score_from_flow_velocity(net: Net, path: ForwardSDE) -> torch.nn.Module:
    r"""A model from a flow-matching velocity net :math:`u(x, t) \approx E[\dot\alpha x_0 + \dot\sigma\varepsilon \mid x_t = x]`.

    Under :class:`scoreflow.RectifiedFlow`, :math:`u = E[\varepsilon - x_0 | x_t]`.  Called, the model returns the
    score :math:`s = -(\alpha u - \dot\alpha x)/(\sigma\Delta)`, :math:`\Delta = \alpha\dot\sigma - \sigma\dot\alpha`;
    the probability-flow samplers and likelihoods integrate u itself (``model.predict``), so sampling starts
    at t = T exactly even where :math:`\alpha(T) = 0`.

    Args:
        net: ``net(x, t)`` with x of shape ``(B, *D)`` and t of shape ``(B,)``, returning the velocity shaped like x.
        path: the path the net was trained on (any forward process; e.g. ``scoreflow.RectifiedFlow()``).

    Returns:
        An ``nn.Module`` score with ``prediction == "flow_velocity"``.

    Raises:
        TypeError: if ``net`` is not callable or ``path`` is not a forward process.
    """
    fn = "score_from_flow_velocity"
    check_instance(fn, "path", path, ForwardSDE, "scoreflow.RectifiedFlow()")  # named as the user passed it, not 'sde'
    return _FlowVelocityScore(net, path, fn)


def score_from_energy(energy: Net) -> torch.nn.Module:
    r"""Score of an energy model :math:`E(x, t)` returning shape ``(B,)``: :math:`s = -\nabla_x E`.

    Usable inside ``torch.no_grad()`` sampling code and inside the losses, which
    differentiate it again.
    """
    return _EnergyScore(energy)


def _from_model(fn: str, model: Net, sde: ForwardSDE, target: str) -> Net:
    """``target`` prediction of a model, through its native prediction (``fn``: the public function, checking its
    arguments once, here: a wrong one failed at the first call, with Python's message)."""
    check_callable(fn, "score", model, "score(x, t)")
    check_sde(fn, sde)
    source = prediction_of(model)
    native = model.predict if source != "score" else model

    def predict(x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        t = batch_time(t, x)
        return convert(native(x, t), source, target, x, t, sde)

    return predict


def eps_from_score(score: Net, sde: ForwardSDE) -> Net:
    r"""Noise prediction :math:`\hat\varepsilon = -\sigma s` of a score (of a model: from its native prediction)."""
    return _from_model("eps_from_score", score, sde, "eps")


def denoiser_from_score(score: Net, sde: ForwardSDE) -> Net:
    r"""Data prediction (Tweedie) :math:`\hat x_0 = (x + \sigma^2 s)/\alpha` of a score (of a model: from its native prediction)."""
    return _from_model("denoiser_from_score", score, sde, "x0")


def velocity_from_score(score: Net, sde: ForwardSDE) -> Net:
    r"""Diffusion v-prediction :math:`\hat v = \alpha\hat\varepsilon - \sigma\hat x_0` of a score (of a model: from its native prediction)."""
    return _from_model("velocity_from_score", score, sde, "v")


def flow_velocity_from_score(score: Net, sde: ForwardSDE) -> Net:
    r"""Flow velocity :math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\varepsilon = f x - \tfrac12 g^2 s` of a score
    (of a model: from its native prediction), the right-hand side of the probability-flow ODE."""
    return _from_model("flow_velocity_from_score", score, sde, "flow_velocity")
