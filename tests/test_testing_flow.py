"""scoreflow.testing: flow-map and convergence-order helpers catch planted sampler bugs."""

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import assert_flow_map, assert_order, empirical_order, make_law, reference_flow_map


def heun_sampler(score, sde, x, steps, *, score_sign=1.0, skip_last=False):
    """A user's fixed-step Heun solver of the probability-flow ODE, with switchable planted bugs."""
    ts = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=x.dtype)

    def velocity(x, t):
        tb = t.expand(x.shape[0])
        return sde.drift(x, tb) - score_sign * 0.5 * sde.diffusion(t) ** 2 * score(x, tb)

    for i in range(steps - 1 if skip_last else steps):
        h = ts[i + 1] - ts[i]
        d0 = velocity(x, ts[i])
        x = x + 0.5 * h * (d0 + velocity(x + h * d0, ts[i + 1]))
    return x


def euler_sampler(score, sde, x, steps):
    ts = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=x.dtype)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        tb = t0.expand(x.shape[0])
        x = x + (t1 - t0) * (sde.drift(x, tb) - 0.5 * sde.diffusion(t0) ** 2 * score(x, tb))
    return x


@pytest.mark.parametrize("law_name", ["gaussian2d", "ring2d"])
@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_flow_map_passes_correct_sampler_and_catches_wrong_score_sign(law_name, sde, generator):
    law = make_law(law_name)
    correct = lambda s, e, x: heun_sampler(s, e, x, 200)  # noqa: E731
    assert_flow_map(correct, law, sde, n=16, generator=generator)
    wrong_sign = lambda s, e, x: heun_sampler(s, e, x, 200, score_sign=-1.0)  # noqa: E731
    with pytest.raises(AssertionError, match=r"(?s)measured: max \|x - x_ref\|.*bound:.*reference x_ref"):
        assert_flow_map(wrong_sign, law, sde, n=16, generator=generator)


def test_flow_map_accepts_scoreflow_sample_ode_on_a_mixture(generator):
    law, sde = make_law("ring2d"), sf.SubVPSDE()
    sampler = lambda s, e, x: sf.sample_ode(s, e, x, method="dopri5", rtol=1e-8, atol=1e-8).samples  # noqa: E731
    assert assert_flow_map(sampler, law, sde, n=16, atol=1e-5, rtol=1e-5, generator=generator) < 1e-5


def test_reference_flow_map_of_a_one_component_mixture_matches_the_gaussian_closed_form(generator):
    gauss, sde = make_law("gaussian2d"), sf.VPSDE()
    as_mixture = sf.analytic.GaussianMixture(gauss.weights, gauss.means, gauss.covs[0][None].expand(1, 2, 2))
    x_T = sde.prior_sample((8, 2), generator=generator, dtype=torch.float64)
    closed = reference_flow_map(gauss, sde, x_T, sde.T, sde.t_min)
    solved = reference_flow_map(as_mixture, sde, x_T, sde.T, sde.t_min)
    assert torch.allclose(solved, closed, atol=1e-8, rtol=0)


def test_flow_map_rejects_bad_arguments(generator):
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    with pytest.raises(TypeError, match=r"assert_flow_map: argument 'sampler' expected a callable"):
        assert_flow_map(None, law, sde)
    with pytest.raises(TypeError, match=r"assert_flow_map: argument 'law' expected a GaussianMixture"):
        assert_flow_map(lambda s, e, x: x, "gaussian", sde)
    with pytest.raises(ValueError, match=r"assert_flow_map: the sampler returned shape \(4,\)"):
        assert_flow_map(lambda s, e, x: x[:, 0], law, sde, n=4, generator=generator)
    with pytest.raises(AssertionError, match="the sampler returned NaN"):
        assert_flow_map(lambda s, e, x: x * float("nan"), law, sde, n=4, generator=generator)


@pytest.mark.parametrize("law_name", ["gaussian2d", "ring2d"])
def test_order_of_correct_heun_and_euler_passes_and_a_grid_one_step_short_fails(law_name, generator):
    law, sde = make_law(law_name), sf.VPSDE()
    ladder = (32, 64, 128, 256)
    fit = assert_order(heun_sampler, law, sde, 2, steps=ladder, n=8, generator=generator)
    assert fit.steps == ladder and all(a > b for a, b in zip(fit.errors, fit.errors[1:]))
    assert_order(euler_sampler, law, sde, 1, steps=ladder, n=8, generator=generator)
    one_short = lambda s, e, x, k: heun_sampler(s, e, x, k, skip_last=True)  # noqa: E731
    with pytest.raises(AssertionError, match=r"(?s)declared 2\..*measured: least-squares slope.*bound:    1.75 <= slope <= 2.25"):
        assert_order(one_short, law, sde, 2, steps=ladder, n=8, generator=generator)


def test_empirical_order_matches_the_declared_orders_of_scoreflow_fixed_grid_methods(generator):
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    for method in ("euler", "midpoint", "rk4"):
        sampler = lambda s, e, x, k, method=method: sf.sample_ode(s, e, x, method=method, steps=k).samples  # noqa: E731
        fit = empirical_order(sampler, law, sde, steps=(24, 48, 96), n=4, generator=generator)
        assert abs(fit.order - sf.get_method('ode', method).order) < 0.3, (method, fit.table())


def test_order_against_a_user_reference_measures_strong_order_of_euler_maruyama(generator):
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    finest = 1024
    noise = torch.randn(finest, 16, 2, generator=generator, dtype=torch.float64)

    def em(score, sde, x, steps):
        """Reverse-SDE Euler-Maruyama on one Brownian path: coarse increments sum the finest ones."""
        ts = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=x.dtype)
        h = (sde.T - sde.t_min) / steps
        dw = noise.reshape(steps, finest // steps, 16, 2).sum(1) * (h / (finest // steps)) ** 0.5
        for i in range(steps):
            tb = ts[i].expand(x.shape[0])
            g = sde.diffusion(ts[i])
            x = x - h * (sde.drift(x, tb) - g**2 * score(x, tb)) + g * dw[i]
        return x

    fine = lambda x_T: em(law.score(sde), sde, x_T, finest)  # noqa: E731
    fit = assert_order(em, law, sde, 1.0, steps=(16, 32, 64, 128), n=16, generator=generator, reference=fine)
    assert fit.reference == "the user's reference(x_T)"


def test_order_rejects_bad_ladders_and_round_off(generator):
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    with pytest.raises(ValueError, match=r"empirical_order: argument 'steps' expected at least 2 increasing"):
        empirical_order(heun_sampler, law, sde, steps=(64, 32))
    exact = lambda s, e, x, k: law.flow_map(e, x, e.T, e.t_min) + 1e-15 / k  # noqa: E731
    with pytest.raises(ValueError, match=r"below the round-off floor"):
        assert_order(exact, law, sde, 1, steps=(8, 16), generator=generator)
    with pytest.raises(ValueError, match=r"assert_order: argument 'tol' expected a number or a pair \(below, above\), got \(0.1, 0.2, 0.3\)"):
        assert_order(heun_sampler, law, sde, 2, tol=(0.1, 0.2, 0.3))


def test_helpers_run_in_float32(generator):
    law, sde = make_law("ring2d").to(torch.float32), sf.VPSDE()
    sampler = lambda s, e, x: sf.sample_ode(s, e, x, rtol=1e-5, atol=1e-5).samples  # noqa: E731
    assert_flow_map(sampler, law, sde, n=8, atol=1e-3, rtol=1e-3, generator=generator)
    fit = assert_order(heun_sampler, law, sde, 2, steps=(16, 32, 64), n=8, generator=generator)
    assert all(isinstance(e, float) for e in fit.errors)


@pytest.mark.parametrize("steps", [16, "16,32"])
def test_a_single_step_count_is_refused_naming_steps(steps):
    # Before: "'int' object is not iterable" for 16; a string was read character by character.
    with pytest.raises(TypeError, match=r"empirical_order: argument 'steps' expected a sequence of increasing step counts .*, got (int 16|str '16,32')\.$"):
        empirical_order(euler_sampler, make_law("gaussian2d"), sf.VPSDE(), steps=steps, n=2)
