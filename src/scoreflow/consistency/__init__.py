"""Consistency models: the parameterization, one- and few-step sampling, the teacher step and the training curricula.

The losses are :func:`scoreflow.losses.consistency_distillation_loss` and
:func:`scoreflow.losses.consistency_training_loss`; the exact consistency function of an analytic law is
``law.consistency_function(sde)``.
"""

from .curriculum import CURRICULA, discretization_steps, ema_update, target_ema_decay
from .parameterization import ConsistencyModel, parameterize
from .sample import renoise_times, sample_consistency
from .teacher import ODEStep, teacher_step

__all__ = [
    "parameterize", "ConsistencyModel", "sample_consistency", "renoise_times", "teacher_step", "ODEStep",
    "discretization_steps", "target_ema_decay", "ema_update", "CURRICULA",
]
