"""Sampling and likelihoods on flow paths: from pure noise at t = 1, through the velocity, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import make_law, reference_flow_map

F64 = torch.float64
RF = sf.RectifiedFlow()


def prior(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return RF.prior_sample((n, d), generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("t_min", [RF.t_min, 0.0])
def test_sample_ode_lands_on_the_closed_form_flow_map_from_pure_noise(t_min):
    law = make_law("gaussian16d")
    x1 = prior(32, 16)
    res = sf.sample_ode(law.velocity(RF), RF, x1, method="dopri5", rtol=1e-10, atol=1e-10, t_min=t_min)
    assert (res.samples - law.flow_map(RF, x1, 1.0, t_min)).abs().max() < 1e-6
    # a net returning the exact velocity, wrapped, and the law's own score model integrate the same velocity
    net = sf.score_from_flow_velocity(lambda x, t: law.velocity(RF).predict(x, t), RF)
    again = sf.sample_ode(net, RF, x1, method="dopri5", rtol=1e-10, atol=1e-10, t_min=t_min)
    torch.testing.assert_close(again.samples, res.samples)
    torch.testing.assert_close(sf.sample_ode(law.score(RF), RF, x1, rtol=1e-10, atol=1e-10, t_min=t_min).samples, res.samples)


def test_a_general_affine_path_samples_its_own_flow_map():
    cosine = sf.AffinePath(lambda t: torch.cos(0.5 * torch.pi * t), lambda t: torch.sin(0.5 * torch.pi * t), T=0.999)
    law = make_law("gaussian2d")
    x_T = law.marginal(cosine, cosine.T).sample(16, generator=torch.Generator().manual_seed(0))
    res = sf.sample_ode(law.velocity(cosine), cosine, x_T, method="dopri5", rtol=1e-7, atol=1e-7)
    assert (res.samples - law.flow_map(cosine, x_T, cosine.T, cosine.t_min)).abs().max() < 1e-6



def test_a_path_whose_alpha_misses_zero_at_T_by_round_off_reaches_pure_noise():
    """cos(pi/2) = 6e-17 in float64: the cosine path at T = 1 is pure noise there, not a process with log-SNR -37."""
    cosine = sf.AffinePath(lambda t: torch.cos(0.5 * torch.pi * t), lambda t: torch.sin(0.5 * torch.pi * t))
    one = torch.tensor(1.0, dtype=F64)
    assert cosine.pure_noise_at_T and cosine.marginal(one)[0] == 0 and cosine.log_snr(one) == -torch.inf
    law = make_law("gaussian2d")
    x1 = prior(16, 2)
    # methods that divide by alpha(T) are refused (they returned |x| ~ 1e9), as are a score model and infinite grids
    with pytest.raises(ValueError, match="EDMHeun divides by alpha"):
        sf.sample_ode(law.velocity(cosine), cosine, x1, method="edm_heun", steps=10)
    with pytest.raises(ValueError, match="a model predicting 'score' cannot be integrated"):
        sf.sample_ode(lambda x, t: -x, cosine, x1, method="dopri5")
    with pytest.raises(ValueError, match="schedule 'karras' needs a finite log-SNR"):
        sf.time_grid(cosine, 10, "karras")
    exact = law.flow_map(cosine, x1, 1.0, cosine.t_min)
    for method in ("dpmpp_3m_pc", "dpmpp_2m"):
        errors = [float((sf.sample_ode(law.velocity(cosine), cosine, x1, method=method, steps=n).samples - exact).abs().max())
                  for n in (16, 64)]
        assert errors[1] < errors[0] / 8 and errors[1] < 2e-3, (method, errors)
    # away from T the schedule is untouched
    t = torch.tensor([0.5, 1 - 1e-9], dtype=F64)
    torch.testing.assert_close(cosine.marginal(t)[0], torch.cos(0.5 * torch.pi * t), rtol=0, atol=0)

NATIVE = ["ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_pc", "dpmpp_3m_pc", "dpmpp_4m_pc"]
#: Orders measured from pure noise on the Gaussian (log_snr_capped grids): the first step,
#: from lambda = -inf, is a DDIM step (or a trapezoidal one for the predictor-correctors), which bounds the
#: order of the multistep methods by 2 and 3; the slope asserted (32 to 128 steps) is the declared one capped there, less 0.3.
FROM_NOISE_ORDER = {"ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 2, "dpmpp_2m_pc": 3, "dpmpp_3m_pc": 3, "dpmpp_4m_pc": 3}


@pytest.mark.parametrize("method", NATIVE)
def test_native_exponential_integrators_converge_from_pure_noise(method):
    law = make_law("gaussian2d")
    x1 = prior(32, 2)
    exact = law.flow_map(RF, x1, 1.0, RF.t_min)
    errors = [float((sf.sample_ode(law.velocity(RF), RF, x1, method=method, steps=n).samples - exact).abs().max())
              for n in (32, 64, 128)]
    slope = math.log2(errors[0] / errors[-1]) / 2
    assert all(math.isfinite(e) for e in errors) and slope > FROM_NOISE_ORDER[method] - 0.3, (errors, slope)


def test_adaptive_exponential_pc_from_pure_noise_meets_its_tolerance():
    law = make_law("ring2d_sharp")
    x1 = prior(64, 2)
    ref = reference_flow_map(law, RF, x1, 1.0, RF.t_min)
    errors = []
    for tol in (1e-3, 1e-5):
        res = sf.sample_ode(law.velocity(RF), RF, x1, method="dpmpp_4m_pc_adaptive", rtol=tol, atol=tol)
        errors.append(float((res.samples - ref).pow(2).mean().sqrt()))
        assert res.times[0] == 1.0 if res.times is not None else True
    assert errors[1] < 2e-4 and errors[1] < errors[0] / 10, errors


def test_score_and_noise_models_are_refused_at_pure_noise():
    law, x1 = make_law("ring2d"), prior(4, 2)
    plain = lambda x, t: law.score(RF)(x, t)  # noqa: E731 - a score without its native velocity
    for call in (lambda: sf.sample_ode(plain, RF, x1), lambda: sf.log_likelihood(plain, RF, x1)):
        with pytest.raises(ValueError, match="a model predicting 'score' cannot be integrated from t=T=1.*score_from_flow_velocity"):
            call()
    with pytest.raises(ValueError, match="sample_ode: a model predicting 'eps' cannot be integrated"):
        sf.sample_ode(sf.score_from_eps(lambda x, t: x, RF), RF, x1)


def test_methods_that_divide_by_alpha_at_pure_noise_are_refused():
    model, x1 = make_law("ring2d").velocity(RF), prior(4, 2)
    for method in ("dpm_solver_2", "dpm_solver_3", "edm_heun"):
        with pytest.raises(ValueError, match="sample_ode: the native method .* divides by alpha\\(T\\) = 0"):
            sf.sample_ode(model, RF, x1, method=method, steps=4)
    with pytest.raises(ValueError, match="sample_ode: time='sigma' is infinite at T=1"):
        sf.sample_ode(model, RF, x1, method="euler", steps=4, time="sigma")
    with pytest.raises(ValueError, match="log-SNR, which is \\+inf at t_min=0"):
        sf.sample_ode(model, RF, x1, method="dpmpp_2m", schedule=sf.time_grid(RF, 4, "shift", t_min=0.0), t_min=0.0)
    with pytest.raises(ValueError, match=r"sample_ode: argument 't_min' expected a time in \(0, T=1\)"):
        sf.sample_ode(make_law("ring2d").score(sf.VPSDE()), sf.VPSDE(), x1, t_min=0.0)


_DIVIDE_BY_ALPHA = ("dpm_solver_2", "dpm_solver_3", "deis", "edm_heun", "ipndm")


def _native_solve(method, sde, x, times):
    """The registry solver of ``method`` through its interface (as teacher_step calls it) on the grid ``times``."""
    from scoreflow.dynamics.counting import CountedScore
    from scoreflow.methods import Grid, StepMonitor
    solver = sf.get_method("ode", method).build("test", None)
    counted = CountedScore(make_law("gaussian2d").velocity(RF), caller="test")
    return solver.sample(counted, RF, x, Grid(times, "t"), monitor=StepMonitor("test")).state


@pytest.mark.parametrize("method", _DIVIDE_BY_ALPHA)
def test_methods_that_divide_by_alpha_solve_from_below_pure_noise_at_their_order(method):
    # They were refused on any process with alpha(T) = 0, even for a solve from t = 0.5 (alpha = 0.5), with a message
    # naming sample_ode whoever called; only a solve whose first time is at pure noise is refused, by its caller.
    from scoreflow.consistency import teacher_step
    from scoreflow.metrics import fit_order
    law = make_law("gaussian2d")
    x = law.marginal(RF, 0.5).sample(32, generator=torch.Generator().manual_seed(3)).to(F64)
    for caller, call in (("sample_ode", lambda: sf.sample_ode(law.velocity(RF), RF, prior(4, 2), method=method, steps=4)),
                         ("teacher_step", lambda: teacher_step(law.velocity(RF), RF, x, 1.0, 0.5, method=method))):
        with pytest.raises(ValueError, match=rf"{caller}: the native method \w+ divides by alpha\(T\) = 0 on Rectified"):
            call()
    # one teacher step of length h from t = 0.5: local error O(h^(q+1)), q the order of the method's first step (1
    # for the multistep ones, which start with a DDIM step)
    first = 1 if method in ("deis", "ipndm") else sf.get_method("ode", method).order
    local = []
    for h in (0.05, 0.025):
        stepped, nfe = teacher_step(law.velocity(RF), RF, x, 0.5, 0.5 - h, method=method)
        assert nfe == sf.get_method("ode", method).nfe_per_step
        local.append(float((stepped - reference_flow_map(law, RF, x, 0.5, 0.5 - h)).abs().max()))
    assert local[0] < 1e-2 and local[0] / local[1] > 0.75 * 2 ** (first + 1), local
    # from t = 0.5 to t_min on the untruncated path, against the closed form, steps uniform in log-SNR: the
    # one-step methods at their order; the multistep ones (deis, order 3) start with that DDIM step, whose local
    # error h^2 bounds them at order 2 where the prediction varies (at T it hardly does: order 3 there)
    exact = reference_flow_map(law, RF, x, 0.5, RF.t_min)
    lam = RF.log_snr(torch.tensor([0.5, RF.t_min], dtype=F64))
    steps, errors = [16, 32, 64], []
    for n in steps:
        times = RF.t_from_log_snr(torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=F64))
        times[0], times[-1] = 0.5, RF.t_min
        errors.append(float((_native_solve(method, RF, x, times) - exact).abs().max()))
    order = min(sf.get_method("ode", method).order, 2 if method in ("deis", "ipndm") else 3)
    assert order - 0.25 < fit_order([1 / n for n in steps], errors) < order + 1, errors


def test_the_reverse_sde_needs_a_path_truncated_before_pure_noise():
    law, x1 = make_law("ring2d"), prior(4, 2)
    for call in (lambda: sf.sample_sde(law.score(RF), RF, x1, steps=4),
                 lambda: sf.sample_pc(law.score(RF), RF, x1, steps=4)):
        with pytest.raises(ValueError, match="reverse SDE of RectifiedFlow.* infinite .*RectifiedFlow\\(T=0.999\\)"):
            call()
    short = RF.truncated(0.9)
    x_T = law.marginal(short, short.T).sample(2000, generator=torch.Generator().manual_seed(0))
    res = sf.sample_sde(law.score(short), short, x_T, steps=200, generator=torch.Generator().manual_seed(1))
    exact = law.marginal(short, short.t_min)
    # mean and covariance of 2000 samples within a few standard errors of the exact ones
    assert (res.samples.mean(0) - exact.mean).abs().max() < 0.15
    assert (torch.cov(res.samples.T) - exact.covariance).abs().max() < 0.3


@pytest.mark.parametrize("t_min", [RF.t_min, 0.0])
def test_exact_trace_likelihood_matches_the_exact_log_density_on_a_mixture(t_min):
    law = make_law("ring2d")
    x = law.marginal(RF, t_min).sample(8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ll = sf.log_likelihood(law.velocity(RF), RF, x, trace="exact", rtol=1e-9, atol=1e-9, t_min=t_min)
    exact = law.marginal(RF, t_min).log_prob(x)
    assert (ll.log_prob - exact).abs().max() < 1e-5
    torch.testing.assert_close(ll.prior_log_prob, RF.prior_log_prob(ll.latent))  # the prior at t = 1 is exact


def test_image_shaped_data_under_a_flow_path():
    law = sf.analytic.Gaussian(torch.zeros(8, dtype=F64), 0.5 * torch.eye(8, dtype=F64), event_shape=(2, 2, 2))
    x1 = prior(4, 8).reshape(4, 2, 2, 2)
    res = sf.sample_ode(law.velocity(RF), RF, x1, method="dpmpp_3m_pc", steps=20)
    assert res.samples.shape == (4, 2, 2, 2)
    assert (res.samples - law.flow_map(RF, x1, 1.0, RF.t_min)).abs().max() < 3e-3
    x = law.sample(4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ll = sf.log_likelihood(law.velocity(RF), RF, x, rtol=1e-9, atol=1e-9, t_min=0.0)
    assert (ll.log_prob - law.log_prob(x)).abs().max() < 1e-5


def test_guidance_of_two_flow_models_guides_their_velocities():
    near, far = make_law("gaussian2d"), make_law("ring2d")
    guided = sf.guided_score(near.velocity(RF), far.velocity(RF), 2.0)
    assert guided.prediction == "flow_velocity"
    x, t = prior(6, 2), torch.full((6,), 0.4, dtype=F64)
    u_c, u_u = near.velocity(RF).predict(x, t), far.velocity(RF).predict(x, t)
    torch.testing.assert_close(guided.predict(x, t), u_u + 2.0 * (u_c - u_u))
    s_c, s_u = near.velocity(RF)(x, t), far.velocity(RF)(x, t)
    torch.testing.assert_close(guided(x, t), s_u + 2.0 * (s_c - s_u))
    res = sf.sample_ode(guided, RF, prior(6, 2), method="dpmpp_2m", steps=8)  # from pure noise
    assert torch.isfinite(res.samples).all()
