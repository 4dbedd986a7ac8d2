"""scoreflow.testing.strategies: valid, reproducible random SDEs, times and laws, used as properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scoreflow as sf
from scoreflow.testing import assert_flow_map, assert_schedule_consistent, assert_score_matches
from scoreflow.testing import strategies as sfst


@given(sfst.sdes_and_times())
def test_random_sdes_are_valid_with_times_in_range(sde_t):
    sde, t = sde_t
    assert sde.t_min <= t <= sde.T
    alpha, sigma = sde.marginal(torch.tensor(t, dtype=torch.float64))
    assert 0 < float(alpha) <= 1 and float(sigma) > 0
    assert float(sde.diffusion(torch.tensor(t, dtype=torch.float64))) > 0


@settings(max_examples=10)
@given(sfst.forward_sdes())
def test_random_sdes_satisfy_the_schedule_equations(sde):
    assert_schedule_consistent(sde)


@given(sfst.gaussians(dim=(1, 5), max_condition=50.0))
def test_random_gaussians_are_well_conditioned(law):
    eig = law.eigvals[0]
    assert bool((eig > 0).all())
    assert float(eig.max() / eig.min()) <= 50.0 * (1 + 1e-9)
    assert torch.allclose(law.covariance, law.covariance.T)


@given(sfst.gaussian_mixtures(dim=3, n_components=(2, 3), separation=(1.0, 3.0), max_anisotropy=5.0))
def test_random_mixtures_respect_their_parameters(law):
    assert law.dim == 3 and 2 <= law.n_components <= 3
    assert math.isclose(float(law.weights.sum()), 1.0, rel_tol=1e-12)
    cond = law.eigvals.max(-1).values / law.eigvals.min(-1).values
    assert bool((cond <= 5.0 * (1 + 1e-9)).all())
    s = law.eigvals.max().sqrt()
    radii = law.means.norm(dim=1) / s
    assert bool((radii <= 3.0 + 1e-9).all())


def test_strategies_are_reproducible():
    def draw_five() -> list[torch.Tensor]:
        found = []

        @settings(max_examples=5, derandomize=True, database=None)
        @given(sfst.gaussian_mixtures(dim=2))
        def collect(law):
            found.append(law.means.clone())

        collect()
        return found

    first, second = draw_five(), draw_five()
    assert len(first) == 5 and all(torch.equal(a, b) for a, b in zip(first, second))


@settings(max_examples=8)
@given(sfst.forward_sdes(), sfst.gaussians(dim=(1, 3)), st.sampled_from(["dopri5", "bosh3"]))
def test_property_scoreflow_sample_ode_lands_on_the_exact_flow_map(sde, law, method):
    sampler = lambda s, e, x: sf.sample_ode(s, e, x, method=method, rtol=1e-7, atol=1e-7).samples  # noqa: E731
    assert_flow_map(sampler, law, sde, n=8, atol=1e-4, rtol=1e-4, generator=torch.Generator().manual_seed(0))


@settings(max_examples=8)
@given(sfst.forward_sdes(), sfst.gaussian_mixtures(dim=2))
def test_property_eps_round_trip_keeps_the_exact_score(sde, law):
    score = law.score(sde)
    round_trip = sf.score_from_eps(sf.eps_from_score(score, sde), sde)
    assert_score_matches(round_trip, law, sde, n=8, rtol=1e-9, generator=torch.Generator().manual_seed(0))


@settings(max_examples=30)
@given(sfst.gaussians(dim=(2, 8), max_condition=1e3, dtype=torch.float32))
def test_float32_gaussians_are_valid_laws(law):
    # Before: the rotated covariance was built in float32, not exactly symmetric, and Gaussian refused it.
    assert law.means.dtype == torch.float32
    assert torch.allclose(law.covariance, law.covariance.T, atol=1e-6)
    assert bool((torch.linalg.eigvalsh(law.covariance.double()) > 0).all())


@settings(max_examples=30)
@given(sfst.gaussian_mixtures(dim=(2, 6), max_anisotropy=1e3, dtype=torch.float32))
def test_float32_mixtures_are_valid_laws(law):
    assert law.means.dtype == torch.float32 and bool(torch.isfinite(law.means).all())
    assert bool((law.eigvals > 0).all())


def _draw_once(strategy):
    @settings(max_examples=1, database=None)
    @given(strategy)
    def draw(_):
        pass

    draw()


@pytest.mark.parametrize(
    ("strategy", "name"),
    [
        (lambda: sfst.gaussians(scale=(2.0, 0.1)), "'scale'"),
        (lambda: sfst.gaussians(scale=(0.0, 1.0)), "'scale'"),
        (lambda: sfst.gaussians(max_mean=-1.0), "'max_mean'"),
        (lambda: sfst.gaussians(max_condition=0.5), "'max_condition'"),
        (lambda: sfst.gaussians(dim=2.5), "'dim'"),
        (lambda: sfst.gaussian_mixtures(n_components=0), "'n_components'"),
        (lambda: sfst.gaussian_mixtures(separation=(4.0, 0.0)), "'separation'"),
        (lambda: sfst.gaussian_mixtures(separation=(-1.0, 1.0)), "'separation'"),
        (lambda: sfst.gaussian_mixtures(min_weight=2.0), "'min_weight'"),
        (lambda: sfst.gaussian_mixtures(max_anisotropy=0.5), "'max_anisotropy'"),
        (lambda: sfst.forward_sdes(kinds=()), "'kinds'"),
    ],
)
def test_bad_strategy_arguments_are_named(strategy, name):
    # Before: hypothesis' InvalidArgument ('no floating-point values between ...'), a torch error from
    # Gaussian, a message naming 'dim' for n_components, or a silently accepted range.
    with pytest.raises((TypeError, ValueError), match=name) as info:
        _draw_once(strategy())
    assert "expected" in str(info.value) and "got" in str(info.value)
