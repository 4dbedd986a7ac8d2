"""Exact posteriors of the analytic laws against Bayes' rule, computed without the conditioning formulas.

References: the joint density ``law.log_prob`` and the likelihood evaluated directly (the posterior density
over the joint must be constant, and equal to minus the log evidence computed with torch.distributions),
quadrature on grids, and importance sampling from the prior.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

import scoreflow as sf
from scoreflow.analytic import Gaussian, GaussianMixture, inpainting_score, observation_log_likelihood
from scoreflow.testing import assert_samples_follow, make_law


def _random_mixture(d: int, k: int, seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))[0]
    eig = torch.exp(torch.empty(k, d, dtype=torch.float64).uniform_(math.log(0.05), math.log(1.0), generator=g))
    means = 2.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    weights = torch.rand(k, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(weights, means, (q * eig.unsqueeze(-2)) @ q.transpose(-1, -2))


def _marginal_log_prob(law: GaussianMixture, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """log of the mixture's marginal density of the coordinates ``idx`` at ``v``, by torch.distributions."""
    comps = MultivariateNormal(law.means[:, idx], law.covs[:, idx][:, :, idx])
    return torch.logsumexp(torch.log(law.weights) + comps.log_prob(v.unsqueeze(-2)), dim=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_condition_is_the_joint_density_over_the_evidence(seed):
    # Bayes: p(x_u | x_o = v) = p(v, x_u) / p(v) at every x_u, on random 6-D mixtures and masks
    law = _random_mixture(6, 3, seed)
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(6, dtype=torch.bool)
    mask[torch.randperm(6, generator=g)[: 1 + seed]] = True
    v = law.sample(1, generator=g)[0]
    post = law.condition(mask, v)
    assert post.event_shape == (6 - int(mask.sum()),) and post.n_components == 3
    x_u = 3 * torch.randn(50, post.dim, generator=g, dtype=torch.float64)
    full = v.repeat(50, 1)
    full[:, ~mask] = x_u
    log_evidence = _marginal_log_prob(law, mask.nonzero().squeeze(-1), v[mask])
    torch.testing.assert_close(post.log_prob(x_u), law.log_prob(full) - log_evidence, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_condition_linear_is_prior_times_likelihood_over_the_evidence(seed):
    law = _random_mixture(5, 4, seed)
    g = torch.Generator().manual_seed(10 + seed)
    A = torch.randn(2 + seed, 5, generator=g, dtype=torch.float64)
    noise = 0.1 + torch.rand(A.shape[0], generator=g, dtype=torch.float64)  # per-measurement std
    y = A @ law.sample(1, generator=g)[0] + noise * torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    post = law.condition_linear(A, y, noise)
    x = 3 * torch.randn(40, 5, generator=g, dtype=torch.float64)
    log_lik = Normal(x @ A.T, noise).log_prob(y).sum(-1)
    comps = MultivariateNormal(law.means @ A.T, A @ law.covs @ A.T + torch.diag(noise**2))
    log_evidence = torch.logsumexp(torch.log(law.weights) + comps.log_prob(y), dim=-1)
    torch.testing.assert_close(post.log_prob(x), law.log_prob(x) + log_lik - log_evidence, rtol=0, atol=1e-9)


@pytest.mark.parametrize("noise_std", [0.3, [0.3, 0.7]], ids=["number", "tensor"])
def test_condition_linear_is_the_closed_form_gaussian_posterior_to_float64_round_off(noise_std):
    """Kalman's closed form, m + G(y - A m) and C - G A C with G = C A^T (A C A^T + R)^-1, to 1e-13.

    A number noise_std was made a float32 tensor first: 0.3 became 0.30000001 and the posterior of a float64 law was
    1e-9 off.
    """
    law = Gaussian(torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64),
                   torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]], dtype=torch.float64))
    A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([0.7, -0.2], dtype=torch.float64)
    std = torch.tensor([0.3, 0.3] if isinstance(noise_std, float) else noise_std, dtype=torch.float64)
    post = law.condition_linear(A, y, noise_std if isinstance(noise_std, float) else std)
    m, c = law.means[0], law.covs[0]
    gain = c @ A.T @ torch.linalg.inv(A @ c @ A.T + torch.diag(std**2))
    torch.testing.assert_close(post.means[0], m + gain @ (y - A @ m), rtol=0, atol=1e-13)
    torch.testing.assert_close(post.covs[0], c - gain @ A @ c, rtol=0, atol=1e-13)


def test_condition_on_a_grid_ring():
    # the 1-D posterior of the ring's second coordinate given the first, normalized by quadrature
    law = make_law("ring2d")
    v = torch.tensor([1.3, 0.0], dtype=torch.float64)
    post = law.condition(torch.tensor([True, False]), v)
    grid = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    joint = law.log_prob(torch.stack([torch.full_like(grid, 1.3), grid], dim=1))
    density = torch.exp(joint - joint.max())
    density = density / torch.trapezoid(density, grid)
    torch.testing.assert_close(torch.exp(post.log_prob(grid[:, None])), density, rtol=0, atol=1e-8)
    # mean and the probability of the upper half-plane (the reweighted components) by quadrature
    torch.testing.assert_close(post.mean, torch.trapezoid(grid * density, grid).reshape(1), rtol=0, atol=1e-8)
    upper = torch.trapezoid(density * (grid > 0), grid) + 0.5 * density[4000] * (grid[1] - grid[0])  # the jump at 0
    components = Normal(post.means[:, 0], post.eigvals[:, 0].sqrt())
    torch.testing.assert_close((post.weights * (1 - components.cdf(torch.zeros(1, dtype=torch.float64)))).sum(), upper, rtol=0, atol=1e-8)


def test_condition_linear_against_importance_sampling_in_8d():
    # self-normalized importance sampling from the prior with the likelihood as weight
    law = _random_mixture(8, 4, 7)
    g = torch.Generator().manual_seed(3)
    A = torch.randn(3, 8, generator=g, dtype=torch.float64) / math.sqrt(8)
    y = A @ law.sample(1, generator=g)[0] + 0.5 * torch.randn(3, generator=g, dtype=torch.float64)
    post = law.condition_linear(A, y, 0.5)
    x = law.sample(400_000, generator=g)
    w = torch.softmax(Normal(x @ A.T, 0.5).log_prob(y).sum(-1), dim=0)
    ess = float(1 / (w**2).sum())
    assert ess > 5000
    mean = (w[:, None] * x).sum(0)
    se = (post.covariance.diagonal() / ess).sqrt()
    assert float(((mean - post.mean).abs() / se).max()) < 5
    # P(k | y) = E[P(k | x) | y]: the reweighted mixture weights
    weights = (w[:, None] * law.responsibilities(x)).sum(0)
    assert float((weights - post.weights).abs().max()) < 5 / math.sqrt(ess)


def test_mask_order_and_data_shape():
    # a law on 2x2 "images": the unobserved coordinates are flattened in row-major order of the mask
    law = _random_mixture(4, 2, 4)
    image = GaussianMixture(law.weights, law.means, law.covs, event_shape=(2, 2))
    mask = torch.tensor([[False, True], [True, False]])
    v = torch.arange(4, dtype=torch.float64).reshape(2, 2)
    post = image.condition(mask, v)
    flat = law.condition(mask.reshape(-1), v.reshape(-1))
    x_u = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(post.log_prob(x_u), flat.log_prob(x_u))
    full = v.reshape(-1).repeat(5, 1)
    full[:, [0, 3]] = x_u
    diff = post.log_prob(x_u) - image.log_prob(full.reshape(5, 2, 2))
    torch.testing.assert_close(diff, diff[:1].expand(5))


def test_values_off_the_mask_are_ignored_even_when_nan():
    # The docstring's promise, and sf.inpaint's: an image whose unknown pixels are NaN conditions as any other.
    law, sde = _random_mixture(4, 3, 5), sf.VPSDE()
    mask = torch.tensor([True, False, True, False])
    v = torch.tensor([0.3, 0.0, -1.2, 0.0], dtype=torch.float64)
    v_nan = torch.where(mask, v, math.nan)
    x_u, x = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(law.condition(mask, v_nan).log_prob(x_u), law.condition(mask, v).log_prob(x_u), rtol=0, atol=0)
    torch.testing.assert_close(inpainting_score(law, sde, mask, v_nan)(x, 0.3), inpainting_score(law, sde, mask, v)(x, 0.3), rtol=0, atol=0)
    nan_ll = observation_log_likelihood(law, sde, mask=mask, values=v_nan)(x, 0.3)
    torch.testing.assert_close(nan_ll, observation_log_likelihood(law, sde, mask=mask, values=v)(x, 0.3), rtol=0, atol=0)


def test_batched_observations_are_the_stacked_posteriors():
    law = make_law("mixture16d")
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(16) % 2 == 0
    values = law.sample(3, generator=g)
    batched = law.condition(mask, values)
    assert batched.batch_shape == (3,) and batched.weights.shape == (3, 4)
    x_u = torch.randn(3, 8, generator=g, dtype=torch.float64)
    single = torch.stack([law.condition(mask, values[i]).log_prob(x_u[i : i + 1])[0] for i in range(3)])
    torch.testing.assert_close(batched.log_prob(x_u), single)
    torch.testing.assert_close(batched.mean[1], law.condition(mask, values[1]).mean)
    A = torch.randn(2, 16, generator=g, dtype=torch.float64)
    y = values @ A.T
    lin = law.condition_linear(A, y, 0.2)
    x = torch.randn(3, 16, generator=g, dtype=torch.float64)
    single = torch.stack([law.condition_linear(A, y[i], 0.2).log_prob(x[i : i + 1])[0] for i in range(3)])
    torch.testing.assert_close(lin.log_prob(x), single)
    torch.testing.assert_close(lin.score(sf.VPSDE())(x, 0.3)[2:], law.condition_linear(A, y[2], 0.2).score(sf.VPSDE())(x[2:], 0.3))


def test_a_batch_of_states_that_is_not_one_per_observation_is_named():
    # batched values or y: row i of x belongs to observation i, so another batch size is a user error (was torch's
    # bare broadcasting error)
    law, sde = _random_mixture(4, 2, 7), sf.VPSDE()
    mask, x = torch.tensor([True, False, True, False]), torch.randn(2, 4, dtype=torch.float64)
    values, y = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    A = torch.ones(1, 4, dtype=torch.float64)
    for fn, f in [
        ("inpainting_score", inpainting_score(law, sde, mask, values)),
        ("observation_log_likelihood", observation_log_likelihood(law, sde, mask=mask, values=values)),
        ("observation_log_likelihood", observation_log_likelihood(law, sde, A=A, y=y, noise_std=0.5)),
    ]:
        with pytest.raises(ValueError, match=rf"{fn}: x expected one row per observation, batch 3 .*got shape \(2, 4\)"):
            f(x, 0.5)
        assert f(torch.randn(3, 4, dtype=torch.float64), 0.5).shape[0] == 3


def test_batched_posterior_samples_each_row_from_its_own_observation():
    law = make_law("ring2d")
    mask = torch.tensor([True, False])
    values = torch.tensor([[0.0, 0.0], [1.9, 0.0]], dtype=torch.float64).repeat(2000, 1)  # alternating observations
    x = law.condition(mask, values).sample(4000, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for i in range(2):
        assert_samples_follow(x[i::2], law.condition(mask, values[i]), generator=g)


def test_a_gaussian_stays_a_gaussian_with_its_flow_map():
    law = make_law("gaussian16d")
    post = law.condition_linear(torch.eye(16, dtype=torch.float64)[:4], torch.zeros(4, dtype=torch.float64), 0.1)
    assert isinstance(post, Gaussian)
    sde = sf.VPSDE()
    x_T = sde.prior_sample((64, 16), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sf.sample_ode(post.score(sde), sde, x_T, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(res.samples, post.flow_map(sde, x_T, sde.T, sde.t_min), rtol=0, atol=1e-5)


def _quadrature_likelihood(law, sde, t, x_t, v):
    """p(x_{0,0} = v | x_t) for a 2-D law by quadrature over x_0: p(v, x_t) / p(x_t)."""
    alpha, sigma = (float(c) for c in sde.marginal(torch.tensor(t, dtype=torch.float64)))
    grid = torch.linspace(-4, 4, 401, dtype=torch.float64)
    x0 = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
    kernel = Normal(alpha * x0, sigma).log_prob(x_t).sum(-1)
    joint = torch.exp(law.log_prob(x0) + kernel).reshape(401, 401)
    p_xt = torch.trapezoid(torch.trapezoid(joint, grid, dim=1), grid)
    line = torch.stack([torch.full_like(grid, v), grid], dim=1)
    numerator = torch.trapezoid(torch.exp(law.log_prob(line) + Normal(alpha * line, sigma).log_prob(x_t).sum(-1)), grid)
    return math.log(float(numerator / p_xt))


@pytest.mark.parametrize("t", [0.2, 0.5])
def test_observation_likelihood_of_a_noisy_state_by_quadrature(t):
    law, sde = make_law("ring2d"), sf.VPSDE()
    x_t = torch.tensor([0.4, -0.9], dtype=torch.float64)
    exact = observation_log_likelihood(law, sde, mask=torch.tensor([True, False]), values=torch.tensor([1.1, 0.0]))
    assert abs(float(exact(x_t[None], t)[0]) - _quadrature_likelihood(law, sde, t, x_t, 1.1)) < 1e-6
    # a linear observation: p(y | x_t) = E[N(y; A x_0, s^2) | x_t], by the same quadrature over x_0
    A, y, s = torch.tensor([[0.6, 0.8]], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), 0.3
    alpha, sigma = (float(c) for c in sde.marginal(torch.tensor(t, dtype=torch.float64)))
    grid = torch.linspace(-4, 4, 401, dtype=torch.float64)
    x0 = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(-1, 2)
    w = torch.exp(law.log_prob(x0) + Normal(alpha * x0, sigma).log_prob(x_t).sum(-1))
    lik = torch.exp(Normal(x0 @ A.T, s).log_prob(y).sum(-1))
    reference = math.log(float((w * lik).sum() / w.sum()))
    linear = observation_log_likelihood(law, sde, A=A, y=y, noise_std=s)
    assert abs(float(linear(x_t[None], t)[0]) - reference) < 1e-6


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_inpainting_score_is_bayes_rule_on_the_noisy_state(sde):
    # grad log p_t(x_t | v) = grad log p_t(x_t) + grad log p_t(v | x_t), the latter by autograd of the likelihood
    law = make_law("mixture16d")
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(16, generator=g) < 0.5
    values = law.sample(6, generator=g)
    x = law.marginal(sde, 0.3).sample(6, generator=g).requires_grad_(True)
    ll = observation_log_likelihood(law, sde, mask=mask, values=values)(x, 0.3)
    (grad,) = torch.autograd.grad(ll.sum(), x)
    exact = inpainting_score(law, sde, mask, values)(x.detach(), 0.3)
    torch.testing.assert_close(exact, law.score(sde)(x.detach(), 0.3) + grad, rtol=1e-7, atol=1e-7)
    # its unobserved block is the posterior's own diffused score
    torch.testing.assert_close(exact[:, ~mask], law.condition(mask, values).score(sde)(x.detach()[:, ~mask], 0.3))


def test_sampling_with_the_exact_conditional_score_reaches_the_posterior():
    law, sde = make_law("ring2d"), sf.VPSDE()
    mask, values = torch.tensor([True, False]), torch.tensor([0.5, 0.0], dtype=torch.float64)
    x_T = sde.prior_sample((2000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sf.sample_ode(inpainting_score(law, sde, mask, values), sde, x_T, method="dpmpp_3m_pc", steps=40)
    g = torch.Generator().manual_seed(1)
    assert_samples_follow(res.samples[:, 1:], law.condition(mask, values).marginal(sde, sde.t_min), generator=g)
    alpha, sigma = sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))
    assert_samples_follow(res.samples[:, :1], Gaussian(alpha * values[:1], sigma**2 * torch.eye(1, dtype=torch.float64)), generator=g)


def test_conditioning_errors_name_the_argument():
    law = make_law("ring2d")
    v = torch.zeros(2)
    with pytest.raises(TypeError, match=r"GaussianMixture.condition: argument 'mask' expected a boolean tensor of shape \(2,\), got tensor"):
        law.condition(torch.tensor([1, 0]), v)
    with pytest.raises(ValueError, match=r"GaussianMixture.condition: argument 'mask' expected shape \(2,\), got \(3,\)"):
        law.condition(torch.tensor([True, False, True]), v)
    with pytest.raises(ValueError, match=r"argument 'mask' expected at least one observed \(True\) and one unobserved \(False\) coordinate, got 2 of 2"):
        law.condition(torch.tensor([True, True]), v)
    with pytest.raises(ValueError, match=r"argument 'values' expected shape \(2,\) or \(B, 2\), got \(3,\)"):
        law.condition(torch.tensor([True, False]), torch.zeros(3))
    with pytest.raises(ValueError, match=r"argument 'values' contains NaN or infinite values where 'mask' is True"):
        law.condition(torch.tensor([True, False]), torch.tensor([math.nan, 0.0]))
    with pytest.raises(ValueError, match=r"GaussianMixture.condition: conditions a data law, got a law batched over \(3,\)"):
        law.marginal(sf.VPSDE(), torch.tensor([0.1, 0.2, 0.3])).condition(torch.tensor([True, False]), v)
    with pytest.raises(ValueError, match=r"GaussianMixture.condition_linear: argument 'A' expected a matrix of shape \(M, 2\)"):
        law.condition_linear(torch.ones(2), torch.ones(1), 0.1)
    with pytest.raises(ValueError, match=r"GaussianMixture.condition_linear: argument 'A' expected a matrix of shape \(M, 2\) acting on flattened x, got \(1, 3\)"):
        law.condition_linear(torch.ones(1, 3), torch.ones(1), 0.1)
    with pytest.raises(ValueError, match=r"observation_log_likelihood: argument 'A' expected a matrix of shape \(M, 2\) acting on flattened x, got \(2, 1, 2\)"):
        observation_log_likelihood(law, sf.VPSDE(), A=torch.ones(2, 1, 2), y=torch.ones(2), noise_std=0.1)
    with pytest.raises(ValueError, match=r"argument 'y' expected shape \(1,\) or \(B, 1\), got \(2,\)"):
        law.condition_linear(torch.ones(1, 2), torch.ones(2), 0.1)
    with pytest.raises(ValueError, match=r"argument 'noise_std' expected finite values > 0, got 0.0. Use condition\(\) for exact"):
        law.condition_linear(torch.ones(1, 2), torch.ones(1), 0.0)
    with pytest.raises(TypeError, match=r"argument 'noise_std' expected a number or a tensor of shape \(1,\), got str"):
        law.condition_linear(torch.ones(1, 2), torch.ones(1), "0.1")
    with pytest.raises(ValueError, match=r"argument 'noise_std' expected shape \(\) or \(1,\), got \(2,\)"):
        law.condition_linear(torch.ones(1, 2), torch.ones(1), torch.ones(2))
    with pytest.raises(TypeError, match=r"argument 'values' expected a tensor of shape \(2,\), got str"):
        law.condition(torch.tensor([True, False]), "abc")
    with pytest.raises(ValueError, match=r"observation_log_likelihood: give either 'mask' and 'values' .* or 'A', 'y' and 'noise_std'"):
        observation_log_likelihood(law, sf.VPSDE(), mask=torch.tensor([True, False]), y=torch.ones(1))
    with pytest.raises(TypeError, match=r"inpainting_score: argument 'sde' expected a ForwardSDE"):
        inpainting_score(law, "vp", torch.tensor([True, False]), v)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda law, sde, m: law.score(sde)([[0.0, 0.0, 0.0]], 0.5), TypeError,
         r"^AnalyticScore: argument 'x' expected a tensor of shape \(B, \*D\), got list\.$"),
        (lambda law, sde, m: law.score(sde)(torch.zeros(2, 3), "0.5"), TypeError,
         r"^AnalyticScore: argument 't' expected a number or a tensor of times, got str '0.5'\.$"),
        (lambda law, sde, m: law.velocity(sde).predict([[0.0, 0.0, 0.0]], 0.5), TypeError,
         r"^AnalyticVelocity: argument 'x' expected a tensor"),
        (lambda law, sde, m: inpainting_score(law, sde, m, torch.zeros(3))([[0.0, 0.0, 0.0]], 0.5), TypeError,
         r"^inpainting_score: argument 'x' expected a tensor"),
        (lambda law, sde, m: observation_log_likelihood(law, sde, mask=m, values=torch.zeros(3))(torch.zeros(2, 3), None),
         TypeError, r"^observation_log_likelihood: argument 't' expected a number or a tensor of times, got NoneType None\.$"),
    ],
    ids=["score x list", "score t str", "velocity x list", "inpainting x list", "likelihood t None"],
)
def test_analytic_models_refuse_bad_call_arguments_naming_them(call, error, match):
    # before: "'list' object has no attribute 'dtype'" and torch's "new(): invalid data type 'str'"
    law = sf.analytic.Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    with pytest.raises(error, match=match):
        call(law, sf.VPSDE(), torch.tensor([True, False, True]))
