"""DEIS (``method="deis"``): the same samples as diffusers' DEISMultistepScheduler on the same grid, its weights'
exactness for polynomials, its order against the closed-form flow map."""

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.metrics import fit_order, rms_error
from scoreflow.solvers.deis import noise_polynomial_weights
from _helpers import diffusers_on_grid
from scoreflow.testing import make_law

SDE = sf.VPSDE()
# diffusers' schedulers call NumPy on torch tensors (its own deprecation warning, not scoreflow's)
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning")]


def _draws(law, n=40, seed=0):
    return SDE.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _diffusers_deis(law, x_T, grid, order):
    """diffusers' DEIS driven on ``grid`` (its sigmas = sigma/alpha of the grid), the exact noise prediction."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DEISMultistepScheduler(solver_order=order, lower_order_final=False, prediction_type="epsilon")
    return diffusers_on_grid(scheduler, law, SDE, x_T, grid)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("schedule", ["log_snr_capped", "karras"])
def test_deis_equals_diffusers_on_the_same_grid(order, schedule):
    law = make_law("mixture16d")
    x_T = _draws(law)
    grid = sf.time_grid(SDE, 8, schedule)
    mine = sf.sample_ode(law.score(SDE), SDE, x_T, method="deis", schedule=grid,
                         options={"order": order, "lower_order_final": False})
    theirs = _diffusers_deis(law, x_T, grid, order)
    assert mine.nfe == 8
    assert (mine.samples - theirs).abs().max() < 1e-8 * x_T.abs().max()


def test_weights_integrate_polynomials_exactly():
    r""":math:`\int_0^h e^{h-\tau} P(\tau)\,d\tau` for P of degree below the number of points, against quadrature."""
    quad = pytest.importorskip("scipy.integrate").quad
    for h in (0.05, 0.7, 3.0):
        for offsets in ([0.0], [0.0, -0.8], [0.0, -0.6, -1.9]):
            y = noise_polynomial_weights(h, offsets)
            for degree in range(len(offsets)):
                exact = quad(lambda tau: math.exp(h - tau) * tau**degree, 0.0, h, epsabs=0, epsrel=1e-13)[0]
                approx = sum(w * (r * h) ** degree for w, r in zip(y, offsets))
                assert math.isclose(approx, exact, rel_tol=1e-8), (h, offsets, degree)


@pytest.mark.parametrize("order", [2, 3])
def test_deis_converges_at_its_order(order):
    law = make_law("gaussian2d")
    x_T = _draws(law, n=64, seed=2)
    exact = law.flow_map(SDE, x_T, SDE.T, SDE.t_min)
    steps = [24, 48, 96]
    errors = [rms_error(sf.sample_ode(law.score(SDE), SDE, x_T, method="deis", steps=n, options={"order": order}).samples,
                        exact) for n in steps]
    assert order - 0.25 < fit_order([1 / n for n in steps], errors) < order + 1.5, errors


def test_deis_refuses_pure_noise_and_a_bad_order():
    law = make_law("gaussian2d")
    rf = sf.RectifiedFlow()
    with pytest.raises(ValueError, match="alpha"):
        sf.sample_ode(law.score(rf), rf, rf.prior_sample((4, 2), dtype=torch.float64), method="deis", steps=5)
    with pytest.raises(ValueError, match="order"):
        sf.sample_ode(law.score(SDE), SDE, _draws(law, n=4), method="deis", steps=5, options={"order": 4})
