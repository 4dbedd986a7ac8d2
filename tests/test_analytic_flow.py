"""Flow maps with per-sample times and the exact consistency function of analytic laws."""

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import make_law

SDES = [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()]
IDS = ["vp", "subvp", "ve", "edm"]


def per_sample_times(sde, n, generator):
    return sde.t_min + torch.rand(n, generator=generator, dtype=torch.float64) * (sde.T - sde.t_min)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_gaussian_flow_map_with_per_sample_times_is_the_scalar_map_row_by_row(sde, generator):
    law = make_law("gaussian16d")
    t = per_sample_times(sde, 5, generator)
    x = law.marginal(sde, t).sample(5, generator=generator)
    batched = law.flow_map(sde, x, t, sde.t_min)
    rows = torch.cat([law.flow_map(sde, x[i : i + 1], float(t[i]), sde.t_min) for i in range(5)])
    assert torch.allclose(batched, rows, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_mixture_flow_map_agrees_with_an_independent_solver(sde, generator):
    # The tight DOP853 solve against scoreflow's dopri5 on the same exact score, from T and from inner times.
    law = make_law("ring2d")
    x_T = sde.prior_sample((16, 2), generator=generator, dtype=torch.float64)
    dopri = sf.sample_ode(law.score(sde), sde, x_T, method="dopri5", rtol=1e-10, atol=1e-10, return_trajectory=True)
    assert (law.flow_map(sde, x_T, sde.T, sde.t_min) - dopri.samples).abs().max() < 1e-7
    t_mid = 0.3
    x_mid = law.flow_map(sde, x_T, sde.T, t_mid)
    assert (law.flow_map(sde, x_mid, t_mid, sde.t_min) - dopri.samples).abs().max() < 1e-7


@pytest.mark.parametrize("law_name", ["gaussian2d", "ring2d"])
@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.EDMSDE()], ids=["vp", "edm"])
def test_consistency_function_is_constant_along_trajectories(law_name, sde, generator):
    # f*(Phi_{T->t}(x_T), t) = f*(x_T, T) for every t (self-consistency), and f*(x, t_min) = x.
    law = make_law(law_name)
    f = law.consistency_function(sde)
    x_T = sde.prior_sample((8, 2), generator=generator, dtype=torch.float64)
    end = f(x_T, sde.T)
    t = per_sample_times(sde, 8, generator)
    x_t = law.flow_map(sde, x_T, sde.T, t[0])  # one trajectory time for all rows, then per-row times below
    assert (f(x_t, t[0]) - end).abs().max() < 1e-7
    x_rows = torch.stack([law.flow_map(sde, x_T[i : i + 1], sde.T, float(t[i]))[0] for i in range(8)])
    assert (f(x_rows, t) - end).abs().max() < 1e-7
    assert torch.equal(f(end, sde.t_min), end)


def test_consistency_function_description_and_errors():
    law, sde = make_law("ring2d"), sf.VPSDE()
    assert "DOP853" in law.consistency_function(sde, rtol=1e-8).description
    assert "closed-form" in make_law("gaussian2d").consistency_function(sde).description
    assert law.consistency_function(sde, t_min=0.1).t_min == 0.1
    f = law.consistency_function(sde, t_min=0.1)
    with pytest.raises(ValueError, match=r"ExactConsistencyFunction: argument 't' expected times in \[t_min=0\.1, T=1\]"):
        f(torch.zeros(2, 2, dtype=torch.float64), 0.05)
    with pytest.raises(ValueError, match=r"consistency_function: argument 't_min' expected a time in \(0, T=1\)"):
        law.consistency_function(sde, t_min=1.0)
    with pytest.raises(ValueError, match=r"consistency_function: argument 'rtol' expected a finite number > 0"):
        law.consistency_function(sde, rtol=0.0)
    with pytest.raises(TypeError, match=r"consistency_function: argument 'sde' expected a ForwardSDE"):
        law.consistency_function("vp")


@pytest.mark.parametrize("sigma_max", [42.4056, 80.3, 1.1, 80.1, 0.7], ids=["up", "up80.3", "up1.1", "down80.1", "down0.7"])
@pytest.mark.parametrize("law_name", ["gaussian2d", "ring2d"])
def test_float32_times_at_T_are_T_wherever_float32_rounds_it(sigma_max, law_name):
    # float32(42.4056) > 42.4056: a float32 sampler's first time (T as x_T's dtype holds it) was refused by flow_map,
    # so sample_consistency(law.consistency_function(sde), ...) failed on float32 data. Within the rounding of T the
    # time is T (the float64 map from T, to float32 round-off); a float32 step further out is still refused.
    law, sde = make_law(law_name), sf.EDMSDE(sigma_max=sigma_max)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = law.flow_map(sde, x_T, sde.T, sde.t_min)
    T32 = torch.tensor(sde.T, dtype=torch.float32)
    mapped = law.flow_map(sde, x_T.float(), T32.expand(8), sde.t_min)
    sampled = sf.sample_consistency(law.consistency_function(sde), sde, x_T.float(), steps=1).samples
    for out in (mapped, sampled):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, exact.float(), rtol=1e-5, atol=1e-5 * sigma_max)
    beyond = torch.nextafter(T32, torch.tensor(float("inf")))  # one float32 step beyond T, whichever way it rounds
    name = "Gaussian" if law_name == "gaussian2d" else "GaussianMixture"
    with pytest.raises(ValueError, match=rf"^{name}.flow_map: argument 't_from' expected times in \[0, T={sigma_max:g}\], got") as err:
        law.flow_map(sde, x_T.float(), beyond.expand(8), sde.t_min)
    # the time beyond T is printed to all its digits (a tensor's repr would show T itself)
    assert f"got times from {float(beyond)!r} to {float(beyond)!r}." in str(err.value)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_exact_velocity_at_t0_is_the_data_laws_probability_flow_drift(sde, generator):
    # At t = 0 sigma = 0 and sigma' is infinite (VP, VE) or 0/0 (EDM): u must be the finite f x - g^2/2 grad log p_0(x),
    # and the mixture's DOP853 solve must reach t = 0, where the Gaussian's closed form is.
    law = make_law("gaussian16d")
    x = law.sample(4, generator=generator)
    t0 = torch.zeros((), dtype=torch.float64)
    drift = sde.drift_coef(t0) * x - 0.5 * sde.diffusion(t0) ** 2 * law.grad_log_prob(x)
    torch.testing.assert_close(law.velocity(sde).predict(x, t0), drift, rtol=1e-12, atol=1e-12)
    x_mid = law.marginal(sde, 0.5 * sde.T).sample(4, generator=generator)
    solved = sf.analytic.GaussianMixture.flow_map(law, sde, x_mid, 0.5 * sde.T, 0.0)
    assert (solved - law.flow_map(sde, x_mid, 0.5 * sde.T, 0.0)).abs().max() < 1e-7


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.RectifiedFlow()], ids=["vp", "rf"])
def test_mixture_flow_map_with_per_sample_end_times_is_the_scalar_map_row_by_row(sde, generator):
    # t_to of shape (B,), which the checks accept and the Gaussian's closed form maps: the solve took float(t_to) and
    # failed with "only one element tensors can be converted to Python scalars".
    law = make_law("ring2d")
    x = law.marginal(sde, 0.9).sample(4, generator=generator)
    t_to = per_sample_times(sde, 4, generator)
    rows = torch.cat([law.flow_map(sde, x[i : i + 1], 0.9, float(t_to[i])) for i in range(4)])
    assert (law.flow_map(sde, x, 0.9, t_to) - rows).abs().max() < 1e-8
