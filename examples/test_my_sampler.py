"""Property-based correctness tests for your own sampler, against scoreflow's closed forms.

Copy this file into your test suite, replace ``my_sampler`` with your sampler (any function
``sampler(score, sde, x_T, steps) -> x`` that integrates from ``sde.T`` down to ``sde.t_min``)
and set ``ORDER`` to the order you claim.  Run with ``pytest test_my_sampler.py``.
Needs scoreflow with its test extra: ``pip install "scoreflow[test]"``.
"""

import pytest
import torch
from hypothesis import given, settings

import scoreflow as sf
from scoreflow.testing import assert_flow_map, assert_order, assert_samples_follow, make_law
from scoreflow.testing import strategies as sfst

# Seeded-generator and float64 fixtures (torch_generator, scoreflow_seed, float64, real_dtype);
# this line may equally go into your top-level conftest.py.
pytest_plugins = ["scoreflow.testing.fixtures"]

ORDER = 2  # the global order your sampler claims


def my_sampler(score, sde, x, steps):
    """Replace me: Heun's method on the probability-flow ODE dx/dt = f(t) x - g(t)^2 / 2 * score(x, t)."""
    ts = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=x.dtype)

    def velocity(x, t):
        tb = t.expand(x.shape[0])
        return sde.drift(x, tb) - 0.5 * sde.diffusion(t) ** 2 * score(x, tb)

    for t0, t1 in zip(ts[:-1], ts[1:]):
        d0 = velocity(x, t0)
        x = x + 0.5 * (t1 - t0) * (d0 + velocity(x + (t1 - t0) * d0, t1))
    return x


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("law_name", ["gaussian2d", "ring2d"])
def test_lands_on_the_exact_probability_flow_map(law_name, sde, torch_generator):
    """From the same x_T, the sampler must land where the exact flow map does (closed form or DOP853)."""
    sampler = lambda score, sde, x_T: my_sampler(score, sde, x_T, steps=200)  # noqa: E731
    assert_flow_map(sampler, make_law(law_name), sde, n=16, atol=2e-3, rtol=2e-3, generator=torch_generator)


def test_converges_with_the_declared_order(torch_generator):
    """The RMS error against the exact map falls like h^ORDER over a ladder of step counts."""
    assert_order(my_sampler, make_law("gaussian2d"), sf.VPSDE(), ORDER, steps=(32, 64, 128, 256), generator=torch_generator)


def test_samples_follow_the_exact_law_at_t_min(torch_generator):
    """Samples from prior draws match the exact marginal within the Monte-Carlo error at this size."""
    law, sde = make_law("ring2d"), sf.VPSDE()
    x_T = sde.prior_sample((1000, 2), generator=torch_generator, dtype=torch.float64)
    samples = my_sampler(law.score(sde), sde, x_T, steps=100)
    assert_samples_follow(samples, law.marginal(sde, sde.t_min), generator=torch_generator)


@settings(max_examples=4, deadline=None, derandomize=True)
@given(sfst.forward_sdes(), sfst.gaussians(dim=(1, 3)))
def test_property_any_sde_any_gaussian(sde, law):
    """For random VP/sub-VP/VE parameters and random well-conditioned Gaussians."""
    sampler = lambda score, sde, x_T: my_sampler(score, sde, x_T, steps=200)  # noqa: E731
    assert_flow_map(sampler, law, sde, n=8, atol=1e-2, rtol=1e-2, generator=torch.Generator().manual_seed(0))
