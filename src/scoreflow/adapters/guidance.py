r"""Classifier-free guidance as a score combinator.

.. math:: s_w(x, t) = s_u(x, t) + w\,\big(s_c(x, t) - s_u(x, t)\big)

(diffusers' ``guidance_scale`` convention: ``w = 1`` is the conditional score, ``w = 0`` the
unconditional one, ``w > 1`` extrapolates towards the condition).  For ``w`` in ``[0, 1]`` this
is the score of :math:`p_u^{1-w} p_c^{w}` at every t.
"""

from __future__ import annotations


import torch

from .._checks import call_checked, check_network_output, check_real
from .._tensor import ScoreFn
from ..parameterizations import prediction_of

__all__ = ["guided_score"]



class GuidedScore(torch.nn.Module):
    """``uncond + w * (cond - uncond)``; both scores are evaluated on every call (two network passes).

    When both models carry the same native prediction (e.g. two flow velocities), so does this one: every
    conversion is affine in the prediction with the same coefficients, so guiding the predictions is guiding
    the scores, and a flow model stays integrable from pure noise.
    """

    def __init__(self, cond: ScoreFn, uncond: ScoreFn, w: float) -> None:
        super().__init__()
        self.cond, self.uncond, self.w = cond, uncond, w
        self._checked = False
        kinds = {prediction_of(cond), prediction_of(uncond)}
        self.prediction = kinds.pop() if len(kinds) == 1 else "score"

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        uncond = call_checked("guided_score", "uncond", "uncond(x, t)", self.uncond, x, t)
        return self._guide(uncond, call_checked("guided_score", "cond", "cond(x, t)", self.cond, x, t), x, t)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided native prediction ``uncond + w * (cond - uncond)``."""
        if self.prediction == "score":
            return self(x, t)
        return self._guide(self.uncond.predict(x, t), self.cond.predict(x, t), x, t)

    def _guide(self, p_u: torch.Tensor, p_c: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self._checked:
            # once: a (B, 1) output of either model would broadcast into a valid-looking guided score
            checked = [
                check_network_output("guided_score", f"the {name} model", p, x, t)
                for name, p in (("uncond", p_u), ("cond", p_c))
            ]
            self._checked = all(checked)
        return p_u + self.w * (p_c - p_u)


def guided_score(cond: ScoreFn, uncond: ScoreFn, w: float) -> torch.nn.Module:
    r"""The classifier-free-guided score :math:`s_u + w (s_c - s_u)`.

    Args:
        cond: the conditional score ``s_c(x, t)`` (e.g. ``from_diffusers(unet, sch, class_labels=y)[0]``).
        uncond: the unconditional score ``s_u(x, t)`` (the same network given the null condition).
        w: the guidance scale (any finite real; 1 = conditional).

    Returns:
        A score ``nn.Module``; each call costs one evaluation of each score.

    Raises:
        TypeError: if a score is not callable or ``w`` is not a real number.
        ValueError: if ``w`` is not finite.
    """
    fn = "guided_score"
    for name, s in (("cond", cond), ("uncond", uncond)):
        if not callable(s):
            raise TypeError(f"{fn}: argument '{name}' expected a callable score(x, t), got {type(s).__name__}.")
    return GuidedScore(cond, uncond, check_real(fn, "w", w))
