"""scoreflow's own reverse-SDE solvers against closed forms, torchsde's Euler-Maruyama and each other."""

import math

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.metrics import rms_error
from scoreflow.solvers.ancestral import ancestral_coefficients
from scoreflow.solvers.base import Nodes
from scoreflow.solvers.multistep import LOWER_ORDER_FINAL_BELOW
from scoreflow.solvers.stochastic import exponential_weights
from scoreflow.testing import make_law, make_problem

NATIVE = {m.name: m for m in sf.list_methods("sde") if m.backend == "native"}
# The reverse SDE itself (eta = 1; edm_stochastic's churn is another SDE of EDM's family).
REVERSE_SDE_METHODS = ("ddim", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2m_sde_pc", "dpmpp_3m_sde_pc")


@pytest.fixture(scope="module")
def gaussian_vp():
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = problem.law.marginal(sde, sde.T).sample(64, generator=torch.Generator().manual_seed(0))
    return problem, x_T


@pytest.fixture(scope="module")
def shared_path(gaussian_vp):
    """One Brownian path and torchsde's Euler-Maruyama on it with 20 000 steps: the reverse SDE's solution there."""
    problem, x_T = gaussian_vp
    sde = problem.sde
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(5), step_size=(sde.T - sde.t_min) / 20_000)
    reference = sf.sample_sde(problem.score, sde, x_T, method="euler", steps=20_000, bm=bm).samples
    return bm, reference


# Each method's options without noise (the probability-flow solver it becomes).
NO_NOISE = {"edm_stochastic": {"s_churn": 0.0}, "er_sde": {"noise_scale": "ode"}, "sa_solver": {"tau": 0.0}}


def test_the_native_methods_are_registered_with_their_capabilities():
    assert set(NATIVE) == {*REVERSE_SDE_METHODS, "edm_stochastic", "er_sde", "sa_solver"}
    for name, method in NATIVE.items():
        assert method.kinds == ("sde",) and method.strong_order == 1.0 and method.weak_order == 1.0
        assert method.nfe_per_step == (2 if name in ("dpmpp_sde", "edm_stochastic") else 1)
        assert method.default_schedule == ("karras" if name == "edm_stochastic" else "log_snr")
    assert set(NATIVE["edm_stochastic"].options) == {"s_churn", "s_tmin", "s_tmax", "s_noise"}
    assert "eta" in NATIVE["ddim"].options and "lower_order_final" in NATIVE["dpmpp_3m_sde_pc"].options
    # the stochastic "ddim" is a record of its own beside the deterministic one
    assert sf.get_method("sde", "ddim") is not sf.get_method("ode", "ddim")


def test_exponential_weights_integrate_polynomials_exactly():
    # against a midpoint-rule quadrature of the weight H e^{-H(1 - r)} on [0, 1]
    r = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    for H in (1e-3, 0.3, 2.0, 9.0):
        weight = H * torch.exp(-H * (1 - r))
        for nodes in ([0.0], [0.0, -1.0], [0.0, -0.7, -1.9], [1.0, 0.0, -1.0, -2.5]):
            w = exponential_weights(nodes, H)
            for degree in range(len(nodes)):
                exact = float((weight * r**degree).mean())
                approx = sum(wj * rj**degree for wj, rj in zip(w, nodes))
                assert approx == pytest.approx(exact, rel=1e-8, abs=1e-14), (H, nodes, degree)


def test_an_ancestral_step_has_the_exact_conditional_mean_of_gaussian_data():
    # For Gaussian data the reverse transition's mean E[x_t | x_s] is linear in x_s; DDPM's ancestral step (eta = 1)
    # with the exact data prediction reproduces it: its mean is E[q(x_t | x_s, x_0)] at the posterior mean of x_0.
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    s, t = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.35, dtype=torch.float64)
    (a_s, s_s), (a_t, s_t) = sde.marginal(s), sde.marginal(t)
    mu, c = law.mean, law.covariance
    eye = torch.eye(2, dtype=torch.float64)
    cov_ts = a_s / a_t * (a_t**2 * c + s_t**2 * eye)  # Cov(x_t, x_s) of the forward process
    cov_ss = a_s**2 * c + s_s**2 * eye
    x_s = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    exact = a_t * mu + (x_s - a_s * mu) @ torch.linalg.solve(cov_ss, cov_ts.T)
    m = sf.denoiser_from_score(law.score(sde), sde)(x_s, s)
    nodes = Nodes(sde, torch.stack([s, t]))
    c_x, c_m, _ = ancestral_coefficients(nodes, 0, 1, 1.0)
    torch.testing.assert_close(c_x * x_s + c_m * m, exact, rtol=1e-12, atol=1e-12)
    for eta in (0.0, 0.4, 1.0):
        # every eta keeps the marginal of x_t given x_0: c_x alpha_s + c_m = alpha_t, c_x^2 sigma_s^2 + c_z^2 = sigma_t^2
        c_x, c_m, c_z = ancestral_coefficients(nodes, 0, 1, eta)
        assert c_x * float(a_s) + c_m == pytest.approx(float(a_t), rel=1e-12)
        assert c_x**2 * float(s_s) ** 2 + c_z**2 == pytest.approx(float(s_t) ** 2, rel=1e-12)


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m_sde"])
def test_eta_zero_is_the_probability_flow_solver_of_the_same_name(method, gaussian_vp):
    problem, x_T = gaussian_vp
    ode = sf.sample_ode(problem.score, problem.sde, x_T, method=method.removesuffix("_sde"), steps=12).samples
    sde = sf.sample_sde(problem.score, problem.sde, x_T, method=method, steps=12, generator=torch.Generator(), options={"eta": 0.0}).samples
    torch.testing.assert_close(sde, ode, rtol=1e-10, atol=1e-12)


def test_edm_stochastic_without_churn_is_edm_heun(gaussian_vp):
    problem, x_T = gaussian_vp
    ode = sf.sample_ode(problem.score, problem.sde, x_T, method="edm_heun", steps=9).samples
    sde = sf.sample_sde(problem.score, problem.sde, x_T, method="edm_stochastic", steps=9, generator=torch.Generator(), options={"s_churn": 0.0})
    assert torch.equal(sde.samples, ode) and sde.nfe == 18


# The points of each step's predictor polynomial on 9 log-SNR steps under lower_order_final: the plain multistep methods
# take 1, 2, ... points at the end (the last step first order), the predictor-correctors drop their last, uncorrected
# step to one point.  (dpmpp_3m's first entry is its midpoint step, which advances with the midpoint's prediction alone.)
LOWERED_ON_9_STEPS = {
    ("sde", "dpmpp_2m_sde"): [1, 2, 2, 2, 2, 2, 2, 2, 1],
    ("sde", "dpmpp_3m_sde"): [1, 2, 3, 3, 3, 3, 3, 2, 1],
    ("sde", "er_sde"): [1, 2, 3, 3, 3, 3, 3, 2, 1],
    ("sde", "dpmpp_2m_sde_pc"): [1, 2, 2, 2, 2, 2, 2, 2, 1],
    ("sde", "dpmpp_3m_sde_pc"): [1, 2, 3, 3, 3, 3, 3, 3, 1],
    ("sde", "sa_solver"): [1, 2, 3, 3, 3, 3, 3, 3, 1],
    ("ode", "dpmpp_2m"): [1, 2, 2, 2, 2, 2, 2, 2, 1],
    ("ode", "dpmpp_3m"): [1, 3, 3, 3, 3, 3, 3, 2, 1],
    ("ode", "dpmpp_2m_pc"): [1, 2, 2, 2, 2, 2, 2, 2, 1],
    ("ode", "dpmpp_3m_pc"): [1, 2, 3, 3, 3, 3, 3, 3, 1],
    ("ode", "dpmpp_4m_pc"): [1, 2, 3, 4, 4, 4, 4, 4, 1],
}


@pytest.mark.parametrize("kind, method", sorted(LOWERED_ON_9_STEPS))
@pytest.mark.parametrize("schedule", ["log_snr", "karras"])
def test_lower_order_final_lowers_only_the_last_steps_of_grids_below_10_steps(kind, method, schedule):
    # The ODE and SDE multistep methods share the rule (measured against diffusers' 15 and rules without a step count
    # in docs/choosing-a-sampler.md); it depends on the step count only, not on the grid or the process.
    assert LOWER_ORDER_FINAL_BELOW == 10
    solver = sf.get_method(kind, method).solver
    sde = sf.VESDE() if kind == "sde" else sf.VPSDE()

    def points(steps, lower):
        return solver(lower_order_final=lower).plan(Nodes(sde, sf.time_grid(sde, steps, schedule)), steps)["terms"]

    lowered, full = LOWERED_ON_9_STEPS[kind, method], points(9, False)
    assert points(9, True) == lowered
    # without the rule every step after the start-up takes all its points; only the lowered steps differ
    assert full[-1] == max(lowered) and [i for i, (a, b) in enumerate(zip(full, lowered)) if a != b] == (
        [7, 8] if lowered[-2] < max(lowered) else [8])
    for steps in (10, 16):
        assert points(steps, True) == points(steps, False) and points(steps, True)[-1] == max(lowered)


@pytest.mark.parametrize("method", ["dpmpp_2m_sde_pc", "dpmpp_3m_sde", "sa_solver"])
def test_lower_order_final_changes_only_short_sde_runs(method, gaussian_vp):
    problem, x_T = gaussian_vp
    run = lambda n, lof: sf.sample_sde(  # noqa: E731
        problem.score, problem.sde, x_T, method=method, steps=n, generator=torch.Generator().manual_seed(3),
        options={"lower_order_final": lof},
    ).samples
    assert not torch.allclose(run(9, True), run(9, False))
    assert torch.equal(run(10, True), run(10, False))


@pytest.mark.parametrize("method", sorted(NATIVE))
def test_without_noise_each_method_converges_at_its_declared_drift_order(method, gaussian_vp):
    # eta = 0 (no churn for edm_stochastic) leaves the probability-flow solver, of the declared drift order:
    # dpmpp_3m_sde integrates the quadratic term exactly (k-diffusion's dpmpp_3m_sde, with half of it, is second
    # order); the predictor-correctors' trapezoidal corrector is second order (its step is built for eta = 1)
    problem, x_T = gaussian_vp
    sde, order = problem.sde, NATIVE[method].drift_order
    exact = problem.law.flow_map(sde, x_T, sde.T, sde.t_min)
    options = NO_NOISE.get(method, {"eta": 0.0})
    steps = (96, 192, 384)  # (dpmpp_2m_sde_pc's error is still pre-asymptotic below ~100 steps)
    errors = [rms_error(sf.sample_sde(problem.score, sde, x_T, method=method, steps=n, generator=torch.Generator(),
                                      options=options).samples, exact) for n in steps]
    slope = -math.log(errors[-1] / errors[0]) / math.log(steps[-1] / steps[0])
    # (above the order: dpmpp_3m_sde's leading error term nearly cancels on this grid, slope ~4.4)
    assert order - 0.3 < slope < order + 1.5, (errors, slope)


@pytest.mark.parametrize("method", REVERSE_SDE_METHODS)
def test_on_a_shared_path_every_reverse_sde_method_converges_to_torchsdes_solution(method, gaussian_vp, shared_path):
    # The native methods read the same Brownian path in s = T - t as torchsde's: refined, they reach the
    # strong solution Euler-Maruyama computes with 20 000 steps, at about first order in the step.
    problem, x_T = gaussian_vp
    bm, reference = shared_path
    errors = [rms_error(sf.sample_sde(problem.score, problem.sde, x_T, method=method, steps=n, bm=bm).samples, reference)
              for n in (64, 256)]
    assert errors[1] < 0.03 and errors[1] < 0.4 * errors[0], errors


def test_churn_converges_on_a_shared_path(gaussian_vp, shared_path):
    # EDM's churn per step shrinks like 1/N: the chain converges to one SDE, pathwise on a shared path
    problem, x_T = gaussian_vp
    bm, _ = shared_path
    run = lambda n: sf.sample_sde(problem.score, problem.sde, x_T, method="edm_stochastic", steps=n, bm=bm,  # noqa: E731
                                  options={"s_churn": 5.0}).samples
    fine = run(1024)
    errors = [rms_error(run(n), fine) for n in (32, 128)]
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.02, errors


@pytest.mark.slow
@pytest.mark.parametrize("method, sde_name", [("dpmpp_2m_sde", "ve"), ("dpmpp_3m_sde_pc", "vp"), ("dpmpp_sde", "ve"), ("edm_stochastic", "vp")])
def test_samples_follow_the_exact_law(method, sde_name):
    """100 NFE of a 2-D ring against the exact law at t_min: mean, covariance, sliced W2 and mode weights within
    the Monte-Carlo error of 20 000 draws (the testing kit's bounds).  (DDPM's ancestral ``ddim``, first order,
    still falls 2 % short in variance under VE at 100 steps, 4 standard errors: it is left out.)"""
    problem = make_problem("ring2d", sde_name)
    sde, law = problem.sde, problem.law
    g = torch.Generator().manual_seed(3)
    x_T = law.marginal(sde, sde.T).sample(20_000, generator=g)
    steps = 100 // NATIVE[method].nfe_per_step
    res = sf.sample_sde(problem.score, sde, x_T, method=method, steps=steps, generator=g)
    sf.testing.assert_samples_follow(res.samples, law.marginal(sde, sde.t_min), generator=g)


@pytest.mark.parametrize("method", sorted(NATIVE))
@pytest.mark.parametrize("sde_name", ["subvp", "ve"])
def test_any_data_shape_float32_and_every_sde(method, sde_name):
    law = sf.analytic.Gaussian(torch.zeros(6), 0.5 * torch.eye(6), event_shape=(3, 2))
    sde = make_problem("gaussian2d", sde_name).sde
    x_T = law.marginal(sde, sde.T).sample(4000, generator=torch.Generator().manual_seed(0))
    counter = RecordingScore(law.score(sde))
    res = sf.sample_sde(counter, sde, x_T, method=method, steps=60, generator=torch.Generator().manual_seed(1), return_trajectory=True)
    assert res.samples.shape == (4000, 3, 2) and res.samples.dtype == torch.float32
    assert res.nfe == counter.calls == 60 * NATIVE[method].nfe_per_step
    assert res.trajectory.shape == (61, 4000, 3, 2) and torch.equal(res.trajectory[-1], res.samples)
    torch.testing.assert_close(res.times, sf.time_grid(sde, 60, NATIVE[method].default_schedule, dtype=torch.float32))
    # the exact law at t_min has variance 0.5 alpha^2 + sigma^2 per coordinate (60 steps of DDPM's ancestral
    # sampling still fall ~20 % short: each step drops the posterior variance of x_0)
    alpha, sigma = sde.marginal(torch.tensor(sde.t_min))
    var = res.samples.reshape(4000, -1).var(dim=0)
    assert float((var / (0.5 * alpha**2 + sigma**2) - 1).abs().max()) < 0.25


def test_seeded_paths_reproduce_bit_for_bit_and_schedules_are_honoured(gaussian_vp):
    problem, x_T = gaussian_vp
    sde = problem.sde
    run = lambda **kw: sf.sample_sde(problem.score, sde, x_T, method="dpmpp_3m_sde_pc", **kw).samples  # noqa: E731
    a = run(steps=12, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, run(steps=12, generator=torch.Generator().manual_seed(4)))
    assert not torch.equal(a, run(steps=12, generator=torch.Generator().manual_seed(5)))
    grid = sf.time_grid(sde, 12, "karras")
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(6))
    assert torch.equal(run(steps=12, schedule="karras", bm=bm), run(schedule=grid, bm=bm))
    counter = RecordingScore(problem.score)
    sf.sample_sde(counter, sde, x_T, method="ddim", schedule=grid, generator=torch.Generator())
    torch.testing.assert_close(torch.tensor(counter.times, dtype=torch.float64), grid[:-1])


def test_non_finite_score_stops_a_native_sde_solver_naming_the_time():
    sde = sf.VPSDE()
    score = lambda x, t: torch.where(t[:, None] < 0.5, torch.nan, -x)  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.\d+"):
        sf.sample_sde(score, sde, torch.zeros(4, 2), method="dpmpp_2m_sde", steps=10, generator=torch.Generator())


def test_bad_options_and_arguments_name_the_fix(gaussian_vp):
    problem, x_T = gaussian_vp
    counter = RecordingScore(problem.score)
    run = lambda method, **kw: sf.sample_sde(counter, problem.sde, x_T, method=method, generator=torch.Generator(), **kw)  # noqa: E731
    for eta in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"sample_sde: option 'eta' expected a number in \[0, 1\], got"):
            run("ddim", steps=10, options={"eta": eta})
    with pytest.raises(TypeError, match=r"sample_sde: option 'eta' expected a real number, got str '1'"):
        run("dpmpp_2m_sde", steps=10, options={"eta": "1"})
    with pytest.raises(ValueError, match=r"sample_sde: option 's_churn' expected a number in \[0, inf\], got -1"):
        run("edm_stochastic", steps=10, options={"s_churn": -1})
    with pytest.raises(ValueError, match=r"sample_sde: option 's_noise' expected a number in \[0, inf\], got -0.5"):
        run("edm_stochastic", steps=10, options={"s_noise": -0.5})
    with pytest.raises(ValueError, match=r"edm_stochastic: options 's_tmin' and 's_tmax' expected s_tmin <= s_tmax"):
        run("edm_stochastic", steps=10, options={"s_tmin": 2.0, "s_tmax": 1.0})
    with pytest.raises(TypeError, match=r"method 'ddim' takes no option 's_churn'; its options: 'eta'"):
        run("ddim", steps=10, options={"s_churn": 1.0})
    with pytest.raises(ValueError, match=r"argument 'schedule' expected a grid that starts at T=1"):
        run("euler", schedule=torch.linspace(0.9, 1e-3, 5))
    with pytest.raises(ValueError, match=r"the method 'dpmpp_sde' takes 'steps', not 'step_size'"):
        run("dpmpp_sde", step_size=0.1)
    with pytest.raises(ValueError, match=r"the method 'ddim' has no error control"):
        run("ddim", steps=10, adaptive=True)
    with pytest.raises(ValueError, match=r"argument 'schedule' expected a grid that starts at T=1"):
        run("ddim", schedule=torch.linspace(0.9, 1e-3, 5))
    assert counter.calls == 0


@pytest.mark.parametrize("method", ["dpmpp_2m_sde", "dpmpp_3m_sde", "er_sde", "sa_solver"])
def test_a_truncated_flow_path_with_a_velocity_model(method):
    # RectifiedFlow(T < 1) has a finite reverse SDE; the exact model predicts the flow velocity, which the
    # solvers turn into data predictions.  50 steps reach the exact law at t_min (mean, covariance) within 0.05
    # (the Monte-Carlo error of 8000 draws is about 0.02).
    law, sde = make_law("gaussian2d"), sf.RectifiedFlow(T=0.999)
    x_T = law.marginal(sde, sde.T).sample(8000, generator=torch.Generator().manual_seed(0))
    res = sf.sample_sde(law.score(sde), sde, x_T, method=method, steps=50, generator=torch.Generator().manual_seed(1))
    exact = law.marginal(sde, sde.t_min)
    assert float((res.samples.mean(0) - exact.mean).norm()) < 0.05
    assert float((torch.cov(res.samples.T) - exact.covariance).norm()) < 0.05


@pytest.mark.parametrize("method", sorted(NATIVE))
def test_a_flow_path_to_t_zero_reaches_the_data_law_or_is_refused_by_name(method):
    # At t_min = 0 the last step is infinitely long in log-SNR.  A one-point step (ddim, dpmpp_sde's two ancestral
    # stages, EDM's Heun in sigma/alpha = 0) returns the data prediction there: 200 steps land on the data law itself
    # (mean, covariance within 0.05; the Monte-Carlo error of 8000 draws is about 0.02; ddim, first order, is
    # 0.09 short in covariance at 50 steps).  A multistep polynomial cannot be extrapolated to log-SNR +inf: those
    # methods are refused with the fix (they raised ZeroDivisionError, a math domain error or an OverflowError).
    law, sde = make_law("gaussian2d"), sf.RectifiedFlow(T=0.999)
    x_T = law.marginal(sde, sde.T).sample(8000, generator=torch.Generator().manual_seed(0))

    def run():
        return sf.sample_sde(law.velocity(sde), sde, x_T, method=method, steps=200, schedule="t", t_min=0.0,
                             generator=torch.Generator().manual_seed(1))

    if method in ("ddim", "dpmpp_sde", "edm_stochastic"):
        res = run()
        assert float((res.samples.mean(0) - law.mean).norm()) < 0.05
        assert float((torch.cov(res.samples.T) - law.covariance).norm()) < 0.05
    else:
        with pytest.raises(ValueError, match=rf"sample_sde: method '{method}' extrapolates .* \+inf at t_min=0\. Fix: "
                                             r"t_min > 0 \(default 0.001\), or a method that reaches t = 0 \(ddim, "
                                             r"dpmpp_sde, edm_stochastic, or torchsde's\)"):
            run()
