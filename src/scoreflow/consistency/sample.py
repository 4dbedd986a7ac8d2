r"""One- and few-step sampling with a consistency function (Song et al. 2023, Algorithm 1).

One step is :math:`x = f(x_T, T)`.  The multistep (stochastic iterative) sampler then, for each time
:math:`\tau_1 > \dots > \tau_{N-1}` in :math:`(t_{min}, T)`, re-noises the estimate of :math:`x_{t_{min}}` to
:math:`\tau_n` by the forward process and maps it back:

.. math::
    x_{\tau} = a\,x + \sqrt{\sigma(\tau)^2 - a^2\sigma(t_{min})^2}\;z,\quad a = \alpha(\tau)/\alpha(t_{min}),\qquad
    x \leftarrow f(x_{\tau}, \tau),

the exact transition of the forward SDE from :math:`t_{min}` to :math:`\tau` (EDM: :math:`x + \sqrt{\tau^2 -
t_{min}^2}\,z`, as in the paper).  Every step costs one evaluation of f.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .._checks import (
    call_checked, check_batch, check_callable, check_choice, check_generator, check_int, check_like, resolve_t_min,
)
from .._tensor import standard_normal
from ..errors import NonFiniteError
from ..methods import StepCallback, StepMonitor
from ..sampling._common import grad_mode
from ..sampling.result import SampleResult
from ..schedules import SCHEDULES, time_grid
from ..sde import ForwardSDE, check_sde
from ._common import boundary_time, default_schedule

__all__ = ["sample_consistency", "renoise_times"]

ConsistencyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def renoise_times(
    sde: ForwardSDE, steps: int, schedule: str | None = None, *, t_min: float | None = None
) -> torch.Tensor:
    """The ``steps - 1`` re-noising times of a ``steps``-step sampler: the inner points of ``time_grid(sde, steps, schedule)``.

    ``schedule`` defaults to ``"karras"`` (``"log_snr_capped"`` for a process that ends in pure noise, where the
    Karras grid is undefined).

    Returns:
        A decreasing float64 tensor of shape ``(steps - 1,)`` (empty for one step).

    Raises:
        ValueError, TypeError: for ``steps < 1``, an unknown schedule, or one undefined on ``sde``.
    """
    fn = "renoise_times"  # checked here, so that an error names this function rather than time_grid
    check_sde(fn, sde)
    if schedule is not None:
        check_choice(fn, "schedule", schedule, SCHEDULES)
    t_min = resolve_t_min(fn, sde, t_min)
    if check_int(fn, "steps", steps) == 1:
        return torch.empty(0, dtype=torch.float64)
    return time_grid(sde, steps, schedule or default_schedule(sde), t_min=t_min)[1:-1]


def _check_times(fn: str, times: object, t_min: float, T: float) -> torch.Tensor:
    """A 1-D sequence of strictly decreasing times in ``(t_min, T)``, as float64."""
    try:
        ts = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{fn}: argument 'times' expected a sequence of times, got {type(times).__name__} {times!r}.") from None
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"{fn}: argument 'times' expected a non-empty 1-D sequence of times, got shape {tuple(ts.shape)}.")
    if not (torch.isfinite(ts).all() and (ts > t_min).all() and (ts < T).all() and (ts[1:] < ts[:-1]).all()):
        raise ValueError(
            f"{fn}: argument 'times' expected strictly decreasing times in (t_min={t_min:g}, T={T:g}), got {ts.tolist()}. "
            "Fix: e.g. scoreflow.consistency.renoise_times(sde, steps)."
        )
    return ts


def sample_consistency(
    f: ConsistencyFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    *,
    steps: int | None = None,
    times: Sequence[float] | torch.Tensor | None = None,
    schedule: str | None = None,
    generator: torch.Generator | None = None,
    t_min: float | None = None,
    return_trajectory: bool = False,
    enable_grad: bool = False,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""Sample with a consistency function ``f(x, t)`` in one step or, re-noising in between, in a few.

    Args:
        f: the consistency function ``f(x, t)`` (:func:`scoreflow.consistency.parameterize`, or an analytic
            law's ``consistency_function(sde)``), mapping ``x_t`` to ``x_{t_min}``.
        sde: the forward SDE f belongs to.
        x_T: initial states at time T, shape ``(B, *D)`` (e.g. ``sde.prior_sample``).
        steps: evaluations of f (default 1, or ``len(times) + 1``).
        times: the re-noising times :math:`\tau_1 > \dots > \tau_{N-1}` in ``(t_min, T)``; default the inner points
            of ``time_grid(sde, steps, schedule)`` (:func:`renoise_times`).
        schedule: the named schedule of the default times (``scoreflow.sampling.SCHEDULES``; default ``"karras"``, or
            ``"log_snr_capped"`` for a process that ends in pure noise).
        generator: seeds the re-noising; equal generator states give bit-identical samples.
        t_min: the boundary time of f (default ``f.t_min`` or ``sde.t_min``).
        return_trajectory: also return f's output after every step (``trajectory``) and the times it was
            evaluated at (``times``).
        enable_grad: keep the autograd graph; off by default.
        callback: ``callback(info)`` after every evaluation of f, as in :func:`scoreflow.sample_ode`: ``"i"`` the
            step, ``"t"`` the time reached (``t_min``: every step maps to it; f's evaluation time is
            ``stats["times"][i]``), ``"x"`` f's output and ``"denoised"`` the same tensor (f predicts the clean
            sample itself; reading it costs nothing).  A returned state is what the next step re-noises (and,
            after the last step, the sample).
        progress: show a tqdm progress bar in steps (``pip install 'scoreflow[progress]'``).

    Returns:
        A :class:`scoreflow.SampleResult` with ``samples`` at ``t_min``, ``nfe`` (evaluations of f, = steps) and
        ``stats["times"]``, the evaluation times.

    Raises:
        ValueError: for ``steps < 1``, ``steps`` disagreeing with ``times``, times outside ``(t_min, T)`` or not
            decreasing, an unknown schedule or a schedule with ``times``, a ``t_min`` other than f's, a malformed ``x_T`` or an output of f
            not shaped like ``x_T``.
        TypeError: for a non-callable f or a wrong ``sde``, ``generator``, output dtype, callback or
            callback output.
        ImportError: for ``progress=True`` without tqdm.
        NonFiniteError: if f returns NaN/inf (found once the sampler ends); the message names the time.
    """
    fn = "sample_consistency"
    check_callable(fn, "f", f, "f(x, t)")
    check_sde(fn, sde)
    check_batch(fn, "x_T", x_T)
    check_generator(fn, generator, x_T, "x_T")
    if schedule is not None:
        check_choice(fn, "schedule", schedule, SCHEDULES)
    t_min = boundary_time(fn, f, sde, t_min)
    if times is None:
        steps = 1 if steps is None else check_int(fn, "steps", steps)
        inner = renoise_times(sde, steps, schedule, t_min=t_min)
    else:
        if schedule is not None:
            raise ValueError(
                f"{fn}: argument 'schedule' places the default re-noising times; with 'times' given it has no effect, "
                f"got schedule={schedule!r}. Fix: omit one."
            )
        inner = _check_times(fn, times, t_min, sde.T)
        if steps is not None and check_int(fn, "steps", steps) != inner.numel() + 1:
            raise ValueError(
                f"{fn}: {inner.numel()} re-noising times make {inner.numel() + 1} steps, got steps={steps!r}; omit 'steps'."
            )
    if not isinstance(return_trajectory, bool):
        raise TypeError(f"{fn}: argument 'return_trajectory' expected True or False, got {type(return_trajectory).__name__}.")
    monitor = StepMonitor(fn, callback=callback, progress=progress)
    # Every coefficient and time before the loop: re-noising from t_min to each tau by the exact forward transition.
    eval_times = torch.cat([torch.tensor([float(sde.T)], dtype=torch.float64), inner]).to(dtype=x_T.dtype, device=x_T.device)
    alpha, sigma = sde.marginal(eval_times)
    alpha_min, sigma_min = sde.marginal(torch.full_like(eval_times[:1], t_min))
    a = (alpha / alpha_min).unbind()
    noise = torch.sqrt((sigma**2 - (alpha / alpha_min * sigma_min) ** 2).clamp(min=0.0)).unbind()
    t_eval = [t.expand(x_T.shape[0]) for t in eval_times.unbind()]
    t_end = torch.tensor(t_min, dtype=x_T.dtype, device=x_T.device)
    finite, outputs = [], []
    x = x_T
    with grad_mode(fn, enable_grad), monitor:
        monitor.start(eval_times[0], x_T, steps=len(t_eval))
        for i, t in enumerate(t_eval):
            x_tau = x_T if i == 0 else a[i] * x + noise[i] * standard_normal(x, generator)
            # every call (shape, dtype and device only: no value is read), so a later step cannot reshape the samples
            x = check_like(fn, "f", call_checked(fn, "f", "f(x, t)", f, x_tau, t), x_T, what="f")
            finite.append(torch.isfinite(x.detach()).all())  # on the device; read once, after the loop
            x = monitor.step(i, t_end, x, x)
            if return_trajectory:
                outputs.append(x)
    _check_finite(finite, eval_times)
    return SampleResult(
        samples=x, nfe=len(t_eval), times=eval_times if return_trajectory else None,
        trajectory=torch.stack(outputs) if return_trajectory else None, stats={"times": eval_times},
    )


def _check_finite(finite: list[torch.Tensor], times: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` at the first evaluation time whose output had a NaN or infinity (one host read)."""
    ok = torch.stack(finite)
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0])
        raise NonFiniteError(
            f"sample_consistency: f returned non-finite values (NaN or inf) at t={float(times[i]):.6g} (step {i + 1} of "
            f"{len(finite)}); check the consistency model at this time."
        )
