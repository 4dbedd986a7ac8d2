"""scoreflow.testing.assert_consistency_function: the exact function passes, planted errors fail with the bound."""

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.consistency import teacher_step
from scoreflow.testing import assert_consistency_function, make_law


@pytest.mark.parametrize("law_name, sde", [("gaussian2d", sf.EDMSDE()), ("ring2d", sf.VPSDE())], ids=["gaussian-edm", "ring-vp"])
def test_an_independent_solve_passes_at_tight_tolerances(law_name, sde, generator):
    # f by scoreflow's dopri5 from each (x, t) down to t_min: another solver than the reference's.
    law = make_law(law_name)

    def solved(x, t):
        inner = t > sde.t_min
        out = x.clone()
        out[inner] = teacher_step(law.score(sde), sde, x[inner], t[inner], sde.t_min, method="dopri5", rtol=1e-9, atol=1e-9)[0]
        return out

    stats = assert_consistency_function(solved, law, sde, n=8, atol=1e-6, rtol=0.0, generator=generator)
    assert len(stats["times"]) == 9 and stats["times"][0] == sde.t_min and stats["times"][-1] == sde.T
    assert max(stats["rms_error"]) < 1e-6 and stats["w2_bound_one_step"] < 1e-5


def test_a_parameterized_exact_network_passes_and_the_boundary_is_exact(generator):
    # net = (f* - c_skip x) / c_out makes the parameterized model the exact function away from t_min.
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    exact = law.consistency_function(sde)

    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            c_skip, c_out = model.coefficients(t)
            return (exact(x, t) - c_skip[:, None] * x) / torch.where(c_out == 0, 1.0, c_out)[:, None]

    model = sf.consistency.parameterize(Oracle(), sde, 1.0)
    stats = assert_consistency_function(model, law, sde, n=32, atol=1e-9, rtol=0.0, generator=generator)
    assert stats["rms_error"][0] == 0.0  # at t_min: f(x, t_min) = x exactly


def test_a_function_that_misses_at_large_times_fails_with_the_bound_and_its_derivation(generator):
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    exact = law.consistency_function(sde)

    def late_bias(x, t):
        return exact(x, t) + 0.05 * (t > 0.5).to(x.dtype)[:, None]

    with pytest.raises(AssertionError) as info:
        assert_consistency_function(late_bias, law, sde, n=16, atol=1e-3, rtol=1e-3, generator=generator)
    msg = str(info.value)
    assert "measured: e(t) = RMS per coordinate of f(x_t, t) - f*(x_t, t)" in msg
    assert "bound:    atol + rtol*RMS(f*) + reference error = 0.001 + 0.001*RMS(f*) + 0 (closed form)" in msg
    assert "closed-form Gaussian.flow_map" in msg
    assert f"sqrt(D) e(T) = {math.sqrt(2) * 0.05:.3e}" in msg
    exceeds = [line for line in msg.splitlines() if "<-- exceeds" in line]
    assert exceeds and all(float(line.split("t=")[1].split()[0]) > 0.5 for line in exceeds)


def test_default_times_on_a_path_that_ends_in_pure_noise(generator):
    # Rectified flow has log-SNR -inf at T: the default times must be finite, from t_min to T, increasing.
    law, path = make_law("gaussian2d"), sf.RectifiedFlow()
    stats = assert_consistency_function(law.consistency_function(path), law, path, n=8, atol=1e-9, rtol=0.0, generator=generator)
    times = torch.tensor(stats["times"])
    assert len(times) == 9 and times[0] == path.t_min and times[-1] == path.T and bool((times.diff() > 0).all())
    assert max(stats["rms_error"]) < 1e-9 and stats["w2_bound_one_step"] < 1e-8


def test_mixture_bound_includes_the_reference_solve(generator):
    law, sde = make_law("ring2d"), sf.EDMSDE()
    with pytest.raises(AssertionError, match=r"1e-10 \+ 1e-10\*RMS\(f\*\) \(the solve\)"):
        assert_consistency_function(lambda x, t: x, law, sde, n=4, generator=generator)


def test_bad_arguments():
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    with pytest.raises(TypeError, match=r"assert_consistency_function: argument 'f' expected a callable"):
        assert_consistency_function(None, law, sde)
    with pytest.raises(ValueError, match=r"argument 'times' expected a non-empty list of times in \[t_min=0\.001, T=1\]"):
        assert_consistency_function(lambda x, t: x, law, sde, times=[0.0])
    with pytest.raises(ValueError, match=r"argument 'times' expected finite times, got \[nan\]"):
        assert_consistency_function(lambda x, t: x, law, sde, times=[float("nan")])
    with pytest.raises(ValueError, match=r"f returned shape \(4, 1\)"):
        assert_consistency_function(lambda x, t: x[:, :1], law, sde, n=4, times=[0.5])
    with pytest.raises(TypeError, match=r"argument 'law' expected a GaussianMixture"):
        assert_consistency_function(lambda x, t: x, "ring", sde)
