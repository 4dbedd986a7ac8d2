r"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3).

On a grid :math:`T = t_0 > t_1 > \dots > t_N = t_{min}` (by default uniform in t, score_sde's, but Karras' on EDM;
any grid of ``schedule``, as for :func:`scoreflow.sample_sde`) each step moves the state from :math:`t_i` to
:math:`t_{i+1}` with a predictor (a discretization of the reverse SDE, see :mod:`.predictors`) and then takes
``corrector_steps`` Langevin steps towards :math:`p_{t_{i+1}}` with the signal-to-noise step rule

.. math:: \epsilon = 2\alpha_i\,(r\,\overline{\|z\|}/\overline{\|s\|})^2,\qquad
          x \leftarrow x + \epsilon\,s(x, t_{i+1}) + \sqrt{2\epsilon}\,z,

where r is ``snr``, the bars are batch means of per-sample norms (as in score_sde) and
:math:`\alpha_i = 1 - \beta_i` for VP/sub-VP, 1 for VE and EDM.  Both are read from the grid step by step: the predictor's
coefficients from the exact forward transition between :math:`t_{i+1}` and :math:`t_i`, and :math:`\beta_i` is
that transition's variance for VP, :math:`1 - \beta_i = \alpha(t_i)^2/\alpha(t_{i+1})^2`
(:func:`.predictors.corrector_alphas`), so a grid that is not uniform needs nothing else.  Predicting first and
correcting at the new time (the paper's order; score_sde's code corrects first) ends with a correction at
:math:`t_{min}`.  The score is only evaluated on grid times.
"""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_batch, check_bool, check_generator, check_int, check_positive, resolve_t_min
from .._tensor import standard_normal
from ..dynamics.counting import CountedScore, ScoreFn
from ..methods import Method, StepCallback, get_method, register, resolve_stepping
from ..schedules import DATA_NOISE_LEVEL
from ..sde import ForwardSDE, check_diffusion_finite_at_T
from ._common import solving, step_monitor, tweedie
from .predictors import check_ancestral, corrector_alphas, predictor_coefficients
from .result import SampleResult

__all__ = ["sample_pc"]


def _mean_norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1).mean()


def _langevin_correct(
    score: CountedScore,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    alpha: float,
    snr: float,
    steps: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``steps`` Langevin steps at time ``t`` with the signal-to-noise step size (none where the score is 0)."""
    for _ in range(steps):
        s = score(x, t)
        z = standard_normal(x, generator)
        s_norm = _mean_norm(s)
        # a score of norm 0 (e.g. a freshly initialised network) gives the rule no step size: skip the step, on the device
        step = torch.where(s_norm > 0, 2 * alpha * (snr * _mean_norm(z) / s_norm) ** 2, 0.0)
        x = x + step * s + torch.sqrt(2 * step) * z
    return x


# score_sde's "ald" corrector is the same step with a different size rule.
register(Method("langevin", ("corrector",), "native", _langevin_correct, "Langevin steps with the signal-to-noise step rule"))


# The grid of sample_pc, a record that is not registered (no front-end takes it by name): resolve_stepping reads its
# default, score_sde's uniform t grid, and Karras' where that grid leaves the data's own scale (sigma/alpha < 1) to
# its last twentieth (EDM, t = sigma), as for sample_sde's torchsde methods.  Measured (benchmarks/bench_pc_grids.py,
# 14 held-out mixtures, 20-100 steps, with and without the corrector): on EDM Karras' grid had 0.027-0.053 of the
# uniform grid's moment error in the median (0.09 at worst, better on 14 of 14); on VE 1.1-1.3 times it (worse).
_GRID = Method(
    "predictor-corrector", ("predictor", "corrector"), "native", _langevin_correct, "the grid of sample_pc",
    default_schedule="t", coarse_t_schedule="karras", coarse_t_noise_level=DATA_NOISE_LEVEL,
)


def pc_grid(fn: str, sde: ForwardSDE, *, steps: Any, schedule: Any, t_min: float) -> torch.Tensor:
    r"""The checked float64 grid :math:`T = t_0 > \dots > t_N = t_{min}` of :func:`sample_pc` (and of the front-end
    ``fn`` that steps as it does, :func:`scoreflow.inpaint`): ``steps`` steps placed by the ``schedule`` name, by
    default uniform in t except on EDM's clock (Karras'), or the ``schedule`` grid itself, as for
    :func:`scoreflow.sample_sde`.  On the host, for the coefficients read before the loop.

    Raises:
        ValueError, TypeError: as :func:`scoreflow.methods.resolve_stepping`, naming ``fn``.
    """
    exact = torch.empty(0, dtype=torch.float64)
    return resolve_stepping(fn, _GRID, sde, exact, start=sde.T, end=t_min, steps=steps, schedule=schedule).times


def sample_pc(
    score: ScoreFn,
    sde: ForwardSDE,
    x_T: torch.Tensor,
    *,
    steps: int | None = None,
    schedule: str | torch.Tensor | None = None,
    predictor: str | None = "reverse_diffusion",
    corrector: str | None = "langevin",
    snr: float = 0.16,
    corrector_steps: int = 1,
    t_min: float | None = None,
    denoise_final: bool = False,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    enable_grad: bool = False,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""Sample by alternating a reverse-SDE predictor step and Langevin corrector steps, from T to ``t_min``.

    Args:
        score: score model ``score(x, t)``.
        sde: the forward SDE (VP, sub-VP, VE, EDM).
        x_T: initial states at time T, shape ``(B, *D)`` (e.g. ``sde.prior_sample``).
        steps: number N of grid steps from T to ``t_min`` (give this, or a ``schedule`` grid); without a
            ``schedule`` uniform in t (score_sde's), except where that grid leaves the data's own scale
            (:math:`\sigma/\alpha < 1`) to its last twentieth, EDM's clock :math:`t = \sigma`, where they are
            Karras' (rho = 7), as for :func:`scoreflow.sample_sde`: there Karras' grid had 0.03-0.05 of the uniform
            grid's moment error in the median at 20-100 steps; on VE it had 1.1-1.3 times it
            (``benchmarks/bench_pc_grids.py``).
        schedule: as in :func:`scoreflow.sample_sde`: a schedule name of :func:`scoreflow.time_grid` for ``steps``
            steps (e.g. ``"karras"``), or the grid itself, a decreasing 1-D tensor of times from T to ``t_min`` (on
            EDM, where t = sigma, k-diffusion's sigmas without their final 0).
        predictor: ``"reverse_diffusion"``, ``"euler_maruyama"``, ``"ancestral"`` (VP, discrete VP and VE only;
            on a :class:`~scoreflow.adapters.DiscreteVPSDE` with ``steps = sde.n_steps - 1`` it is DDPM's chain) or
            ``None`` (corrector only: the time moves down the grid, the state only by Langevin steps).
        corrector: ``"langevin"`` or ``None`` (predictor only).
        snr: the target signal-to-noise ratio r of the corrector step (score_sde: 0.16 for VE, 0.01-0.17 for VP).
        corrector_steps: Langevin steps after each predictor step.
        t_min: final time (default ``sde.t_min``).
        denoise_final: finish with Tweedie's step :math:`(x + \sigma^2 s)/\alpha` at ``t_min`` (one NFE).
        generator: seeds all noise; equal generator states give bit-identical samples.
        return_trajectory: also return the states at every grid time.
        enable_grad: keep the autograd graph; off by default.
        callback: ``callback(info)`` after every grid step (predictor and correctors), as in
            :func:`scoreflow.sample_ode`; the next step starts from the state it returns.  Reading
            ``info["denoised"]`` costs no evaluation when the next predictor evaluates the score there.
        progress: show a tqdm progress bar (``pip install 'scoreflow[progress]'``).

    Returns:
        A :class:`SampleResult` at ``t_min`` with ``nfe`` = predictor calls (N) + corrector calls
        (N * corrector_steps) + the denoising call.

    Raises:
        ValueError: for a process that reaches pure noise at T (a flow path such as ``RectifiedFlow()``, whose
            reverse SDE has infinite diffusion there; truncate it, ``RectifiedFlow(T=0.999)``).
        ValueError: for an unknown predictor or corrector (the message lists the valid ones), both
            ``None``, ``"ancestral"`` with a sub-VP SDE, a non-positive ``snr``, ``steps`` or
            ``corrector_steps`` below 1, neither ``steps`` nor a ``schedule`` grid, an unknown or malformed
            ``schedule`` (as :func:`scoreflow.sample_sde`), ``t_min`` outside ``(0, T)`` or a malformed ``x_T``.
        TypeError: for arguments of the wrong type, a score returning the wrong dtype, or a callback returning
            something other than ``None`` or a state.
        ImportError: for ``progress=True`` without tqdm.
        NonFiniteError: if the score or the state becomes NaN/inf; the message names the time (found when the
            solve ends).
    """
    fn = "sample_pc"
    check_diffusion_finite_at_T(fn, sde)
    if predictor is not None:
        get_method("predictor", predictor, caller=fn, argument="predictor")
        if predictor == "ancestral":
            check_ancestral(fn, sde)
    if corrector is not None:
        correct = get_method("corrector", corrector, caller=fn, argument="corrector").solver
        check_positive(fn, "snr", snr)
        check_int(fn, "corrector_steps", corrector_steps)
    if predictor is None and corrector is None:
        raise ValueError(f"{fn}: predictor and corrector are both None; give at least one of them.")
    check_generator(fn, generator, x_T, "x_T")
    check_bool(fn, "denoise_final", denoise_final)
    t_min = resolve_t_min(fn, sde, t_min)
    check_batch(fn, "x_T", x_T, state=True)

    # Coefficients in float64 on the exact grid, read once before the loop; the score sees the grid in x's dtype.
    ts = pc_grid(fn, sde, steps=steps, schedule=schedule, t_min=t_min)
    steps = len(ts) - 1
    times = ts.to(dtype=x_T.dtype, device=x_T.device).unbind()
    if predictor is not None:
        c_x, c_s, c_z = (c.tolist() for c in predictor_coefficients(predictor, sde, ts))
    alphas = corrector_alphas(sde, ts).tolist() if corrector is not None else None
    counted = CountedScore(score, caller=fn, sde=sde)
    monitor = step_monitor(fn, counted, sde, callback=callback, progress=progress, return_trajectory=return_trajectory)

    x = x_T
    with solving(counted, monitor, times[0], x_T, enable_grad=enable_grad, steps=steps):
        for i in range(steps):
            if predictor is not None:
                x = c_x[i] * x + c_s[i] * counted(x, times[i]) + c_z[i] * standard_normal(x, generator)
            if corrector is not None:
                x = correct(
                    counted, x, times[i + 1], alpha=alphas[i], snr=snr, steps=corrector_steps, generator=generator
                )
            x = monitor.step(i, times[i + 1], x)
        counted.finite.record("state", x, t_min)
        samples = tweedie(counted, sde, x, times[-1]) if denoise_final else x
    stats = {
        "predictor": predictor,
        "corrector": corrector,
        "steps": steps,
        "corrector_steps": corrector_steps if corrector is not None else 0,
    }
    trajectory = monitor.trajectory() if return_trajectory else (None, None)
    return SampleResult(samples=samples, nfe=counted.nfe, times=trajectory[0], trajectory=trajectory[1], stats=stats)
