r"""Assert that a consistency function is within a bound of an analytic law's exact one.

The exact consistency function is :math:`f^*(x, t) = \Phi_{t\to t_{min}}(x)`, the end of the probability-flow
trajectory through :math:`(x, t)` (``law.consistency_function(sde)``: closed-form for a Gaussian, a DOP853 solve at
rtol = atol = 1e-10 for a mixture).  At each time t the points :math:`x_t \sim p_t` are exact draws of the diffused
law, so the measured error is the error where a sampler meets f, and at t = T it bounds the one-step sampler:
:math:`x_T \sim p_T` gives the coupling :math:`(f(x_T, T), f^*(x_T, T))` whose second member has the exact law
:math:`p_{t_{min}}`, hence :math:`W_2(\mathrm{law}\,f(x_T, T),\, p_{t_{min}}) \le \sqrt{E\|f - f^*\|^2} = \sqrt D\,e(T)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .._checks import check_callable, check_generator, check_int, check_output, check_positive, resolve_t_min
from ..analytic import GaussianMixture
from ..analytic.flow import FLOW_ATOL, FLOW_RTOL
from ..sde import ForwardSDE
from .assertions import as_times, check_law_sde, log_snr_times

__all__ = ["assert_consistency_function"]

ConsistencyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def assert_consistency_function(
    f: ConsistencyFn,
    law: GaussianMixture,
    sde: ForwardSDE,
    *,
    times: Sequence[float] | torch.Tensor | None = None,
    n: int = 64,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    r"""Assert that ``f(x, t)`` is the exact consistency function of ``law`` under ``sde`` to within a bound.

    At each time t, with n exact draws :math:`x_t \sim p_t` and the exact :math:`f^*(x_t, t)`, the RMS error per
    coordinate :math:`e(t) = \sqrt{\mathrm{mean}\,(f - f^*)^2}` must satisfy

    .. math:: e(t) \le \mathrm{atol} + \mathrm{rtol}\cdot\mathrm{RMS}(f^*) + \epsilon_{ref},

    :math:`\epsilon_{ref}` the reference's own error (0 for a Gaussian's closed form; the solve's
    ``atol + rtol |f^*|`` = 1e-10 (1 + RMS) for a mixture).  One call evaluates all times at once (``t`` of shape
    ``(B,)``); the default times include ``t_min``, where :math:`f^* = x` (the boundary condition).

    Args:
        f: the consistency function under test, ``f(x, t) -> x_{t_min}``.
        law, sde: the data law and forward SDE.
        times: the times to check, in ``[t_min, T]``; default 9 times from ``t_min`` to T evenly spaced in log-SNR
            (in the capped log-SNR for a path that ends in pure noise).
        n: draws per time.
        atol, rtol: the tolerance, per coordinate.
        t_min: the boundary time of f (default ``sde.t_min``).
        generator: seeds the draws.

    Returns:
        ``{"times", "rms_error", "bound"}`` (lists, one entry per time) and ``"w2_bound_one_step"``
        :math:`= \sqrt D\,e(T)` when T is among the times (else ``None``), a bound on the W2 distance of the
        one-step samples :math:`f(x_T, T)` from :math:`p_{t_{min}}` (see the module).

    Raises:
        AssertionError: if some time exceeds its bound or f returns NaN/inf; the message lists every time.
        TypeError, ValueError: for bad arguments or an output not shaped like ``x``.
    """
    fn = "assert_consistency_function"
    check_callable(fn, "f", f, "f(x, t) -> tensor shaped like x")
    law, sde = check_law_sde(fn, law, sde)
    check_int(fn, "n", n)
    atol, rtol = check_positive(fn, "atol", atol, allow_zero=True), check_positive(fn, "rtol", rtol, allow_zero=True)
    t_min = resolve_t_min(fn, sde, t_min)
    check_generator(fn, generator)
    t = log_snr_times(sde, 9, t_min) if times is None else as_times(fn, times)
    if t.numel() == 0 or bool(((t < t_min) | (t > sde.T)).any()):
        raise ValueError(f"{fn}: argument 'times' expected a non-empty list of times in [t_min={t_min:g}, T={sde.T:g}], got {t.tolist()}.")
    dtype = law.means.dtype
    t_all = t.repeat_interleave(n).to(dtype)
    x = law.marginal(sde, t_all).sample(t_all.numel(), generator=generator)
    out = check_output(fn, "f", f(x.clone(), t_all.clone()), tuple(x.shape)).detach().double()
    exact_f = law.consistency_function(sde, t_min=t_min)
    ref = exact_f(x, t_all).double()
    k = t.numel()
    err = (out - ref).reshape(k, -1).pow(2).mean(1).sqrt()
    scale = ref.reshape(k, -1).pow(2).mean(1).sqrt()
    ref_err = torch.zeros_like(scale) if law.n_components == 1 else FLOW_ATOL + FLOW_RTOL * scale
    bound = atol + rtol * scale + ref_err
    at_T = (t - sde.T).abs() <= 1e-12 * sde.T
    w2 = math.sqrt(law.dim) * float(err[at_T][0]) if bool(at_T.any()) else None
    result = {"times": t.tolist(), "rms_error": err.tolist(), "bound": bound.tolist(), "w2_bound_one_step": w2}
    if bool((err > bound).any()):
        alpha, sigma = sde.marginal(t)
        rows = "\n".join(
            f"    t={float(ti):<10.4g} sigma/alpha={float(si / ai):<10.4g} e(t)={float(ei):<10.3e} bound={float(bi):<10.3e}"
            + ("   <-- exceeds" if float(ei) > float(bi) else "")
            for ti, ai, si, ei, bi in zip(t, alpha, sigma, err, bound)
        )
        implied = (
            f"\n  meaning: at T, W2(law of f(x_T, T), p_t_min) <= sqrt(D) e(T) = {w2:.3e} (coupling x_T -> (f, f*), f*(x_T) ~ p_t_min)"
            if w2 is not None else ""
        )
        raise AssertionError(
            f"{fn}: f is not the exact consistency function of {law!r} under {sde!r} (t_min={t_min:g}).\n"
            f"  measured: e(t) = RMS per coordinate of f(x_t, t) - f*(x_t, t) over n={n} exact draws x_t ~ p_t per time\n"
            f"  bound:    atol + rtol*RMS(f*) + reference error = {atol:g} + {rtol:g}*RMS(f*) + "
            f"{'0 (closed form)' if law.n_components == 1 else f'{FLOW_ATOL:g} + {FLOW_RTOL:g}*RMS(f*) (the solve)'}\n"
            f"  reference f*: {exact_f.description}, from t to t_min{implied}\n{rows}"
        )
    return result
