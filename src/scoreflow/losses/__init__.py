"""Score-matching losses (explicit, implicit, sliced, denoising: single, multi-scale, continuous-time), conditional flow
matching and the consistency losses (distillation and training)."""

from .consistency import (
    CONSISTENCY_DISTANCES,
    CONSISTENCY_WEIGHTINGS,
    consistency_distillation_loss,
    consistency_training_loss,
)
from .denoising import MULTISCALE_WEIGHTINGS, SDE_WEIGHTINGS, TIME_SAMPLINGS, dsm_loss, multiscale_dsm_loss, sde_dsm_loss
from .explicit import esm_loss
from .flow import COUPLINGS, cfm_loss
from .implicit import ism_loss
from .sliced import ssm_loss, ssm_vr_loss

__all__ = [
    "esm_loss", "ism_loss", "ssm_loss", "ssm_vr_loss",
    "dsm_loss", "multiscale_dsm_loss", "sde_dsm_loss",
    "MULTISCALE_WEIGHTINGS", "SDE_WEIGHTINGS", "TIME_SAMPLINGS", "cfm_loss", "COUPLINGS",
    "consistency_distillation_loss", "consistency_training_loss", "CONSISTENCY_DISTANCES", "CONSISTENCY_WEIGHTINGS",
]
