"""The methods a convergence study runs, as registries from name to how to run it.

A study iterates a registry, so a new sampler joins every study (and ``scoreflow bench``)
with one :func:`register_ode_method` or :func:`register_sde_method` call.  Each entry
declares its order as data, which the report compares with the measured order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..sampling import (
    ADAPTIVE_ODE_METHODS,
    FIXED_ODE_METHODS,
    ODE_ORDERS,
    SDE_STRONG_ORDERS,
    SampleResult,
    sample_ode,
    sample_sde,
)

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
#: ``run(score, sde, x_T, steps, noise) -> SampleResult``; ``noise`` is a shared torchsde Brownian
#: motion for pathwise methods, or a ``torch.Generator`` for methods that draw their own noise.
SDERunner = Callable[[Callable, object, torch.Tensor, int, object], SampleResult]


@dataclass(frozen=True)
class ODEMethod:
    """A deterministic sampler in the ODE study.

    Attributes:
        name: the name shown in tables and plots.
        adaptive: swept over tolerances (True) or over step counts (False).
        order: declared global order of accuracy.
        nfe_per_step: score evaluations per step (fixed-step methods; sizes the step grid to the NFE budget).
        run: how to solve from ``x_T`` with one setting.
    """

    name: str
    adaptive: bool
    order: float
    run: ODERunner
    nfe_per_step: int = 1


@dataclass(frozen=True)
class SDEMethod:
    """A stochastic sampler in the SDE study.

    Attributes:
        name: the name shown in tables and plots.
        strong_order: declared strong order (additive noise), or ``None`` if not declared.
        pathwise: driven by a given Brownian motion, so strong and weak errors against a
            fine solve on the same path are measured; otherwise only distribution errors.
        nfe_per_step: score evaluations per step (sizes the step grid to the NFE budget).
        run: how to sample from ``x_T`` with a step count.
        levy_area: the method needs a Brownian motion with space-time Levy area.
        drift_order: the method's order when the noise vanishes (its drift's error term), which a
            measured strong order may reach but not pass; ``None``: the strong order.
    """

    name: str
    strong_order: float | None
    pathwise: bool
    run: SDERunner
    nfe_per_step: int = 1
    levy_area: bool = False
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


def _torchsde(name: str) -> SDERunner:
    return lambda score, sde, x_T, steps, bm: sample_sde(score, sde, x_T, method=name, steps=steps, bm=bm)


# Score evaluations per step of the multi-stage fixed-grid methods; the others (euler,
# linear multistep and exponential-integrator methods) take one.  This only sizes the step
# grids to the NFE budget: every row records the NFE the solve reported.
_STAGES = {"midpoint": 2, "heun": 2, "heun2": 2, "heun3": 3, "rk4": 4}
# Every method sample_ode offers with a declared order joins the study, so solvers added to
# sample_ode's registry appear here without further code.
for _name in FIXED_ODE_METHODS:
    if _name in ODE_ORDERS and _name != "heun2":  # heun2 is heun
        register_ode_method(ODEMethod(_name, False, ODE_ORDERS[_name], _fixed(_name), _STAGES.get(_name, 1)))
for _name in ADAPTIVE_ODE_METHODS:
    if _name in ODE_ORDERS:
        register_ode_method(ODEMethod(_name, True, ODE_ORDERS[_name], _adaptive(_name)))

# NFE per step as counted when torchsde integrates the reverse SDE (its srk evaluates the drift 10 times),
# and each method's order with the noise switched off (measured on a nonlinear ODE with g = 0).
for _name, (_stages, _drift_order) in {
    "euler": (1, 1),
    "milstein": (1, 1),
    "srk": (10, 3),
    "reversible_heun": (1, 2),
    "heun": (2, 2),
    "midpoint": (2, 2),
    "euler_heun": (1, 1),
}.items():
    register_sde_method(
        SDEMethod(_name, SDE_STRONG_ORDERS[_name], True, _torchsde(_name), _stages, _name == "srk", _drift_order)
    )


def _register_pc() -> None:
    """Register the predictor-corrector sampler when this build of scoreflow has it (``sample_pc``)."""
    import scoreflow

    sample_pc = getattr(scoreflow, "sample_pc", None)
    if sample_pc is None:
        return

    def run(score, sde, x_T, steps, generator):
        return sample_pc(
            score, sde, x_T, predictor="reverse_diffusion", corrector="langevin", steps=steps, generator=generator
        )

    # One predictor and one corrector evaluation per step.
    register_sde_method(SDEMethod("pc", None, False, run, 2))


_register_pc()

#: What ``scoreflow bench`` runs unless told otherwise.
DEFAULT_ODE_METHODS = ("euler", "midpoint", "heun", "rk4", "dopri5", "bosh3", "adaptive_heun")
DEFAULT_SDE_METHODS = ("euler", "milstein", "srk", "reversible_heun") + (("pc",) if "pc" in SDE_METHODS else ())
