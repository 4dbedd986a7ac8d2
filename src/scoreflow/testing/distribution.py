r"""Assert that samples follow an analytic law, with bounds set by the Monte-Carlo error at their size.

Three checks, each a test at level ``alpha``:

- moments: z-scores of the sample mean and covariance against the exact ones, standard errors
  from :func:`~scoreflow.metrics.moment_standard_errors`, Bonferroni over all entries;
- (trimmed) sliced Wasserstein-2 to a fresh exact sample of the same size, against the null
  distribution of that distance between two exact samples (replicated; a normal prediction
  bound on its log, which is close to normal once the extreme 1% quantiles are trimmed);
- for mixtures, the share of samples nearest each component, two-proportion z-tests.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import torch

from .._checks import check_batch, check_generator, check_int, check_probability, check_real
from ..analytic import GaussianMixture
from ..metrics import mode_weights, moment_standard_errors, sliced_wasserstein2
from .assertions import check_law

__all__ = ["assert_samples_follow"]


def _moment_check(x: torch.Tensor, law: GaussianMixture, ref: torch.Tensor, alpha: float) -> tuple[dict, str | None]:
    n, d = x.shape
    se_mean, se_cov = moment_standard_errors(ref, n)
    z_mean = (x.mean(0) - law.mean.double()) / se_mean
    cov_hat = torch.cov(x.T).reshape(d, d)
    z_cov = (cov_hat - law.covariance.double()) / se_cov
    iu = torch.triu_indices(d, d)
    z_all = torch.cat([z_mean, z_cov[iu[0], iu[1]]])
    m = z_all.numel()
    z_crit = float(scipy.stats.norm.isf(alpha / (2 * m)))
    k = int(z_all.abs().argmax())
    z_max = float(z_all[k].abs())
    stats = {"moment_z_max": z_max, "moment_z_bound": z_crit}
    if z_max <= z_crit:
        return stats, None
    if k < d:
        what = f"mean[{k}]: sample {float(x.mean(0)[k]):.5g}, exact {float(law.mean[k]):.5g}, standard error {float(se_mean[k]):.2e}"
    else:
        i, j = int(iu[0, k - d]), int(iu[1, k - d])
        what = (
            f"covariance[{i},{j}]: sample {float(cov_hat[i, j]):.5g}, exact {float(law.covariance[i, j]):.5g}, "
            f"standard error {float(se_cov[i, j]):.2e}"
        )
    return stats, (
        f"  moments: measured max |z| = {z_max:.2f} at {what}\n"
        f"    bound z = {z_crit:.2f}: two-sided normal quantile at level alpha={alpha:g}, Bonferroni over the "
        f"{m} mean and covariance entries; standard errors = moment_standard_errors of {ref.shape[0]} exact draws at n={n}"
    )


def _sw2_check(
    x: torch.Tensor, law: GaussianMixture, alpha: float, n_replicates: int, n_projections: int, trim: float, generator
) -> tuple[dict, str | None]:
    n = x.shape[0]
    seed = int(torch.randint(0, 2**62, (), generator=generator))

    def sw2(a: torch.Tensor, b: torch.Tensor) -> float:
        # The same directions for the statistic and every replicate: they share one null law.
        g = torch.Generator().manual_seed(seed)
        return sliced_wasserstein2(a, b, n_projections=n_projections, generator=g, trim=trim)

    def draw() -> torch.Tensor:
        return law.sample(n, generator=generator).reshape(n, -1).double()

    stat = sw2(x, draw())
    null = np.log([sw2(draw(), draw()) for _ in range(n_replicates)])
    t_q = float(scipy.stats.t.isf(alpha, n_replicates - 1))
    bound = math.exp(null.mean() + t_q * null.std(ddof=1) * math.sqrt(1 + 1 / n_replicates))
    stats = {"sw2": stat, "sw2_bound": bound, "sw2_null": np.exp(null).tolist()}
    if stat <= bound:
        return stats, None
    return stats, (
        f"  sliced W2: measured SW2(samples, fresh exact sample of n={n}) = {stat:.4g}\n"
        f"    bound {bound:.4g}: one-sided {1 - alpha:g} normal prediction bound on log SW2 between two exact samples of "
        f"n={n}, from {n_replicates} replicates (median {float(np.exp(np.median(null))):.4g}, max {float(np.exp(null.max())):.4g}; "
        f"Student t quantile {t_q:.2f}); {n_projections} projections shared by all, quantile levels trimmed by {trim:g} at each end"
    )


def _mode_check(x: torch.Tensor, law: GaussianMixture, ref: torch.Tensor, alpha: float) -> tuple[dict, str | None]:
    n, n_ref, k = x.shape[0], ref.shape[0], law.n_components
    law64 = law.to(torch.float64)
    p_x, p_ref = mode_weights(law64, x), mode_weights(law64, ref)
    pooled = (n * p_x + n_ref * p_ref) / (n + n_ref)
    se = (pooled * (1 - pooled) * (1 / n + 1 / n_ref)).sqrt()
    # A component nobody visits has se = 0: any difference there is infinitely significant.
    z = torch.where(se > 0, (p_x - p_ref) / se.clamp_min(1e-300), torch.where(p_x != p_ref, math.inf, 0.0))
    z_crit = float(scipy.stats.norm.isf(alpha / (2 * k)))
    j = int(z.abs().argmax())
    stats = {"mode_z_max": float(z.abs().max()), "mode_z_bound": z_crit}
    if float(z.abs().max()) <= z_crit:
        return stats, None
    return stats, (
        f"  mode weights: measured share of samples nearest component {j} = {float(p_x[j]):.4f} vs {float(p_ref[j]):.4f} "
        f"for {n_ref} exact draws (z = {float(z[j]):+.2f})\n"
        f"    bound |z| = {z_crit:.2f}: two-proportion z-test at level alpha={alpha:g}, Bonferroni over {k} components"
    )


def assert_samples_follow(
    samples: torch.Tensor,
    law: GaussianMixture,
    *,
    alpha: float = 1e-3,
    n_reference: int | None = None,
    n_replicates: int = 10,
    n_projections: int = 128,
    trim: float = 0.01,
    generator: torch.Generator | None = None,
) -> dict:
    r"""Assert that ``samples`` (shape ``(n, *D)``) are draws from ``law``, up to Monte-Carlo error at size n.

    Exact samples pass each check with probability about ``1 - alpha`` (so the call with
    probability >= ``1 - 3 alpha``); a seeded ``generator`` makes the verdict reproducible.
    To test a sampler, pass the law it targets, e.g. ``law.marginal(sde, sde.t_min)``.
    Meant for the low-dimensional analytic laws: the covariance check holds ``n_reference x D x D`` numbers.

    Args:
        samples: the samples under test.
        law: the target law (``Gaussian`` or ``GaussianMixture``, unbatched).
        alpha: the level of each check (false-alarm probability for exact samples).
        n_reference: size of the exact sample that estimates the standard errors (to about 1%)
            and the reference mode shares (whose own error enters the z-test); default 20000.
        n_replicates: exact-vs-exact SW2 replicates that estimate the null law (>= 3).
        n_projections: directions of the sliced W2 distance.
        trim: quantile levels trimmed at each end of the sliced W2 distance (its null law then
            has no heavy tail from the few most extreme points; the moments still see the tails).
        generator: seeds every exact draw and the projections.

    Returns:
        The statistics and their bounds (``moment_z_max``, ``moment_z_bound``, ``sw2``, ``sw2_bound``,
        ``sw2_null`` and, for mixtures, ``mode_z_max``, ``mode_z_bound``).

    Raises:
        AssertionError: if a check fails; the message lists each failed check's measurement, bound and derivation.
        TypeError, ValueError: for bad arguments or samples of the wrong shape.
    """
    fn = "assert_samples_follow"
    check_law(fn, law)
    check_batch(fn, "samples", samples)
    if tuple(samples.shape[1:]) != law.event_shape:
        raise ValueError(f"{fn}: argument 'samples' expected shape (n, *{law.event_shape}), got {tuple(samples.shape)}.")
    n = samples.shape[0]
    check_int(fn, "n (the number of samples)", n, minimum=2)
    alpha = check_probability(fn, "alpha", alpha)
    n_ref = 20000 if n_reference is None else check_int(fn, "n_reference", n_reference, minimum=2)
    check_int(fn, "n_replicates", n_replicates, minimum=3)
    check_int(fn, "n_projections", n_projections)
    trim = check_real(fn, "trim", trim)
    if not 0 <= trim < 0.5:
        raise ValueError(f"{fn}: argument 'trim' expected a fraction in [0, 0.5), got {trim!r}.")
    check_generator(fn, generator)
    law64 = law.to(torch.float64)
    x = samples.detach().reshape(n, -1).double().cpu()
    ref = law64.sample(n_ref, generator=generator).reshape(n_ref, -1)
    stats, failures = {}, []
    checks = [
        lambda: _moment_check(x, law64, ref, alpha),
        lambda: _sw2_check(x, law64, alpha, n_replicates, n_projections, trim, generator),
    ]
    if law.n_components > 1:
        checks.append(lambda: _mode_check(x, law64, ref, alpha))
    for check in checks:
        s, failure = check()
        stats.update(s)
        if failure:
            failures.append(failure)
    if failures:
        raise AssertionError(f"{fn}: {n} samples do not follow {law!r}:\n" + "\n".join(failures))
    return stats
