"""Conditional sampling: inpainting (replacement, RePaint) and the conditional scores (classifier guidance, DPS)."""

from .guidance import classifier_guided_score, dps_score
from .inpaint import inpaint, repaint_schedule

__all__ = ["inpaint", "repaint_schedule", "classifier_guided_score", "dps_score"]
