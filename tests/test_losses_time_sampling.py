"""``sde_dsm_loss(time_sampling="log_snr")``: importance sampling of t against closed forms (Gaussian data, exact scores).

The identity checked: for the forward SDE :math:`dx = f x\\,dt + g\\,dW` the entropy of the marginals obeys
:math:`dH/dt = D f + \\tfrac12 g^2 E\\|\\nabla\\log p_t\\|^2` (de Bruijn), and with the exact score
:math:`g^2\\tfrac12 E\\|s + \\varepsilon/\\sigma\\|^2 = \\tfrac12 g^2 (D/\\sigma^2 - E\\|\\nabla\\log p_t\\|^2)`, so

    H(p_{t_min}) = H(p_T) - D log(alpha_T/alpha_{t_min}) - D/2 int g^2/sigma^2 dt + (T - t_min) E[likelihood-weighted loss];

any other score adds :math:`\\tfrac12\\int g^2 E\\|s - \\nabla\\log p_t\\|^2 dt \\ge 0` (Song et al. 2021's bound).
"""

import math

import pytest
import torch
from scipy import integrate

import scoreflow as sf
from scoreflow.testing.problems import make_law

F64 = torch.float64
SDES = {"vp": sf.VPSDE, "subvp": sf.SubVPSDE, "ve": sf.VESDE}


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.detach()
    return float(values.mean()), float(values.std()) / math.sqrt(values.numel())


def _entropy(law, alpha: float, sigma: float) -> float:
    """Entropy of N(alpha m, alpha^2 C + sigma^2 I) from the eigenvalues of C."""
    eig = law.eigvals[0]
    return 0.5 * float(torch.log(2 * math.pi * math.e * (alpha**2 * eig + sigma**2)).sum())


def _at(sde, t: float) -> tuple[float, float, float]:
    tt = torch.tensor(t, dtype=F64)
    alpha, sigma = (float(v) for v in sde.marginal(tt))
    return alpha, sigma, float(sde.diffusion(tt))


def _loss(score, sde, x, sampling, weighting="likelihood", t_min=1e-3, seed=7):
    return sf.losses.sde_dsm_loss(score, sde, x, weighting=weighting, t_min=t_min, time_sampling=sampling,
                                  generator=torch.Generator().manual_seed(seed), reduction="none")


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_log_snr_sampling_has_the_uniform_expectation(sde_name, weighting, generator):
    law, sde, t_min = make_law("gaussian2d"), SDES[sde_name](), 1e-3
    x = law.sample(20_000, generator=generator)
    mean, se = _mean_se(_loss(law.score(sde), sde, x, "log_snr", weighting, t_min))

    def integrand(t):
        alpha, sigma, g = _at(sde, t)
        lam = sigma**2 if weighting == "sigma2" else g**2
        return 0.5 * lam * (law.dim / sigma**2 - float((1 / (alpha**2 * law.eigvals[0] + sigma**2)).sum()))

    expected = integrate.quad(integrand, t_min, sde.T, limit=200, points=[1e-2, 1e-1])[0] / (sde.T - t_min)
    assert abs(mean - expected) < 5 * se, (mean, expected, se)


def _entropy_bound(law, sde, loss_mean: float, t_min: float) -> float:
    """The right-hand side of the identity in the module docstring (exact prior p_T)."""
    (a0, _, _), (a1, s1, _) = _at(sde, t_min), _at(sde, sde.T)
    span = 2 * float(sde.log_snr(torch.tensor(t_min, dtype=F64)) - sde.log_snr(torch.tensor(sde.T, dtype=F64)))
    d = law.dim
    return _entropy(law, a1, s1) - d * math.log(a1 / a0) - 0.5 * d * span + (sde.T - t_min) * loss_mean


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_likelihood_weighted_loss_plus_constants_is_the_entropy_for_the_exact_score(sde_name, generator):
    law, sde, t_min = make_law("gaussian2d"), SDES[sde_name](), 1e-3
    x = law.sample(400_000, generator=generator)
    mean, se = _mean_se(_loss(law.score(sde), sde, x, "log_snr", t_min=t_min))
    bound = _entropy_bound(law, sde, mean, t_min)
    a0, s0, _ = _at(sde, t_min)
    assert abs(bound - _entropy(law, a0, s0)) < 4 * (sde.T - t_min) * se, (bound, _entropy(law, a0, s0), se)


def test_any_other_score_raises_the_bound_by_its_score_matching_error(generator):
    # s = c s*: the excess is 1/2 int g^2 (c - 1)^2 tr(Sigma_t^-1) dt, Sigma_t = alpha^2 C + sigma^2 I; the same times
    # and noise for both scores (one seed) make the paired difference precise
    law, sde, t_min, c = make_law("gaussian2d"), sf.VPSDE(), 1e-3, 0.8
    exact = law.score(sde)
    x = law.sample(20_000, generator=generator)
    diff = _loss(lambda y, t: c * exact(y, t), sde, x, "log_snr", t_min=t_min) - _loss(exact, sde, x, "log_snr", t_min=t_min)
    mean, se = _mean_se((sde.T - t_min) * diff)

    def integrand(t):
        alpha, sigma, g = _at(sde, t)
        return 0.5 * g**2 * (c - 1) ** 2 * float((1 / (alpha**2 * law.eigvals[0] + sigma**2)).sum())

    expected = integrate.quad(integrand, t_min, sde.T, limit=200, points=[1e-2, 1e-1])[0]
    assert mean > 10 * se  # the bound is strictly above the entropy
    assert abs(mean - expected) < 5 * se, (mean, expected, se)


def test_log_snr_sampling_reduces_the_variance_of_the_likelihood_weighted_loss(generator):
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    x = law.sample(20_000, generator=generator)
    (_, se_uniform), (_, se_log_snr) = (_mean_se(_loss(law.score(sde), sde, x, s)) for s in ("uniform", "log_snr"))
    assert se_log_snr < se_uniform / 3, (se_uniform, se_log_snr)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_log_snr_times_are_uniform_in_the_log_snr(sde_name):
    # the sampled times, seen through log_snr, pass a Kolmogorov-Smirnov test against U[lambda(T), lambda(t_min)]
    from scipy import stats

    sde, t_min, seen = SDES[sde_name](), 1e-2, []
    x = torch.zeros(4000, 1, dtype=F64)

    def spy(y, t):
        seen.append(t.detach().clone())
        return torch.zeros_like(y)

    sf.losses.sde_dsm_loss(spy, sde, x, t_min=t_min, time_sampling="log_snr", generator=torch.Generator().manual_seed(0))
    t = seen[-1]
    assert t.dtype == F64 and bool(((t >= t_min) & (t <= sde.T)).all())
    lo, hi = (float(sde.log_snr(torch.tensor(v, dtype=F64))) for v in (sde.T, t_min))
    assert stats.kstest(sde.log_snr(t).numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3


def test_unknown_time_sampling_is_refused():
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    with pytest.raises(ValueError, match=r"sde_dsm_loss: argument 'time_sampling' expected one of 'uniform', 'log_snr', got 'snr'"):
        sf.losses.sde_dsm_loss(law.score(sde), sde, law.sample(4), time_sampling="snr")


def test_log_snr_sampling_keeps_float32_and_any_data_shape():
    seen = []

    def spy(y, t):
        seen.append(t)
        return -y

    x = torch.randn(64, 3, 2, generator=torch.Generator().manual_seed(0))
    per = sf.losses.sde_dsm_loss(spy, sf.VPSDE(), x, weighting="likelihood", time_sampling="log_snr",
                                 generator=torch.Generator().manual_seed(1), reduction="none")
    assert per.shape == (64,) and per.dtype == torch.float32 and bool(torch.isfinite(per).all())
    assert seen[-1].dtype == torch.float32 and bool((seen[-1] >= sf.VPSDE().t_min).all())


def test_log_snr_sampling_needs_a_finite_log_snr_range():
    # rectified flow reaches pure noise at T (log-SNR -inf): no uniform law there (t_min = 0, log-SNR +inf, is outside
    # the loss's range (0, T) whatever the sampling)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(ValueError, match=r"sde_dsm_loss: argument 'time_sampling' 'log_snr' .*log-SNR is -inf at T=1"):
        sf.losses.sde_dsm_loss(lambda y, t: -y, sf.RectifiedFlow(), x, time_sampling="log_snr")
    with pytest.raises(ValueError, match=r"sde_dsm_loss: argument 't_min' expected a time in \(0, T=0.999\), got 0\.0"):
        sf.losses.sde_dsm_loss(lambda y, t: -y, sf.RectifiedFlow(T=0.999), x, t_min=0.0, time_sampling="log_snr")
    # a truncated path has a finite range, and the importance weights keep the uniform loss's expectation
    sde = sf.RectifiedFlow(T=0.999)
    law = make_law("gaussian2d")
    x = law.sample(20000, generator=torch.Generator().manual_seed(1))
    (m_u, se_u), (m_l, se_l) = (_mean_se(_loss(law.score(sde), sde, x, s, weighting="sigma2")) for s in ("uniform", "log_snr"))
    assert abs(m_u - m_l) < 4 * math.hypot(se_u, se_l), (m_u, se_u, m_l, se_l)
