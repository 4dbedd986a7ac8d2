r"""x̂0 correction through the step callback: clipping and dynamic thresholding (Saharia et al. 2022, Imagen).

After every accepted step the prediction :math:`\hat x_0` at the state is mapped by :math:`c` (clipping to
:math:`[-m, m]`, or dynamic thresholding: per sample
:math:`s = \max(\mathrm{quantile}_q |\hat x_0|,\, m)`, :math:`c(\hat x_0) = \mathrm{clip}(\hat x_0, -s, s)\,m/s`),
and the state is moved to the one with the corrected prediction and the *same* noise estimate
:math:`\hat\epsilon = (x - \alpha\hat x_0)/\sigma`:

.. math:: x \leftarrow \alpha(t)\,c(\hat x_0) + \sigma(t)\,\hat\epsilon = x + \alpha(t)\,\big(c(\hat x_0) - \hat x_0\big).

The next step evaluates the model at the corrected state, so the callback costs one NFE per step with every
sampler.  DPM-Solver's ``correcting_x0_fn`` instead corrects the prediction inside each update, at no extra
NFE; :meth:`X0Correction.wrap` does that for any sampler, with the score whose prediction is corrected,
:math:`s'(x, t) = s + \alpha\,(c(\hat x_0) - \hat x_0)/\sigma^2`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch

from .._checks import call_checked, check_callable, check_choice, check_network_output, check_positive
from .._tensor import as_time, batch_time, right_pad
from ..dynamics.counting import ScoreFn
from ..methods import Method, Option, get_method, list_methods, register
from ..sde import ForwardSDE, check_sde

__all__ = ["x0_correction", "X0Correction", "CorrectedScore"]


def _clip(x0: torch.Tensor, max_value: float) -> torch.Tensor:
    return x0.clamp(-max_value, max_value)


def _dynamic_threshold(x0: torch.Tensor, max_value: float, quantile: float) -> torch.Tensor:
    flat = x0.abs().reshape(x0.shape[0], -1)
    s = right_pad(torch.quantile(flat, quantile, dim=1).clamp(min=max_value), x0)
    return torch.minimum(torch.maximum(x0, -s), s) * (max_value / s)


def _quantile_option(default: float, doc: str) -> Option:
    def check(fn: str, name: str, value: Any) -> float:
        q = check_positive(fn, name, value, kind="option")
        if q > 1.0:
            raise ValueError(f"{fn}: option '{name}' expected a quantile in (0, 1], got {value!r}.")
        return q

    return Option(default, check, doc)


register(Method(
    "clipping", ("conditional",), "native", lambda: _clip,
    "x̂0 clipped to [-max_value, max_value] after every step, the state moved with it (same noise estimate); a callback for any sampler (one NFE more per step) or `.wrap(score)` (none)",
    nfe_per_step=1, front_end='callback=x0_correction(sde, method="clipping")',
))
register(Method(
    "dynamic_thresholding", ("conditional",), "native", lambda quantile=0.995: partial(_dynamic_threshold, quantile=quantile),
    "Imagen's dynamic thresholding of x̂0 after every step (per sample: clip at the `quantile` of |x̂0|, at least max_value, "
    "rescale to max_value), the state moved with it; a callback for any sampler (one NFE more per step) or `.wrap(score)` (none)",
    nfe_per_step=1, front_end='callback=x0_correction(sde, method="dynamic_thresholding")',
    options={"quantile": _quantile_option(0.995, "the quantile of |x̂0| per sample that sets the threshold")},
))


class CorrectedScore(torch.nn.Module):
    r"""The score whose prediction is corrected: :math:`s + \alpha\,(c(\hat x_0) - \hat x_0)/\sigma^2`."""

    def __init__(self, score: ScoreFn, correction: X0Correction) -> None:
        super().__init__()
        self.score, self.correction = score, correction
        self._checked = False

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = batch_time(t, x)
        alpha, sigma = (right_pad(c, x) for c in self.correction.sde.marginal(t))
        s = call_checked("X0Correction.wrap", "score", "score(x, t)", self.score, x, t)
        if not self._checked:  # once: a (B, 1) score would broadcast into the data prediction
            self._checked = check_network_output("X0Correction.wrap", "the score", s, x, t)
        x0 = (x + sigma**2 * s) / alpha
        return s + alpha * (self.correction.correct(x0) - x0) / sigma**2


class X0Correction:
    r"""A step callback that corrects the prediction :math:`\hat x_0` and moves the state with it.

    Call it as ``callback(info)`` (see :func:`x0_correction`), :meth:`wrap` a score to correct its prediction
    inside every update instead, or :meth:`correct` a prediction directly.
    """

    def __init__(self, sde: ForwardSDE, correct: Callable[..., torch.Tensor], max_value: float) -> None:
        self.sde, self._correct, self.max_value = sde, correct, max_value

    def correct(self, x0: torch.Tensor) -> torch.Tensor:
        r"""The corrected prediction :math:`c(\hat x_0)`, shape ``(B, *D)``."""
        return self._correct(x0, self.max_value)

    def wrap(self, score: ScoreFn) -> CorrectedScore:
        r"""DPM-Solver's ``correcting_x0_fn``: the score :math:`s'` whose prediction :math:`\hat x_0' = c(\hat x_0)`.

        Every evaluation costs one NFE of ``score`` and nothing else (the callback route costs one more per step).
        A sampler that steps in the data prediction (DDIM, DPM-Solver++) then uses :math:`c(\hat x_0)` in every
        update, as DPM-Solver's wrapper does.  For processes with :math:`\alpha(t) > 0` (not from pure noise).

        Raises:
            TypeError: if ``score`` is not callable.
        """
        check_callable("X0Correction.wrap", "score", score, "score(x, t)")
        return CorrectedScore(score, self)

    def __call__(self, info: Mapping[str, Any]) -> torch.Tensor:
        r"""The state :math:`x + \alpha(t)\,(c(\hat x_0) - \hat x_0)` for a step's ``info``."""
        x, x0 = info["x"], info["denoised"]
        alpha, _ = self.sde.marginal(as_time(info["t"], x))
        return x + right_pad(alpha, x) * (self.correct(x0) - x0)


def x0_correction(
    sde: ForwardSDE, method: str = "dynamic_thresholding", *, max_value: float = 1.0, options: dict[str, Any] | None = None
) -> X0Correction:
    r"""A ``callback=`` for any sampler that clips or dynamically thresholds :math:`\hat x_0` after every step.

    The state moves to :math:`x + \alpha(t)\,(c(\hat x_0) - \hat x_0)`: the corrected prediction with the same
    noise estimate (at pure noise, :math:`\alpha = 0`, it is left alone).  The next step evaluates the model at
    the moved state, so with any sampler this costs one NFE per step more (``.wrap(score)`` corrects the
    prediction inside the updates at no extra NFE, as DPM-Solver's ``correcting_x0_fn``).  Pass it
    as ``callback=`` to :func:`scoreflow.sample_ode`, :func:`scoreflow.sample_sde`, :func:`scoreflow.sample_pc`
    or :func:`scoreflow.inpaint`; to combine it with a callback of your own, call it from yours and return its
    state.

    Args:
        sde: the forward process of the sampler (for :math:`\alpha(t)`).
        method: ``"clipping"`` (to :math:`[-m, m]`) or ``"dynamic_thresholding"`` (Imagen's: per sample,
            :math:`s = \max(\mathrm{quantile}_q |\hat x_0|, m)`, then :math:`\mathrm{clip}(\hat x_0, -s, s)\,m/s`).
        max_value: the bound m of the data (1 for images in [-1, 1]).
        options: ``{"quantile": q}`` for dynamic thresholding (default 0.995).

    Returns:
        An :class:`X0Correction`, the callback.

    Raises:
        ValueError: for an unknown method (listing the valid ones), a ``max_value`` that is not > 0 or a
            quantile outside (0, 1].
        TypeError: for a malformed ``sde``, ``max_value`` or ``options`` (or an option the method does not take).
    """
    fn = "x0_correction"
    check_sde(fn, sde)
    check_choice(fn, "method", method, [m.name for m in list_methods("conditional") if m.front_end.startswith(f"callback={fn}(")])
    correct = get_method("conditional", method).build(fn, options)
    return X0Correction(sde, correct, check_positive(fn, "max_value", max_value))
