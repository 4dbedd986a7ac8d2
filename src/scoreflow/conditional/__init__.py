"""Conditional sampling: inpainting (replacement, RePaint), the conditional scores (classifier guidance, DPS) and
x̂0 correction through the step callback (clipping, dynamic thresholding)."""

from .correction import X0Correction, x0_correction
from .guidance import classifier_guided_score, dps_score
from .inpaint import inpaint, repaint_schedule

__all__ = ["inpaint", "repaint_schedule", "classifier_guided_score", "dps_score", "x0_correction", "X0Correction"]
