r"""Langevin Monte Carlo: unadjusted (ULA), Metropolis-adjusted (MALA) and annealed (NCSN).

Langevin dynamics :math:`dx = \nabla\log p(x)\,dt + \sqrt2\,dW` leaves :math:`p` invariant.  Its
Euler-Maruyama chain :math:`x \leftarrow x + \epsilon s(x) + \sqrt{2\epsilon} z` (ULA) is biased by
the step; a Metropolis-Hastings test (MALA) removes the bias.  With well-separated modes either
chain keeps the mode weights of its starting points; annealing over noise levels
:math:`\sigma_1 > \dots > \sigma_L` (Song & Ermon 2019) mixes while the modes still overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .._checks import (
    call_checked,
    check_batch,
    check_bool,
    check_callable,
    check_float_dtype,
    check_generator,
    check_int,
    check_log_prob_output,
    check_positive,
    check_sigmas,
)
from .._tensor import standard_normal
from ..dynamics.counting import CountedScore, ScoreFn
from ..methods import StepCallback
from ._common import solving, step_monitor
from .result import SampleResult

__all__ = ["langevin", "annealed_langevin", "geometric_sigmas"]

StationaryScore = Callable[[torch.Tensor], torch.Tensor]
LogProb = Callable[[torch.Tensor], torch.Tensor]


class _TimeFree(torch.nn.Module):
    """Present a target's score ``s(x)`` as ``s(x, t)`` so that :class:`CountedScore` can count it.

    The "time" handed along is the Langevin time ``k * step_size``, which non-finite errors report.
    """

    def __init__(self, score: StationaryScore, fn: str) -> None:
        super().__init__()
        self.score, self.fn = score, fn

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return call_checked(self.fn, "score", "score(x)", self.score, x)


def _sq_norm(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).pow(2).sum(dim=1)


def langevin(
    score: StationaryScore,
    x0: torch.Tensor,
    *,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
    log_prob: LogProb | None = None,
    enable_grad: bool = False,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""Run Langevin chains :math:`x \leftarrow x + \epsilon\,s(x) + \sqrt{2\epsilon}\,z` from ``x0``.

    Without ``log_prob`` this is the unadjusted Langevin algorithm (ULA), whose invariant law is
    biased by O(ε) (for :math:`N(\mu, C)` it is :math:`N(\mu, C(I - \epsilon C^{-1}/2)^{-1})`).
    With ``log_prob`` each move is a proposal accepted with the Metropolis-Hastings probability
    :math:`\min\{1, p(y)q(x|y)/(p(x)q(y|x))\}` (MALA), which leaves ``p`` exactly invariant.

    Args:
        score: the target's score ``score(x)`` :math:`= \nabla_x\log p(x)` (e.g. ``law.grad_log_prob``);
            for a time-dependent model use ``lambda x: score(x, t)``.
        x0: initial states, shape ``(B, *D)``; the B chains run independently.
        step_size: ε > 0.
        steps: number of Langevin steps.
        generator: seeds the noise (and MALA's uniforms); equal states give bit-identical runs.
        log_prob: ``log_prob(x)`` of shape ``(B,)``, up to a constant; turns on the MALA test.
        enable_grad: keep the autograd graph; off by default.
        callback: ``callback(info)`` after every step (MALA: after its accept/reject), as in
            :func:`scoreflow.sample_ode`, with ``"t"`` the Langevin time ``k * step_size`` and ``"denoised"`` the
            state itself (the chain targets p, which has no noise to remove); the next step starts from the
            state it returns.
        progress: show a tqdm progress bar (``pip install 'scoreflow[progress]'``).

    Returns:
        A :class:`SampleResult`; ``nfe`` counts score calls (``steps`` for ULA, ``steps + 1``
        for MALA, plus one for each state a callback returns to MALA).  For MALA ``stats`` holds
        ``acceptance_rate`` (over all chains and steps), ``chain_acceptance_rate`` (per chain, shape ``(B,)``)
        and ``n_log_prob``, the ``log_prob`` calls (as many as score calls).

    Raises:
        ValueError: for a non-positive ``step_size``, ``steps < 1``, a malformed ``x0`` or a
            ``log_prob`` that is not one finite value per chain.
        TypeError: for arguments of the wrong type, a score returning the wrong dtype, or a callback
            returning something other than ``None`` or a state.
        ImportError: for ``progress=True`` without tqdm.
        NonFiniteError: if the score or the log-density becomes NaN; the message names the
            Langevin time ``k * step_size`` (found when the chain ends).
    """
    fn = "langevin"
    check_batch(fn, "x0", x0, state=True)
    eps = check_positive(fn, "step_size", step_size)
    check_int(fn, "steps", steps)
    check_generator(fn, generator, x0, "x0")
    counted = CountedScore(_TimeFree(check_callable(fn, "score", score, "score(x)"), fn), caller=fn)
    lp = None if log_prob is None else check_log_prob_output(fn, log_prob, x0)
    noise_scale = math.sqrt(2 * eps)
    times = _LangevinClock(eps, steps, x0)
    monitor = step_monitor(fn, counted, None, callback=callback, progress=progress, return_trajectory=False,
                           denoise=lambda x, t: x)
    x = x0
    with solving(counted, monitor, times[0], x0, enable_grad=enable_grad, steps=steps):
        if lp is None:
            for k in range(steps):
                x = x + eps * counted(x, times[k]) + noise_scale * standard_normal(x, generator)
                x = monitor.step(k, times[k + 1], x)
            counted.finite.record("Langevin state", x, times[-1])
            return SampleResult(samples=x, nfe=counted.nfe, stats={"step_size": eps, "steps": steps})

        s = counted(x, times[0])
        n_log_prob = steps + 1  # the check's call at x0, one per proposal, and one per state a callback returns
        accepted = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for k in range(steps):
            z = standard_normal(x, generator)
            y = x + eps * s + noise_scale * z
            s_y = counted(y, times[k + 1])
            lp_y = log_prob(y)
            # log q(y|x) = -|z|^2/2 and log q(x|y) = -|x - y - eps s(y)|^2 / (4 eps), up to one constant.
            log_ratio = lp_y - lp + 0.5 * _sq_norm(z) - _sq_norm(x - y - eps * s_y) / (4 * eps)
            counted.finite.record("log_prob (at a proposal)", log_ratio, times[k + 1], nan_only=True)
            u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
            accept = torch.log(u) < log_ratio
            keep = accept.reshape((-1,) + (1,) * (x.ndim - 1))
            x, s, lp = torch.where(keep, y, x), torch.where(keep, s_y, s), torch.where(accept, lp_y, lp)
            accepted += accept
            reported = monitor.step(k, times[k + 1], x)
            if reported is not x:  # the next proposal starts from the returned state: its score and log-density
                x, s, lp = reported, counted(reported, times[k + 1]), log_prob(reported)
                n_log_prob += 1
    rate = accepted.to(torch.float64) / steps
    stats = {
        "step_size": eps,
        "steps": steps,
        "acceptance_rate": float(rate.mean()),
        "chain_acceptance_rate": rate,
        "n_log_prob": n_log_prob,
    }
    return SampleResult(samples=x, nfe=counted.nfe, stats=stats)


class _LangevinClock:
    r"""The Langevin times :math:`k\epsilon`, ``k = 0 .. steps``, as 0-dim tensors in ``like``'s dtype and device, made
    :attr:`CHUNK` at a time (one transfer each): the loop hands the score tensors and reads nothing, and a chain of
    millions of steps does not hold millions of them."""

    CHUNK = 4096

    def __init__(self, eps: float, steps: int, like: torch.Tensor) -> None:
        self.eps, self.steps, self.like = eps, steps, like
        self._start, self._chunk = 0, ()

    def __getitem__(self, k: int) -> torch.Tensor:
        k = self.steps + 1 + k if k < 0 else k
        if not self._start <= k < self._start + len(self._chunk):
            self._start = k - k % self.CHUNK
            ks = torch.arange(self._start, min(self._start + self.CHUNK, self.steps + 1), dtype=torch.float64)
            self._chunk = (ks * self.eps).to(dtype=self.like.dtype, device=self.like.device).unbind()
        return self._chunk[k - self._start]


def geometric_sigmas(
    sigma_min: float,
    sigma_max: float,
    n: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Noise levels :math:`\sigma_i = \sigma_{max} (\sigma_{min}/\sigma_{max})^{(i-1)/(n-1)}`, largest first.

    Returns:
        A decreasing tensor of ``n`` levels from ``sigma_max`` to ``sigma_min``.

    Raises:
        ValueError: unless ``0 < sigma_min < sigma_max`` and ``n >= 2``.
        TypeError: if ``dtype`` is not a floating-point dtype.
    """
    fn = "geometric_sigmas"
    lo = check_positive(fn, "sigma_min", sigma_min)
    hi = check_positive(fn, "sigma_max", sigma_max)
    check_int(fn, "n", n, minimum=2)
    check_float_dtype(fn, "dtype", dtype)
    if not lo < hi:
        raise ValueError(f"{fn}: expected sigma_min < sigma_max, got sigma_min={lo!r}, sigma_max={hi!r}.")
    log_sigmas = torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64)
    return log_sigmas.exp().to(dtype=dtype, device=device)


def annealed_langevin(
    score: ScoreFn,
    x0: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    *,
    steps: int = 100,
    step_size: float = 2e-5,
    generator: torch.Generator | None = None,
    denoise_final: bool = True,
    enable_grad: bool = False,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> SampleResult:
    r"""Annealed Langevin dynamics (NCSN, Song & Ermon 2019, Algorithm 1) with a noise-conditional score.

    For each level :math:`\sigma_i` (largest first) run ``steps`` steps
    :math:`x \leftarrow x + \tfrac{\alpha_i}{2} s(x, \sigma_i) + \sqrt{\alpha_i}\,z` with
    :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2` (:math:`\epsilon` = ``step_size``), i.e. :func:`langevin` steps of size
    :math:`\alpha_i/2` on :math:`p_{\sigma_i} = p * N(0, \sigma_i^2 I)`.

    Args:
        score: noise-conditional score ``score(x, sigma)`` with ``sigma`` a ``(B,)`` tensor, e.g. the
            exact ``law.score(scoreflow.EDMSDE(sigma_min, sigma_max))`` (whose time is sigma).
        x0: initial states, shape ``(B, *D)``, e.g. ``sigmas[0] * torch.randn(...)``.
        sigmas: strictly decreasing positive noise levels (see :func:`geometric_sigmas`).
        steps: Langevin steps at each level (NCSN: 100).
        step_size: base step ε, the step at the smallest level being :math:`\alpha_L = \epsilon` (NCSN: 2e-5).
        generator: seeds the noise; equal states give bit-identical runs.
        denoise_final: finish with Tweedie's step :math:`x + \sigma_L^2 s(x, \sigma_L)` (one NFE),
            which removes the remaining noise of level :math:`\sigma_L`.
        enable_grad: keep the autograd graph; off by default.
        callback: ``callback(info)`` after every Langevin step (``i`` counts them over all levels), as in
            :func:`scoreflow.sample_ode`, with ``"t"`` the level :math:`\sigma_i` and ``"denoised"`` Tweedie's
            :math:`x + \sigma_i^2 s(x, \sigma_i)`; the next step starts from the state it returns.
        progress: show a tqdm progress bar (``pip install 'scoreflow[progress]'``).

    Returns:
        A :class:`SampleResult` with ``nfe = len(sigmas) * steps (+1)``; ``stats`` holds
        the per-level ``step_sizes`` :math:`\alpha_i`.

    Raises:
        ValueError: if ``sigmas`` is not strictly decreasing and positive, ``step_size <= 0``,
            ``steps < 1`` or ``x0`` is malformed.
        TypeError: for arguments of the wrong type, a score returning the wrong dtype, or a callback
            returning something other than ``None`` or a state.
        ImportError: for ``progress=True`` without tqdm.
        NonFiniteError: if the score becomes NaN/inf; the message names the noise level as ``t`` (found when
            the chain ends).
    """
    fn = "annealed_langevin"
    check_batch(fn, "x0", x0, state=True)
    levels = check_sigmas(fn, "sigmas", sigmas)
    check_int(fn, "steps", steps)
    eps = check_positive(fn, "step_size", step_size)
    check_generator(fn, generator, x0, "x0")
    check_bool(fn, "denoise_final", denoise_final)
    # Coefficients in float64 (exact for float32 runs too); the score sees sigma in x's dtype.
    alphas = (eps * levels**2 / levels[-1] ** 2).tolist()
    sigma_x = levels.to(dtype=x0.dtype, device=x0.device)
    counted = CountedScore(score, caller=fn, signature="score(x, sigma)")

    def tweedie_ve(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x + sigma**2 * counted(x, sigma)

    monitor = step_monitor(fn, counted, None, callback=callback, progress=progress, return_trajectory=False,
                           denoise=tweedie_ve)
    x = x0
    with solving(counted, monitor, sigma_x[0], x0, enable_grad=enable_grad, steps=len(alphas) * steps):
        for level, (sigma, alpha) in enumerate(zip(sigma_x.unbind(), alphas)):
            noise_scale = math.sqrt(alpha)
            for k in range(steps):
                x = x + (0.5 * alpha) * counted(x, sigma) + noise_scale * standard_normal(x, generator)
                x = monitor.step(level * steps + k, sigma, x)
        if denoise_final:
            x = tweedie_ve(x, sigma)
        counted.finite.record("Langevin state", x, sigma)
    return SampleResult(samples=x, nfe=counted.nfe, stats={"step_sizes": alphas, "sigmas": levels.tolist()})
