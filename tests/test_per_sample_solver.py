"""sample_ode(method="dpmpp_4m_pc_adaptive_per_sample"): batch invariance, convergence to closed forms, NFE per sample, errors."""

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.metrics import rms_error
from scoreflow.testing import make_problem

METHOD = "dpmpp_4m_pc_adaptive_per_sample"


def _solve(score, sde, x_T, tol, **kwargs):
    return sf.sample_ode(score, sde, x_T, method=METHOD, rtol=tol, atol=tol, **kwargs)


def test_a_sample_alone_equals_the_same_sample_in_a_batch_of_1000():
    problem = make_problem("ring2d_sharp", "vp")
    x_T = problem.sde.prior_sample((1000, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    batch = _solve(problem.score, problem.sde, x_T, 1e-3)
    for i in (0, 417, 999):
        alone = _solve(problem.score, problem.sde, x_T[i : i + 1], 1e-3)
        assert torch.allclose(alone.samples[0], batch.samples[i], rtol=0, atol=1e-12), i
        assert alone.nfe == int(batch.stats["nfe_per_sample"][i])
    # Samples take different numbers of steps: the steps really are per sample.
    assert batch.stats["nfe_per_sample"].unique().numel() > 1
    assert torch.equal(x_T, problem.sde.prior_sample((1000, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64))


def test_a_batch_of_one_takes_the_batch_wide_solvers_steps():
    problem = make_problem("mixture16d", "vp")
    x_T = problem.sde.prior_sample((3, 16), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for i in range(3):
        one = _solve(problem.score, problem.sde, x_T[i : i + 1], 1e-4)
        wide = sf.sample_ode(problem.score, problem.sde, x_T[i : i + 1], method="dpmpp_4m_pc_adaptive", rtol=1e-4, atol=1e-4)
        # The step weights are solved differently (batched here, per step there): equal up to round-off.
        assert torch.allclose(one.samples, wide.samples, rtol=0, atol=1e-10)
        assert one.nfe == wide.nfe and int(one.stats["steps"][0]) == wide.stats["steps"]


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_tightening_the_tolerance_converges_to_the_closed_form_flow(sde):
    law = make_problem("gaussian2d", "vp").law
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = law.flow_map(sde, x_T, sde.T, sde.t_min)
    errors = [rms_error(_solve(law.score(sde), sde, x_T, tol).samples, exact) for tol in (1e-3, 1e-5, 1e-7)]
    assert errors[0] < 1e-2 and errors[1] < errors[0] / 20 and errors[2] < errors[1] / 20, errors
    assert errors[2] < 1e-6, errors


def test_float32_images_and_the_batch_wide_method_agree_within_the_tolerance():
    law = make_problem("gaussian2d", "vp").law.to(torch.float32)
    sde = sf.VPSDE()
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))
    score4d = lambda x, t: law.score(sde)(x.reshape(-1, 2), t).reshape(x.shape)  # noqa: E731
    res = _solve(score4d, sde, x_T.reshape(16, 1, 2, 1), 1e-4)
    assert res.samples.shape == (16, 1, 2, 1) and res.samples.dtype == torch.float32
    batch_wide = sf.sample_ode(law.score(sde), sde, x_T, method="dpmpp_4m_pc_adaptive", rtol=1e-4, atol=1e-4)
    assert rms_error(res.samples.reshape(16, 2), batch_wide.samples) < 1e-3


def test_nfe_is_the_number_of_calls_and_each_sample_counts_its_own():
    problem = make_problem("ring2d", "vp")
    x_T = problem.sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counter = RecordingScore(problem.score)
    res = _solve(counter, problem.sde, x_T, 1e-6, options={"h_init": 3.0})
    per = res.stats["nfe_per_sample"]
    assert res.nfe == counter.calls == int(per.max()) == res.stats["nfe_max"]
    assert res.stats["nfe_mean"] == pytest.approx(float(per.double().mean()))
    assert torch.equal(per, 1 + res.stats["steps"] + res.stats["rejected_steps"])
    assert int(res.stats["rejected_steps"].sum()) >= 1
    assert counter.t_lowest == pytest.approx(problem.sde.t_min, rel=1e-12)


def test_non_finite_score_and_step_limit():
    score = lambda x, t: torch.where(t[:, None] < 0.3, torch.nan, -x)  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.[0-2]\d*"):
        _solve(score, sf.VPSDE(), torch.zeros(4, 2), 1e-3)
    problem = make_problem("gaussian2d", "vp")
    with pytest.raises(RuntimeError, match=r"max_steps=3 steps .* with 4 of 4 samples short of t_min"):
        _solve(problem.score, problem.sde, torch.zeros(4, 2, dtype=torch.float64), 1e-8, options={"max_steps": 3})
    with pytest.raises(ValueError, match=r"the adaptive method 'dpmpp_4m_pc_adaptive_per_sample' chooses its own steps"):
        sf.sample_ode(problem.score, problem.sde, torch.zeros(4, 2), method=METHOD, steps=10)
    flow = sf.RectifiedFlow()
    with pytest.raises(ValueError, match=r"sample_ode: the method 'dpmpp_4m_pc_adaptive_per_sample' cannot start at pure noise .* Fix: method='dpmpp_4m_pc_adaptive'"):
        _solve(make_problem("gaussian2d", "vp").law.velocity(flow), flow, torch.zeros(4, 2), 1e-3)
