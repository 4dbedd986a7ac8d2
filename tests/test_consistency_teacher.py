"""teacher_step: exactly one step of a registry method between two times, per sample, with its NFE."""

import pytest
import torch

import scoreflow as sf
from scoreflow.consistency import teacher_step
from scoreflow.testing import make_law


@pytest.mark.parametrize("method", [m.name for m in sf.list_methods("ode")])
def test_every_registry_method_is_a_teacher(method, generator):
    # A fixed-grid method's step from T is sample_ode on the two-point grid, bit for bit, at nfe_per_step; an
    # adaptive one solves the step to its tolerances (checked against the exact flow map).
    law, sde = make_law("ring2d"), sf.VPSDE()
    x_T = sde.prior_sample((8, 2), generator=generator, dtype=torch.float64)
    t_to = 0.4
    if sf.get_method("ode", method).adaptive:
        stepped, _ = teacher_step(law.score(sde), sde, x_T, sde.T, t_to, method=method, rtol=1e-7, atol=1e-7)
        assert (stepped - law.flow_map(sde, x_T, sde.T, t_to)).abs().max() < 1e-4
        return
    stepped, nfe = teacher_step(law.score(sde), sde, x_T, sde.T, t_to, method=method)
    ref = sf.sample_ode(law.score(sde), sde, x_T, method=method, schedule=torch.tensor([sde.T, t_to]), t_min=t_to)
    assert torch.equal(stepped, ref.samples)
    assert nfe == ref.nfe == sf.get_method("ode", method).nfe_per_step


def test_rows_with_their_own_times_are_stepped_as_if_alone(generator):
    law, sde = make_law("gaussian2d"), sf.EDMSDE()
    grid = sf.time_grid(sde, 6, "karras")
    index = torch.tensor([0, 3, 3, 5, 0, 1])
    x = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    together, nfe = teacher_step(law.score(sde), sde, x, grid[index], grid[index + 1], method="heun")
    alone = torch.cat([teacher_step(law.score(sde), sde, x[i : i + 1], grid[j], grid[j + 1], method="heun")[0]
                       for i, j in enumerate(index.tolist())])
    assert torch.allclose(together, alone, rtol=1e-14, atol=1e-14)
    assert nfe == 4 * 2  # four distinct pairs of times, two evaluations each


@pytest.mark.parametrize("method", ["heun", "ddim", "dpmpp_2m", "dopri5"])
def test_a_row_whose_times_are_equal_is_returned_as_it_is(method, generator):
    # A step of length zero is the identity; the other rows are stepped as if alone.
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    x = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    t_from = torch.tensor([0.5, 0.5, 0.7], dtype=torch.float64)
    t_to = torch.tensor([0.5, 0.4, 0.7], dtype=torch.float64)
    out, nfe = teacher_step(law.score(sde), sde, x, t_from, t_to, method=method)
    assert torch.equal(out[[0, 2]], x[[0, 2]])
    alone, alone_nfe = teacher_step(law.score(sde), sde, x[1:2], 0.5, 0.4, method=method)
    assert torch.allclose(out[1:2], alone, rtol=1e-12, atol=1e-12) and nfe == alone_nfe


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE(), sf.EDMSDE()], ids=["vp", "ve", "edm"])
def test_an_adaptive_method_solves_the_step_to_its_tolerance(sde, generator):
    # Short steps near t_min: torchdiffeq's first-step heuristic would probe below t = 0 (undefined under VE).
    law = make_law("gaussian2d")
    grid = sf.time_grid(sde, 40, "karras")
    t_from, t_to = grid[-3:-1], grid[-2:]
    x = law.marginal(sde, t_from).sample(2, generator=generator)
    out, _ = teacher_step(law.score(sde), sde, x, t_from, t_to, method="dopri5", rtol=1e-10, atol=1e-10)
    exact = law.flow_map(sde, x, t_from, t_to)
    assert (out - exact).abs().max() < 1e-8


def test_errors_are_named():
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"teacher_step: argument 'method' expected one of .*'heun'"):
        teacher_step(law.score(sde), sde, x, 0.5, 0.4, method="heun2")
    with pytest.raises(ValueError, match=r"teacher_step: arguments 't_from', 't_to' expected times in \[t_min=0\.001, T=1\]"):
        teacher_step(law.score(sde), sde, x, 1.5, 0.4)
    with pytest.raises(ValueError, match=r"teacher_step: arguments 't_from', 't_to' expected times in \[t_min=0\.001, T=1\], got \[nan"):
        teacher_step(law.score(sde), sde, x, torch.tensor([0.5, float("nan"), 0.5], dtype=torch.float64), 0.4)
    with pytest.raises(ValueError, match=r"teacher_step: argument 't_to' expected a scalar or a \(3,\) tensor"):
        teacher_step(law.score(sde), sde, x, 0.5, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"'rtol'/'atol' apply to adaptive methods"):
        teacher_step(law.score(sde), sde, x, 0.5, 0.4, method="heun", rtol=1e-3)
    with pytest.raises(TypeError, match=r"method 'dopri5' takes no option 'lower_order_final'"):
        teacher_step(law.score(sde), sde, x, 0.5, 0.4, method="dopri5", options={"lower_order_final": True})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_state_is_refused_as_sample_ode_refuses_it(dtype):
    # a teacher step is a step of sample_ode's method: in float16 dopri5's step was silently 0.02 off the flow map
    # (1.8e-6 in float32), the underflowed error estimate that sample_ode refuses a half state for
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    calls = []

    def score(x, t):
        calls.append(t)
        return law.score(sde)(x.double(), t.double()).to(x.dtype)

    x = torch.zeros(3, 2, dtype=dtype)
    with pytest.raises(TypeError, match=r"teacher_step: argument 'x' expected a float32 or float64 tensor .*got dtype"):
        teacher_step(score, sde, x, 0.5, 0.45, method="dopri5")
    assert not calls


def test_the_per_sample_adaptive_teacher_steps_from_below_pure_noise_and_names_its_caller():
    """It was refused on every process reaching pure noise, even for a step from t = 0.5, in an error naming sample_ode."""
    from scoreflow.testing import reference_flow_map

    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x = law.marginal(rf, 0.5).sample(64, generator=torch.Generator().manual_seed(0))
    out, _ = teacher_step(law.velocity(rf), rf, x, 0.5, 0.4, method="dpmpp_4m_pc_adaptive_per_sample", rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out, reference_flow_map(law, rf, x, 0.5, 0.4), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"^teacher_step: the method 'dpmpp_4m_pc_adaptive_per_sample' cannot start at pure noise"):
        teacher_step(law.velocity(rf), rf, x, 1.0, 0.4, method="dpmpp_4m_pc_adaptive_per_sample")
