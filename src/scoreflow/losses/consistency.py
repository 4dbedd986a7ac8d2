r"""Consistency distillation (CD) and consistency training (CT) losses (Song et al. 2023; Song & Dhariwal 2023).

On a grid :math:`T = t_0 > t_1 > \dots > t_N = t_{min}` (EDM/Karras times by default) each sample draws a step
:math:`i \sim U\{0, \dots, N-1\}` and noise :math:`z`, sets :math:`x_{t_i} = \alpha(t_i)x_0 + \sigma(t_i)z` and compares

.. math:: \lambda(t_i, t_{i+1})\; d\big(f(x_{t_i}, t_i),\; f^-(\hat x_{t_{i+1}}, t_{i+1})\big),

:math:`f^-` the target network without gradient (an EMA copy, or f itself: a stop-gradient).  CD takes
:math:`\hat x_{t_{i+1}}` from one step of a probability-flow ODE method on the teacher's score; CT from the
unbiased score estimate :math:`-z/\sigma(t_i)`, whose DDIM step (Euler in :math:`\sigma/\alpha`) lands on
:math:`\hat x_{t_{i+1}} = \alpha(t_{i+1})x_0 + \sigma(t_{i+1})z`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .._checks import call_checked, check_batch, check_callable, check_choice, check_generator, check_int, check_like, check_positive, check_schedule_name, check_time_grid
from .._tensor import right_pad, standard_normal
from ..consistency._common import boundary_time, default_schedule
from ..consistency.teacher import ODEStep
from ..dynamics.counting import CountedScore, ScoreFn
from ..errors import NonFiniteError
from ..parameterizations import check_native_at_pure_noise
from ..schedules import LOG_SNR_SCHEDULES, SCHEDULES, check_log_snr_ends, time_grid
from ..sde import ForwardSDE, check_sde
from ..solvers.adaptive import AdaptiveExponentialPC
from ..solvers.base import NativeSolver, check_native_ends
from ._common import call_weighting, check_reduction, check_score, reduce, sq_norm

__all__ = ["consistency_distillation_loss", "consistency_training_loss", "CONSISTENCY_DISTANCES", "CONSISTENCY_WEIGHTINGS"]

ConsistencyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Distances d: the squared L2 norm, or the pseudo-Huber :math:`\sqrt{\|a-b\|^2 + c^2} - c` of iCT.
CONSISTENCY_DISTANCES = ("l2", "pseudo_huber")
#: Weightings lambda: 1 (CT/CD), or iCT's :math:`1/(\bar\sigma(t_i) - \bar\sigma(t_{i+1}))` with :math:`\bar\sigma = \sigma/\alpha`.
CONSISTENCY_WEIGHTINGS = ("uniform", "inverse_step")
Weighting = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Setup:
    """The checked arguments shared by both losses and the draw of ``(t_i, t_{i+1}, z)`` per sample."""

    def __init__(
        self, fn: str, f: Any, f_target: Any, sde: Any, x0: Any, *, steps: Any, schedule: Any, distance: Any,
        huber_c: Any, weighting: Any, shared_step: Any, t_min: Any, generator: Any, reduction: Any,
    ) -> None:
        self.fn = fn
        if not isinstance(shared_step, bool):
            raise TypeError(f"{fn}: argument 'shared_step' expected True or False, got {type(shared_step).__name__} {shared_step!r}.")
        self.shared_step = shared_step
        check_callable(fn, "f", f, "f(x, t)")
        check_callable(fn, "f_target", f_target, "f_target(x, t)")
        self.sde = check_sde(fn, sde)
        check_batch(fn, "x0", x0)
        self.t_min = boundary_time(fn, f, sde, t_min)
        boundary_time(fn, f_target, sde, self.t_min, name="f_target")
        self.distance = check_choice(fn, "distance", distance, CONSISTENCY_DISTANCES)
        if huber_c is not None and distance != "pseudo_huber":
            raise ValueError(
                f"{fn}: argument 'huber_c' is the c of distance='pseudo_huber', got huber_c={huber_c!r} with "
                f"distance={distance!r}, which has no c. Fix: distance='pseudo_huber', or omit huber_c."
            )
        dim = x0[0].numel()
        # iCT's c = 0.00054 sqrt(D), for data scaled to [-1, 1].
        self.huber_c = 0.00054 * math.sqrt(dim) if huber_c is None else check_positive(fn, "huber_c", huber_c)
        if not callable(weighting):
            check_choice(fn, "weighting", weighting, CONSISTENCY_WEIGHTINGS)
        if weighting == "inverse_step" and sde.pure_noise_at_T:
            # sigma/alpha is infinite at T: iCT's weight of the step from T is 1/inf = 0, which would drop the only
            # step that trains f at T (where sampling starts) without a word.
            raise ValueError(
                f"{fn}: argument 'weighting' 'inverse_step' (iCT's 1/(sigma_i - sigma_{{i+1}}) with sigma = sigma/alpha) "
                f"gives the step from T={sde.T:g} weight 0 on {sde!r}, where alpha(T) = 0 and sigma/alpha is infinite: "
                "that step, the only one that trains f at T, would be dropped. Fix: weighting='uniform', a callable "
                "weighting(t_i, t_{i+1}) that is positive there, or a path that stops short of pure noise "
                f"(sde.truncated(T) with T < {sde.T:g})."
            )
        self.weighting = weighting
        check_generator(fn, generator, x0, "x0")
        check_reduction(fn, reduction)
        self.times = self._grid(fn, steps, schedule).to(dtype=x0.dtype, device=x0.device)
        self._check_distinct(fn, "schedule" if torch.is_tensor(schedule) else "steps")

    def _grid(self, fn: str, steps: Any, schedule: Any) -> torch.Tensor:
        if torch.is_tensor(schedule):
            ts = check_time_grid(fn, "schedule", schedule, self.sde.T, self.t_min)
            if steps is not None and steps != len(ts) - 1:
                raise ValueError(f"{fn}: a grid of {len(ts)} times has {len(ts) - 1} steps, got steps={steps!r}; omit 'steps'.")
            return ts
        if schedule is not None:
            check_schedule_name(fn, "schedule", schedule, SCHEDULES)
        steps = check_int(fn, "steps", 18 if steps is None else steps)
        schedule = schedule or default_schedule(self.sde)
        if schedule in LOG_SNR_SCHEDULES:  # named here, with this loss's t_min, rather than by time_grid
            check_log_snr_ends(fn, self.sde, schedule, self.t_min)
        return time_grid(self.sde, steps, schedule, t_min=self.t_min)

    def _check_distinct(self, fn: str, name: str) -> None:
        """The grid's times, in x0's dtype, must stay strictly decreasing: a step of zero length compares f with its
        target at the same time (a zero loss that trains nothing)."""
        flat = int((self.times[:-1] <= self.times[1:]).sum())
        if flat:
            raise ValueError(
                f"{fn}: argument '{name}' gives a grid of {len(self.times) - 1} steps, {flat} of them of zero length "
                f"(t_i == t_{{i+1}}) in {self.times.dtype}, the dtype of x0 that the times take: such a step compares f "
                "with its target at the same time and trains nothing. Fix: x0 in float32 or float64 (cast inside the "
                "model if it runs in half precision), or fewer steps."
            )

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """Per sample: ``t_i``, ``t_{i+1}``, the noise z and :math:`x_{t_i} = \\alpha x_0 + \\sigma z`."""
        count = 1 if self.shared_step else x0.shape[0]
        index = torch.randint(len(self.times) - 1, (count,), generator=generator, device=x0.device).expand(x0.shape[0])
        t_hi, t_lo = self.times[index], self.times[index + 1]
        z = standard_normal(x0, generator)
        alpha, sigma = self.sde.marginal(t_hi)
        return t_hi, t_lo, z, right_pad(alpha, x0) * x0 + right_pad(sigma, x0) * z

    def loss(
        self, f: ConsistencyFn, f_target: ConsistencyFn, x_hi: torch.Tensor, t_hi: torch.Tensor,
        x_lo: torch.Tensor, t_lo: torch.Tensor, reduction: str,
    ) -> torch.Tensor:
        """:math:`\\lambda\\, d(f(x_{hi}, t_{hi}), f^-(x_{lo}, t_{lo}))`, reduced; stops on a non-finite value."""
        online = check_like(self.fn, "f", call_checked(self.fn, "f", "f(x, t)", f, x_hi, t_hi), x_hi, what="f")
        with torch.no_grad():
            target = check_like(
                self.fn, "f_target", call_checked(self.fn, "f_target", "f_target(x, t)", f_target, x_lo, t_lo), x_lo,
                what="f_target",
            )
        sq = sq_norm(online - target)
        per = sq if self.distance == "l2" else torch.sqrt(sq + self.huber_c**2) - self.huber_c
        if callable(self.weighting):
            per = per * call_weighting(self.fn, self.weighting, "weighting(t_i, t_{i+1})", t_hi, t_lo, like=x_hi)
        elif self.weighting == "inverse_step":
            (a_hi, s_hi), (a_lo, s_lo) = self.sde.marginal(t_hi), self.sde.marginal(t_lo)
            per = per / (s_hi / a_hi - s_lo / a_lo)
        finite = torch.isfinite(per.detach())
        if not bool(finite.all()):
            t_bad = float(t_hi[~finite][0])
            raise NonFiniteError(f"{self.fn}: the loss became non-finite (NaN or inf) at t={t_bad:.6g}; check f and the teacher there.")
        return reduce(self.fn, per, reduction)


def _check_teacher_ends(fn: str, teacher: ODEStep, setup: _Setup) -> None:
    """Refuse up front a native teacher that cannot take the grid's first step (from T, at pure noise when alpha(T) =
    0) or its last (to t_min = 0 in log-SNR): the steps are drawn at random, so the solver's own refusal came or not
    with the draw."""
    method = teacher.solver
    native = isinstance(method, NativeSolver)
    if native or isinstance(method, AdaptiveExponentialPC):  # (the adaptive one starts at pure noise, never ends at 0)
        check_native_ends(type(method).__name__, setup.sde, setup.t_min, not native or method.from_pure_noise,
                          to_data=native and method.to_data, caller=fn)


def consistency_distillation_loss(
    f: ConsistencyFn,
    f_target: ConsistencyFn,
    score: ScoreFn,
    sde: ForwardSDE,
    x0: torch.Tensor,
    *,
    solver: str = "heun",
    steps: int | None = None,
    schedule: str | torch.Tensor | None = None,
    distance: str = "l2",
    huber_c: float | None = None,
    weighting: Weighting = "uniform",
    shared_step: bool = False,
    time: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    options: dict[str, Any] | None = None,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Consistency distillation: :math:`E\,\lambda\,d\big(f(x_{t_i}, t_i), f^-(\Phi^{solver}_{t_i\to t_{i+1}}(x_{t_i}), t_{i+1})\big)`.

    The teacher step :math:`\Phi^{solver}` is one step of any ``"ode"`` method of the registry on the
    teacher's ``score`` (:func:`scoreflow.consistency.teacher_step`): ``"heun"``, ``"euler"``, ``"edm_heun"``
    (Heun in :math:`\sigma/\alpha`, the paper's), ``"ddim"``, ``"dpm_solver_2"``, ...; an adaptive method such
    as ``"dopri5"`` solves the step to ``rtol``/``atol`` (a near-exact teacher).  Each sample costs the teacher
    ``nfe_per_step`` score evaluations of the method's first step (``sf.get_method("ode", solver)``).  With the
    exact teacher the minimizer is the exact consistency function at the grid times; with a one-step teacher it
    is the teacher's own solve through the grid down to ``t_min``.

    Args:
        f: the consistency model being trained, ``f(x, t)`` (:func:`scoreflow.consistency.parameterize`).
        f_target: the target :math:`f^-`, evaluated without gradient: an EMA copy of f
            (:func:`scoreflow.consistency.ema_update`) or ``f`` itself.
        score: the teacher's score ``score(x, t)``.
        sde: the forward SDE.
        x0: data, shape ``(B, *D)``.
        solver: the teacher's ``"ode"`` method.
        steps: grid steps N (default 18); give this or a ``schedule`` tensor.
        schedule: a named schedule (default ``"karras"``: EDM's, rho = 7, the paper's; ``"log_snr_capped"`` for a
            process that ends in pure noise) or the grid itself, a decreasing tensor of times from T to ``t_min``.
        distance: ``"l2"`` (squared, summed over data dims) or ``"pseudo_huber"``.
        huber_c: c of the pseudo-Huber distance (default iCT's :math:`0.00054\sqrt D`, for data in [-1, 1]); refused
            with ``distance="l2"``.
        weighting: ``"uniform"``, ``"inverse_step"`` or a callable ``weighting(t_i, t_{i+1}) -> (B,)`` of weights >= 0.
            ``"inverse_step"`` needs a finite :math:`\sigma/\alpha` at T: on a path that ends in pure noise its
            weight of the step from T is 0, so it is refused there.
        shared_step: draw one grid step i for the whole batch instead of one per sample: one teacher call per
            loss (samples sharing a step are stepped together), the cheapest for small models, at the price of a
            gradient that sees one time per call.
        time, rtol, atol, options: the teacher method's, as in :func:`scoreflow.sample_ode`.
        t_min: the boundary time (default ``f.t_min`` or ``sde.t_min``).
        generator: draws the steps, then the noise.
        reduction: ``"mean"`` over the batch or ``"none"`` (shape ``(B,)``).

    Returns:
        The loss.

    Raises:
        ValueError: for an unknown solver, schedule, distance or weighting (listing the valid ones), a ``huber_c``
            without ``distance="pseudo_huber"``, a malformed grid or ``x0``, a grid with steps of zero length in the
            dtype of ``x0`` (many steps in half precision), a ``t_min`` other than f's, on a path that
            ends in pure noise ``weighting="inverse_step"``, a teacher predicting a score or noise or a ``solver``
            that divides by alpha(T) = 0 (``dpm_solver_2``, ``edm_heun``, ...), a ``solver`` in log-SNR with
            ``t_min=0``, or outputs not shaped like ``x0``.
        TypeError: for a non-callable f, f_target or score, or a wrong sde, generator, option or dtype.
        NonFiniteError: if the teacher's score or the loss becomes NaN/inf; the message names the time.
    """
    fn = "consistency_distillation_loss"
    check_score(fn, score)
    setup = _Setup(
        fn, f, f_target, sde, x0, steps=steps, schedule=schedule, distance=distance, huber_c=huber_c,
        weighting=weighting, shared_step=shared_step, t_min=t_min, generator=generator, reduction=reduction,
    )
    check_native_at_pure_noise(fn, score, sde)  # the grid starts at T: the teacher steps from there
    teacher = ODEStep(fn, solver, sde, x0, time=time, rtol=rtol, atol=atol, options=options, argument="solver")
    _check_teacher_ends(fn, teacher, setup)
    t_hi, t_lo, _, x_hi = setup.draw(x0, generator)
    counted = CountedScore(score, caller=fn)
    with torch.no_grad(), counted.guard():
        x_lo = teacher(counted, x_hi, t_hi, t_lo)
    return setup.loss(f, f_target, x_hi, t_hi, x_lo, t_lo, reduction)


def consistency_training_loss(
    f: ConsistencyFn,
    f_target: ConsistencyFn,
    sde: ForwardSDE,
    x0: torch.Tensor,
    *,
    steps: int | None = None,
    schedule: str | torch.Tensor | None = None,
    distance: str = "l2",
    huber_c: float | None = None,
    weighting: Weighting = "uniform",
    shared_step: bool = False,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Consistency training: :math:`E\,\lambda\,d\big(f(\alpha_i x_0 + \sigma_i z, t_i), f^-(\alpha_{i+1}x_0 + \sigma_{i+1}z, t_{i+1})\big)`.

    No teacher: the score is replaced by its unbiased estimate :math:`-z/\sigma(t_i)` given :math:`x_0`, whose DDIM
    step lands on the same noise at :math:`t_{i+1}`.  Grow ``steps`` over training with
    :func:`scoreflow.consistency.discretization_steps` and decay the target with
    :func:`scoreflow.consistency.target_ema_decay`.  Arguments, returns and errors as
    :func:`consistency_distillation_loss`, without the teacher's.
    """
    fn = "consistency_training_loss"
    setup = _Setup(
        fn, f, f_target, sde, x0, steps=steps, schedule=schedule, distance=distance, huber_c=huber_c,
        weighting=weighting, shared_step=shared_step, t_min=t_min, generator=generator, reduction=reduction,
    )
    t_hi, t_lo, z, x_hi = setup.draw(x0, generator)
    alpha, sigma = sde.marginal(t_lo)
    x_lo = right_pad(alpha, x0) * x0 + right_pad(sigma, x0) * z
    return setup.loss(f, f_target, x_hi, t_hi, x_lo, t_lo, reduction)
