r"""Assertions that a user's sampler, likelihood, score or schedule matches scoreflow's closed forms.

Each helper draws its own inputs from an analytic law, calls the user's function once, compares
with an exact (or high-accuracy) reference, and raises ``AssertionError`` with a message that gives
the measured value, the bound and how both were computed.  Bad arguments raise
``ValueError``/``TypeError`` as everywhere in scoreflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .._checks import check_callable, check_generator, check_instance, check_int, check_output, check_positive
from ..analytic import GaussianMixture
from ..schedules import time_grid
from ..sde import ForwardSDE, check_sde
from .reference import describe_reference, reference_flow_map
from .._tensor import ScoreFn

__all__ = ["assert_flow_map", "assert_log_likelihood", "assert_score_matches", "assert_schedule_consistent"]

_LAW_EXAMPLE = "scoreflow.analytic.Gaussian(mean, cov)"


def check_law(fn: str, law: object) -> GaussianMixture:
    """Check that ``law`` is an unbatched analytic law (a ``Gaussian`` or ``GaussianMixture``)."""
    check_instance(fn, "law", law, GaussianMixture, _LAW_EXAMPLE)
    if law.batch_shape:
        raise ValueError(
            f"{fn}: argument 'law' expected an unbatched law, got a law batched over times {law.batch_shape}; "
            "pass law.marginal(sde, t) at one scalar time t."
        )
    return law


def check_law_sde(fn: str, law: object, sde: object) -> tuple[GaussianMixture, ForwardSDE]:
    """Check the (law, sde) pair every helper takes: an unbatched analytic law and a forward SDE."""
    return check_law(fn, law), check_sde(fn, sde)


def as_times(fn: str, times: object) -> torch.Tensor:
    """The user's ``times`` (a number or a sequence of numbers) as a flat float64 tensor of finite times."""
    try:
        t = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{fn}: argument 'times' expected a list of times, got {type(times).__name__} {times!r}.") from None
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{fn}: argument 'times' expected finite times, got {t.tolist()}.")
    return t


def _where(err: torch.Tensor) -> str:
    """Locate the largest entry of a ``(B, *D)`` error as 'sample i, coordinate j'."""
    flat = err.reshape(err.shape[0], -1)
    i, j = divmod(int(flat.argmax()), flat.shape[1])
    return f"sample {i}, coordinate {j}"


def assert_flow_map(
    sampler: Callable[[ScoreFn, ForwardSDE, torch.Tensor], torch.Tensor],
    law: GaussianMixture,
    sde: ForwardSDE,
    *,
    n: int = 64,
    atol: float = 1e-3,
    rtol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> float:
    r"""Assert that a deterministic sampler maps prior draws to the exact probability-flow map.

    ``x = sampler(law.score(sde), sde, x_T)`` must satisfy :math:`|x - \Phi_{T\to t_{min}}(x_T)| \le
    atol + rtol\,|\Phi(x_T)|` elementwise, with :math:`\Phi` the closed-form map for a Gaussian or a
    DOP853 solve at rtol 1e-10 for a mixture (:func:`reference_flow_map`); ``t_min = sde.t_min``.

    Args:
        sampler: ``sampler(score, sde, x_T) -> x`` returning states at ``sde.t_min`` shaped like ``x_T``.
        law: the data law (``Gaussian`` or ``GaussianMixture``); its dtype sets ``x_T``'s.
        sde: the forward SDE.
        n: number of prior draws ``x_T``.
        atol, rtol: the elementwise tolerance.
        generator: seeds ``x_T``.

    Returns:
        The largest elementwise error.

    Raises:
        AssertionError: if an entry exceeds the tolerance, or the sampler returns NaN/inf.
        TypeError, ValueError: for bad arguments or a sampler output of the wrong shape.
    """
    fn = "assert_flow_map"
    check_callable(fn, "sampler", sampler, "sampler(score, sde, x_T) -> x")
    law, sde = check_law_sde(fn, law, sde)
    check_int(fn, "n", n)
    atol, rtol = check_positive(fn, "atol", atol, allow_zero=True), check_positive(fn, "rtol", rtol, allow_zero=True)
    check_generator(fn, generator)
    x_T = sde.prior_sample((n, *law.event_shape), generator=generator, dtype=law.means.dtype)
    x = check_output(fn, "the sampler", sampler(law.score(sde), sde, x_T.clone()), tuple(x_T.shape))
    ref = reference_flow_map(law, sde, x_T, sde.T, sde.t_min).double()
    err = (x.detach().double() - ref).abs()
    bound = atol + rtol * ref.abs()
    worst = float(err.max())
    if bool((err > bound).any()):
        excess = err - bound
        rms = float(err.pow(2).mean().sqrt())
        raise AssertionError(
            f"{fn}: the sampler's x(t_min) is not the exact probability-flow map of {law!r} under {sde!r}.\n"
            f"  measured: max |x - x_ref| = {worst:.3e} (worst excess at {_where(excess)}; RMS {rms:.3e}) "
            f"over n={n} prior draws x_T\n"
            f"  bound:    atol + rtol*|x_ref| = {atol:g} + {rtol:g}*|x_ref| (between {float(bound.min()):.3e} "
            f"and {float(bound.max()):.3e} here)\n"
            f"  reference x_ref: {describe_reference(law)}, from T={sde.T:g} to t_min={sde.t_min:g}"
        )
    return worst


def assert_log_likelihood(
    loglik: Callable[[ScoreFn, ForwardSDE, torch.Tensor], torch.Tensor],
    law: GaussianMixture,
    sde: ForwardSDE,
    *,
    n: int = 32,
    atol: float = 1e-3,
    rtol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> float:
    r"""Assert that ``loglik(score, sde, x) -> (B,)`` is the probability-flow log-density at ``t_min``.

    By the instantaneous change of variables along the exact flow :math:`\Phi = \Phi_{t_{min}\to T}`,
    :math:`\log p_{t_{min}}(x) = \log p_T(\Phi(x)) + \log|\det \partial\Phi/\partial x|`.  A likelihood
    that starts from the prior :math:`\pi` = ``sde.prior_log_prob`` in place of :math:`p_T` must return
    :math:`\log p_{t_{min}}(x) - [\log p_T(\Phi(x)) - \log\pi(\Phi(x))]`; both terms are exact
    (``law.marginal(sde, t).log_prob``) and :math:`\Phi` comes from :func:`reference_flow_map`.

    Args:
        loglik: ``loglik(score, sde, x) -> (B,)`` log-densities in nats.
        law, sde: the data law and forward SDE; ``x`` is drawn from ``law.marginal(sde, sde.t_min)``.
        n: number of points.
        atol, rtol: tolerance ``|ll - target| <= atol + rtol*|target|`` per point, in nats.
        generator: seeds ``x``.

    Returns:
        The largest absolute error in nats.

    Raises:
        AssertionError: if a point exceeds the tolerance or ``loglik`` returns NaN/inf.
        TypeError, ValueError: for bad arguments or an output that is not of shape ``(B,)``.
    """
    fn = "assert_log_likelihood"
    check_callable(fn, "loglik", loglik, "loglik(score, sde, x) -> (B,) tensor")
    law, sde = check_law_sde(fn, law, sde)
    check_int(fn, "n", n)
    atol, rtol = check_positive(fn, "atol", atol, allow_zero=True), check_positive(fn, "rtol", rtol, allow_zero=True)
    check_generator(fn, generator)
    marginal = law.marginal(sde, sde.t_min)
    x = marginal.sample(n, generator=generator)
    ll = check_output(fn, "loglik", loglik(law.score(sde), sde, x.clone()), (n,)).detach().double()
    law64 = law.to(torch.float64)
    x64 = x.double()
    exact = law64.marginal(sde, sde.t_min).log_prob(x64)
    x_T = reference_flow_map(law64, sde, x64, sde.t_min, sde.T)
    prior_gap = law64.marginal(sde, sde.T).log_prob(x_T) - sde.prior_log_prob(x_T)
    target = exact - prior_gap
    err = (ll - target).abs()
    worst = float(err.max())
    bound = atol + rtol * target.abs()
    if bool((err > bound).any()):
        i = int((err - bound).argmax())
        raise AssertionError(
            f"{fn}: loglik is not the probability-flow log-density of {law!r} under {sde!r} at t_min={sde.t_min:g}.\n"
            f"  measured: max |ll - target| = {worst:.3e} nats (worst at point {i}: ll={float(ll[i]):.6g}, "
            f"target={float(target[i]):.6g}; mean error {float((ll - target).mean()):+.3e}) over n={n} points\n"
            f"  bound:    atol + rtol*|target| = {atol:g} + {rtol:g}*|target| ({float(bound[i]):.3e} at that point)\n"
            f"  target:   exact log p_t_min(x) from law.marginal(sde, t_min).log_prob, minus the prior gap "
            f"log p_T(x_T) - sde.prior_log_prob(x_T) (max |gap| {float(prior_gap.abs().max()):.2e}), "
            f"x_T by {describe_reference(law)}"
        )
    return worst


def log_snr_times(sde: ForwardSDE, k: int, t_min: float | None = None) -> torch.Tensor:
    """``k`` times from ``t_min`` (default ``sde.t_min``) to ``T`` evenly spaced in log-SNR (every noise level gets a time).

    A process that ends in pure noise has log-SNR -inf at T: there they are evenly spaced in the capped log-SNR
    (``time_grid``'s ``"log_snr_capped"``), which is finite at T.
    """
    t_min = sde.t_min if t_min is None else t_min
    if sde.pure_noise_at_T:
        return time_grid(sde, k - 1, "log_snr_capped", t_min=t_min).flip(0)
    lam = sde.log_snr(torch.tensor([t_min, sde.T], dtype=torch.float64))
    t = sde.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), k, dtype=torch.float64))
    t[0], t[-1] = t_min, sde.T
    return t


def assert_score_matches(
    score: ScoreFn,
    law: GaussianMixture,
    sde: ForwardSDE,
    *,
    times: Sequence[float] | torch.Tensor | None = None,
    n: int = 128,
    rtol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> float:
    r"""Assert that ``score(x, t)`` is the exact score of ``law`` diffused by ``sde``, at every time.

    At each time t, with :math:`x \sim p_t` and the exact :math:`s^*` of ``law.marginal(sde, t)``, the
    relative error :math:`\sqrt{\sum|s - s^*|^2 / \sum|s^*|^2}` over the n points must be ``<= rtol``.
    One call evaluates all times at once (``t`` of shape ``(B,)`` with distinct entries).

    Args:
        score: the score callable under test.
        law, sde: the data law and forward SDE.
        times: the times to check; default 9 times from ``t_min`` to ``T`` evenly spaced in log-SNR (in the capped log-SNR for a path that ends in pure noise).
        n: points per time.
        rtol: bound on the relative RMS error at each time.
        generator: seeds the points.

    Returns:
        The largest relative error over the times.

    Raises:
        AssertionError: if some time exceeds ``rtol`` or the score returns NaN/inf.
        TypeError, ValueError: for bad arguments or an output not shaped like ``x``.
    """
    fn = "assert_score_matches"
    check_callable(fn, "score", score, "score(x, t) -> tensor shaped like x")
    law, sde = check_law_sde(fn, law, sde)
    check_int(fn, "n", n)
    rtol = check_positive(fn, "rtol", rtol)
    check_generator(fn, generator)
    dtype = law.means.dtype
    t = log_snr_times(sde, 9) if times is None else as_times(fn, times)
    if t.numel() == 0 or bool(((t < 0) | (t > sde.T)).any()):
        raise ValueError(f"{fn}: argument 'times' expected a non-empty list of times in [0, T={sde.T:g}], got {t.tolist()}.")
    t_all = t.repeat_interleave(n).to(dtype)
    marginal = law.marginal(sde, t_all)
    x = marginal.sample(t_all.numel(), generator=generator)
    s = check_output(fn, "the score", score(x.clone(), t_all.clone()), tuple(x.shape)).detach().double()
    s_ref = marginal.grad_log_prob(x).double()
    diff = (s - s_ref).reshape(t.numel(), -1).pow(2).sum(1)
    ref_sq = s_ref.reshape(t.numel(), -1).pow(2).sum(1)
    rel = (diff / ref_sq).sqrt()
    worst = float(rel.max())
    if worst > rtol:
        # The least-squares factor c in s ~ c s* exposes scale bugs such as a missing 1/sigma.
        ratio = (s * s_ref).reshape(t.numel(), -1).sum(1) / ref_sq
        _, sigma = sde.marginal(t)
        rows = "\n".join(
            f"    t={float(ti):<10.4g} sigma={float(si):<10.4g} rel. error={float(ri):<10.3e} factor={float(ci):.4g}"
            + ("   <-- exceeds" if float(ri) > rtol else "")
            for ti, si, ri, ci in zip(t, sigma, rel, ratio)
        )
        raise AssertionError(
            f"{fn}: the score differs from the exact score of {law!r} under {sde!r}.\n"
            f"  measured: max over times of sqrt(sum|s - s*|^2 / sum|s*|^2) = {worst:.3e} (n={n} points x ~ p_t per time)\n"
            f"  bound:    rtol = {rtol:g}\n"
            f"  reference s*: law.marginal(sde, t).grad_log_prob (closed form); factor = <s, s*>/<s*, s*>\n{rows}"
        )
    return worst


def assert_schedule_consistent(
    sde: ForwardSDE, *, times: Sequence[float] | torch.Tensor | None = None, rtol: float = 1e-6
) -> float:
    r"""Assert that a schedule's marginal matches its SDE coefficients.

    Checks :math:`\alpha(0) = 1`, :math:`\sigma(0) = 0`, :math:`\dot\alpha = f\alpha` and
    :math:`\dot{(\sigma^2)} = 2f\sigma^2 + g^2`, the derivatives by Richardson-extrapolated central
    differences in float64. A residual passes if ``|r| <= rtol * scale + e``, scale the size of
    the terms and e the difference-quotient error estimate :math:`|D(h/2) - D(h)|`.

    Args:
        sde: any object with ``marginal(t) -> (alpha, sigma)``, ``drift_coef(t)``, ``diffusion(t)``,
            ``T`` and ``t_min`` (a :class:`~scoreflow.ForwardSDE` or a wrapper around another library's schedule).
        times: times to check, in ``(0, T]``; default 33 evenly spaced over ``[t_min, T]``.
        rtol: relative bound on the residuals.

    Returns:
        The largest relative residual.

    Raises:
        AssertionError: if a residual exceeds its bound.
    """
    fn = "assert_schedule_consistent"
    for attr in ("marginal", "drift_coef", "diffusion", "T", "t_min"):
        if not hasattr(sde, attr):
            raise TypeError(f"{fn}: argument 'sde' expected a ForwardSDE-like object with {attr!r}, got {type(sde).__name__}.")
    rtol = check_positive(fn, "rtol", rtol)
    T = float(sde.T)
    t = torch.linspace(float(sde.t_min), T, 33, dtype=torch.float64) if times is None else as_times(fn, times)
    if t.numel() == 0 or bool(((t <= 0) | (t > T)).any()):
        raise ValueError(f"{fn}: argument 'times' expected a non-empty list of times in (0, T={T:g}], got {t.tolist()}.")
    # Steps stay below t/4 so that t - h never crosses 0, where sigma may be undefined.
    h = torch.clamp(t / 4, max=1e-4 * T)

    def alpha_sigma2(tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s = sde.marginal(tt)
        return a.double(), s.double() ** 2

    def derivative(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = [(alpha_sigma2(t + hh)[k] - alpha_sigma2(t - hh)[k]) / (2 * hh) for hh in (h, h / 2)]
        return (4 * d[1] - d[0]) / 3, (d[1] - d[0]).abs()

    alpha, sigma2 = alpha_sigma2(t)
    f, g2 = sde.drift_coef(t).double(), sde.diffusion(t).double() ** 2
    (da, ea), (ds, es) = derivative(0), derivative(1)
    checks = [
        ("d alpha/dt = f alpha", da - f * alpha, (f * alpha).abs() + alpha.abs() / T, ea),
        ("d sigma^2/dt = 2 f sigma^2 + g^2", ds - (2 * f * sigma2 + g2), (2 * f * sigma2).abs() + g2, es),
    ]
    lines, worst = [], 0.0
    for name, resid, scale, fd_err in checks:
        rel = resid.abs() / scale
        worst = max(worst, float(rel.max()))
        bad = resid.abs() > rtol * scale + fd_err
        if bool(bad.any()):
            i = int((resid.abs() - rtol * scale - fd_err).argmax())
            lines.append(
                f"  {name}: measured residual {float(resid[i]):+.3e} at t={float(t[i]):.4g} (relative {float(rel[i]):.3e}); "
                f"bound rtol*scale + e = {rtol:g}*{float(scale[i]):.3e} + {float(fd_err[i]):.1e}, "
                f"e the central-difference error estimate |D(h/2)-D(h)| with h={float(h[i]):.1e}; fails at {int(bad.sum())} of {t.numel()} times"
            )
    a0, s0 = sde.marginal(torch.zeros(1, dtype=torch.float64))
    a0, s0 = float(a0.reshape(-1)[0]), float(s0.reshape(-1)[0])
    if abs(a0 - 1) > rtol or abs(s0) > rtol * float(sigma2.min().sqrt()):
        lines.append(
            f"  initial condition x_0 = data: measured alpha(0)={a0:.6g}, sigma(0)={s0:.3e}; bound |alpha(0)-1| <= {rtol:g}, "
            f"sigma(0) <= rtol*sigma(t_min) = {rtol * float(sigma2.min().sqrt()):.1e} (the marginal must start at the data)"
        )
    if lines:
        raise AssertionError(f"{fn}: the marginal (alpha, sigma) of {sde!r} does not solve its SDE (f, g):\n" + "\n".join(lines))
    return worst
