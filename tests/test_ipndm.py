"""sample_ode(method="ipndm"): fourth order on steps equal in sigma/alpha (its design), second order on diffusion grids."""

import pytest
import torch

import scoreflow as sf
from scoreflow.metrics import fit_order, rms_error
from scoreflow.testing import make_problem


def _errors(schedule_of, steps):
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = problem.law.flow_map(sde, x_T, sde.T, sde.t_min)
    return [rms_error(sf.sample_ode(problem.score, sde, x_T, method="ipndm", schedule=schedule_of(sde, n)).samples, exact)
            for n in steps]


def _uniform_in_sigma_bar(sde, n):
    """n steps equal in sigma/alpha from T to t_min (the grid iPNDM's fixed coefficients assume)."""
    ends = torch.exp(-sde.log_snr(torch.tensor([sde.T, sde.t_min], dtype=torch.float64)))
    s = torch.linspace(float(ends[0]), float(ends[1]), n + 1, dtype=torch.float64)
    ts = sde.t_from_log_snr(-torch.log(s))
    ts[0], ts[-1] = sde.T, sde.t_min
    return ts


def test_fourth_order_on_equal_steps_in_sigma_bar():
    # The Gaussian's flow is smooth in sigma/alpha, so equal steps there show the Adams-Bashforth order 4
    # (the lower-order start-up steps are formally of order 1-3 but short).
    steps = [400, 800, 1600]
    assert 3.0 < fit_order([1 / n for n in steps], _errors(_uniform_in_sigma_bar, steps)) < 5.0


def test_second_order_on_a_log_snr_grid():
    steps = [24, 48, 96]
    errors = _errors(lambda sde, n: sf.time_grid(sde, n, "log_snr"), steps)
    assert 1.7 < fit_order([1 / n for n in steps], errors) < 2.6, errors


def test_refused_at_pure_noise():
    flow = sf.RectifiedFlow()
    model = make_problem("gaussian2d", "vp").law.velocity(flow)
    with pytest.raises(ValueError, match=r"sample_ode: the native method IPNDM divides by alpha\(T\) = 0"):
        sf.sample_ode(model, flow, torch.zeros(4, 2), method="ipndm", steps=4)
