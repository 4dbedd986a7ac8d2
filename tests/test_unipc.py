"""UniPC (``method="unipc"``): the same samples as diffusers' UniPCMultistepScheduler on the same grid, bh2 the same
as the exponential Adams predictor-correctors, and the B(h) weights' defining moment conditions."""

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.solvers.unipc import unipc_weights
from _helpers import diffusers_on_grid
from scoreflow.testing import make_law

SDE = sf.VPSDE()
# diffusers' schedulers call NumPy on torch tensors (its own deprecation warning, not scoreflow's)
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning")]


def _draws(law, n=40, seed=0):
    return SDE.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _diffusers_unipc(law, x_T, grid, variant, order):
    """diffusers' UniPC driven on ``grid`` (its sigmas = sigma/alpha of the grid), the exact noise prediction."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        solver_type=variant, solver_order=order, lower_order_final=False, prediction_type="epsilon",
        final_sigmas_type="sigma_min",
    )
    return diffusers_on_grid(scheduler, law, SDE, x_T, grid)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("schedule", ["log_snr_capped", "karras"])
def test_unipc_equals_diffusers_on_the_same_grid(variant, order, schedule):
    law = make_law("mixture16d")
    x_T = _draws(law)
    grid = sf.time_grid(SDE, 8, schedule)
    mine = sf.sample_ode(law.score(SDE), SDE, x_T, method="unipc", schedule=grid,
                         options={"variant": variant, "order": order, "lower_order_final": False})
    theirs = _diffusers_unipc(law, x_T, grid, variant, order)
    assert mine.nfe == 8
    # diffusers' own coefficients pass through float32 tensors in places: agreement to about 1e-6 of the states' size
    assert (mine.samples - theirs).abs().max() < 1e-5 * x_T.abs().max()


@pytest.mark.parametrize("order, twin", [(2, "dpmpp_2m_pc"), (3, "dpmpp_3m_pc")])
def test_bh2_is_the_exponential_adams_predictor_corrector(order, twin):
    """With B(h) = e^{-h} - 1 UniPC's moment conditions are the exact integral of the interpolating polynomial (and
    its single-difference predictor is DPM-Solver++(2M)'s): the same steps as ``dpmpp_{2,3}m_pc``."""
    law = make_law("gaussian16d")
    x_T = _draws(law, seed=1)
    for steps in (6, 15):
        a = sf.sample_ode(law.score(SDE), SDE, x_T, method="unipc", steps=steps, options={"order": order, "variant": "bh2"})
        b = sf.sample_ode(law.score(SDE), SDE, x_T, method=twin, steps=steps)
        assert torch.allclose(a.samples, b.samples, rtol=0, atol=1e-12)


def test_bh1_differs_and_converges_at_its_order():
    """bh1 is a different method (not bh2's steps), and its error against the exact flow map falls at least at the
    declared third order between 16 and 32 steps (on a Gaussian, where the flow map is a closed form)."""
    law = make_law("gaussian2d")
    x_T = _draws(law, n=64, seed=2)
    exact = law.flow_map(SDE, x_T, SDE.T, SDE.t_min)
    errors = []
    for steps in (16, 32):
        a = sf.sample_ode(law.score(SDE), SDE, x_T, method="unipc", steps=steps, options={"variant": "bh1"})
        b = sf.sample_ode(law.score(SDE), SDE, x_T, method="unipc", steps=steps, options={"variant": "bh2"})
        assert (a.samples - b.samples).abs().max() > 1e-8
        errors.append(float((a.samples - exact).pow(2).mean().sqrt()))
    assert math.log2(errors[0] / errors[1]) > 2.7


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_weights_integrate_polynomials_exactly(variant):
    r"""With n >= 2 differences the weights integrate :math:`\int_0^h e^{\tau - h} P(\tau)\,d\tau` exactly for
    polynomials P of degree up to n, whatever B(h) (the conditions UniPC's rho solve), checked against quadrature."""
    quad = pytest.importorskip("scipy.integrate").quad
    h = 0.7
    for offsets in ([0.0, 1.0, -0.8], [0.0, -0.6, -1.3], [0.0, 1.0, -0.8, -1.9]):
        y = unipc_weights(h, offsets, variant)
        for degree in range(len(offsets)):
            exact = quad(lambda tau: math.exp(tau - h) * tau**degree, 0.0, h, epsabs=1e-14, epsrel=1e-13)[0]
            approx = sum(w * (r * h) ** degree for w, r in zip(y, offsets))
            assert math.isclose(approx, exact, rel_tol=1e-9), (offsets, degree)


def test_order_and_variant_are_checked():
    law = make_law("gaussian2d")
    x_T = _draws(law, n=4)
    with pytest.raises(ValueError, match="order"):
        sf.sample_ode(law.score(SDE), SDE, x_T, method="unipc", steps=5, options={"order": 4})
    with pytest.raises(ValueError, match="variant"):
        sf.sample_ode(law.score(SDE), SDE, x_T, method="unipc", steps=5, options={"variant": "bh3"})


def test_weights_refuse_an_unknown_variant():
    """An unknown B(h) would otherwise silently take bh2's weights."""
    with pytest.raises(ValueError, match=r"^unipc_weights: argument 'variant' expected one of 'bh1', 'bh2', got 'bh3'\.$"):
        unipc_weights(0.5, [0.0, -1.0], "bh3")
