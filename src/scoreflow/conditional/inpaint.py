r"""Inpainting by replacement (score_sde) and by RePaint's resampling (Lugmayr et al. 2022).

On the grid :math:`T = t_0 > \dots > t_N = t_{min}` of :func:`scoreflow.sample_pc` (its ``schedule``, by
default uniform in t but Karras' on EDM) each reverse step is a predictor-corrector step of that sampler
followed by the replacement of the known coordinates with a fresh draw of their forward marginal,
:math:`x_o \leftarrow \alpha(t')\,v + \sigma(t')\,z`.  The unknown coordinates are then moved by
:math:`\nabla_u \log p_t(x_u, x_o)`, the score given the *noisy* known block: replacement samples
:math:`p(x_u \mid x_o = v)` only where :math:`x_u` and :math:`x_o` are independent, and is biased otherwise.
RePaint harmonizes the two blocks by resampling: after reaching certain grid times it noises the state back
``jump`` steps with the exact forward transition :math:`x_{t} = a\,x_{t'} + G z` and descends again,
``resample - 1`` times.  Jumps count steps of the same grid: on a grid that is not uniform a jump from
:math:`t_k` noises to :math:`t_{k - jump}`, and the descent retraces the grid's own steps (as RePaint's jumps
on a respaced DDPM schedule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._checks import (
    check_batch, check_bool, check_broadcastable, check_choice, check_generator, check_int, check_positive, resolve_t_min,
)
from .._tensor import standard_normal
from ..dynamics.counting import CountedScore, ScoreFn
from ..methods import Method, StepCallback, get_method, int_option, list_methods, register
from ..sampling._common import solving, step_monitor, tweedie
from ..sampling.pc import pc_grid
from ..sampling.predictors import check_ancestral, corrector_alphas, forward_transition, predictor_coefficients
from ..sampling.result import SampleResult
from ..sde import ForwardSDE, check_diffusion_finite_at_T

__all__ = ["inpaint", "repaint_schedule"]


def repaint_schedule(steps: int, resample: int = 1, jump: int = 1) -> list[int]:
    """The grid indices RePaint visits, from 0 (time T) to ``steps`` (``t_min``).

    An index one above its predecessor is a reverse step; a smaller one is a jump back up the grid by
    forward noising.  RePaint's jump schedule: after each reverse step that lands ``m`` steps before the end,
    with ``m - 1`` a multiple of ``jump`` below ``steps - jump`` (so the last jump starts one step before
    the end, and the first block is not resampled), the state jumps back ``jump`` steps, ``resample - 1``
    times per landing point.

    Raises:
        TypeError, ValueError: unless ``steps``, ``resample`` and ``jump`` are ints >= 1, with ``jump < steps``
            when ``resample > 1``.
    """
    fn = "repaint_schedule"
    check_int(fn, "steps", steps)
    check_int(fn, "resample", resample)
    check_int(fn, "jump", jump)
    if resample > 1 and jump >= steps:
        raise ValueError(f"{fn}: argument 'jump' expected fewer grid steps than steps={steps}, got jump={jump}.")
    remaining = {m + 1: resample - 1 for m in range(0, steps - jump, jump)}
    visited, k = [0], 0
    while k < steps:
        k += 1
        visited.append(k)
        if remaining.get(steps - k, 0) > 0:
            remaining[steps - k] -= 1
            k -= jump
            visited.append(k)
    return visited


@dataclass(frozen=True)
class Resampling:
    """What an inpainting record builds: whether ``resample`` applies, and RePaint's jump length."""

    resampling: bool
    jump: int = 1


register(Method(
    "replacement", ("conditional",), "native", lambda: Resampling(resampling=False),
    "score_sde's inpainter: after every step the known coordinates are replaced by a draw of their forward marginal",
    front_end='inpaint(method="replacement")',
))
register(Method(
    "repaint", ("conditional",), "native", lambda jump=1: Resampling(resampling=True, jump=jump),
    "RePaint: replacement plus resampling, noising back `jump` steps and descending again `resample - 1` times",
    front_end='inpaint(method="repaint", resample=R)',
    options={"jump": int_option(1, "grid steps of each jump back (RePaint's jump length; 1 resamples every step)")},
))


def _check_known(fn: str, known: Any, mask: Any, x_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``known`` and ``mask`` broadcast to ``x_T``'s shape; entries of ``known`` outside the mask are set to 0."""
    shape = tuple(x_T.shape)
    mask = check_broadcastable(fn, "mask", mask, shape, boolean=True)
    known = check_broadcastable(fn, "known", known, shape)
    if known.device != x_T.device or mask.device != x_T.device:
        raise ValueError(f"{fn}: 'known' and 'mask' expected device {x_T.device} (the device of x_T), got {known.device} and {mask.device}.")
    mask = mask.expand(shape)
    known = torch.where(mask, known.to(x_T.dtype).expand(shape), 0.0)
    if not bool(torch.isfinite(known).all()):
        raise ValueError(f"{fn}: argument 'known' contains NaN or infinite values where 'mask' is True.")
    return known, mask


def inpaint(
    score: ScoreFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    method: str = "replacement",
    steps: int | None = None,
    schedule: str | torch.Tensor | None = None,
    resample: int | None = None,
    predictor: str = "reverse_diffusion",
    corrector: str | None = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    denoise_final: bool = False,
    enable_grad: bool = False,
    options: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""Sample the unknown coordinates given ``known`` values where ``mask`` is True, from T down to ``t_min``.

    Every reverse step is a step of the ``predictor`` (and ``corrector``) of :func:`scoreflow.sample_pc` on its
    grid (``steps`` and ``schedule`` as there); after it the known coordinates are replaced by
    :math:`\alpha(t)\,v + \sigma(t)\,z` with fresh noise z. ``method="repaint"`` adds RePaint's resampling
    (see :func:`repaint_schedule`).  The returned samples equal ``known`` on the mask.

    Args:
        score: the unconditional score model ``score(x, t)``.
        sde: the forward SDE.
        x_T: initial states at time T, shape ``(B, *D)``.
        known: the observed values, shape ``(*D)`` (shared) or ``(B, *D)``, or either with size-1 dimensions
            broadcast (torch's rules, never growing ``x_T``); entries outside ``mask`` are ignored (they may be NaN).
        mask: boolean, True where a coordinate is known; the shapes ``known`` takes, e.g. ``(B, 1, H, W)`` for a
            mask shared by the channels, as diffusers' inpainting pipelines give it.
        method: ``"replacement"`` or ``"repaint"`` (the ``"conditional"`` methods of the registry taken by ``inpaint``).
        steps: number N of grid steps from T to ``t_min`` (give this, or a ``schedule`` grid); without a
            ``schedule`` uniform in t, except on EDM's clock :math:`t = \sigma`, where they are Karras' (rho = 7),
            as for :func:`scoreflow.sample_pc`: a uniform t grid leaves :math:`\sigma < 1` to its last 1/80 (its
            last of 300 steps goes from :math:`\sigma` = 0.27 to 0.002); on six random Gaussians the inpainted
            covariance's relative error was 0.36 on it against Karras' 0.039 in the median at 300 steps, 0.099
            against 0.014 at 1000 (exact draws: 0.021; ``benchmarks/bench_inpaint_grids.py``).
        schedule: as in :func:`scoreflow.sample_pc`: a schedule name of :func:`scoreflow.time_grid` for
            ``steps`` steps (e.g. ``"t"``, the uniform grid), or the grid itself, a decreasing 1-D tensor of times
            from T to ``t_min``.  RePaint's ``jump`` counts steps of this grid.
        resample: RePaint's number of passes over each resampled block (``method="repaint"`` only; default 10).
        predictor: ``"reverse_diffusion"``, ``"euler_maruyama"`` or ``"ancestral"`` (VP and VE only; RePaint's DDPM).
        corrector: ``"langevin"`` or ``None``.
        snr, corrector_steps: the corrector's signal-to-noise ratio and steps per grid step.
        t_min: final time (default ``sde.t_min``).
        generator: seeds all noise; equal generator states give bit-identical samples.
        return_trajectory: also return the states at every visited grid time (RePaint's go back up).
        denoise_final: finish with Tweedie's step :math:`(x + \sigma^2 s)/\alpha` at ``t_min`` (one NFE).
        enable_grad: keep the autograd graph; off by default.
        options: the method's options, e.g. ``{"jump": 10}`` for RePaint's jump length.
        callback: ``callback(info)`` after every move on the grid, as in :func:`scoreflow.sample_pc`: each reverse
            step (predictor, corrector and the replacement of the known coordinates) and each of RePaint's jumps
            back up, whose ``info["t"]`` is the later time it noises to.  ``info["x"]`` has the known coordinates
            replaced; ``info["denoised"]`` is the unconditional model's prediction at it (free when the next
            reverse step evaluates the score there).  The next move starts from the state it returns.
        progress: show a tqdm progress bar over the moves (``pip install 'scoreflow[progress]'``).

    Returns:
        A :class:`SampleResult` with ``samples`` (equal to ``known`` on the mask), ``nfe`` = reverse steps x
        (1 + ``corrector_steps`` with a corrector) (+1 with ``denoise_final``), and ``stats`` with the number
        of reverse steps and jumps.

    Raises:
        ValueError: for a process that reaches pure noise at T (a flow path: truncate it, as for
            :func:`scoreflow.sample_pc`), an unknown method, predictor or corrector (listing the valid ones), ``resample`` with
            ``method="replacement"``, a ``jump`` of ``steps`` or more (the grid's steps), neither ``steps`` nor
            a ``schedule`` grid, an unknown or malformed ``schedule`` (as :func:`scoreflow.sample_pc`), shapes of
            ``known``/``mask`` that do not match ``x_T``, non-finite known values, ``t_min`` outside ``(0, T)``.
        TypeError: for arguments of the wrong type, an ``x_T`` that is not float32 or float64 (as
            :func:`scoreflow.sample_pc`), an option the method does not take, a score returning the wrong dtype, or a
            callback returning something other than ``None`` or a state.
        ImportError: for ``progress=True`` without tqdm.
        NonFiniteError: if the score or the state becomes NaN/inf; the message names the time (found when the
            solve ends).
    """
    fn = "inpaint"
    check_diffusion_finite_at_T(fn, sde)
    check_bool(fn, "denoise_final", denoise_final)  # "no" would read as true and add Tweedie's step
    check_choice(fn, "method", method, [m.name for m in list_methods("conditional") if m.front_end.startswith(f"{fn}(")])
    plan = get_method("conditional", method).build(fn, options)
    if resample is not None and not plan.resampling:
        raise ValueError(f"{fn}: argument 'resample' applies to method='repaint', got resample={resample!r} with method={method!r}.")
    resample = 1 if not plan.resampling else 10 if resample is None else check_int(fn, "resample", resample)
    jump = plan.jump
    get_method("predictor", predictor, caller=fn, argument="predictor")
    if predictor == "ancestral":
        check_ancestral(fn, sde)
    correct = None
    if corrector is not None:
        correct = get_method("corrector", corrector, caller=fn, argument="corrector").solver
        check_positive(fn, "snr", snr)
        check_int(fn, "corrector_steps", corrector_steps)
    check_generator(fn, generator, x_T, "x_T")
    t_min = resolve_t_min(fn, sde, t_min)
    check_batch(fn, "x_T", x_T, state=True)  # float32/float64, as sample_pc: half precision collapses the grid
    known, mask = _check_known(fn, known, mask, x_T)
    ts = pc_grid(fn, sde, steps=steps, schedule=schedule, t_min=t_min)
    steps = len(ts) - 1
    if resample > 1 and jump >= steps:
        raise ValueError(f"{fn}: option 'jump' expected fewer grid steps than steps={steps}, got jump={jump}.")

    # Everything the loop needs, on the host before it starts (float64 coefficients, as sample_pc); the score
    # and the monitor see the grid in x's dtype, one time object per grid point (so a prediction read by the
    # callback is the evaluation the next reverse step reuses).
    ts_x = ts.to(dtype=x_T.dtype, device=x_T.device)
    times = ts_x.unbind()
    c_x, c_s, c_z = (c.tolist() for c in predictor_coefficients(predictor, sde, ts))
    alphas = corrector_alphas(sde, ts).tolist()
    alpha, sigma = (c.tolist() for c in sde.marginal(ts))
    visited = repaint_schedule(steps, resample, jump)
    moves = list(zip(visited[:-1], visited[1:]))
    back = [(a, b) for a, b in moves if b < a]
    scales, variances = (c.tolist() for c in forward_transition(sde, ts[[b for _, b in back]], ts[[a for a, _ in back]]))
    jumps = dict(zip(back, zip(scales, variances)))
    counted = CountedScore(score, caller=fn, sde=sde)
    monitor = step_monitor(fn, counted, sde, callback=callback, progress=progress, return_trajectory=return_trajectory)

    def replace(x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.where(mask, alpha[k] * known + sigma[k] * standard_normal(x, generator), x)

    x = replace(x_T, 0)
    with solving(counted, monitor, times[0], x, enable_grad=enable_grad, steps=len(moves)):
        for i, (a, b) in enumerate(moves):
            if b == a + 1:
                x = c_x[a] * x + c_s[a] * counted(x, times[a]) + c_z[a] * standard_normal(x, generator)
                if correct is not None:
                    x = replace(x, b)
                    x = correct(counted, x, times[b], alpha=alphas[a], snr=snr, steps=corrector_steps, generator=generator)
                x = replace(x, b)
            else:  # RePaint: back up the grid by the exact forward transition
                scale, var = jumps[(a, b)]
                x = scale * x + var**0.5 * standard_normal(x, generator)
            x = monitor.step(i, times[b], x)
        counted.finite.record("state", x, t_min)
        if denoise_final:
            x = tweedie(counted, sde, x, times[-1])
        samples = torch.where(mask, known, x)
    stats = {"reverse_steps": sum(b > a for a, b in moves), "jumps": sum(b < a for a, b in moves), "resample": resample, "jump": jump}
    trajectory = monitor.trajectory() if return_trajectory else (None, None)
    return SampleResult(samples=samples, nfe=counted.nfe, times=trajectory[0], trajectory=trajectory[1], stats=stats)
