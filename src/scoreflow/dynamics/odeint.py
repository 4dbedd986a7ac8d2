r"""torchdiffeq's solvers behind scoreflow's registry: the only module that calls ``torchdiffeq``.

:class:`TorchdiffeqSolver` integrates the probability-flow ODE from T down to ``t_min`` in t, in the
scaled noise level :math:`\bar\sigma = \sigma/\alpha` or in the log-SNR (see :mod:`.reparameterized`),
and integrates any vector field (the likelihood's augmented ODE) in t.  The records below declare
torchdiffeq's methods; its Adams methods are left out (their start-up makes them unstable on VE
problems: error 3e18 at 256 steps).

Steps are reported to the solve's :class:`~scoreflow.methods.StepMonitor` as follows.  A fixed-grid solve
runs as one ``odeint`` call over the grid, unless the monitor must see the steps as they happen (a callback
or a progress bar): then it runs grid interval by grid interval, one call each, so that a callback's state
is the next step's start.  An adaptive solve reports each accepted step through torchdiffeq's step
callbacks (the state is reported when the next step starts from it, the last one when the solve returns);
a callback's replacement state restarts the solve from it, with the step the controller proposed next.
The states at the output times of an adaptive solve (``save_at``) are steps landed on those times.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torchdiffeq

from ..methods import Method, Solution, StepMonitor, Stepping, Tolerances, int_option, positive_option, register
from ..schedules import DATA_NOISE_LEVEL
from ..sde import ForwardSDE
from .counting import CountedScore
from .probability_flow import ProbabilityFlowODE
from .reparameterized import TIME_VARIABLES, ScaledProbabilityFlowODE, to_time_variable

__all__ = ["TorchdiffeqSolver"]


class _Restart(Exception):
    """A callback replaced the state at an accepted step: continue the solve from ``(u, y)`` with step ``dt``."""

    def __init__(self, u: torch.Tensor, y: torch.Tensor, dt: torch.Tensor) -> None:
        super().__init__()
        self.u, self.y, self.dt = u, y, dt


class _AcceptedSteps:
    """torchdiffeq step callbacks that report each accepted step to the monitor.

    torchdiffeq calls ``callback_accept_step(t0, y0, dt)`` with the step's *start*; the state it reached is the
    start of the next attempt (``callback_step``), or the solve's end for the last step (:meth:`finish`).
    """

    def __init__(self, monitor: StepMonitor, unscale: Callable, rescale: Callable) -> None:
        self.monitor, self.unscale, self.rescale = monitor, unscale, rescale
        self.i, self.pending, self.dt = 0, False, None

    def attach(self, func: torch.nn.Module) -> None:
        func.callback_step = self.step
        func.callback_accept_step = self.accept

    def accept(self, u0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.pending = True

    def step(self, u0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.dt = dt
        if self.pending:
            self.pending = False
            self.report(u0, y0, restart=True)

    def report(self, u: torch.Tensor, y: torch.Tensor, *, restart: bool) -> None:
        t, x = self.unscale(u, y)
        reported = self.monitor.step(self.i, t, x)
        self.i += 1
        if restart and reported is not x:
            raise _Restart(u, self.rescale(u, reported), self.dt)

    def finish(self, u: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Report the last accepted step, which ended the solve at ``(u, y)``, time ``t``; return the (replaced) state."""
        self.pending = False
        x = self.unscale(u, y)[1]
        reported = self.monitor.step(self.i, t, x)
        self.i += 1
        return y if reported is x else self.rescale(u, reported)


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
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Stepping, *, monitor: StepMonitor
    ) -> Solution:
        """Integrate the probability-flow ODE from ``x_T`` through ``stepping.times`` (decreasing, in t).

        Returns the final state; for an adaptive solve also the states at every time of ``stepping.times``.
        """
        time = stepping.time
        us = to_time_variable(sde, time, stepping.times)
        if time == "t":
            func: torch.nn.Module = ProbabilityFlowODE(score, sde)

            def unscale(u: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return u.to(y.dtype), y

            def rescale(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                return x
        else:
            func = ScaledProbabilityFlowODE(score, sde, time)
            unscale, rescale = func.state, func.scaled
        y_T = rescale(us[0], x_T)
        if isinstance(stepping, Tolerances):
            return self._adaptive(func, y_T, us, stepping, monitor, unscale, rescale)
        return self._fixed(func, y_T, us, stepping, monitor, unscale, rescale)

    def _fixed(self, func, y, us, stepping, monitor, unscale, rescale) -> Solution:
        # The monitor sees the grid's own times (not their round trip through the time variable).
        times = stepping.times.unbind()
        if not monitor.live:
            ys = self.integrate(func, y, us, stepping)
            if monitor.keeps:
                for i in range(1, len(us)):
                    monitor.step(i - 1, times[i], unscale(us[i], ys[i])[1])
            return Solution(unscale(us[-1], ys[-1])[1])
        for i in range(1, len(us)):
            y = self.integrate(func, y, us[i - 1 : i + 1], stepping)[-1]
            t, x = times[i], unscale(us[i], y)[1]
            reported = monitor.step(i - 1, t, x)
            y = y if reported is x else rescale(us[i], reported)
        return Solution(unscale(us[-1], y)[1])

    def _adaptive(self, func, y, us, stepping, monitor, unscale, rescale) -> Solution:
        steps = _AcceptedSteps(monitor, unscale, rescale) if monitor.live or monitor.keeps else None
        if steps is not None:
            steps.attach(func)
        # With a callback that may replace the state, each interval between output times is its own solve (a
        # replacement restarts only the interval it falls in); otherwise one solve interpolates every output.
        segments = [(0, len(us) - 1)] if monitor.callback is None else [(k, k + 1) for k in range(len(us) - 1)]
        saved, first_step = [y], self.options.get("first_step")
        for begin, end in segments:
            start = us[begin]
            while True:
                try:
                    ys = self.integrate(func, y, torch.cat([start.reshape(1), us[begin + 1 : end + 1]]), stepping,
                                        first_step=first_step)
                    break
                except _Restart as restart:
                    start, y, first_step = restart.u, restart.y, restart.dt
            saved.extend(ys[len(ys) - (end - begin) :])
            y = saved[-1]
            if steps is not None:
                y = saved[-1] = steps.finish(us[end], y, stepping.times[end])
        states = torch.stack([unscale(u, s)[1] for u, s in zip(us, saved)])
        return Solution(states[-1], states)

    def integrate(
        self, func: torch.nn.Module, y0: Any, us: torch.Tensor, stepping: Stepping, *, adjoint: bool = False,
        first_step: Any = None,
    ) -> Any:
        """``torchdiffeq.odeint`` (or ``odeint_adjoint``) of ``func`` from ``y0`` at ``us[0]`` to every time in ``us``.

        Adaptive solves step exactly onto every time of ``us`` (``step_t``): torchdiffeq otherwise steps past the
        last one and interpolates back, evaluating the vector field beyond the interval (below ``t_min``, where
        :math:`\\sigma(t)^2` may be negative, or beyond T), and its interpolants are less accurate than its steps
        (bosh3's by a factor 500 at rtol = atol = 1e-7), so dense output lands on the times asked for.

        Raises:
            RuntimeError: if an adaptive solve needs more than the ``max_num_steps`` option allows.
        """
        options = dict(self.options)
        rtol = atol = 1e-7  # unused by fixed-grid methods, which torchdiffeq still asks for
        if isinstance(stepping, Tolerances):
            rtol, atol = stepping.rtol, stepping.atol
            options["step_t"] = us[1:]
            if first_step is not None:
                options["first_step"] = first_step
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


# The fixed-step methods' grid in time="t" where a uniform t grid leaves the data's own scale (sigma/alpha < 1) to
# its last twentieth (EDM's clock, t = sigma): uniform in log-SNR, with 0.0002-0.44 of the uniform grid's path error
# in the median per method at 5-40 steps, at worst 0.53 on the design problems and 0.51 held out; on VP the other
# grids' errors were mixed (Euler 1.1-1.5 times worse on each in the median, rk4 several times better), so it keeps
# t there (benchmarks/bench_fixed_step_grids.py, docs/choosing-a-sampler.md).
_COARSE_T = {"coarse_t_schedule": "log_snr", "coarse_t_noise_level": DATA_NOISE_LEVEL}


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
            **({} if adaptive else _COARSE_T),
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
