"""scoreflow.testing: score, schedule and likelihood helpers catch planted bugs."""

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import assert_log_likelihood, assert_schedule_consistent, assert_score_matches, make_law


class TypoBetaVPSDE(sf.VPSDE):
    """A VP schedule whose beta(t) has a typo (+ for -): drift and diffusion use it, the marginal does not."""

    def beta(self, t):
        return self.beta_min + torch.as_tensor(t) * (self.beta_max + self.beta_min)


class ApproximateVESDE(sf.VESDE):
    """The common VE shortcut sigma(t) = sigma_min r^t: right derivative, but sigma(0) = sigma_min, not 0."""

    def marginal(self, t):
        t = torch.as_tensor(t)
        return torch.ones_like(t), self.sigma_min * torch.exp(self._log_ratio * t)


@pytest.mark.parametrize(
    "sde", [sf.VPSDE(), sf.SubVPSDE(beta_min=0.5, beta_max=10.0), sf.VESDE(), sf.EDMSDE()], ids=["vp", "subvp", "ve", "edm"]
)
def test_every_scoreflow_schedule_solves_its_sde(sde):
    assert assert_schedule_consistent(sde) < 1e-6


def test_schedule_with_a_beta_typo_fails_with_measured_residual_and_bound():
    with pytest.raises(AssertionError, match=r"(?s)d alpha/dt = f alpha: measured residual .* bound rtol\*scale \+ e = .*central-difference"):
        assert_schedule_consistent(TypoBetaVPSDE())


def test_schedule_that_does_not_start_at_the_data_fails():
    with pytest.raises(AssertionError, match=r"initial condition x_0 = data: measured alpha\(0\)=1, sigma\(0\)=1\.000e-02"):
        assert_schedule_consistent(ApproximateVESDE())


def test_schedule_rejects_objects_without_the_sde_interface():
    with pytest.raises(TypeError, match=r"expected a ForwardSDE-like object with 'marginal'"):
        assert_schedule_consistent(object())


def eps_net(law, sde):
    """An exact noise predictor eps(x, t) = -sigma(t) s(x, t), as a trained network would approximate it."""
    score = law.score(sde)
    return lambda x, t: -sde.marginal(t)[1][:, None] * score(x, t)


@pytest.mark.parametrize("law_name", ["gaussian2d", "mixture16d"])
@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_eps_parameterized_score_passes_and_a_score_off_by_a_factor_sigma_fails(law_name, sde, generator):
    law = make_law(law_name)
    assert assert_score_matches(sf.score_from_eps(eps_net(law, sde), sde), law, sde, n=32, generator=generator) < 1e-10
    net = eps_net(law, sde)
    forgot_sigma = lambda x, t: -net(x, t)  # noqa: E731  (s = -eps, missing the 1/sigma)
    with pytest.raises(AssertionError, match=r"(?s)measured: max over times .* bound:    rtol = 0.001.*factor="):
        assert_score_matches(forgot_sigma, law, sde, n=32, generator=generator)


def test_score_at_user_times_and_bad_times(generator):
    law, sde = make_law("ring2d"), sf.SubVPSDE()
    assert assert_score_matches(law.score(sde), law, sde, times=[0.01, 0.5, 1.0], n=8, generator=generator) == 0.0
    with pytest.raises(ValueError, match=r"argument 'times' expected a non-empty list of times in \[0, T=1\]"):
        assert_score_matches(law.score(sde), law, sde, times=[2.0])
    with pytest.raises(ValueError, match=r"assert_score_matches: argument 'times' expected finite times, got \[0.5, nan\]"):
        assert_score_matches(law.score(sde), law, sde, times=[0.5, float("nan")])
    with pytest.raises(TypeError, match=r"assert_score_matches: argument 'times' expected a list of times, got str"):
        assert_score_matches(law.score(sde), law, sde, times="0.5")
    with pytest.raises(TypeError, match=r"assert_schedule_consistent: argument 'times' expected a list of times, got str"):
        assert_schedule_consistent(sde, times="0.5")


def test_default_times_on_a_path_that_ends_in_pure_noise(generator):
    # Rectified flow has log-SNR -inf at T: the 9 default times must still run from t_min to T, all finite,
    # so the exact score passes and a wrong one fails on the measured error, not on NaN times.
    law, path = make_law("gaussian2d"), sf.RectifiedFlow()
    assert assert_score_matches(law.score(path), law, path, n=8, generator=generator) < 1e-12
    with pytest.raises(AssertionError, match=r"(?s)measured: max over times .*t=1 "):
        assert_score_matches(lambda x, t: -x, law, path, n=8, generator=generator)


def reference_log_likelihood(score, sde, x, *, with_divergence=True):
    """A user's likelihood for the Gaussian law N(m, C): closed-form flow to T plus log|det Jacobian|.

    The flow map of a Gaussian scales each eigendirection of C by sqrt(v_T / v_t) with
    v = alpha^2 lambda + sigma^2, so the divergence integral is the sum of the log scales.
    """
    x_T = LAW.flow_map(sde, x, sde.t_min, sde.T)
    ll = sde.prior_log_prob(x_T)
    if with_divergence:
        (a0, s0), (a1, s1) = sde.marginal(torch.tensor(sde.t_min, dtype=x.dtype)), sde.marginal(torch.tensor(sde.T, dtype=x.dtype))
        lam = LAW.eigvals[0]
        ll = ll + 0.5 * torch.log((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2)).sum()
    return ll


LAW = make_law("gaussian2d")


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE()], ids=["vp", "subvp", "ve"])
def test_likelihood_with_divergence_passes_and_without_it_fails(sde, generator):
    assert assert_log_likelihood(reference_log_likelihood, LAW, sde, generator=generator) < 1e-10
    no_divergence = lambda s, e, x: reference_log_likelihood(s, e, x, with_divergence=False)  # noqa: E731
    with pytest.raises(AssertionError, match=r"(?s)measured: max \|ll - target\| = .* nats.*bound:    atol \+ rtol\*\|target\|.*prior gap"):
        assert_log_likelihood(no_divergence, LAW, sde, generator=generator)


def test_likelihood_on_a_mixture_via_the_exact_change_of_variables(generator):
    law, sde = make_law("ring2d"), sf.VPSDE()

    def loglik(score, sde, x):
        # Augmented ODE (x, log-det) with the exact Jacobian trace of the drift, integrated by torchdiffeq.
        def func(t, state):
            x = state[:, :2].detach().requires_grad_(True)
            with torch.enable_grad():
                tb = t.expand(x.shape[0])
                v = sde.drift(x, tb) - 0.5 * sde.diffusion(t) ** 2 * score(x, tb)
                div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
            return torch.cat([v.detach(), div.detach()[:, None]], dim=1)

        import torchdiffeq

        state = torch.cat([x, torch.zeros(x.shape[0], 1, dtype=x.dtype)], dim=1)
        ts = torch.tensor([sde.t_min, sde.T], dtype=x.dtype)
        out = torchdiffeq.odeint(func, state, ts, method="dopri5", rtol=1e-8, atol=1e-8)[-1]
        return sde.prior_log_prob(out[:, :2]) + out[:, 2]

    assert assert_log_likelihood(loglik, law, sde, n=8, generator=generator) < 1e-4


def test_likelihood_rejects_wrong_output_shapes(generator):
    with pytest.raises(ValueError, match=r"assert_log_likelihood: loglik returned shape \(4, 2\); expected shape \(4,\)"):
        assert_log_likelihood(lambda s, e, x: x, LAW, sf.VPSDE(), n=4, generator=generator)
    with pytest.raises(TypeError, match=r"loglik returned float"):
        assert_log_likelihood(lambda s, e, x: math.pi, LAW, sf.VPSDE(), n=4, generator=generator)


@pytest.mark.parametrize(("law_name", "sde"), [("gaussian2d", sf.VPSDE()), ("ring2d", sf.VESDE())], ids=["gaussian2d-vp", "ring2d-ve"])
def test_scoreflow_log_likelihood_passes_and_its_prior_term_alone_fails(law_name, sde, generator):
    law = make_law(law_name)
    solve = lambda s, e, x: sf.log_likelihood(s, e, x, trace="exact", rtol=1e-5, atol=1e-5)  # noqa: E731
    assert assert_log_likelihood(lambda s, e, x: solve(s, e, x).log_prob, law, sde, n=4, generator=generator) < 1e-3
    with pytest.raises(AssertionError, match=r"measured: max \|ll - target\|"):
        assert_log_likelihood(lambda s, e, x: solve(s, e, x).prior_log_prob, law, sde, n=4, generator=generator)


@pytest.mark.parametrize("times", [[0.5, 5.0], [0.0]])
def test_schedule_times_outside_the_process_are_refused(times):
    # Before: t = 5 > T was checked silently (extrapolating the schedule past its end).
    with pytest.raises(ValueError, match=r"assert_schedule_consistent: argument 'times' expected a non-empty list of times in \(0, T=1\], got \["):
        assert_schedule_consistent(sf.VPSDE(), times=times)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("gaussian2d", "flow"), r"make_problem: argument 'sde' expected one of 'vp', 'subvp', 've', 'rf', got 'flow'\."),
        (("moons", "vp"), r"make_problem: argument 'law' expected one of 'gaussian2d', .*, got 'moons'\."),
    ],
)
def test_make_problem_names_its_own_arguments(args, message):
    # Before: "make_sde: argument 'name' ...", a function and an argument the caller never used.
    from scoreflow.testing import make_problem

    with pytest.raises(ValueError, match=message):
        make_problem(*args)
