"""The methods a convergence study runs, as registries from name to how to run it.

Every method of the method registry (:func:`scoreflow.list_methods`) of kind ``"ode"`` or ``"sde"``
joins its study with the order, step cost and Lévy-area need its record declares; samplers that are
not registry methods (the predictor-corrector sampler, or a user's own) join with one
:func:`register_ode_method` or :func:`register_sde_method` call.  The report compares each
declared order with the measured one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..methods import list_methods
from ..sampling import SampleResult, sample_ode, sample_pc, sample_sde

__all__ = [
    "ODEMethod",
    "SDEMethod",
    "ODE_METHODS",
    "SDE_METHODS",
    "register_ode_method",
    "register_sde_method",
    "DEFAULT_ODE_METHODS",
    "DEFAULT_SDE_METHODS",
]

#: ``run(score, sde, x_T, setting) -> SampleResult``; ``setting`` is a step count or a tolerance.
ODERunner = Callable[[Callable, object, torch.Tensor, float], SampleResult]
#: ``run(score, sde, x_T, steps, noise) -> SampleResult``; ``noise`` is a shared Brownian path for
#: pathwise methods, or a ``torch.Generator`` for methods that draw their own noise.
SDERunner = Callable[[Callable, object, torch.Tensor, int, object], SampleResult]


@dataclass(frozen=True)
class ODEMethod:
    """A deterministic sampler in the ODE study.

    Attributes:
        name: the name shown in tables and plots.
        adaptive: swept over tolerances (True) or over step counts (False).
        order: declared global order of accuracy (``None``: no verdict).
        run: how to solve from ``x_T`` with one setting.
        nfe_per_step: score evaluations per step (fixed-step methods; sizes the step grid to the NFE budget).
    """

    name: str
    adaptive: bool
    order: float | None
    run: ODERunner
    nfe_per_step: int = 1


@dataclass(frozen=True)
class SDEMethod:
    """A stochastic sampler in the SDE study.

    Attributes:
        name: the name shown in tables and plots.
        strong_order: declared strong order (additive noise), or ``None`` if not declared.
        pathwise: driven by a given Brownian path, so strong and weak errors against a
            fine solve on the same path are measured; otherwise only distribution errors.
        run: how to sample from ``x_T`` with a step count.
        nfe_per_step: score evaluations per step (sizes the step grid to the NFE budget).
        levy_area: the Brownian path must carry Lévy area.
        weak_order: declared weak order, or ``None``.
        drift_order: the method's order when the noise vanishes (its drift's error term), which a
            measured strong or weak order may reach but not pass; ``None``: the declared orders.
    """

    name: str
    strong_order: float | None
    pathwise: bool
    run: SDERunner
    nfe_per_step: int = 1
    levy_area: bool = False
    weak_order: float | None = None
    drift_order: float | None = None


ODE_METHODS: dict[str, ODEMethod] = {}
SDE_METHODS: dict[str, SDEMethod] = {}


def register_ode_method(method: ODEMethod) -> ODEMethod:
    """Add (or replace) a method in the ODE study's registry; returns it."""
    ODE_METHODS[method.name] = method
    return method


def register_sde_method(method: SDEMethod) -> SDEMethod:
    """Add (or replace) a method in the SDE study's registry; returns it."""
    SDE_METHODS[method.name] = method
    return method


def _fixed(name: str) -> ODERunner:
    return lambda score, sde, x_T, steps: sample_ode(score, sde, x_T, method=name, steps=int(steps))


def _adaptive(name: str) -> ODERunner:
    return lambda score, sde, x_T, tol: sample_ode(score, sde, x_T, method=name, rtol=tol, atol=tol)


def _pathwise(name: str) -> SDERunner:
    return lambda score, sde, x_T, steps, bm: sample_sde(score, sde, x_T, method=name, steps=steps, bm=bm)


def _pc(score, sde, x_T, steps, generator) -> SampleResult:
    return sample_pc(score, sde, x_T, predictor="reverse_diffusion", corrector="langevin", steps=steps, generator=generator)


for _m in list_methods("ode"):
    register_ode_method(
        ODEMethod(_m.name, _m.adaptive, _m.order, (_adaptive if _m.adaptive else _fixed)(_m.name), _m.nfe_per_step)
    )
for _m in list_methods("sde"):
    register_sde_method(
        SDEMethod(
            _m.name, _m.strong_order, True, _pathwise(_m.name), _m.nfe_per_step, _m.levy_area, _m.weak_order,
            _m.drift_order,
        )
    )
# The predictor-corrector sampler draws its own noise: one predictor and one corrector evaluation per step.
register_sde_method(SDEMethod("pc", None, False, _pc, 2))

#: What ``scoreflow bench`` runs unless told otherwise.
DEFAULT_ODE_METHODS = ("euler", "midpoint", "heun", "rk4", "dopri5", "bosh3", "adaptive_heun")
DEFAULT_SDE_METHODS = ("euler", "milstein", "srk", "reversible_heun", "pc")
