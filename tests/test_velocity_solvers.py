"""Adams predictor-correctors in t on the flow velocity, against closed forms on rectified flow."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoreflow as sf
from scoreflow.metrics import rms_error
from scoreflow.solvers.multistep import adams_weights
from scoreflow.testing import make_law
from scoreflow.testing import strategies as sfst

F64 = torch.float64
RF = sf.RectifiedFlow()
METHODS = ["velocity_2m_pc", "velocity_3m_pc"]


def prior(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return RF.prior_sample((n, d), generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_adams_weights_integrate_polynomials_of_their_degree_exactly():
    nodes, h = [0.0, -0.7, 1.0, -1.9], 0.3
    for degree in range(len(nodes)):
        poly = lambda tau: (1.5 + tau) ** degree  # noqa: E731
        exact = ((1.5 + h) ** (degree + 1) - 1.5 ** (degree + 1)) / (degree + 1)
        approx = sum(w * poly(h * u) for w, u in zip(adams_weights(h, nodes), nodes))
        assert approx == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_a_velocity_linear_in_t_is_integrated_exactly_on_any_grid(method):
    # v(x, t) = a + b t (a straight flow when b = 0): x(t_min) = x(1) - a (1 - t_min) - b (1 - t_min^2) / 2.
    a, b = torch.tensor([0.3, -1.2], dtype=F64), torch.tensor([2.0, 0.5], dtype=F64)
    model = sf.score_from_flow_velocity(lambda x, t: a + b * t[:, None] + 0 * x, RF)
    x1 = prior(8, 2)
    grid = torch.tensor([1.0, 0.93, 0.6, 0.55, 0.2, 0.01], dtype=F64)
    res = sf.sample_ode(model, RF, x1, method=method, schedule=grid, t_min=0.01)
    exact = x1 - a * 0.99 - b * (1 - 0.01**2) / 2
    torch.testing.assert_close(res.samples, exact, rtol=0, atol=1e-13)
    assert res.nfe == 5  # one per step (the first is the front-end's check; the last step is not corrected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("t_min", [RF.t_min, 0.0])
def test_converges_to_the_gaussian_flow_map_under_rectified_flow_at_its_declared_order(method, t_min):
    # On the shift-0.5 grid (steps near the data, where the components of std 0.1 bend the flow) the slope over
    # 32..128 steps is asymptotic (2.9 and 3.1); on uniform t it reaches 3 only beyond ~100 steps.
    law = make_law("gaussian16d")
    x1 = prior(32, 16)
    exact = law.flow_map(RF, x1, 1.0, t_min)
    order = sf.get_method("ode", method).order
    errors = []
    for n in (32, 64, 128):
        grid = sf.time_grid(RF, n, "shift", shift=0.5, t_min=t_min)
        errors.append(float((sf.sample_ode(law.velocity(RF), RF, x1, method=method, schedule=grid, t_min=t_min).samples - exact).abs().max()))
    slope = math.log2(errors[0] / errors[-1]) / 2
    assert errors[-1] < 2e-5 and order - 0.25 < slope < order + 1.5, (errors, slope)


def test_exact_for_a_point_mass_under_rectified_flow():
    # Every trajectory to a (near-)Dirac law (std 1e-6) is a straight line at constant velocity x1 - mean until
    # t ~ 1e-6, where it bends onto the component: exact to t_min = 1e-3.
    law = sf.analytic.Gaussian(torch.tensor([0.7, -1.2, 0.3], dtype=F64), 1e-12 * torch.eye(3, dtype=F64))
    x1 = prior(8, 3)
    for method in METHODS:
        res = sf.sample_ode(law.velocity(RF), RF, x1, method=method, steps=3)
        torch.testing.assert_close(res.samples, law.flow_map(RF, x1, 1.0, RF.t_min), rtol=1e-7, atol=1e-9)


def test_float32_matches_float64():
    law = make_law("ring2d")
    x1 = prior(16, 2)
    out = {dt: sf.sample_ode(law.to(dt).velocity(RF), RF, x1.to(dt), method="velocity_3m_pc", steps=10).samples for dt in (torch.float32, F64)}
    assert out[torch.float32].dtype == torch.float32
    torch.testing.assert_close(out[torch.float32].double(), out[F64], rtol=0, atol=1e-4)


# Each process and the default grid its clock gives the velocity methods: uniform in t where sigma/alpha reaches a
# tenth of the data's scale at t/T >= 1/20 (1/11 on rectified flow, 0.064 on the cosine path, 0.095 on sub-VP, 0.27 on
# VE), the log-SNR grid where only later (0.027 on VP, 0.1/80 on EDM), capped where that is infinite at pure noise
# (0.0096 on the path alpha = 1 - t, sigma = sqrt(t)); tests/test_schedules.py checks these shares in closed form.
CLOCKS = {
    "rf": (RF, "t"),
    "cosine": (sf.AffinePath(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t)), "t"),
    "subvp": (sf.SubVPSDE(), "t"),
    "ve": (sf.VESDE(), "t"),
    "vp": (sf.VPSDE(), "log_snr"),
    "edm": (sf.EDMSDE(), "log_snr"),
    "sqrt": (sf.AffinePath(lambda t: 1 - t, torch.sqrt), "log_snr_capped"),
}


@pytest.mark.parametrize("name", CLOCKS)
def test_the_default_grid_is_uniform_in_t_unless_the_clock_makes_it_coarse(name):
    sde, expected = CLOCKS[name]
    law = make_law("gaussian2d")
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    for method in METHODS:
        assert sf.get_method("ode", method).schedule_for(sde) == expected
        res = sf.sample_ode(law.score(sde), sde, x_T, method=method, steps=7, return_trajectory=True)
        torch.testing.assert_close(res.times, sf.time_grid(sde, 7, expected), rtol=0, atol=0)


@given(sfst.gaussians(dim=(1, 4)), st.sampled_from(METHODS))
def test_under_edm_the_default_grid_lands_within_a_tenth_of_the_data_scale_in_20_steps(law, method):
    # EDM's clock is its noise level, t = sigma on [0.002, 80]: 20 uniform steps in t leave every sigma below 4 to the
    # last one, where the Gaussian's flow bends.  Against the closed-form flow map, the RMS error of the default
    # (log-SNR) grid was at most 0.035 times the data's largest standard deviation over 200 drawn Gaussians, the
    # uniform t grid's at least 0.26 times.
    sde = sf.EDMSDE()
    x_T = sde.prior_sample((16, law.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = law.flow_map(sde, x_T, sde.T, sde.t_min)
    bound = 0.1 * float(law.eigvals.max().sqrt())
    error = {}
    for schedule in (None, "t"):  # the default, and the uniform t grid it was before
        res = sf.sample_ode(law.score(sde), sde, x_T, method=method, steps=20, schedule=schedule)
        error[schedule] = rms_error(res.samples, exact)
    assert error[None] < bound < error["t"], error
