r"""torchdiffeq's solvers behind scoreflow's registry: the only module that calls ``torchdiffeq``.

:class:`TorchdiffeqSolver` integrates the probability-flow ODE from T down to ``t_min`` in t, in the
scaled noise level :math:`\bar\sigma = \sigma/\alpha` or in the log-SNR (see :mod:`.reparameterized`),
and integrates any vector field (the likelihood's augmented ODE) in t.  The records below declare
torchdiffeq's methods; its Adams methods are left out (their start-up makes them unstable on VE
problems: error 3e18 at 256 steps).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torchdiffeq

from .._tensor import right_pad
from ..methods import Grid, Method, Path, Stepping, Tolerances, int_option, positive_option, register
from ..sde import ForwardSDE
from .counting import CountedScore
from .probability_flow import ProbabilityFlowODE
from .reparameterized import TIME_VARIABLES, ScaledProbabilityFlowODE, from_time_variable, to_time_variable

__all__ = ["TorchdiffeqSolver"]


class TorchdiffeqSolver:
    """One of torchdiffeq's methods, configured by scoreflow's options.

    Args:
        library_name: torchdiffeq's name of the method (``"heun2"`` for scoreflow's ``"heun"``).
        **options: torchdiffeq options (``first_step``, ``safety``, ``ifactor``, ``dfactor``, ``max_num_steps``),
            already checked by the method's record.
    """

    def __init__(self, library_name: str, **options: Any) -> None:
        self.library_name = library_name
        self.options = options

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, *, trajectory: bool = False
    ) -> Path:
        """Integrate the probability-flow ODE from ``x_T`` through ``stepping.times`` (decreasing, in t).

        torchdiffeq returns the state at every time of the grid, so the path always holds them (``trajectory``
        is part of the solver interface only).
        """
        ts = stepping.times
        if stepping.time != "t" and sde.pure_noise_at_T:
            raise ValueError(
                f"sample_ode: time={stepping.time!r} is infinite at T={sde.T:g} on {sde!r}, where alpha(T) = 0 (pure "
                "noise). Fix: time='t' (the default), or a native exponential integrator."
            )
        if stepping.time == "t":
            us, y_T, func = ts, x_T, ProbabilityFlowODE(score, sde)
        else:
            us = to_time_variable(sde, stepping.time, ts)
            ts = from_time_variable(sde, stepping.time, us)
            y_T = x_T / right_pad(sde.marginal(ts[0])[0], x_T)
            func = ScaledProbabilityFlowODE(score, sde, stepping.time)
        traj = self.integrate(func, y_T, us, stepping)
        if stepping.time != "t":
            traj = traj * right_pad(sde.marginal(ts)[0], traj)
        return Path(ts, traj)

    def integrate(self, func: torch.nn.Module, y0: Any, us: torch.Tensor, stepping: Stepping, *, adjoint: bool = False) -> Any:
        """``torchdiffeq.odeint`` (or ``odeint_adjoint``) of ``func`` from ``y0`` at ``us[0]`` to every time in ``us``.

        Adaptive solves stop exactly at the last time (``step_t``): torchdiffeq otherwise steps past it and
        interpolates back, evaluating the vector field beyond the interval (below ``t_min``, where
        :math:`\\sigma(t)^2` may be negative, or beyond T).

        Raises:
            RuntimeError: if an adaptive solve needs more than the ``max_num_steps`` option allows.
        """
        options = dict(self.options)
        rtol = atol = 1e-7  # unused by fixed-grid methods, which torchdiffeq still asks for
        if isinstance(stepping, Tolerances):
            rtol, atol = stepping.rtol, stepping.atol
            options["step_t"] = us[-1:]
        elif stepping.step_size is not None:
            options["step_size"] = stepping.step_size
        kwargs: dict[str, Any] = {"method": self.library_name, "rtol": rtol, "atol": atol, "options": options or None}
        if adjoint:
            # The adjoint's backward solve runs from the last time to the first: stop it exactly there.
            backward = {k: v for k, v in options.items() if k != "step_t"}
            if isinstance(stepping, Tolerances):
                backward["step_t"] = us[:1]
            kwargs["adjoint_options"] = backward
        odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        try:
            return odeint(func, y0, us, **kwargs)
        except AssertionError as err:
            if "max_num_steps" not in str(err):
                raise
            raise RuntimeError(
                f"{self.library_name}: the adaptive solve took more than max_num_steps="
                f"{self.options.get('max_num_steps')} steps; raise options={{'max_num_steps': ...}} or loosen rtol/atol."
            ) from None


_ADAPTIVE_OPTIONS = {
    "first_step": positive_option(None, "length of the first step (default: torchdiffeq's estimate)"),
    "safety": positive_option(0.9, "factor on the optimal next step"),
    "ifactor": positive_option(10.0, "largest growth of the step from one step to the next", above=1.0),
    "dfactor": positive_option(0.2, "largest shrinking of the step (a factor in (0, 1))"),
    "max_num_steps": int_option(2**31 - 1, "steps (accepted and rejected) before giving up with a RuntimeError"),
}


def _register(
    name: str, order: int, nfe_per_step: int, summary: str, *, adaptive: bool, library_name: str | None = None
) -> None:
    register(
        Method(
            name=name,
            kinds=("ode", "likelihood"),
            backend="torchdiffeq",
            solver=partial(TorchdiffeqSolver, library_name or name),
            summary=summary,
            order=order,
            nfe_per_step=nfe_per_step,
            adaptive=adaptive,
            step_size=not adaptive,
            time_variables=TIME_VARIABLES,
            options=_ADAPTIVE_OPTIONS if adaptive else {},
        )
    )


_register("euler", 1, 1, "explicit Euler", adaptive=False)
_register("midpoint", 2, 2, "explicit midpoint rule", adaptive=False)
_register("heun", 2, 2, "Heun's method (torchdiffeq's heun2)", adaptive=False, library_name="heun2")
_register("heun3", 3, 3, "Heun's third-order method", adaptive=False)
_register("rk4", 4, 4, "classical fourth-order Runge-Kutta (3/8 rule)", adaptive=False)
# Adaptive methods: score evaluations per attempted step after the first two (FSAL reuses one).
_register("dopri5", 5, 6, "Dormand-Prince 5(4), error-controlled", adaptive=True)
_register("dopri8", 8, 13, "Dormand-Prince 8(7), error-controlled", adaptive=True)
_register("bosh3", 3, 3, "Bogacki-Shampine 3(2), error-controlled", adaptive=True)
_register("fehlberg2", 2, 2, "Runge-Kutta-Fehlberg 2(1), error-controlled", adaptive=True)
_register("adaptive_heun", 2, 1, "Heun-Euler 2(1), error-controlled", adaptive=True)
