"""Native solvers and time variables of sample_ode, checked against the closed-form probability-flow map."""

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.metrics import fit_order, rms_error
from scoreflow.sampling import time_grid
from scoreflow.testing import make_problem

NATIVE = {m.name: m for m in sf.list_methods("ode") if m.backend == "native" and not m.adaptive}
NATIVE_ODE_METHODS = tuple(NATIVE)
ODE_ORDERS = {name: m.order for name, m in NATIVE.items()}

# Score evaluations per run of `steps` steps (the first one is the front-end's validation call).
NFE = {
    "ddim": lambda n: n,
    "deis": lambda n: n,
    "dpm_solver_2": lambda n: 2 * n,
    "dpm_solver_3": lambda n: 3 * n,
    "dpmpp_2m": lambda n: n,
    "dpmpp_3m": lambda n: n + 1,
    "edm_heun": lambda n: 2 * n,
    "dpmpp_2m_pc": lambda n: n,
    "dpmpp_3m_pc": lambda n: n,
    "dpmpp_4m_pc": lambda n: n,
    "ipndm": lambda n: n,
    "unipc": lambda n: n,
    "velocity_2m_pc": lambda n: n,
    "velocity_3m_pc": lambda n: n,
}

# dpmpp_3m_pc's error (and unipc's, whose default bh2 variant takes the same steps) on these Gaussians changes sign between ~24 and ~48 uniform log-SNR steps, so its
# convergence is read on the Karras grid, where it is monotone. dpmpp_4m_pc's default capped grid has a long
# first step whose start-up error dominates below ~1e-5 (see test_capped_grid_start_up_limits_dpmpp_4m_pc),
# so its order is read on the log-SNR grid; the others use their default schedule (the velocity methods' on VP is the
# log-SNR grid: on uniform t, velocity_3m_pc's error is pre-asymptotic below ~100 steps, slope 1.8 over 24..96).
ORDER_TEST_SCHEDULE = {"dpmpp_3m_pc": "karras", "unipc": "karras", "dpmpp_4m_pc": "log_snr"}


@pytest.fixture(scope="module")
def gaussian_vp():
    """VP with the 2-D anisotropic Gaussian (eigenvalues 0.1, 1), float64, and its exact flow from 16 prior draws."""
    problem = make_problem("gaussian2d", "vp", dtype=torch.float64)
    sde = problem.sde
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return problem, x_T, problem.law.flow_map(sde, x_T, sde.T, sde.t_min)


def test_every_native_method_is_registered_with_its_order():
    assert set(NATIVE) == set(NFE)
    for name, method in NATIVE.items():
        assert method.order == method.solver.order
        # the record's cost per step is the cost of a long run, per step
        assert NFE[name](100) // 100 == method.nfe_per_step


@pytest.mark.parametrize("method", NATIVE_ODE_METHODS)
def test_native_method_converges_at_its_declared_order(method, gaussian_vp):
    # Log-log slope of the error against the exact flow map over 24..96 steps of the method's own schedule.
    # Uniform log-SNR steps can beat the declared order (3M shows ~4 here: its leading error term integrates to
    # boundary values of the data prediction's derivatives, which vanish at both ends); never fall below it.
    problem, x_T, exact = gaussian_vp
    steps, schedule = [24, 32, 48, 64, 96], ORDER_TEST_SCHEDULE.get(method)
    errors = [
        rms_error(sf.sample_ode(problem.score, problem.sde, x_T, method=method, steps=n, schedule=schedule).samples, exact)
        for n in steps
    ]
    slope = fit_order([1 / n for n in steps], errors)
    assert ODE_ORDERS[method] - 0.25 < slope < ODE_ORDERS[method] + 1.5, (method, slope, errors)


def test_capped_grid_start_up_limits_dpmpp_4m_pc(gaussian_vp):
    # On its default capped grid the long first step's start-up error (local O(h^3)) sets the slope once the
    # error is below ~1e-5; there the grid is still far more accurate than uniform log-SNR steps.
    problem, x_T, exact = gaussian_vp
    steps = [24, 48, 96]
    errors = {
        schedule: [rms_error(sf.sample_ode(problem.score, problem.sde, x_T, method="dpmpp_4m_pc", steps=n, schedule=schedule).samples, exact) for n in steps]
        for schedule in ("log_snr_capped", "log_snr")
    }
    assert 2.5 < fit_order([1 / n for n in steps], errors["log_snr_capped"]) < 4.0, errors
    assert errors["log_snr_capped"][0] < 0.2 * errors["log_snr"][0], errors


@pytest.mark.parametrize("sde", [sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()], ids=["subvp", "ve", "edm"])
def test_native_methods_converge_under_every_forward_sde(sde):
    law = make_problem("gaussian2d", "vp").law
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = law.flow_map(sde, x_T, sde.T, sde.t_min)
    for method in NATIVE_ODE_METHODS:
        e32, e64 = (
            rms_error(sf.sample_ode(law.score(sde), sde, x_T, method=method, steps=n, schedule=ORDER_TEST_SCHEDULE.get(method)).samples, exact)
            for n in (32, 64)
        )
        # Doubling the steps divides the error by about 2^order (here at least 2^(order - 0.5)).
        assert e64 < 0.05 and e32 / e64 > 2 ** (ODE_ORDERS[method] - 0.5), (method, e32, e64)


@pytest.mark.parametrize("method", ["dpmpp_3m", "dpm_solver_3"])
def test_third_order_methods_show_order_three_on_a_uniform_t_grid(method, gaussian_vp):
    problem, x_T, exact = gaussian_vp
    steps = [128, 256]
    errors = [
        rms_error(sf.sample_ode(problem.score, problem.sde, x_T, method=method, steps=n, schedule="t").samples, exact)
        for n in steps
    ]
    assert 2.5 < fit_order([1 / n for n in steps], errors) < 4.0, errors


@pytest.mark.parametrize("method", [m for m in NATIVE_ODE_METHODS if NATIVE[m].solver.uses != "flow_velocity"])
def test_native_methods_are_exact_for_a_point_mass(method):
    # (The velocity methods in t are exact for it where the flow is a straight line: under rectified flow,
    # tests/test_velocity_solvers.py.)
    # For a (near-)Dirac law the data prediction is constant along the flow, so every exponential integrator
    # and Heun in sigma/alpha (where the flow is then a straight line) is exact, whatever the step.
    sde = sf.VPSDE()
    mean = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)
    law = sf.analytic.Gaussian(mean, 1e-12 * torch.eye(3, dtype=torch.float64))
    x_T = sde.prior_sample((8, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = sf.sample_ode(law.score(sde), sde, x_T, method=method, steps=3)
    torch.testing.assert_close(res.samples, law.flow_map(sde, x_T, sde.T, sde.t_min), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", NATIVE_ODE_METHODS)
@pytest.mark.parametrize("denoise_final", [False, True])
def test_reported_nfe_counts_every_score_call(method, denoise_final, gaussian_vp):
    problem, x_T, _ = gaussian_vp
    counter = RecordingScore(problem.score)
    res = sf.sample_ode(counter, problem.sde, x_T, method=method, steps=7, denoise_final=denoise_final)
    assert res.nfe == counter.calls == NFE[method](7) + denoise_final


def test_denoise_final_is_tweedies_mean_of_the_last_state(gaussian_vp):
    problem, x_T, _ = gaussian_vp
    plain = sf.sample_ode(problem.score, problem.sde, x_T, method="dpmpp_2m", steps=12)
    denoised = sf.sample_ode(problem.score, problem.sde, x_T, method="dpmpp_2m", steps=12, denoise_final=True)
    expected = sf.denoiser_from_score(problem.score, problem.sde)(plain.samples, torch.full((16,), problem.sde.t_min, dtype=torch.float64))
    torch.testing.assert_close(denoised.samples, expected)


def test_trajectory_follows_the_schedule_and_ends_at_the_samples(gaussian_vp):
    problem, x_T, _ = gaussian_vp
    res = sf.sample_ode(problem.score, problem.sde, x_T, method="edm_heun", steps=40, return_trajectory=True)
    torch.testing.assert_close(res.times, time_grid(problem.sde, 40, "karras"))
    assert res.trajectory.shape == (41, 16, 2)
    assert torch.equal(res.trajectory[0], x_T) and torch.equal(res.trajectory[-1], res.samples)
    # Every intermediate state is on the exact flow up to the method's error.
    exact = torch.stack([problem.law.flow_map(problem.sde, x_T, problem.sde.T, t) for t in res.times])
    assert rms_error(res.trajectory, exact) < 1e-2


@pytest.mark.parametrize("method, time", [("dpmpp_4m_pc", None), ("dpmpp_2m", None), ("rk4", "log_snr"), ("heun", "t")])
def test_a_custom_grid_is_the_named_schedule_it_was_built_from(method, time, gaussian_vp):
    problem, x_T, _ = gaussian_vp
    run = lambda **kw: sf.sample_ode(problem.score, problem.sde, x_T, method=method, time=time, **kw)
    named = run(steps=12, schedule="log_snr_capped")
    custom = run(schedule=time_grid(problem.sde, 12, "log_snr_capped"))
    assert torch.equal(named.samples, custom.samples) and named.nfe == custom.nfe


def test_a_custom_capped_grid_reaches_the_flow_in_float32(gaussian_vp):
    problem, x_T, exact = gaussian_vp
    grid = time_grid(problem.sde, 32, "log_snr_capped", sigma_cap=3.0, dtype=torch.float32)
    res = sf.sample_ode(problem.law.to(torch.float32).score(problem.sde), problem.sde, x_T.float(), method="dpmpp_4m_pc", schedule=grid)
    assert res.samples.dtype == torch.float32 and res.nfe == 32
    assert rms_error(res.samples, exact) < 1e-4


def test_bad_custom_grids_name_the_fix(gaussian_vp):
    problem, x_T, _ = gaussian_vp
    run = lambda grid, **kw: sf.sample_ode(problem.score, problem.sde, x_T, method="ddim", schedule=grid, **kw)
    grid = time_grid(problem.sde, 4, "log_snr")
    with pytest.raises(ValueError, match=r"grid of 5 times has 4 steps, got steps=5; omit 'steps'"):
        run(grid, steps=5)
    with pytest.raises(ValueError, match=r"starts at T=1 and ends at t_min=0.001, got end 0.01.*time_grid\(sde, steps"):
        run(time_grid(problem.sde, 4, "log_snr", t_min=0.01))
    with pytest.raises(ValueError, match="expected finite, strictly decreasing times"):
        run(grid.flip(0))
    with pytest.raises(ValueError, match="expected a 1-D floating tensor of >= 2 times, got tensor of shape \\(1, 5\\)"):
        run(grid[None])
    with pytest.raises(ValueError, match="the method 'ddim' takes 'steps', not 'step_size'"):
        run(grid, step_size=0.1)
    with pytest.raises(ValueError, match="the adaptive method 'dopri5' chooses its own steps from rtol/atol; omit .*'schedule'"):
        sf.sample_ode(problem.score, problem.sde, x_T, method="dopri5", schedule=grid)


def test_lower_order_final_changes_only_short_runs(gaussian_vp):
    problem, x_T, _ = gaussian_vp
    run = lambda n, lof: sf.sample_ode(  # noqa: E731
        problem.score, problem.sde, x_T, method="dpmpp_3m", steps=n, options={"lower_order_final": lof}
    ).samples
    assert not torch.allclose(run(6, True), run(6, False))
    assert torch.equal(run(12, True), run(12, False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method, time", [("dpm_solver_3", None), ("dpmpp_3m", None), ("rk4", "sigma"), ("rk4", "log_snr")])
def test_any_data_shape_and_dtype(method, time, dtype):
    sde = sf.VPSDE()
    law = sf.analytic.Gaussian(torch.zeros(6, dtype=dtype), torch.diag(torch.linspace(0.2, 1.0, 6, dtype=dtype)), event_shape=(2, 3))
    x_T = sde.prior_sample((5, 2, 3), generator=torch.Generator().manual_seed(2), dtype=dtype)
    res = sf.sample_ode(law.score(sde), sde, x_T, method=method, steps=20, time=time)
    assert res.samples.shape == (5, 2, 3) and res.samples.dtype == dtype
    assert rms_error(res.samples, law.flow_map(sde, x_T, sde.T, sde.t_min)) < 1e-2


@pytest.mark.parametrize("time", ["sigma", "log_snr"])
@pytest.mark.parametrize("method, order", [("heun", 2), ("rk4", 4)])
def test_torchdiffeq_fixed_methods_keep_their_order_in_every_time_variable(time, method, order, gaussian_vp):
    problem, x_T, exact = gaussian_vp
    steps = [64, 128]
    results = [sf.sample_ode(problem.score, problem.sde, x_T, method=method, steps=n, time=time) for n in steps]
    errors = [rms_error(res.samples, exact) for res in results]
    assert abs(fit_order([1 / n for n in steps], errors) - order) < 0.3, errors
    # The front-end's validation call is the solver's first evaluation: `order` stages per step, nothing more.
    assert [res.nfe for res in results] == [order * n for n in steps]


@pytest.mark.parametrize("time", ["t", "sigma", "log_snr"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adaptive_methods_reach_the_exact_flow_in_every_time_variable(time, method, gaussian_vp):
    problem, x_T, exact = gaussian_vp
    counter = RecordingScore(problem.score)
    res = sf.sample_ode(counter, problem.sde, x_T, method=method, time=time, rtol=1e-6, atol=1e-6)
    assert rms_error(res.samples, exact) < 2e-4
    assert res.nfe == counter.calls


def test_time_variable_trajectory_is_reported_in_t(gaussian_vp):
    problem, x_T, exact = gaussian_vp
    res = sf.sample_ode(problem.score, problem.sde, x_T, method="rk4", steps=40, time="sigma", return_trajectory=True)
    torch.testing.assert_close(res.times, time_grid(problem.sde, 40, "karras", dtype=torch.float64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.trajectory[0], x_T)
    assert rms_error(res.samples, exact) < 1e-4


@pytest.mark.parametrize("method", ["dpmpp_2m", "unipc", "deis"])
def test_non_finite_score_stops_a_native_solver_naming_the_time(method):
    sde = sf.VPSDE()
    score = lambda x, t: torch.where(t[:, None] < 0.5, torch.nan, -x)  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.\d+"):
        sf.sample_ode(score, sde, torch.zeros(4, 2), method=method, steps=10)


def test_bad_arguments_name_the_fix(gaussian_vp):
    problem, x_T, _ = gaussian_vp
    run = lambda **kw: sf.sample_ode(problem.score, problem.sde, x_T, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="the fixed-grid method 'ddim' needs exactly one of 'steps' \\(with an optional 'schedule'\\), a 'schedule' grid;"):
        run(method="ddim")
    with pytest.raises(ValueError, match="the method 'ddim' takes 'steps', not 'step_size'"):
        run(method="ddim", step_size=0.1)
    with pytest.raises(ValueError, match="integrates in its own variables; omit 'time'"):
        run(method="dpmpp_2m", steps=10, time="log_snr")
    with pytest.raises(TypeError, match="method 'dpmpp_2m' takes no option 'order'; its options: 'lower_order_final'"):
        run(method="dpmpp_2m", steps=10, options={"order": 3})
    with pytest.raises(TypeError, match="method 'edm_heun' takes no option 'lower_order_final'; its options: none"):
        run(method="edm_heun", steps=10, options={"lower_order_final": True})
    with pytest.raises(ValueError, match="argument 'time' expected one of 't', 'sigma', 'log_snr'"):
        run(method="rk4", steps=10, time="lambda")
    with pytest.raises(ValueError, match="argument 'schedule' expected one of"):
        run(method="ddim", steps=10, schedule="cosine")
    with pytest.raises(ValueError, match="'schedule' places the grid .* needs 'steps'"):
        run(method="rk4", schedule="karras")
    with pytest.raises(ValueError, match="the adaptive method 'dopri5' chooses its own steps"):
        run(method="dopri5", schedule="karras")
    with pytest.raises(TypeError, match="option 'lower_order_final' expected True or False, got str 'no'"):
        run(method="dpmpp_2m", steps=10, options={"lower_order_final": "no"})
    with pytest.raises(ValueError, match="argument 'method' expected one of .*'dpmpp_3m'"):
        run(method="dpmpp_4m", steps=10)
