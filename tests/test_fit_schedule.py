"""sf.fit_schedule and the floor of time_grid's capped log-SNR grid."""

import math

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.analytic import Gaussian
from scoreflow.metrics import rms_error
from scoreflow.testing import make_problem


def test_floor_zero_is_the_capped_grid_and_a_floor_is_uniform_in_u():
    sde = sf.VPSDE()
    assert torch.equal(sf.time_grid(sde, 12, "log_snr_capped", sigma_cap=3.0),
                       sf.time_grid(sde, 12, "log_snr_capped", sigma_cap=3.0, sigma_floor=0.0))
    ts = sf.time_grid(sde, 12, "log_snr_capped", sigma_cap=3.0, sigma_floor=0.05)
    assert ts[0] == sde.T and ts[-1] == sde.t_min and bool((ts.diff() < 0).all())
    s = torch.exp(-sde.log_snr(ts))
    u = torch.log((s + 0.05) / (1 + s / 3.0))
    assert torch.allclose(u.diff(), u.diff().mean().expand(12), rtol=1e-9)
    with pytest.raises(ValueError, match=r"time_grid: argument 'sigma_floor' expected a finite number >= 0, got -1"):
        sf.time_grid(sde, 12, "log_snr_capped", sigma_floor=-1.0)
    # a floor at the cap made u(sigma) constant: the grid was NaN between its ends
    with pytest.raises(ValueError, match=r"time_grid: argument 'sigma_floor' expected a noise level below sigma_cap=2 .*, got 2.0"):
        sf.time_grid(sde, 12, "log_snr_capped", sigma_cap=2.0, sigma_floor=2.0)


def test_late_t_min_keeps_floors_below_caps_and_a_non_finite_reference_is_refused():
    sde = sf.VPSDE()
    # with a late t_min (sigma/alpha = 3.5 there) the larger floors reach the smaller caps: fit_schedule skips them
    law = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    pilot = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = sf.fit_schedule(law.score(sde), sde, pilot, 3, t_min=0.5)
    assert fit.candidates and all(c["sigma_floor"] < c["sigma_cap"] for _, c, _ in fit.candidates)
    # a non-finite reference made every candidate's error NaN, and the first candidate was returned as the fit
    with pytest.raises(ValueError, match="fit_schedule: argument 'reference' contains NaN or infinite values"):
        sf.fit_schedule(law.score(sde), sde, pilot, 3, reference=torch.full_like(pilot, torch.nan))


def test_fitted_grid_beats_the_default_grid_on_held_out_draws_of_narrow_data():
    # Data of scale 0.05: the default cap (10, for unit-scale data) wastes steps at high noise.
    sde = sf.VPSDE()
    law = Gaussian(torch.tensor([0.1, -0.05], dtype=torch.float64), torch.diag(torch.tensor([0.05, 0.002], dtype=torch.float64)))
    score = RecordingScore(law.score(sde))
    pilot = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = sf.fit_schedule(score, sde, pilot, 8)
    assert fit.nfe == score.calls and fit.rows == 32 and fit.steps == 8 and fit.method == "dpmpp_3m_pc"
    assert torch.equal(fit.times, sf.time_grid(sde, 8, "log_snr_capped", sigma_cap=fit.sigma_cap, sigma_floor=fit.sigma_floor))
    assert fit.pilot_error == min(e for _, _, e in fit.candidates)
    x_T = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = law.flow_map(sde, x_T, sde.T, sde.t_min)
    fitted = sf.sample_ode(law.score(sde), sde, x_T, method="dpmpp_3m_pc", schedule=fit.times)
    default = sf.sample_ode(law.score(sde), sde, x_T, method="dpmpp_3m_pc", steps=8)
    assert fitted.nfe == default.nfe == 8
    assert rms_error(fitted.samples, exact) < 0.5 * rms_error(default.samples, exact)


def test_fit_on_a_mixture_is_no_worse_than_its_candidates_and_counts_its_cost():
    problem = make_problem("ring2d", "vp")
    pilot = problem.sde.prior_sample((24, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = sf.fit_schedule(problem.score, problem.sde, pilot, 6, method="dpmpp_2m")
    assert len(fit.candidates) == 35
    reference_nfe = fit.nfe - 6 * len(fit.candidates)
    assert 10 < reference_nfe < 200
    assert math.isfinite(fit.pilot_error) and fit.sigma_floor >= 0
    # The accurate pilot solve is reused for another budget on the same draws.
    again = sf.fit_schedule(problem.score, problem.sde, pilot, 8, method="dpmpp_2m", reference=fit.reference)
    assert again.nfe == 8 * 35 and torch.equal(again.reference, fit.reference)


def test_on_a_flow_path_it_chooses_the_method_and_the_time_shift_on_the_pilot():
    rf = sf.RectifiedFlow()
    law = make_problem("ring2d_sharp", "vp").law
    calls = []
    score = sf.score_from_flow_velocity(lambda x, t: calls.append(1) or law.velocity(rf).predict(x, t), rf)
    pilot = rf.prior_sample((24, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = sf.fit_schedule(score, rf, pilot, 6, method=("velocity_2m_pc", "velocity_3m_pc", "dpmpp_2m_pc"))
    assert fit.nfe == len(calls)
    assert [m for m, _, _ in fit.candidates] == ["velocity_2m_pc"] * 7 + ["velocity_3m_pc"] * 7 + ["dpmpp_2m_pc"] * 35
    assert {tuple(o) for _, o, _ in fit.candidates[:14]} == {("shift",)}
    assert (fit.method, fit.schedule_options, fit.pilot_error) == min(fit.candidates, key=lambda c: c[2])
    assert torch.equal(fit.times, sf.time_grid(rf, 6, fit.schedule, **fit.schedule_options))
    assert (fit.shift is None) == (fit.schedule == "log_snr_capped") == (fit.sigma_cap is not None)
    # each candidate's pilot error is the RMS error of that solve against the accurate pilot solve
    method, options, error = fit.candidates[3]
    again = sf.sample_ode(law.velocity(rf), rf, pilot, method=method, schedule=sf.time_grid(rf, 6, "shift", **options))
    assert rms_error(again.samples, fit.reference) == pytest.approx(error, rel=1e-12)


def test_velocity_methods_fit_capped_grids_where_their_default_grid_is_log_snr():
    # Under EDM (and VP) the velocity methods' default grid is log-SNR; fitted among time shifts of a uniform t grid
    # (the family fit_schedule took for them everywhere before) the grid was 4-40 times worse than that default.
    sde = sf.EDMSDE()
    problem = make_problem("ring2d_sharp", "vp")
    score = problem.law.score(sde)
    assert sf.get_method("ode", "velocity_3m_pc").schedule_for(sde) == "log_snr"
    pilot = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fit = sf.fit_schedule(score, sde, pilot, 10, method="velocity_3m_pc")
    assert fit.schedule == "log_snr_capped" and len(fit.candidates) == 35
    x_T = sde.prior_sample((200, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = sf.sample_ode(score, sde, x_T, method="dpmpp_4m_pc_adaptive", rtol=1e-9, atol=1e-9).samples
    fitted = sf.sample_ode(score, sde, x_T, method="velocity_3m_pc", schedule=fit.times).samples
    default = sf.sample_ode(score, sde, x_T, method="velocity_3m_pc", steps=10).samples
    assert rms_error(fitted, reference) < rms_error(default, reference)


def test_bad_arguments():
    problem = make_problem("gaussian2d", "vp")
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'method' expected a fixed-grid method, got the adaptive 'dopri5'"):
        sf.fit_schedule(problem.score, problem.sde, x, 5, method="dopri5")
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'method' expected one of"):
        sf.fit_schedule(problem.score, problem.sde, x, 5, method="nope")
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'family' expected one of"):
        sf.fit_schedule(problem.score, problem.sde, x, 5, family="karras")
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'method' expected a method name or a non-empty sequence"):
        sf.fit_schedule(problem.score, problem.sde, x, 5, method=[])
    # a repeated method was fitted twice over (twice the candidate solves, the same fit)
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'method' expected each method once, got \['rk4', 'heun', 'rk4'\] \('rk4' repeated\)"):
        sf.fit_schedule(problem.score, problem.sde, x, 5, method=["rk4", "heun", "rk4"])
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'steps' expected an int >= 1, got 0"):
        sf.fit_schedule(problem.score, problem.sde, x, 0)
    with pytest.raises(TypeError, match=r"fit_schedule: argument 'x_pilot' expected a torch.Tensor"):
        sf.fit_schedule(problem.score, problem.sde, [1.0, 2.0], 5)
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'reference_tol' expected a finite number > 0"):
        sf.fit_schedule(problem.score, problem.sde, x, 5, reference_tol=0.0)
    with pytest.raises(ValueError, match=r"fit_schedule: argument 'reference' expected a tensor shaped like x_pilot \(4, 2\), got shape \(3, 2\)"):
        sf.fit_schedule(problem.score, problem.sde, x, 5, reference=torch.zeros(3, 2))


def test_options_are_checked_as_fit_schedules_before_any_solve():
    """A bad option named sample_ode (the function fit_schedule calls), and only after the ~110-NFE pilot solve."""
    problem = make_problem("gaussian2d", "vp")
    x = torch.zeros(4, 2, dtype=torch.float64)
    calls = []

    def score(y, t):
        calls.append(1)
        return problem.score(y, t)

    with pytest.raises(TypeError, match=r"fit_schedule: method 'ipndm' takes no option 'lower_order_final'"):
        sf.fit_schedule(score, problem.sde, x, 5, method=["dpmpp_3m_pc", "ipndm"], options={"lower_order_final": False})
    with pytest.raises(TypeError, match=r"fit_schedule: option 'lower_order_final' expected True or False"):
        sf.fit_schedule(score, problem.sde, x, 5, method="dpmpp_3m_pc", options={"lower_order_final": "no"})
    assert not calls


def test_t_min_0_on_a_flow_path_is_refused_naming_t_min_unless_shift_grids_start_from_a_reference():
    # before: t_min=0 passed fit_schedule's check and the pilot solve stopped in sample_ode, naming
    # dpmpp_4m_pc_adaptive (a method the caller did not choose); with a capped family, in time_grid
    rf = sf.RectifiedFlow()
    law = make_problem("gaussian2d", "vp").law
    score = sf.score_from_flow_velocity(law.velocity(rf).predict, rf)
    pilot = rf.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"fit_schedule: argument 't_min' expected a time > 0, where the log-SNR is "
                                         r"finite \(the accurate pilot solve .* got 0.0\. Fix: t_min > 0"):
        sf.fit_schedule(score, rf, pilot, 3, method="rk4", t_min=0.0)
    exact = law.flow_map(rf, pilot, rf.T, 0.0)
    with pytest.raises(ValueError, match=r"fit_schedule: argument 't_min' .*capped log-SNR grids of 'rk4'"):
        sf.fit_schedule(score, rf, pilot, 3, method="rk4", family="log_snr_capped", t_min=0.0, reference=exact)
    fit = sf.fit_schedule(score, rf, pilot, 3, method="rk4", t_min=0.0, reference=exact)
    assert fit.schedule == "shift" and fit.times[-1] == 0.0
    again = sf.sample_ode(score, rf, pilot, method="rk4", schedule=fit.times, t_min=0.0).samples
    assert rms_error(again, exact) == pytest.approx(fit.pilot_error, rel=1e-12)
