"""Score-matching losses (explicit, implicit, sliced, denoising: single, multi-scale, continuous-time) and conditional flow matching."""

from .denoising import MULTISCALE_WEIGHTINGS, SDE_WEIGHTINGS, dsm_loss, multiscale_dsm_loss, sde_dsm_loss
from .explicit import esm_loss
from .flow import COUPLINGS, cfm_loss
from .implicit import ism_loss
from .sliced import ssm_loss, ssm_vr_loss

__all__ = [
    "esm_loss", "ism_loss", "ssm_loss", "ssm_vr_loss",
    "dsm_loss", "multiscale_dsm_loss", "sde_dsm_loss",
    "MULTISCALE_WEIGHTINGS", "SDE_WEIGHTINGS", "cfm_loss", "COUPLINGS",
]
