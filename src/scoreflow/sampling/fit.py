r"""Step schedules fitted to a model: a pilot solve on a few dozen draws chooses where a budget of steps goes (and,
given several methods, which method).

For the methods that step in the log-SNR the grids are the two-level family of :func:`scoreflow.time_grid` (``"log_snr_capped"`` with a cap and a floor),
uniform in :math:`u(\bar\sigma) = \log\big((\bar\sigma + \bar\sigma_f)/(1 + \bar\sigma/\bar\sigma_{cap})\big)`,
:math:`\bar\sigma = \sigma/\alpha`: log-SNR steps between the two levels, longer steps above the cap (where the data
prediction has not yet started to move) and below the floor (where it has settled).  Where these levels lie depends
on the data's scale and its finest structure, so they are fitted: the pilot draws are solved once accurately (the
error-controlled ``dpmpp_4m_pc_adaptive``), then with the chosen method on candidate grids, and the grid with the
smallest RMS path error on the pilot wins.  Two numbers fitted on dozens of draws generalize to the rest of the
batch (a free grid of ``steps - 1`` times fitted the same way over-fits the pilot).  For the methods whose default
grid is uniform in t (torchdiffeq's; the velocity predictor-correctors except on VP and EDM) they are SD3's
time-shift family ``time_grid(sde, steps, "shift",
shift=s)``: one number, from steps near the data (s < 1) to steps near the noise (s > 1).  The fitted grid is a plain
tensor of times, so the full batch runs on it with every sample treated alike, and it can be kept for later calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import (
    check_batch, check_callable, check_choice, check_distinct, check_int, check_positive, resolve_t_min,
)
from ..dynamics.counting import ScoreFn
from ..methods import get_method
from ..schedules import time_grid
from ..sde import ForwardSDE, check_sde
from .ode import sample_ode

__all__ = ["FittedSchedule", "fit_schedule", "FAMILIES"]

# Candidate levels: caps in sigma/alpha (absolute: the data's scale), floors in units of sigma/alpha at t_min.
_CAPS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
_FLOORS = (0.0, 0.3, 1.0, 3.0, 10.0)
# Candidate time shifts of the "shift" family (s < 1: steps near the data).
_SHIFTS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
#: The grid families :func:`fit_schedule` searches.
FAMILIES = ("log_snr_capped", "shift")


@dataclass(frozen=True)
class FittedSchedule:
    """A grid fitted to a model by :func:`fit_schedule`; pass ``times`` as ``schedule=`` to :func:`scoreflow.sample_ode`.

    Attributes:
        times: the ``steps + 1`` decreasing times from T to ``t_min`` (float64).
        method: the ``"ode"`` method it was fitted for (the best of those given).
        schedule: its family, ``"log_snr_capped"`` or ``"shift"``; ``time_grid(sde, steps, schedule,
            **schedule_options)`` rebuilds ``times``.
        schedule_options: the fitted ``time_grid`` keywords: ``sigma_cap`` and ``sigma_floor``, or ``shift``.
        pilot_error: RMS path error of ``method`` on ``times`` over the pilot draws, against their accurate solve.
        nfe: score evaluations the fit used (the accurate solve, unless given, and every candidate), each on ``rows`` draws.
        rows: the number of pilot draws.
        candidates: ``(method, schedule_options, pilot_error)`` of every grid tried, in order.
        reference: the accurate solution from the pilot draws (pass it to a fit for another budget on the same draws).
    """

    times: torch.Tensor
    method: str
    schedule: str
    schedule_options: dict[str, float]
    pilot_error: float
    nfe: int
    rows: int
    candidates: tuple[tuple[str, dict[str, float], float], ...]
    reference: torch.Tensor

    @property
    def sigma_cap(self) -> float | None:
        """The fitted cap of a ``"log_snr_capped"`` grid (None for a ``"shift"`` grid)."""
        return self.schedule_options.get("sigma_cap")

    @property
    def sigma_floor(self) -> float | None:
        """The fitted floor of a ``"log_snr_capped"`` grid (None for a ``"shift"`` grid)."""
        return self.schedule_options.get("sigma_floor")

    @property
    def shift(self) -> float | None:
        """The fitted time shift of a ``"shift"`` grid (None for a ``"log_snr_capped"`` grid)."""
        return self.schedule_options.get("shift")

    @property
    def steps(self) -> int:
        """The number of steps of the grid."""
        return len(self.times) - 1


def fit_schedule(
    score: ScoreFn,
    sde: ForwardSDE,
    x_pilot: torch.Tensor,
    steps: int,
    *,
    method: str | Sequence[str] = "dpmpp_3m_pc",
    family: str | None = None,
    reference_tol: float = 1e-6,
    reference: torch.Tensor | None = None,
    t_min: float | None = None,
    options: dict[str, Any] | None = None,
) -> FittedSchedule:
    r"""Fit the step grid of ``method`` (or the best of several methods) with ``steps`` steps to ``score`` on the pilot draws ``x_pilot``.

    The pilot is solved accurately by ``dpmpp_4m_pc_adaptive`` at ``rtol = atol = reference_tol``; then each method
    runs on every candidate grid of its family, and the (method, grid) with the least RMS error
    :math:`\sqrt{\mathrm{mean}(x - x_{ref})^2}` over the pilot wins:

    - ``"log_snr_capped"`` (the default for methods in the log-SNR): 35 grids with caps :math:`\bar\sigma_{cap}` in
      {0.5, 1, 2, 4, 8, 16, 64} and floors :math:`\bar\sigma_f` in {0, 0.3, 1, 3, 10} :math:`\times\,\bar\sigma(t_{min})`.
      (A staged search, caps first and then floors, took 13 solves and chose worse grids on the problems it was
      designed on; named grids ``"t"``, ``"karras"``, ``"log_snr"`` never won.)
    - ``"shift"`` (the default for methods whose default grid on ``sde`` is uniform in t: torchdiffeq's except on
      EDM, and ``velocity_*_pc`` except on VP and EDM, see ``Method.schedule_for``): 7 grids with time shifts s in
      {0.25, 0.35, 0.5, 0.7, 1, 1.4, 2} (``time_grid(sde, steps, "shift", shift=s)``; s = 1 is uniform in t).

    Costs the accurate solve (about 100 NFE) plus one solve of ``steps`` steps per candidate, all on
    ``len(x_pilot)`` draws (a few dozen suffice; ``FittedSchedule.nfe`` counts them).

    Args:
        score: the score model ``score(x, t)``.
        sde: the forward SDE or flow path.
        x_pilot: pilot draws from the prior, shape ``(m, *D)`` (e.g. ``sde.prior_sample((64, *D), generator=g)``);
            the fit depends on them only, not on the batch later sampled on the grid.
        steps: the budget of steps the grid is fitted for (a method of k NFE per step then costs k ``steps``).
        method: a fixed-grid ``"ode"`` method (default ``"dpmpp_3m_pc"``), or several, to choose from.
        family: the grid family for every method, one of ``FAMILIES`` (default: each method's, as above).
        reference_tol: tolerance of the accurate pilot solve.
        reference: the accurate solution at ``t_min`` from ``x_pilot`` if already known (``FittedSchedule.reference`` of
            an earlier fit on the same draws, e.g. for another budget); the accurate solve is then skipped.
        t_min: final time (default ``sde.t_min``; on a flow path 0 with a ``reference`` at t = 0 and ``"shift"`` grids).
        options: the methods' options, used in every candidate solve.

    Returns:
        A :class:`FittedSchedule`.

    Raises:
        ValueError: for an adaptive, unknown or repeated ``method``, no method, an unknown ``family``, ``steps < 1``, a
            non-positive ``reference_tol``, a malformed ``x_pilot``, a ``reference`` not shaped like it, on another
            device or not finite, or ``t_min`` outside ``(0, T)`` (0, on a flow path, only with a ``reference``
            and the ``"shift"`` family).
        TypeError: for arguments of the wrong type.
    """
    fn = "fit_schedule"
    check_callable(fn, "score", score, "score(x, t)")
    check_sde(fn, sde)
    if not isinstance(method, (str, list, tuple)):
        raise TypeError(
            f"{fn}: argument 'method' expected a method name or a non-empty sequence of them, got {type(method).__name__} {method!r}."
        )
    methods = [method] if isinstance(method, str) else list(method)
    if not methods:
        raise ValueError(f"{fn}: argument 'method' expected a method name or a non-empty sequence of them, got {method!r}.")
    if family is not None:
        check_choice(fn, "family", family, FAMILIES)
    families = {}
    for name in methods:
        spec = get_method("ode", name, caller=fn)
        if spec.adaptive:
            raise ValueError(f"{fn}: argument 'method' expected a fixed-grid method, got the adaptive {name!r}.")
        spec.build(fn, options)  # every candidate's options checked before the pilot solve, named as fit_schedule's
        # the family of the grid the method takes by default on this process (Method.schedule_for): time shifts of
        # a uniform t grid, or capped log-SNR grids (the velocity methods' default on VP and EDM is log-SNR, where
        # the best time shift was 3-70 times worse than the best capped grid under EDM; torchdiffeq's fixed-step
        # methods' on EDM)
        in_t = spec.schedule_for(sde) == "t"
        families[name] = family if family is not None else ("shift" if in_t else "log_snr_capped")
    check_distinct(fn, "method", methods, "method")  # each candidate grid would be solved once per repetition
    check_int(fn, "steps", steps)
    check_batch(fn, "x_pilot", x_pilot, state=True)
    reference_tol = check_positive(fn, "reference_tol", reference_tol)
    t_min = resolve_t_min(fn, sde, t_min)
    _check_t_min_zero(fn, sde, t_min, reference, [name for name in methods if families[name] == "log_snr_capped"])
    if reference is None:
        solve = sample_ode(score, sde, x_pilot, method="dpmpp_4m_pc_adaptive", rtol=reference_tol, atol=reference_tol, t_min=t_min)
        reference, nfe = solve.samples, solve.nfe
    else:
        if not torch.is_tensor(reference) or reference.shape != x_pilot.shape:
            got = f"shape {tuple(reference.shape)}" if torch.is_tensor(reference) else type(reference).__name__
            raise ValueError(f"{fn}: argument 'reference' expected a tensor shaped like x_pilot {tuple(x_pilot.shape)}, got {got}.")
        if reference.device != x_pilot.device:
            raise ValueError(f"{fn}: argument 'reference' expected the device of x_pilot, {x_pilot.device}, got {reference.device}.")
        check_batch(fn, "reference", reference)  # finite: a NaN made every candidate's error NaN and the first one "win"
        nfe = 0
    tried: list[tuple[str, dict[str, float], float]] = []
    for name in methods:
        for grid_options in _candidates(sde, families[name], t_min):
            grid = time_grid(sde, steps, families[name], t_min=t_min, **grid_options)
            res = sample_ode(score, sde, x_pilot, method=name, schedule=grid, t_min=t_min, options=options)
            nfe += res.nfe
            tried.append((name, grid_options, float((res.samples - reference).square().mean().sqrt())))
    best, grid_options, error = min(tried, key=lambda c: c[2])
    return FittedSchedule(
        times=time_grid(sde, steps, families[best], t_min=t_min, **grid_options), method=best, schedule=families[best],
        schedule_options=grid_options, pilot_error=error, nfe=nfe, rows=x_pilot.shape[0], candidates=tuple(tried),
        reference=reference,
    )


def _check_t_min_zero(fn: str, sde: ForwardSDE, t_min: float, reference: Any, in_log_snr: list[str]) -> None:
    """A flow path takes ``t_min = 0``, where the log-SNR is infinite: the accurate pilot solve (in log-SNR) and the
    capped log-SNR grids cannot reach it; only time shifts of a uniform t grid from a given ``reference`` can."""
    if t_min > 0 or (reference is not None and not in_log_snr):
        return
    why = (f"the capped log-SNR grids of {', '.join(map(repr, in_log_snr))} need" if in_log_snr else
           "the accurate pilot solve (dpmpp_4m_pc_adaptive, in log-SNR) needs")
    raise ValueError(
        f"{fn}: argument 't_min' expected a time > 0, where the log-SNR is finite ({why} it), got {t_min!r}. Fix: "
        f"t_min > 0 (sde.t_min={sde.t_min:g}), or, with methods that step in t to t = 0 (torchdiffeq's, "
        "'velocity_*_pc'), family='shift' and the accurate solution at t = 0 as 'reference'."
    )


def _candidates(sde: ForwardSDE, family: str, t_min: float) -> list[dict[str, float]]:
    """The ``time_grid`` keywords of the candidate grids of ``family``."""
    if family == "shift":
        return [{"shift": s} for s in _SHIFTS]
    s_min = math.exp(-float(sde.log_snr(torch.tensor(t_min, dtype=torch.float64))))
    # (a floor must lie below its cap: with a late t_min some of the larger floors do not)
    return [{"sigma_cap": cap, "sigma_floor": f * s_min} for cap in _CAPS for f in _FLOORS if f * s_min < cap]
