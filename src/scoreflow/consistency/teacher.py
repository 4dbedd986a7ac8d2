r"""One step of any registry ``"ode"`` method between two times, per sample: the teacher of consistency distillation.

A fixed-grid method takes exactly one step on the grid :math:`(t_{from}, t_{to})` (a multistep method's first step,
which has no history: ``dpmpp_2m``'s is DDIM's); an adaptive method solves from :math:`t_{from}` to :math:`t_{to}` to its
tolerances.  The solver is the registry's, called through its interface (``solver.sample(score, sde, x, stepping,
monitor=...)``, with a monitor that watches nothing), so the step is exactly the method's and every score evaluation
is counted.  Samples that share their pair of
times are stepped together, one solver call per distinct pair.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .._checks import check_batch, check_real
from ..dynamics.counting import CountedScore, ScoreFn
from ..dynamics.reparameterized import to_time_variable
from ..methods import StepMonitor, Stepping, get_method, resolve_stepping
from ..sde import ForwardSDE, check_sde

__all__ = ["ODEStep", "teacher_step"]


class ODEStep:
    """A registry ``"ode"`` method, resolved and validated once, that steps rows of a batch between their own times.

    Args:
        fn: the public function named in error messages.
        method: an ``"ode"`` method of the registry (``scoreflow.list_methods("ode")``).
        sde: the forward SDE.
        like: a tensor whose dtype and device the times take.
        time: torchdiffeq's integration variable (``"t"``, ``"sigma"``, ``"log_snr"``); native methods use their own.
        rtol, atol: tolerances of an adaptive method (default 1e-5).
        options: the method's options.
        argument: the name ``fn`` gives ``method`` (e.g. ``"solver"``), named in its error.

    Raises:
        ValueError, TypeError: as :func:`scoreflow.sample_ode` for the method, its options, ``time``, ``rtol``, ``atol``.
    """

    def __init__(
        self, fn: str, method: str, sde: ForwardSDE, like: torch.Tensor, *,
        time: str | None = None, rtol: float | None = None, atol: float | None = None, options: dict[str, Any] | None = None,
        argument: str = "method",
    ) -> None:
        self.spec = get_method("ode", method, caller=fn, argument=argument)
        self.solver = self.spec.build(fn, options)
        self.fn, self.sde, self.options = fn, sde, dict(options or {})
        # torchdiffeq's initial-step heuristic probes beyond a short interval (below t = 0 under VE, where sigma(t)
        # is undefined): an adaptive method that takes a first step is given the whole step as its first attempt.
        self.first_step = self.spec.adaptive and "first_step" in self.spec.options and "first_step" not in self.options
        # Checked once on the full interval; each step replaces the ends of the template.
        self.template: Stepping = resolve_stepping(
            fn, self.spec, sde, like, start=sde.T, end=sde.t_min, steps=None if self.spec.adaptive else 1,
            time=time, rtol=rtol, atol=atol,
        )
        # A teacher step is internal to a loss: nobody watches it, so the monitor returns every state at once.
        self.monitor = StepMonitor(fn)

    def __call__(self, score: CountedScore, x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> torch.Tensor:
        """Step row i of ``x`` from ``t_from[i]`` to ``t_to[i]`` (``(B,)`` tensors of times in x's dtype).

        Non-finite scores are recorded in ``score.finite``: call it inside ``score.guard()`` to have them raised.
        """
        pairs, group = torch.unique(torch.stack([t_from, t_to], dim=1), dim=0, return_inverse=True)
        out = torch.empty_like(x)
        still = (pairs[:, 0] == pairs[:, 1]).tolist()  # one host read for all pairs
        for k in range(pairs.shape[0]):
            rows = (group == k).nonzero().squeeze(1)
            if still[k]:  # a step of length zero is the identity (the solvers need an interval)
                out[rows] = x[rows]
                continue
            stepping = dataclasses.replace(self.template, times=pairs[k])
            solver = self.solver
            if self.first_step:
                span = to_time_variable(self.sde, stepping.time, pairs[k]).diff().abs()
                solver = self.spec.build(self.fn, {**self.options, "first_step": float(span)})
            out[rows] = solver.sample(score, self.sde, x[rows], stepping, monitor=self.monitor).state
        return out


def teacher_step(
    score: ScoreFn,
    sde: ForwardSDE,
    x: torch.Tensor,
    t_from: torch.Tensor | float,
    t_to: torch.Tensor | float,
    *,
    method: str = "heun",
    time: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, int]:
    r"""One step of the probability-flow ODE method ``method`` from ``t_from`` to ``t_to``, per sample.

    Args:
        score: score model ``score(x, t)``.
        sde: the forward SDE.
        x: states at ``t_from``, shape ``(B, *D)``.
        t_from, t_to: scalars or ``(B,)`` times in ``[sde.t_min, T]`` (``t_from > t_to`` to sample); rows sharing a
            pair are stepped in one solver call, rows with ``t_from == t_to`` are returned as they are.
        method: any ``"ode"`` method: ``"euler"``, ``"heun"`` (in ``time``), ``"edm_heun"`` (Heun in
            :math:`\sigma/\alpha`, the consistency-models paper's teacher), ``"ddim"``, ``"dpm_solver_2"``, ...; an adaptive
            method (``"dopri5"``) solves to ``rtol``/``atol`` instead.
        time, rtol, atol, options: as in :func:`scoreflow.sample_ode`.

    Returns:
        ``(x_to, nfe)``: the states at ``t_to`` and the number of score calls (each on the rows of one pair of
        times; a sample sees ``nfe_per_step`` of them for a fixed-grid method).

    Raises:
        ValueError, TypeError: for a bad method, option, time variable or tolerance, times outside
            ``[t_min, T]``, or a malformed ``x`` (or one that is not float32 or float64, as :func:`scoreflow.sample_ode`).
        NonFiniteError: if the score returns NaN/inf; the message names the time.
    """
    fn = "teacher_step"
    check_sde(fn, sde)
    check_batch(fn, "x", x, state=True)  # float32/float64, as sample_ode: an adaptive step's error estimate underflows in half
    step = ODEStep(fn, method, sde, x, time=time, rtol=rtol, atol=atol, options=options)
    ends = []
    for name, value in (("t_from", t_from), ("t_to", t_to)):
        value = value if torch.is_tensor(value) else check_real(fn, name, value)  # a string or None named here, not by torch
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if t.shape != x.shape[:1]:
            raise ValueError(f"{fn}: argument '{name}' expected a scalar or a ({x.shape[0]},) tensor of times, got shape {tuple(t.shape)}.")
        ends.append(t)
    lo, hi = float(torch.minimum(*ends).min()), float(torch.maximum(*ends).max())
    if not (lo >= sde.t_min * (1 - 1e-6) and hi <= sde.T * (1 + 1e-6)):  # also NaN
        raise ValueError(f"{fn}: arguments 't_from', 't_to' expected times in [t_min={sde.t_min:g}, T={sde.T:g}], got [{lo:g}, {hi:g}].")
    counted = CountedScore(score, caller=fn, sde=sde)
    with torch.no_grad(), counted.guard():
        out = step(counted, x, *ends)
    return out, counted.nfe
