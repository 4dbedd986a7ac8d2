"""sample_ode(method="dpmpp_4m_pc_adaptive"): error control against closed forms and a second solver, NFE, errors."""

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.metrics import rms_error
from scoreflow.testing import make_problem

METHOD = "dpmpp_4m_pc_adaptive"


def _solve(score, sde, x_T, tol, **kwargs):
    return sf.sample_ode(score, sde, x_T, method=METHOD, rtol=tol, atol=tol, **kwargs)


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()], ids=["vp", "subvp", "ve", "edm"])
def test_tightening_the_tolerance_converges_to_the_closed_form_flow(sde):
    law = make_problem("gaussian2d", "vp").law
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = law.flow_map(sde, x_T, sde.T, sde.t_min)
    runs = [_solve(law.score(sde), sde, x_T, tol) for tol in (1e-3, 1e-5, 1e-7)]
    errors = [rms_error(r.samples, exact) for r in runs]
    nfes = [r.nfe for r in runs]
    # Each factor 100 in tolerance buys a factor > 20 in error, for more (never fewer) evaluations.
    assert errors[0] < 1e-2 and errors[1] < errors[0] / 20 and errors[2] < errors[1] / 20, (errors, nfes)
    assert errors[2] < 1e-6, errors  # within ten times the tolerance
    assert nfes[0] < nfes[1] < nfes[2], nfes



@pytest.mark.parametrize("method", [METHOD, "dpmpp_4m_pc_adaptive_per_sample"])
@pytest.mark.parametrize("options", [{"reject_above": 0.5}, {"reject_above": 0.1}, {"safety": 1.5}])
def test_a_stricter_step_control_retries_rejected_steps_shorter(method, options):
    """With reject_above below safety^(p+1) (or safety > 1) a rejected step's factor safety e^(-1/(p+1)) exceeded 1:
    the retry was longer, rejected again, until max_steps.  Retried shorter, the solve reaches the flow map."""
    law, sde = make_problem("gaussian2d", "vp").law, sf.VPSDE()
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = sf.sample_ode(law.score(sde), sde, x_T, method=method, rtol=1e-6, atol=1e-6,
                        options={**options, "max_steps": 2000})
    assert rms_error(res.samples, law.flow_map(sde, x_T, sde.T, sde.t_min)) < 1e-4 and res.nfe < 2000 * 8


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_float32_at_tolerances_near_its_resolution_reaches_t_min(sde):
    """At rtol = atol = 1e-7 in float32 the batch-wide solver's error estimate x_t - x_pred carried the round-off of x
    (~1e-7 |x|), stayed near the tolerance whatever the step, and shrank the step until it underflowed
    (ZeroDivisionError); estimated from the difference of the two polynomials it ends at float32's accuracy."""
    law = make_problem("gaussian2d", "vp").law
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    exact = law.flow_map(sde, x_T.double(), sde.T, sde.t_min)
    res = _solve(law.score(sde), sde, x_T, 1e-7)
    loose = _solve(law.score(sde), sde, x_T, 1e-5)
    assert res.samples.dtype == torch.float32
    assert rms_error(res.samples.double(), exact) < 1e-5 * sde.prior_std and res.nfe < 3 * loose.nfe, (rms_error(res.samples.double(), exact), res.nfe, loose.nfe)

def test_agrees_with_dopri5_on_a_mixture():
    problem = make_problem("ring2d_sharp", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((200, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = sf.sample_ode(problem.score, sde, x_T, method="dopri5", time="log_snr", rtol=1e-10, atol=1e-10).samples
    coarse, fine = (_solve(problem.score, sde, x_T, tol) for tol in (1e-3, 1e-6))
    assert rms_error(coarse.samples, reference) < 1e-2
    assert rms_error(fine.samples, reference) < 1e-5
    # Fewer evaluations than torchdiffeq's dopri5 at the same tolerance, in any of its time variables.
    for time in ("t", "log_snr"):
        dopri = sf.sample_ode(problem.score, sde, x_T, method="dopri5", time=time, rtol=1e-6, atol=1e-6)
        assert fine.nfe < dopri.nfe, (time, fine.nfe, dopri.nfe)


@pytest.mark.parametrize("denoise_final", [False, True])
def test_nfe_counts_every_attempted_step_and_no_time_below_t_min(denoise_final):
    problem = make_problem("ring2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counter = RecordingScore(problem.score)
    # A tight tolerance with a long first step forces rejected steps.
    res = _solve(counter, sde, x_T, 1e-6, denoise_final=denoise_final, options={"h_init": 3.0})
    assert res.stats["rejected_steps"] >= 1, res.stats
    assert res.nfe == counter.calls == 1 + res.stats["steps"] + res.stats["rejected_steps"] + denoise_final
    assert counter.t_lowest == pytest.approx(sde.t_min, rel=1e-12)


def test_trajectory_holds_the_accepted_steps_from_T_to_t_min():
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = _solve(problem.score, sde, x_T, 1e-4, return_trajectory=True)
    assert res.times.shape == (res.stats["steps"] + 1,) and res.trajectory.shape == (len(res.times), 8, 2)
    assert res.times[0] == sde.T and res.times[-1] == sde.t_min and bool((res.times.diff() < 0).all())
    assert torch.equal(res.trajectory[0], x_T) and torch.equal(res.trajectory[-1], res.samples)
    # Every state on the way is the exact flow of x_T to within the tolerance's reach.
    exact = torch.stack([problem.law.flow_map(sde, x_T, sde.T, float(t)) for t in res.times])
    assert rms_error(res.trajectory, exact) < 1e-3


def test_non_finite_score_stops_the_solve_naming_the_time():
    score = lambda x, t: torch.where(t[:, None] < 0.3, torch.nan, -x)  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.[0-2]\d*"):
        _solve(score, sf.VPSDE(), torch.zeros(4, 2), 1e-3)


def test_bad_arguments_name_the_fix():
    problem = make_problem("gaussian2d", "vp")
    sde, score = problem.sde, problem.score
    x_T = torch.zeros(4, 2, dtype=torch.float64)
    for extra in ({"steps": 10}, {"schedule": "karras"}, {"step_size": 0.1}):
        with pytest.raises(ValueError, match=r"the adaptive method 'dpmpp_4m_pc_adaptive' chooses its own steps from rtol/atol; omit 'steps'"):
            sf.sample_ode(score, sde, x_T, method=METHOD, **extra)
    with pytest.raises(ValueError, match=r"the native method 'dpmpp_4m_pc_adaptive' integrates in its own variables; omit 'time'"):
        sf.sample_ode(score, sde, x_T, method=METHOD, time="log_snr")
    with pytest.raises(ValueError, match=r"argument 'rtol' expected a finite number > 0, got -1"):
        sf.sample_ode(score, sde, x_T, method=METHOD, rtol=-1.0)
    with pytest.raises(TypeError, match=r"method 'dpmpp_4m_pc_adaptive' takes no option 'steps'; its options: 'h_init'"):
        sf.sample_ode(score, sde, x_T, method=METHOD, options={"steps": 3})
    with pytest.raises(ValueError, match=r"option 'h_init' expected a finite number > 0, got -1"):
        sf.sample_ode(score, sde, x_T, method=METHOD, options={"h_init": -1})
    with pytest.raises(ValueError, match=r"option 'max_factor' expected a number > 1, got 1"):
        sf.sample_ode(score, sde, x_T, method=METHOD, options={"max_factor": 1})
    with pytest.raises(RuntimeError, match=r"max_steps=3 .* reached t=0\.\d+ of t_min=0\.001"):
        sf.sample_ode(score, sde, x_T, method=METHOD, rtol=1e-8, atol=1e-8, options={"max_steps": 3})
