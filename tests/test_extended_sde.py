"""ER-SDE-Solver and SA-Solver (scoreflow.solvers.extended_sde) against closed forms, the exponential integrators they
contain, and a fine solve of their own SDE on a shared Brownian path."""

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.metrics import rms_error
from scoreflow.solvers.extended_sde import NOISE_SCALES, noise_scale_moments
from scoreflow.solvers.base import lagrange_weights
from scoreflow.solvers.stochastic import exponential_weights
from scoreflow.testing import make_law, make_problem


@pytest.fixture(scope="module")
def gaussian_vp():
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = problem.law.marginal(sde, sde.T).sample(256, generator=torch.Generator().manual_seed(0))
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(5))
    return problem, x_T, bm


def _midpoint_moments(log_phi, lam_s, lam_t, k, variable, n=20_000):
    """mu_j = int_0^1 r^j dK(r) by the midpoint rule on dK = K(r + dr/2) - K(r - dr/2): an independent quadrature."""
    r = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    if variable == "lambda":
        lam = lam_s + r * (lam_t - lam_s)
    else:
        lam = -torch.log(math.exp(-lam_s) + r * (math.exp(-lam_t) - math.exp(-lam_s)))
    K = torch.tensor([math.exp(log_phi(lam_t) - log_phi(v)) for v in lam.tolist()], dtype=torch.float64)
    mid, dK = 0.5 * (r[1:] + r[:-1]), K[1:] - K[:-1]
    return [float((mid**j * dK).sum()) for j in range(k)]


@pytest.mark.parametrize("variable", ["lambda", "sigma"])
@pytest.mark.parametrize("name", ["er5", "er4", "er1"])
def test_noise_scale_moments_match_an_independent_quadrature(name, variable):
    log_phi = lambda lam: NOISE_SCALES[name](math.exp(-lam))  # noqa: E731
    for lam_s, lam_t in ((-4.0, -1.5), (-0.3, 0.1), (2.0, 5.0)):
        ratio, mu = noise_scale_moments(log_phi, lam_s, lam_t, 3, variable=variable)
        assert ratio == pytest.approx(math.exp(log_phi(lam_t) - log_phi(lam_s)), rel=1e-14)
        assert mu == pytest.approx(_midpoint_moments(log_phi, lam_s, lam_t, 3, variable), rel=1e-7, abs=1e-12)


def test_constant_eta_is_the_exponential_integrators_closed_form():
    # phi = sigma^(1 + eta): K = e^{-(1 + eta) h (1 - r)}, the weight of the SDE-DPM-Solver++ steps, in closed form there
    for eta in (0.0, 0.3, 1.0):
        log_phi = lambda lam: -(1.0 + eta) * lam  # noqa: E731
        for h in (1e-3, 0.4, 6.0):
            ratio, mu = noise_scale_moments(log_phi, -1.0, -1.0 + h, 3)
            assert ratio == pytest.approx(math.exp(-(1.0 + eta) * h), rel=1e-14)
            nodes = [0.0, -1.0, -2.3]
            assert lagrange_weights(nodes, mu) == pytest.approx(exponential_weights(nodes, (1.0 + eta) * h), rel=1e-10, abs=1e-14)


def test_a_kink_in_the_noise_scale_is_integrated_exactly():
    # SA-Solver's window: log phi piecewise linear in lambda; its moments have a closed form piece by piece
    eta, a, b = 1.0, -0.5, 0.7
    log_phi = lambda lam: -lam - eta * (min(max(lam, a), b) - a)  # noqa: E731
    ratio, mu = noise_scale_moments(log_phi, -2.0, 1.0, 3, kinks=(a, b))
    assert mu == pytest.approx(_midpoint_moments(log_phi, -2.0, 1.0, 3, "lambda"), rel=1e-8)
    assert ratio == pytest.approx(math.exp(-3.0 - eta * (b - a)), rel=1e-14)


def test_er_sde_with_the_reverse_sdes_noise_scale_is_dpmpp_3m_sde(gaussian_vp):
    # phi = sigma^2 is Anderson's reverse SDE, phi = sigma the ODE: ER-SDE-Solver-3 in lambda is then SDE-DPM-Solver++(3M)
    problem, x_T, bm = gaussian_vp
    run = lambda method, **o: sf.sample_sde(problem.score, problem.sde, x_T, method=method, steps=15, bm=bm, options=o).samples  # noqa: E731
    torch.testing.assert_close(run("er_sde", noise_scale="sde"), run("dpmpp_3m_sde"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run("er_sde", noise_scale="ode"), run("dpmpp_3m_sde", eta=0.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method, options", [
    ("er_sde", {}), ("er_sde", {"variable": "sigma"}), ("er_sde", {"noise_scale": "er3", "order": 2}),
    ("sa_solver", {}), ("sa_solver", {"predictor_order": 2, "corrector_order": 4, "tau": 0.5}),
])
def test_on_a_shared_path_each_method_converges_strongly_to_its_own_sde(method, options, gaussian_vp):
    # declared strong order 1: refined on one path, the error against a fine solve of the same SDE falls ~4x per 4x steps
    problem, x_T, bm = gaussian_vp
    run = lambda n: sf.sample_sde(problem.score, problem.sde, x_T, method=method, steps=n, bm=bm, options=options).samples  # noqa: E731
    fine = run(1024)
    errors = [rms_error(run(n), fine) for n in (24, 96)]
    assert errors[1] < 0.4 * errors[0] and errors[1] < 0.02, errors


@pytest.mark.parametrize("method, options, order, steps", [
    ("er_sde", {"noise_scale": "ode", "variable": "sigma"}, 3.0, (96, 192, 384)),
    ("er_sde", {"noise_scale": "ode", "order": 2}, 2.0, (96, 192, 384)),
    # (local slopes 1.2, 1.2, 1.7, 1.9, 1.94 from 48 to 1536 steps: second order once the steps are short)
    ("sa_solver", {"tau": 0.0, "predictor_order": 2, "corrector_order": 2}, 2.0, (384, 768, 1536)),
    ("sa_solver", {"tau": 0.0}, 3.0, (96, 192, 384)),
])
def test_without_noise_the_option_orders_hold(method, options, order, steps, gaussian_vp):
    problem, x_T, _ = gaussian_vp
    sde = problem.sde
    exact = problem.law.flow_map(sde, x_T, sde.T, sde.t_min)
    errors = [rms_error(sf.sample_sde(problem.score, sde, x_T, method=method, steps=n, generator=torch.Generator(),
                                      options=options).samples, exact) for n in steps]
    slope = -math.log(errors[-1] / errors[0]) / math.log(steps[-1] / steps[0])
    assert order - 0.3 < slope < order + 1.5, (errors, slope)


@pytest.mark.parametrize("method", ["er_sde", "sa_solver"])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_the_samples_reach_the_exact_moments_of_a_gaussian(method, sde_name):
    # weak convergence: 40 steps from 20 000 draws; the mean and covariance of the exact law at t_min within 4
    # standard errors of the Monte-Carlo noise (variance error ~ 2 var / sqrt(n) = 0.014 var)
    law = make_law("gaussian2d")
    sde = make_problem("gaussian2d", sde_name).sde
    g = torch.Generator().manual_seed(11)
    x_T = law.marginal(sde, sde.T).sample(20_000, generator=g)
    x = sf.sample_sde(law.score(sde), sde, x_T, method=method, steps=40, generator=g).samples
    exact = law.marginal(sde, sde.t_min)
    scale = float(exact.covariance.diagonal().max())
    assert float((x.mean(0) - exact.mean).norm()) < 4 * math.sqrt(scale / 20_000) * 1.5
    assert float((torch.cov(x.T) - exact.covariance).abs().max()) < 0.06 * scale


def test_seeded_runs_reproduce_bit_for_bit(gaussian_vp):
    problem, x_T, _ = gaussian_vp
    for method in ("er_sde", "sa_solver"):
        run = lambda seed: sf.sample_sde(problem.score, problem.sde, x_T, method=method, steps=9,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed)).samples
        assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_bad_options_name_the_fix(gaussian_vp):
    problem, x_T, _ = gaussian_vp
    run = lambda method, **o: sf.sample_sde(problem.score, problem.sde, x_T, method=method, steps=5,  # noqa: E731
                                            generator=torch.Generator(), options=o)
    with pytest.raises(ValueError, match=r"sample_sde: option 'noise_scale' expected one of 'ode', 'sde', 'er1'.*got 'er9'"):
        run("er_sde", noise_scale="er9")
    with pytest.raises(ValueError, match=r"sample_sde: option 'order' expected an integer in \[1, 3\], got 4"):
        run("er_sde", order=4)
    with pytest.raises(ValueError, match=r"sample_sde: option 'order' expected an int >= 1, got 0"):
        run("er_sde", order=0)
    with pytest.raises(ValueError, match=r"sample_sde: option 'variable' expected one of 'lambda', 'sigma', got 't'"):
        run("er_sde", variable="t")
    with pytest.raises(ValueError, match=r"sample_sde: option 'tau' expected a number in \[0, inf\], got -1"):
        run("sa_solver", tau=-1)
    with pytest.raises(ValueError, match=r"sample_sde: option 'tau_tmax' expected a number in \[0, 1\], got 1.5"):
        run("sa_solver", tau_tmax=1.5)
    with pytest.raises(ValueError, match=r"sa_solver: options 'tau_tmin' and 'tau_tmax' expected tau_tmin <= tau_tmax"):
        run("sa_solver", tau_tmin=0.9, tau_tmax=0.1)
    with pytest.raises(ValueError, match=r"sample_sde: option 'corrector_order' expected an integer in \[1, 4\], got 5"):
        run("sa_solver", corrector_order=5)
    with pytest.raises(TypeError, match=r"method 'er_sde' takes no option 'eta'"):
        run("er_sde", eta=0.5)
