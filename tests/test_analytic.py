"""Analytic laws: densities, exact scores and perturbed marginals against independent references."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

import scoreflow as sf
from scoreflow.metrics import moment_standard_errors

SDES = [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()]


def _random_mixture(seed: int, k: int, d: int) -> sf.analytic.GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    means = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
    return sf.analytic.GaussianMixture(weights, means, covs)


mixtures = st.builds(_random_mixture, st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 5))


@given(mixtures, st.sampled_from(SDES), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_score_is_gradient_of_marginal_log_prob(law, sde, u, seed):
    t = sde.t_min + u * (sde.T - sde.t_min)
    g = torch.Generator().manual_seed(seed)
    marginal = law.marginal(sde, t)
    x = marginal.sample(6, generator=g).requires_grad_(True)
    (grad,) = torch.autograd.grad(marginal.log_prob(x).sum(), x)
    score = law.score(sde)(x.detach(), torch.full((6,), t, dtype=torch.float64))
    assert torch.allclose(score, grad, rtol=1e-8, atol=1e-10 * float(grad.abs().max() + 1))


@given(mixtures, st.sampled_from(SDES), st.integers(0, 10_000))
def test_score_with_per_sample_times_matches_scalar_times(law, sde, seed):
    g = torch.Generator().manual_seed(seed)
    t = sde.t_min + torch.rand(5, generator=g, dtype=torch.float64) * (sde.T - sde.t_min)
    x = torch.randn(5, law.dim, generator=g, dtype=torch.float64)
    batched = law.score(sde)(x, t)
    one_by_one = torch.cat([law.score(sde)(x[i : i + 1], t[i]) for i in range(5)])
    assert torch.allclose(batched, one_by_one, rtol=1e-10, atol=1e-12)


def test_log_prob_matches_scipy():
    law = _random_mixture(0, 3, 4)
    x = torch.randn(10, 4, dtype=torch.float64)
    ref = np.log(
        sum(
            float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
            for w, m, c in zip(law.weights, law.means, law.covs)
        )
    )
    assert np.allclose(law.log_prob(x).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("weights", [[0.3, 0.7], torch.tensor([0.375, 0.625])], ids=["list", "float32 tensor"])
def test_float64_parameters_are_not_rounded_to_the_weights_dtype(weights):
    """float64 means and covariances keep their precision whatever the weights are given as.

    The law took the dtype of the weights: a list (or a float32 tensor) of weights rounded float64 means and
    covariances to float32 (and a list's 0.3 to float32's), and log_prob was then 1e-6 off scipy's.
    """
    means = torch.tensor([[1.0 / 3, -2.0], [0.1, 0.7]], dtype=torch.float64)
    covs = torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.2, -0.05], [-0.05, 0.9]]], dtype=torch.float64)
    law = sf.analytic.GaussianMixture(weights, means, covs)
    gauss = sf.analytic.Gaussian(means[0].float(), covs[0])
    assert law.means.dtype == gauss.means.dtype == torch.float64
    x = torch.tensor([[0.2, -1.1], [1.3, 0.4]], dtype=torch.float64)
    w = [float(v) for v in weights]  # 0.375 and 0.625 are exact in float32; the list's 0.3 and 0.7 are not
    ref = np.log(w[0] * multivariate_normal(means[0].numpy(), covs[0].numpy()).pdf(x.numpy())
                 + w[1] * multivariate_normal(means[1].numpy(), covs[1].numpy()).pdf(x.numpy()))
    np.testing.assert_allclose(law.log_prob(x).numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("scale, dtype", [(1e308, torch.float64), (3e38, torch.float32)])
def test_weights_near_overflow_are_normalized(scale, dtype):
    """Weights whose sum overflows (2 x 1e308) are the equal weights they are; they became 0, log_prob -inf."""
    means = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=dtype)
    covs = torch.eye(2, dtype=dtype).expand(2, 2, 2)
    law = sf.analytic.GaussianMixture(torch.tensor([scale, scale], dtype=dtype), means, covs)
    equal = sf.analytic.GaussianMixture(torch.ones(2, dtype=dtype), means, covs)
    torch.testing.assert_close(law.weights, torch.full((2,), 0.5, dtype=dtype))
    x = torch.tensor([[1.0, 0.0], [2.5, -1.0]], dtype=dtype)
    torch.testing.assert_close(law.log_prob(x), equal.log_prob(x))


def test_marginal_sampling_matches_noising_samples():
    """Sampling p_t directly and noising samples of p_0 agree within Monte-Carlo error."""
    law = _random_mixture(5, 3, 2)
    sde = sf.VPSDE()
    t = 0.3
    n = 20_000
    g = torch.Generator().manual_seed(0)
    x0 = law.sample(n, generator=g)
    alpha, sigma = sde.marginal(torch.tensor(t, dtype=torch.float64))
    noised = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    direct = law.marginal(sde, t).sample(n, generator=g)
    se_mean, se_cov = moment_standard_errors(direct, n)
    # the difference of two independent estimates has sqrt(2) times the standard error
    assert ((noised.mean(0) - direct.mean(0)).abs() < 5 * np.sqrt(2) * se_mean).all()
    assert ((torch.cov(noised.T) - torch.cov(direct.T)).abs() < 5 * np.sqrt(2) * se_cov).all()
    # and both agree with the closed-form moments of the marginal
    exact = law.marginal(sde, t)
    assert ((direct.mean(0) - exact.mean).abs() < 5 * se_mean).all()
    assert ((torch.cov(direct.T) - exact.covariance).abs() < 5 * se_cov).all()


def test_batched_marginal_samples_each_row_at_its_time():
    law = sf.analytic.Gaussian(torch.zeros(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64))
    sde = sf.VESDE(0.01, 50.0)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64).repeat(5000)
    x = law.marginal(sde, t).sample(10_000, generator=torch.Generator().manual_seed(0))
    std_small, std_big = x[0::2].std(), x[1::2].std()
    assert abs(float(std_small) - 1.0) < 0.05
    assert abs(float(std_big) - 50.0) < 2.5


def test_gaussian_flow_map_solves_the_probability_flow_ode():
    """The closed-form flow map satisfies dx/dt = f x - g^2/2 s (finite differences)."""
    law = sf.analytic.Gaussian(
        torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    )
    for sde in SDES:
        x_T = torch.randn(4, 2, dtype=torch.float64)
        t, h = 0.4 * sde.T, 1e-5 * sde.T
        path = lambda s: law.flow_map(sde, x_T, sde.T, s)  # noqa: E731
        dxdt = (path(t + h) - path(t - h)) / (2 * h)
        x = path(t)
        tt = torch.full((4,), t, dtype=torch.float64)
        rhs = sde.drift(x, tt) - 0.5 * sde.diffusion(tt)[:, None] ** 2 * law.score(sde)(x, tt)
        assert torch.allclose(dxdt, rhs, rtol=1e-6, atol=1e-8)


def test_event_shape_reshapes_data():
    cov = torch.eye(6, dtype=torch.float64)
    law = sf.analytic.Gaussian(torch.zeros(6, dtype=torch.float64), cov, event_shape=(2, 3))
    x = law.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 2, 3)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(dim=(1, 2))
    assert torch.allclose(law.log_prob(x), ref)
    assert law.score(sf.VPSDE())(x, 0.5).shape == x.shape


def test_mixture_moments_are_law_of_total_covariance():
    law = _random_mixture(3, 3, 2)
    x = law.sample(100_000, generator=torch.Generator().manual_seed(1))
    se_mean, se_cov = moment_standard_errors(x, x.shape[0])
    assert ((x.mean(0) - law.mean).abs() < 5 * se_mean).all()
    assert ((torch.cov(x.T) - law.covariance).abs() < 5 * se_cov).all()


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.ones(2), torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2)), r"one K >= 1 and D >= 1"),
        # D = 0: before, torch's "max(): Expected reduction dim to be specified" from the symmetry check
        ((torch.ones(1), torch.zeros(1, 0), torch.zeros(1, 0, 0)), r"one K >= 1 and D >= 1; got .* means \(1, 0\)"),
        ((torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2)), "non-negative"),
        ((torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])), "positive-definite"),
        ((torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])), "symmetric"),
    ],
)
def test_mixture_rejects_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        sf.analytic.GaussianMixture(*args)


def test_log_prob_rejects_wrong_event_shape():
    law = _random_mixture(0, 2, 3)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, \*\(3,\)\)"):
        law.log_prob(torch.zeros(4, 2, dtype=torch.float64))


_MIX = sf.analytic.GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.eye(2).expand(2, 2, 2))
_GAUSS = sf.analytic.Gaussian(torch.zeros(2), torch.eye(2))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sf.analytic.Gaussian("zero", torch.eye(2)), TypeError,
         r"^Gaussian: argument 'mean' expected a 1-D tensor or nested sequence of numbers, got str 'zero'\.$"),
        (lambda: sf.analytic.Gaussian(torch.zeros(2), None), TypeError, r"^Gaussian: argument 'cov' expected a 2-D tensor"),
        (lambda: sf.analytic.Gaussian(torch.zeros(1, 2), torch.eye(2)), ValueError,
         r"^Gaussian: argument 'mean' expected a 1-D tensor, got shape \(1, 2\)\.$"),
        (lambda: sf.analytic.GaussianMixture(None, torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2)), TypeError,
         r"^GaussianMixture: argument 'weights' expected a 1-D tensor"),
        (lambda: _MIX.score("vp"), TypeError, r"^GaussianMixture.score: argument 'sde' expected a ForwardSDE"),
        (lambda: _MIX.velocity("rf"), TypeError, r"^AnalyticVelocity: argument 'sde' expected a ForwardSDE"),
        (lambda: sf.analytic.AnalyticScore(sf.VPSDE(), _MIX), TypeError, r"^AnalyticScore: argument 'law' expected a GaussianMixture"),
        (lambda: _MIX.log_prob([[0.0, 1.0]]), TypeError, r"^GaussianMixture: expected x a tensor of shape \(B, \*\(2,\)\), got list\.$"),
        (lambda: _MIX.flow_map("vp", torch.zeros(3, 2), 1.0, 0.5), TypeError, r"^GaussianMixture.flow_map: argument 'sde'"),
        (lambda: _MIX.flow_map(sf.VPSDE(), torch.full((3, 2), float("nan")), 1.0, 0.5), ValueError,
         r"^GaussianMixture.flow_map: argument 'x' contains NaN or infinite values\.$"),
        (lambda: _MIX.flow_map(sf.VPSDE(), torch.zeros(3, 2), 1.0, -0.5), ValueError,
         r"^GaussianMixture.flow_map: argument 't_to' expected times in \[0, T=1\], got -0.5\.$"),
        (lambda: _GAUSS.flow_map(sf.VPSDE(), torch.zeros(3, 2), 2.0, 0.5), ValueError,
         r"^Gaussian.flow_map: argument 't_from' expected times in \[0, T=1\], got 2.0\.$"),
        (lambda: _GAUSS.flow_map(sf.VPSDE(), torch.zeros(3, 2), float("nan"), 0.5), ValueError,
         r"^Gaussian.flow_map: argument 't_from' expected a finite number, got nan\.$"),
        (lambda: _GAUSS.flow_map(sf.VPSDE(), torch.zeros(3, 2), torch.ones(2), 0.5), ValueError,
         r"^Gaussian.flow_map: argument 't_from' expected a scalar or a tensor of shape \(3,\)"),
    ],
    ids=["Gaussian mean str", "Gaussian cov None", "Gaussian mean 2-D", "mixture weights None", "score sde str",
         "velocity sde str", "AnalyticScore swapped", "log_prob list", "flow_map sde", "flow_map x nan", "flow_map t_to < 0",
         "Gaussian flow_map t_from > T", "Gaussian flow_map t_from nan", "Gaussian flow_map t_from shape"],
)
def test_analytic_laws_refuse_bad_input_naming_the_argument(call, error, match):
    # before: torch's "new(): invalid data type 'str'", 'means' for a Gaussian's mean, "'str' object has no attribute
    # 'pure_noise_at_T'" (or a velocity built on a string, failing later), a scipy solve failing on NaN or t < 0, and
    # the closed form extrapolated past T, or returned NaN, silently
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: _MIX.marginal("vp", 0.5), TypeError, r"^GaussianMixture.marginal: argument 'sde' expected a ForwardSDE"),
        (lambda: _MIX.marginal(sf.VPSDE(), -0.5), ValueError,
         r"^GaussianMixture.marginal: argument 't' expected times in \[0, T=1\], got -0.5\.$"),
        (lambda: _GAUSS.marginal(sf.RectifiedFlow(), torch.tensor([0.5, 1.5])), ValueError,
         r"^Gaussian.marginal: argument 't' expected times in \[0, T=1\], got times from 0.5 to 1.5\.$"),
        (lambda: _GAUSS.marginal(sf.VPSDE(), float("nan")), ValueError, r"^Gaussian.marginal: argument 't' expected a finite number"),
        (lambda: _GAUSS.marginal(sf.VPSDE(), "0.5"), TypeError, r"^Gaussian.marginal: argument 't' expected a real number"),
        (lambda: _GAUSS.marginal(sf.VPSDE(), torch.full((2, 2), 0.5)), ValueError,
         r"^Gaussian.marginal: argument 't' expected a time or a \(B,\) tensor of times, got shape \(2, 2\)\.$"),
        (lambda: _MIX.posterior(None, torch.zeros(3, 2), 0.5), TypeError, r"^GaussianMixture.posterior: argument 'sde'"),
        (lambda: _MIX.posterior(sf.VESDE(), torch.zeros(3, 2), 1.5), ValueError,
         r"^GaussianMixture.posterior: argument 't' expected times in \[0, T=1\], got 1.5\.$"),
        (lambda: _MIX.log_prob(torch.zeros(3, 2, dtype=torch.int64)), TypeError,
         r"^GaussianMixture: expected x a floating-point tensor, got dtype torch.int64\."),
        (lambda: _GAUSS.score(sf.VPSDE())(torch.ones(3, 2, dtype=torch.int64), 0.5), TypeError,
         r"^Gaussian: expected x a floating-point tensor, got dtype torch.int64\."),
    ],
    ids=["marginal sde str", "marginal t < 0", "marginal t > T", "marginal t nan", "marginal t str", "marginal t 2-D",
         "posterior sde None", "posterior t > T", "log_prob int x", "score int x"],
)
def test_marginal_posterior_and_densities_refuse_bad_input_naming_the_argument(call, error, match):
    # before: marginal and posterior extrapolated times outside [0, T] silently (VP below 0: a law with NaN variances;
    # RectifiedFlow beyond 1: alpha < 0), built a law batched over (2, 2) from a 2-D t, and failed on a non-process with
    # "'str' object has no attribute 'marginal'"; log_prob and the scores of an integer x were cast to its dtype,
    # truncated to integers ([-1, -4] for log N([0, 0]), N([1, 2]) under N(0, I), whose values are -1.84, -4.34)
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sf.analytic.Gaussian(torch.zeros(2, dtype=torch.complex128), torch.eye(2)), TypeError,
         r"^Gaussian: argument 'mean' expected a real 1-D tensor, got dtype torch.complex128\.$"),
        (lambda: sf.analytic.Gaussian(torch.zeros(4), torch.eye(4), event_shape="22"), TypeError,
         r"^Gaussian: argument 'event_shape' expected a tuple of ints, e\.g\. \(1, 2, 2\), got str '22'\.$"),
        (lambda: sf.analytic.Gaussian(torch.zeros(4), torch.eye(4), event_shape=4), TypeError,
         r"^Gaussian: argument 'event_shape' expected a tuple of ints"),
        (lambda: sf.analytic.Gaussian(torch.zeros(4), torch.eye(4), event_shape=(-2, -2)), ValueError,
         r"^Gaussian: argument 'event_shape' expected a shape of sizes >= 1 with 4 elements .*, got \(-2, -2\)\.$"),
        (lambda: _MIX.to(torch.int64), TypeError, r"^GaussianMixture.to: argument 'dtype' expected a floating-point torch.dtype"),
        (lambda: _MIX.flow_map(sf.VPSDE(), torch.zeros(3, 2), 0.5, 0.2, rtol=-1.0), ValueError,
         r"^GaussianMixture.flow_map: argument 'rtol' expected"),
        (lambda: _MIX.flow_map(sf.VPSDE(), torch.zeros(3, 2), 0.5, 0.2, atol="tight"), TypeError,
         r"^GaussianMixture.flow_map: argument 'atol' expected"),
    ],
    ids=["complex mean", "event_shape str", "event_shape int", "event_shape negative", "to int64", "flow_map rtol < 0",
         "flow_map atol str"],
)
def test_law_parameters_and_tolerances_refuse_bad_input_naming_the_argument(call, error, match):
    # before: a complex mean lost its imaginary part with a torch warning only; event_shape "22" and 4 raised Python's
    # "can't multiply sequence" and "'int' object is not iterable", (-2, -2) was accepted (its product is 4) and
    # failed at the first reshape; to(torch.int64) made an integer law; a negative rtol ran (scipy raised it to 2.2e-14
    # with a warning) and a string one failed in numpy ("ufunc 'greater' did not contain a loop")
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_are_refused_naming_them(dtype):
    # before: torch's NotImplementedError '"linalg_eigh_cpu" not implemented for 'Half'' from the eigendecomposition
    with pytest.raises(TypeError, match=rf"^Gaussian: arguments 'mean' and 'cov' expected float32 or float64, got dtype {dtype}\."):
        sf.analytic.Gaussian(torch.zeros(2, dtype=dtype), torch.eye(2, dtype=dtype))
    with pytest.raises(TypeError, match=rf"^GaussianMixture: argument 'covs' expected float32 or float64, got dtype {dtype}\."):
        sf.analytic.GaussianMixture([1.0], [[0.0]], torch.ones(1, 1, 1, dtype=dtype))
    half = sf.analytic.Gaussian(torch.zeros(2), torch.eye(2)).to(dtype)  # evaluating in half precision stays possible
    assert half.log_prob(torch.zeros(1, 2, dtype=dtype)).dtype == dtype
