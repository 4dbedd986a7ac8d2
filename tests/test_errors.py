"""Bad input to the sampling front-ends gets a clear error naming the argument; NaN names the time."""

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import make_problem

FRONT_ENDS = {
    "sample_ode": lambda score, sde, x, **kw: sf.sample_ode(score, sde, x, **kw),
    "sample_sde": lambda score, sde, x, **kw: sf.sample_sde(score, sde, x, steps=kw.pop("steps", 5), **kw),
}


@pytest.fixture
def problem():
    return make_problem("gaussian2d", "vp")


@pytest.fixture
def x_T(problem):
    return problem.sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_score_with_wrong_shape(name, problem, x_T):
    with pytest.raises(ValueError, match=rf"{name}: the score expected shape \(4, 2\) \(the shape of the x it was called with\), got shape \(4, 1\)"):
        FRONT_ENDS[name](lambda x, t: x[:, :1], problem.sde, x_T)


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_score_with_wrong_dtype(name, problem, x_T):
    with pytest.raises(TypeError, match=rf"{name}: the score expected dtype torch.float64 \(the dtype of x\), got torch.float32"):
        FRONT_ENDS[name](lambda x, t: x.float(), problem.sde, x_T)


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_score_on_wrong_device(name, problem, x_T):
    with pytest.raises(ValueError, match=rf"{name}: the score expected device cpu \(the device of x\), got meta"):
        FRONT_ENDS[name](lambda x, t: torch.empty_like(x, device="meta"), problem.sde, x_T)


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_score_returning_non_tensor(name, problem, x_T):
    with pytest.raises(TypeError, match=rf"{name}: the score expected a tensor shaped like x \(4, 2\), got ndarray"):
        FRONT_ENDS[name](lambda x, t: x.numpy(), problem.sde, x_T)


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_x_T_with_wrong_rank(name, problem):
    with pytest.raises(ValueError, match=rf"{name}: argument 'x_T' expected a tensor of shape \(B, \*D\).*got shape \(2,\)"):
        FRONT_ENDS[name](problem.score, problem.sde, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_x_T_of_integers(name, problem):
    with pytest.raises(TypeError, match=rf"{name}: argument 'x_T' expected a floating-point tensor"):
        FRONT_ENDS[name](problem.score, problem.sde, torch.zeros(3, 2, dtype=torch.int64))


@pytest.mark.parametrize("name", FRONT_ENDS)
@pytest.mark.parametrize("t_min", [0.0, -0.1, 1.0, 2.0])
def test_t_min_outside_time_range(name, problem, x_T, t_min):
    with pytest.raises(ValueError, match=rf"{name}: argument 't_min' expected a time in"):
        FRONT_ENDS[name](problem.score, problem.sde, x_T, t_min=t_min)


@pytest.mark.parametrize("name, valid", [("sample_ode", "'dopri5'"), ("sample_sde", "'euler'")])
def test_unknown_method_lists_valid_ones(name, valid, problem, x_T):
    with pytest.raises(ValueError, match=rf"{name}: argument 'method' expected one of .*{valid}.*got 'rk45'"):
        FRONT_ENDS[name](problem.score, problem.sde, x_T, method="rk45")


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_sde_of_wrong_type(name, problem, x_T):
    with pytest.raises(TypeError, match=rf"{name}: argument 'sde' expected a ForwardSDE"):
        FRONT_ENDS[name](problem.score, "vp", x_T)


def _nan_below(problem, t_bad):
    def score(x, t):
        out = problem.score(x, t)
        return torch.where(t[:, None] < t_bad, torch.nan, out)

    return score


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_nan_score_stops_the_solve_and_names_the_time(name, problem, x_T):
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite \(NaN or inf\) at t=0\.4"):
        FRONT_ENDS[name](_nan_below(problem, 0.5), problem.sde, x_T, **({"method": "euler", "steps": 10} if name == "sample_ode" else {"steps": 10}))


def test_nan_at_the_start_is_caught_before_solving(problem, x_T):
    with pytest.raises(sf.NonFiniteError, match=r"at t=1\b"):
        sf.sample_ode(lambda x, t: x * torch.nan, problem.sde, x_T)


def test_fixed_method_needs_steps(problem, x_T):
    with pytest.raises(ValueError, match="sample_ode: the fixed-grid method 'rk4' needs exactly one of 'steps' .*'step_size'"):
        sf.sample_ode(problem.score, problem.sde, x_T, method="rk4")
    with pytest.raises(ValueError, match="the adaptive method 'dopri5' chooses its own steps from rtol/atol; omit 'steps'"):
        sf.sample_ode(problem.score, problem.sde, x_T, method="dopri5", steps=10)
    with pytest.raises(ValueError, match="sample_ode: 'rtol'/'atol' apply to adaptive methods; the fixed-grid method 'rk4' takes 'steps'"):
        sf.sample_ode(problem.score, problem.sde, x_T, method="rk4", steps=10, rtol=1e-3)
    with pytest.raises(ValueError, match="sample_ode: argument 'steps' expected an int >= 1, got 0"):
        sf.sample_ode(problem.score, problem.sde, x_T, method="euler", steps=0)


def test_sample_sde_argument_checks(problem, x_T):
    with pytest.raises(ValueError, match="sample_sde: the fixed-grid method 'euler' needs exactly one of 'steps' .*'step_size'"):
        sf.sample_sde(problem.score, problem.sde, x_T)
    with pytest.raises(ValueError, match="sample_sde: argument 'step_size' expected a finite number > 0, got -0.1"):
        sf.sample_sde(problem.score, problem.sde, x_T, step_size=-0.1)
    with pytest.raises(TypeError, match="sample_sde: argument 'generator' expected a torch.Generator"):
        sf.sample_sde(problem.score, problem.sde, x_T, steps=5, generator=0)
    with pytest.raises(ValueError, match=r"sample_sde: argument 'bm' expected shape \(4, 2\)"):
        sf.sample_sde(problem.score, problem.sde, x_T, steps=5, bm=sf.brownian_motion(x_T[:2], 0.999))
    levy = r"argument 'bm' expected a path with Levy area \(method 'srk' needs it\), got one without\. Fix: make it with "
    with pytest.raises(ValueError, match="sample_sde: " + levy + r"brownian_motion\(\.\.\., levy_area=True\)"):
        sf.sample_sde(problem.score, problem.sde, x_T, steps=5, method="srk", bm=sf.brownian_motion(x_T, 0.999))
