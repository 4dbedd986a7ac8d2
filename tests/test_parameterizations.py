"""Parameterization round trips (eps <-> score <-> x0 <-> v) and energy-based scores."""

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import make_problem

SDES = [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()]


@pytest.fixture
def setup():
    problem = make_problem("mixture16d", "vp")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, generator=g, dtype=torch.float64)
    return problem.law, x


@pytest.mark.parametrize("sde", SDES, ids=repr)
@pytest.mark.parametrize("kind", ["eps", "denoiser", "velocity"])
def test_round_trip_reproduces_the_score(setup, sde, kind):
    law, x = setup
    score = law.score(sde)
    t = torch.linspace(0.1, 0.9, x.shape[0], dtype=torch.float64) * sde.T
    to_net = {"eps": sf.eps_from_score, "denoiser": sf.denoiser_from_score, "velocity": sf.velocity_from_score}[kind]
    from_net = {"eps": sf.score_from_eps, "denoiser": sf.score_from_denoiser, "velocity": sf.score_from_velocity}[kind]
    rebuilt = from_net(to_net(score, sde), sde)
    assert torch.allclose(rebuilt(x, t), score(x, t), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_conversions_agree_with_definitions(setup, sde):
    """x = alpha x0 + sigma eps and v = alpha eps - sigma x0 hold for the converted predictions."""
    law, x = setup
    score = law.score(sde)
    t = torch.full((x.shape[0],), 0.5 * sde.T, dtype=torch.float64)
    alpha, sigma = sde.marginal(t[0])
    eps = sf.eps_from_score(score, sde)(x, t)
    x0 = sf.denoiser_from_score(score, sde)(x, t)
    v = sf.velocity_from_score(score, sde)(x, t)
    assert torch.allclose(alpha * x0 + sigma * eps, x, atol=1e-10)
    assert torch.allclose(alpha * eps - sigma * x0, v, atol=1e-10)


def test_denoiser_is_posterior_mean_for_gaussian():
    """For N(m, c I) data, E[x0 | x_t] = m + alpha c (x - alpha m) / (alpha^2 c + sigma^2)."""
    sde = sf.VPSDE()
    m, c = 1.5, 0.3
    law = sf.analytic.Gaussian(torch.full((3,), m, dtype=torch.float64), c * torch.eye(3, dtype=torch.float64))
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    expected = m + alpha * c * (x - alpha * m) / (alpha**2 * c + sigma**2)
    assert torch.allclose(sf.denoiser_from_score(law.score(sde), sde)(x, t), expected, atol=1e-12)


class QuadraticEnergy(torch.nn.Module):
    """E(x) = 1/2 (x - mu)^T P (x - mu) with learnable mu and P = L L^T."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mu = torch.nn.Parameter(torch.randn(d, dtype=torch.float64))
        self.chol = torch.nn.Parameter(torch.eye(d, dtype=torch.float64) + 0.1 * torch.randn(d, d, dtype=torch.float64))

    def forward(self, x, t):
        p = self.chol @ self.chol.T
        r = x - self.mu
        return 0.5 * torch.einsum("bi,ij,bj->b", r, p, r)


def test_energy_score_is_minus_gradient_even_under_no_grad():
    torch.manual_seed(0)
    energy = QuadraticEnergy(3)
    score = sf.score_from_energy(energy)
    x = torch.randn(4, 3, dtype=torch.float64)
    expected = -(x - energy.mu) @ (energy.chol @ energy.chol.T)
    with torch.no_grad():
        out = score(x, 0.5)
    assert torch.allclose(out, expected.detach(), atol=1e-12)


def test_energy_score_is_differentiable_in_parameters():
    torch.manual_seed(0)
    energy = QuadraticEnergy(2)
    score = sf.score_from_energy(energy)
    x = torch.randn(4, 2, dtype=torch.float64)
    loss = score(x, 0.5).pow(2).sum()
    (grad_mu,) = torch.autograd.grad(loss, energy.mu)
    p = (energy.chol @ energy.chol.T).detach()
    eps = 1e-6
    fd = torch.zeros(2, dtype=torch.float64)
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = eps
        f = lambda mu: (-(x - mu) @ p).pow(2).sum()  # noqa: E731
        fd[i] = (f(energy.mu.detach() + e) - f(energy.mu.detach() - e)) / (2 * eps)
    assert torch.allclose(grad_mu, fd, rtol=1e-6)


def test_wrappers_expose_network_parameters():
    net = torch.nn.Linear(2, 2)
    assert isinstance(sf.score_from_eps(lambda x, t: net(x), sf.VPSDE()), torch.nn.Module)
    module_score = sf.score_from_denoiser(_NetWithTime(net), sf.VPSDE())
    assert len(list(module_score.parameters())) == 2


class _NetWithTime(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x)


def test_wrappers_reject_non_callables():
    with pytest.raises(TypeError, match="'net' expected a callable"):
        sf.score_from_eps(3, sf.VPSDE())
    with pytest.raises(TypeError, match="'sde' expected a ForwardSDE"):
        sf.score_from_eps(lambda x, t: x, "vp")
    with pytest.raises(TypeError, match="'energy' expected a callable"):
        sf.score_from_energy(None)


@pytest.mark.parametrize("sde", SDES + [sf.RectifiedFlow()], ids=repr)
@pytest.mark.parametrize("kind", sf.parameterizations.PREDICTIONS)
def test_affine_map_values_give_the_data_and_noise_predictions_of_convert(setup, sde, kind):
    """[a_x0, b_x0, a_eps, b_eps] in floats at t reproduce convert's x0 and eps of any prediction value p at any x."""
    _, x = setup
    p = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor(0.37 * sde.T, dtype=torch.float64)
    (alpha, sigma), (d_alpha, d_sigma) = sde.marginal(t), sde.marginal_derivatives(t)
    a0, b0, ae, be = sf.parameterizations.affine_map_values(kind, float(alpha), float(sigma), float(d_alpha), float(d_sigma))
    torch.testing.assert_close(a0 * x + b0 * p, sf.parameterizations.convert(p, kind, "x0", x, t, sde), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ae * x + be * p, sf.parameterizations.convert(p, kind, "eps", x, t, sde), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", ["eps_from_score", "denoiser_from_score", "velocity_from_score", "flow_velocity_from_score"])
def test_a_conversion_from_a_score_checks_its_arguments_when_built(fn):
    # before: built without a word, then "'str' object is not callable" or "'str' object has no attribute 'marginal'"
    # at the first call
    convert = getattr(sf, fn)
    with pytest.raises(TypeError, match=rf"^{fn}: argument 'score' expected a callable score\(x, t\), got str 'vp'\.$"):
        convert("vp", sf.VPSDE())
    with pytest.raises(TypeError, match=rf"^{fn}: argument 'sde' expected a ForwardSDE .* got str 'vp'\.$"):
        convert(lambda x, t: -x, "vp")


def test_convert_refuses_a_kind_it_does_not_know_instead_of_reading_it_as_a_score():
    # diffusers names the noise prediction "epsilon": it was converted as a score, a silently wrong x0
    x, sde = torch.randn(4, 2, dtype=torch.float64), sf.VPSDE()
    with pytest.raises(ValueError, match=r"^convert: argument 'source' expected one of 'score', 'eps', .*got 'epsilon'\.$"):
        sf.parameterizations.convert(x, "epsilon", "x0", x, 0.5, sde)
    with pytest.raises(ValueError, match=r"^convert: argument 'target' expected one of .*got 'sample'\.$"):
        sf.parameterizations.convert(x, "eps", "sample", x, 0.5, sde)
    with pytest.raises(ValueError, match=r"^affine_map_values: argument 'kind' expected one of .*got 'epsilon'\.$"):
        sf.parameterizations.affine_map_values("epsilon", 0.5, 0.8)
