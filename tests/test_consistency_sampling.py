"""sample_consistency: one step is the exact flow map, the multistep sampler keeps the exact law, seeds, errors."""

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import assert_samples_follow, make_law

SDES = [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()]
IDS = ["vp", "subvp", "ve", "edm"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("law_name", ["gaussian2d", "gaussian16d"])
def test_one_step_with_the_exact_function_is_the_closed_form_flow_map(law_name, sde, generator):
    law = make_law(law_name)
    x_T = sde.prior_sample((64, law.dim), generator=generator, dtype=torch.float64)
    res = sf.sample_consistency(law.consistency_function(sde), sde, x_T)
    # An independent route to the same map: dopri5 on the exact score at tight tolerances.
    solved = sf.sample_ode(law.score(sde), sde, x_T, method="dopri5", rtol=1e-10, atol=1e-10).samples
    assert res.nfe == 1
    assert (res.samples - solved).abs().max() < 1e-6
    assert torch.equal(res.samples, law.flow_map(sde, x_T, sde.T, sde.t_min))


def test_one_step_on_a_mixture_lands_on_the_flow_map(generator):
    law, sde = make_law("ring2d"), sf.VPSDE()
    x_T = sde.prior_sample((32, 2), generator=generator, dtype=torch.float64)
    res = sf.sample_consistency(law.consistency_function(sde), sde, x_T)
    solved = sf.sample_ode(law.score(sde), sde, x_T, method="dopri5", rtol=1e-10, atol=1e-10).samples
    assert (res.samples - solved).abs().max() < 1e-6


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.EDMSDE()], ids=["vp", "edm"])
def test_multistep_with_the_exact_function_samples_the_exact_law(sde):
    # Re-noising exact x_{t_min} by the forward transition gives x_tau ~ p_tau, which f* maps back to p_{t_min}:
    # with the exact function every number of steps samples the exact law (a wrong noise level would not).
    law = make_law("gaussian2d")
    g = torch.Generator().manual_seed(3)
    x_T = sde.prior_sample((3000, 2), generator=g, dtype=torch.float64)
    target = law.marginal(sde, sde.t_min)
    for steps in (2, 4):
        res = sf.sample_consistency(law.consistency_function(sde), sde, x_T, steps=steps, generator=g)
        assert res.nfe == steps
        assert_samples_follow(res.samples, target, generator=torch.Generator().manual_seed(4), n_replicates=5, n_reference=8000)


def test_renoising_without_the_exact_transition_is_caught():
    # The same sampler with the paper's EDM noise sqrt(tau^2 - t_min^2) applied to a VP process misses the law:
    # the check above is sharp enough to see the re-noising formula.
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    g = torch.Generator().manual_seed(3)
    x_T = sde.prior_sample((3000, 2), generator=g, dtype=torch.float64)
    f = law.consistency_function(sde)
    tau = sf.consistency.renoise_times(sde, 2)
    x = f(x_T, sde.T)
    x = f(x + (tau**2 - sde.t_min**2).sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype), tau)
    with pytest.raises(AssertionError, match="moments"):
        assert_samples_follow(x, law.marginal(sde, sde.t_min), generator=torch.Generator().manual_seed(4), n_replicates=5, n_reference=8000)


def test_seeded_runs_are_bit_identical_and_times_set_the_steps():
    sde, law = sf.VPSDE(), make_law("gaussian2d", torch.float32)
    f = law.consistency_function(sde)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))
    runs = [sf.sample_consistency(f, sde, x_T, steps=3, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0].samples, runs[1].samples) and runs[0].samples.dtype == torch.float32
    times = [0.5, 0.1]
    res = sf.sample_consistency(f, sde, x_T, times=times, generator=torch.Generator().manual_seed(5), return_trajectory=True)
    assert res.nfe == 3 and res.trajectory.shape == (3, 16, 2)
    assert torch.allclose(res.times, torch.tensor([sde.T, *times], dtype=torch.float32))
    assert torch.equal(res.trajectory[-1], res.samples)
    assert torch.allclose(sf.consistency.renoise_times(sde, 3), sf.time_grid(sde, 3, "karras")[1:-1])


def test_a_function_with_its_own_boundary_time_sets_the_default_t_min(generator):
    # f.t_min = 0.01 != sde.t_min: without t_min the sampler ends at f's boundary (the docstring's default), exactly
    # the flow map to 0.01 in one step, and re-noises from 0.01 in more.
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    f = law.consistency_function(sde, t_min=0.01)
    x_T = sde.prior_sample((8, 2), generator=generator, dtype=torch.float64)
    res = sf.sample_consistency(f, sde, x_T)
    torch.testing.assert_close(res.samples, law.flow_map(sde, x_T, sde.T, 0.01), rtol=1e-12, atol=1e-12)
    res = sf.sample_consistency(f, sde, x_T, steps=3, generator=torch.Generator().manual_seed(1))
    same = sf.sample_consistency(f, sde, x_T, steps=3, t_min=0.01, generator=torch.Generator().manual_seed(1))
    assert torch.equal(res.samples, same.samples)
    assert torch.allclose(res.stats["times"][1:], sf.consistency.renoise_times(sde, 3, t_min=0.01))
    model = sf.consistency.parameterize(lambda x, t: x, sde, t_min=0.01)
    assert sf.sample_consistency(model, sde, x_T, steps=2, generator=generator).nfe == 2


def test_any_data_shape():
    sde = sf.EDMSDE()
    f = sf.consistency.parameterize(lambda x, t: torch.tanh(x), sde)
    x_T = sde.prior_sample((3, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    res = sf.sample_consistency(f, sde, x_T, steps=2, generator=torch.Generator().manual_seed(1))
    assert res.samples.shape == (3, 2, 4, 4) and res.nfe == 2


def test_a_non_finite_output_names_the_time():
    sde = sf.VPSDE()

    def f(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), x)

    x_T = torch.zeros(4, 2)
    with pytest.raises(sf.NonFiniteError, match=r"t=0\.2 \(step 2 of 2\)"):
        sf.sample_consistency(f, sde, x_T, times=[0.2])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"steps": 0}, ValueError, r"argument 'steps' expected an int >= 1"),
        ({"steps": 2.0}, TypeError, r"argument 'steps' expected an int"),
        ({"times": [0.1, 0.5]}, ValueError, r"argument 'times' expected strictly decreasing times in \(t_min=0\.001, T=1\)"),
        ({"times": [1.5]}, ValueError, r"argument 'times' expected strictly decreasing times"),
        ({"times": []}, ValueError, r"argument 'times' expected a non-empty 1-D sequence"),
        ({"times": [0.5], "steps": 3}, ValueError, r"1 re-noising times make 2 steps, got steps=3"),
        ({"schedule": "cosine"}, ValueError, r"argument 'schedule' expected one of 't', 'log_snr', 'karras'"),
        ({"times": [0.5], "schedule": "t"}, ValueError, r"argument 'schedule' places the default re-noising times; with 'times' given"),
        ({"t_min": 0.01}, ValueError, r"argument 't_min' expected the boundary time of f, f\.t_min=0\.001, got 0\.01"),
        ({"generator": 3}, TypeError, r"argument 'generator' expected a torch\.Generator"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    sde = sf.VPSDE()
    f = sf.consistency.parameterize(lambda x, t: x, sde)
    with pytest.raises(error, match=match):
        sf.sample_consistency(f, sde, torch.zeros(4, 2), **kwargs)


def test_bad_f_x_T_and_outputs_are_named():
    sde = sf.VPSDE()
    with pytest.raises(TypeError, match=r"sample_consistency: argument 'f' expected a callable f\(x, t\)"):
        sf.sample_consistency("f", sde, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"sample_consistency: argument 'x_T' expected a tensor of shape \(B, \*D\)"):
        sf.sample_consistency(lambda x, t: x, sde, torch.zeros(4))
    with pytest.raises(ValueError, match=r"sample_consistency: f expected shape \(4, 2\)"):
        sf.sample_consistency(lambda x, t: x[:, :1], sde, torch.zeros(4, 2))
    with pytest.raises(TypeError, match=r"sample_consistency: argument 'sde' expected a ForwardSDE"):
        sf.sample_consistency(lambda x, t: x, "vp", torch.zeros(4, 2))
    # an f that goes wrong at a later step, not only at the first (it was checked once: wrong-shaped samples came back)
    calls = []

    def narrow_after_the_first_call(x, t):
        calls.append(t)
        return x if len(calls) == 1 else x[:, :1]

    with pytest.raises(ValueError, match=r"sample_consistency: f expected shape \(4, 2\)"):
        sf.sample_consistency(narrow_after_the_first_call, sde, torch.zeros(4, 2), steps=2)
