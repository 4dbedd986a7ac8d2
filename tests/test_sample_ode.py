"""sample_ode against the closed-form probability-flow map of Gaussian data, via scoreflow.testing."""

import pytest
import torch

import scoreflow as sf
from scoreflow.metrics import rms_error
from scoreflow.testing import assert_flow_map, assert_order, make_law, make_problem

FIXED_ORDERS = {m.name: m.order for m in sf.list_methods("ode") if not m.adaptive}


def _gaussian_case(sde_name: str, n: int = 64, seed: int = 0):
    problem = make_problem("gaussian2d", sde_name)
    sde = problem.sde
    x_T = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = problem.law.flow_map(sde, x_T, sde.T, sde.t_min)
    return problem, x_T, exact


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_dopri5_lands_on_closed_form_flow(sde_name):
    problem = make_problem("gaussian2d", sde_name)
    results = []

    def dopri5(score, sde, x_T):
        results.append(sf.sample_ode(score, sde, x_T, method="dopri5", rtol=1e-9, atol=1e-9))
        return results[-1].samples

    assert_flow_map(dopri5, problem.law, problem.sde, n=64, atol=1e-6, rtol=0.0, generator=torch.Generator().manual_seed(0))
    assert results[0].nfe > 0 and results[0].samples.dtype == torch.float64


@pytest.mark.parametrize("method", sorted(FIXED_ORDERS))
def test_fixed_step_methods_show_their_order(method):
    """Log-log slope of the RMS error against the step size matches the declared order.

    torchdiffeq's methods integrate in t on a uniform grid and must come within 0.3 of their order.
    The native methods step in log-SNR on a uniform log-SNR grid; there the declared order is a
    floor (within 0.3): on this linear (Gaussian) problem some multistep methods superconverge
    (dpmpp_3m fits ~4).
    """
    problem = make_problem("gaussian2d", "vp")
    native = sf.get_method("ode", method).backend == "native"
    kwargs = {"schedule": "log_snr"} if native else {}

    def sampler(score, sde, x_T, steps):
        return sf.sample_ode(score, sde, x_T, method=method, steps=steps, **kwargs).samples

    tol = (0.3, 1.2) if native else 0.3
    assert_order(sampler, problem.law, problem.sde, FIXED_ORDERS[method], steps=(16, 32, 64, 128), tol=tol, n=64,
                 generator=torch.Generator().manual_seed(0))


def test_fixed_step_nfe_counts_every_evaluation():
    problem, x_T, _ = _gaussian_case("vp")
    for method in ("euler", "midpoint", "heun", "heun3", "rk4"):
        stages = sf.get_method("ode", method).nfe_per_step
        assert sf.sample_ode(problem.score, problem.sde, x_T, method=method, steps=10).nfe == 10 * stages


def test_step_size_lands_on_t_min_and_trajectory_is_returned():
    problem, x_T, _ = _gaussian_case("vp")
    sde = problem.sde
    res = sf.sample_ode(problem.score, sde, x_T, method="rk4", steps=50, return_trajectory=True)
    assert res.trajectory.shape == (51, *x_T.shape)
    assert torch.isclose(res.times[0], torch.tensor(sde.T, dtype=torch.float64))
    assert torch.isclose(res.times[-1], torch.tensor(sde.t_min, dtype=torch.float64))
    assert torch.equal(res.trajectory[0], x_T)
    # every saved state is the exact flow at its time, up to rk4's error at 50 steps
    mid = 25
    mid_exact = problem.law.flow_map(sde, x_T, sde.T, res.times[mid])
    assert (res.trajectory[mid] - mid_exact).abs().max() < 1e-3

    def by_size(score, sde, x_T):
        return sf.sample_ode(score, sde, x_T, method="rk4", step_size=(sde.T - sde.t_min) / 50).samples

    assert_flow_map(by_size, problem.law, sde, n=64, atol=1e-3, rtol=0.0, generator=torch.Generator().manual_seed(0))


def test_float32_and_any_data_shape():
    """A law on (2, 3)-shaped data, sampled in float32."""
    d = 6
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g)
    law = sf.analytic.Gaussian(torch.randn(d, generator=g), a @ a.T / d + 0.2 * torch.eye(d), event_shape=(2, 3))
    sde = sf.VPSDE()

    def sampler(score, sde, x_T):
        samples = sf.sample_ode(score, sde, x_T, rtol=1e-5, atol=1e-5).samples
        assert samples.shape == (16, 2, 3) and samples.dtype == torch.float32
        return samples

    assert_flow_map(sampler, law, sde, n=16, atol=1e-3, rtol=0.0, generator=g)


def test_denoise_final_applies_tweedie_and_costs_one_nfe():
    problem, x_T, exact = _gaussian_case("vp")
    sde = problem.sde
    plain = sf.sample_ode(problem.score, sde, x_T, method="euler", steps=20)
    denoised = sf.sample_ode(problem.score, sde, x_T, method="euler", steps=20, denoise_final=True)
    assert denoised.nfe == plain.nfe + 1
    expected = sf.denoiser_from_score(problem.score, sde)(plain.samples, sde.t_min)
    assert torch.allclose(denoised.samples, expected)


def test_sampling_is_not_differentiable_unless_asked():
    problem, x_T, _ = _gaussian_case("vp", n=4)
    x_T = x_T.clone().requires_grad_(True)
    assert not sf.sample_ode(problem.score, problem.sde, x_T, method="euler", steps=5).samples.requires_grad
    out = sf.sample_ode(problem.score, problem.sde, x_T, method="euler", steps=5, enable_grad=True).samples
    (grad,) = torch.autograd.grad(out.sum(), x_T)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("flag", ["denoise_final", "enable_grad"])
def test_a_flag_of_the_wrong_type_is_refused(flag):
    """enable_grad="no" is truthy: it kept the autograd graph of the whole solve without a word."""
    problem, x_T, _ = _gaussian_case("vp", n=4)
    with pytest.raises(TypeError, match=rf"sample_ode: argument '{flag}' expected True or False, got str 'no'"):
        sf.sample_ode(problem.score, problem.sde, x_T, method="euler", steps=2, **{flag: "no"})


TORCHDIFFEQ_FIXED = [m.name for m in sf.list_methods("ode") if m.backend == "torchdiffeq" and not m.adaptive]


@pytest.mark.parametrize("method", TORCHDIFFEQ_FIXED)
def test_on_edm_the_fixed_step_methods_default_to_the_log_snr_grid_and_gain_on_uniform_t(method):
    """EDM's clock (t = sigma in [0.002, 80]) leaves the whole denoising to the last step of a uniform t grid: the
    default grid in time="t" is uniform in log-SNR (the same samples as that grid given explicitly), with a
    fraction of the uniform t grid's error against the closed-form flow map (measured: 0.26 for Euler, <= 0.04
    for the higher orders at 10 steps)."""
    law, sde = make_law("gaussian2d"), sf.EDMSDE()
    score = law.score(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = law.flow_map(sde, x_T, sde.T, sde.t_min)
    default = sf.sample_ode(score, sde, x_T, method=method, steps=10)
    given = sf.sample_ode(score, sde, x_T, method=method, schedule=sf.time_grid(sde, 10, "log_snr"))
    uniform = sf.sample_ode(score, sde, x_T, method=method, steps=10, schedule="t")
    torch.testing.assert_close(default.samples, given.samples, rtol=0, atol=0)
    error, uniform_error = rms_error(default.samples, exact), rms_error(uniform.samples, exact)
    assert error < uniform_error / (3 if FIXED_ORDERS[method] == 1 else 10)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "rf"])
def test_elsewhere_the_fixed_step_methods_keep_the_uniform_t_grid(sde_name):
    problem, x_T, _ = _gaussian_case(sde_name, n=4)
    for method in TORCHDIFFEQ_FIXED:
        res = sf.sample_ode(problem.score, problem.sde, x_T, method=method, steps=7, return_trajectory=True)
        torch.testing.assert_close(res.times, sf.time_grid(problem.sde, 7, "t"), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["rk4", "dpmpp_3m_pc", "edm_heun"])
def test_a_grid_whose_times_tie_in_the_states_dtype_is_refused_naming_the_argument(method):
    # 0.5 + 2e-8 and 0.5 differ in float64 but round to one float32 time: with a float32 state torchdiffeq stopped
    # on an assertion, the multistep methods divided by zero and edm_heun took a step of length 0 silently
    problem, x_T, _ = _gaussian_case("vp", n=4)
    sde, t32 = problem.sde, torch.float32
    grid = torch.tensor([sde.T, 0.5 + 2e-8, 0.5, sde.t_min], dtype=torch.float64)
    assert grid.to(t32)[1] == grid.to(t32)[2]
    with pytest.raises(ValueError, match=r"sample_ode: argument 'schedule' expected a grid of distinct times in the "
                                         r"state's dtype torch.float32, got times 0.50000002 and 0.5 .*Fix"):
        sf.sample_ode(problem.score, sde, x_T.to(t32), method=method, schedule=grid)
    # the same grid is a grid of 3 steps in float64 (the tie is float32's), and without the tie one in float32
    assert sf.sample_ode(problem.score, sde, x_T, method=method, schedule=grid).nfe > 0
    assert sf.sample_ode(problem.score, sde, x_T.to(t32), method=method, schedule=grid[[0, 2, 3]]).samples.dtype == t32
    # a step size leaving a last step of 1e-10 (in float64) ties it with t_min in float32
    size = (sde.T - sde.t_min) / 10 / (1 + 1e-10)
    with pytest.raises(ValueError, match=r"sample_ode: argument 'step_size' expected a grid of distinct times"):
        sf.sample_ode(problem.score, sde, x_T.to(t32), method="rk4", step_size=size)


def test_a_likelihoods_grid_runs_upwards_and_is_checked_for_ties_that_way():
    problem, x_T, _ = _gaussian_case("vp", n=2)
    sde, t32 = problem.sde, torch.float32
    # a likelihood's grid of a step size runs upwards from t_min: it is checked in that direction (and a tie in it is
    # numbered in it); the same grid given as a schedule gives the same log-likelihoods
    x = x_T
    by_size = sf.log_likelihood(problem.score, sde, x, method="rk4", step_size=0.05).log_prob
    grid = sf.schedules.step_size_grid(sde, sde.t_min, sde.T, 0.05)
    assert torch.equal(by_size, sf.log_likelihood(problem.score, sde, x, method="rk4", schedule=grid).log_prob)
    tie = torch.tensor([sde.t_min, 0.3, 0.5, 0.5 + 2e-8, sde.T], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"log_likelihood: argument 'schedule' .* got times 0.5 and 0.50000002 \(entries 2 and 3\)"):
        sf.log_likelihood(problem.score, sde, x.to(t32), method="rk4", schedule=tie)
