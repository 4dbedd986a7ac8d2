"""Hutchinson's estimator by central differences: against the VJP estimator (its O(delta^2) bias), in every solver."""

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.dynamics.augmented import DifferenceSteps
from scoreflow.dynamics.divergence import (
    CentralDifferences,
    difference_scale,
    difference_step,
    draw_probes,
    value_and_difference_hutchinson,
    value_and_hutchinson_divergence,
)
from scoreflow.testing import make_law, make_problem

from _helpers import non_finite_after


def _field(d, seed=0):
    """A per-sample smooth nonlinear field with third derivatives of order one."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(d, 8, generator=g, dtype=torch.float64), torch.randn(8, d, generator=g, dtype=torch.float64)

    def field(x):
        flat = x.reshape(x.shape[0], -1)
        return (torch.tanh(flat @ w1) @ w2 + flat**3 / 3).reshape(x.shape)

    return field


@pytest.mark.parametrize("n_probes", [1, 3])
@pytest.mark.parametrize("data_shape", [(5,), (2, 3)])
def test_central_differences_converge_to_the_vjp_estimates_at_second_order(n_probes, data_shape, generator):
    d = math.prod(data_shape)
    fn = _field(d)
    x = torch.randn(4, *data_shape, generator=generator, dtype=torch.float64)
    probes = draw_probes(x, n_probes, generator=generator)
    value, exact = value_and_hutchinson_divergence(fn, x, probes)
    errors = []
    for step in (1e-2, 5e-3):
        mean, est = value_and_difference_hutchinson(fn, x, probes, step)
        assert est.shape == exact.shape and mean.shape == x.shape
        errors.append(((est - exact).abs().max().item(), (mean - value).abs().max().item()))
    for k in range(2):  # halving the step divides both errors by about four (O(delta^2), not O(delta))
        assert 3.0 < errors[0][k] / errors[1][k] < 5.0, errors
    # a per-sample step, and the step the front-end takes in float64: round-off and bias both far below 1e-8
    mean, est = value_and_difference_hutchinson(fn, x, probes, torch.full((4,), difference_scale(torch.float64)))
    torch.testing.assert_close(est, exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(mean, value, rtol=1e-8, atol=1e-8)


def test_central_differences_built_once_serve_every_point_and_step_of_a_solve(generator):
    """One probe stack for a whole solve: at each point and step (a float or per sample) the VJP estimate to O(delta^2)."""
    fn = _field(6)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    probes = draw_probes(x, 2, generator=generator)
    differences = CentralDifferences(probes, x)
    step = difference_scale(torch.float64)
    for y, delta in ((x, step), (x + 0.5, torch.full((4,), step)), (2 * x, torch.tensor(step, dtype=torch.float64))):
        value, exact = value_and_hutchinson_divergence(fn, y, probes)
        mean, est = differences(fn, y, delta)
        torch.testing.assert_close(est, exact, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(mean, value, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match=r"difference_hutchinson: argument 'probes' expected shape \(P, 4, 6\)"):
        CentralDifferences(probes[:, :3], x)

def test_difference_step_is_c_sigma_where_the_points_are_the_noise_and_longer_near_the_data():
    c = difference_scale(torch.float32)
    assert difference_step(torch.float32, 0.5, 0.5) == pytest.approx(c * 0.5, rel=1e-12)
    # (s sigma^2)^(1/3): at sigma = 1e-3 and points of size 3, (3 / 1e-3)^(1/3) = 14.4 times c sigma
    assert difference_step(torch.float32, 1e-3, 3.0) == pytest.approx(c * 1e-3 * 3000 ** (1 / 3), rel=1e-12)
    steps = DifferenceSteps(torch.full((4, 2), 2.0, dtype=torch.float64), 0.5, 0.1)  # mean square 4 = 0.25 m + 0.01
    assert steps.data_square == pytest.approx(3.99 / 0.25)
    assert DifferenceSteps(torch.ones(4, 2), 0.0, 1.0).data_square == 0.0  # from pure noise: the noise's size
    sigma = torch.tensor(0.3, dtype=torch.float64)
    torch.testing.assert_close(steps(torch.tensor(0.8, dtype=torch.float64), sigma),
                               difference_step(torch.float64, sigma, (0.64 * 3.99 / 0.25 + 0.09) ** 0.5))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dtype": "float32"}, TypeError, r"difference_step: argument 'dtype' expected a floating-point torch.dtype .* got 'float32'"),
        ({"dtype": torch.int64}, TypeError, r"difference_step: argument 'dtype' expected a floating-point torch.dtype"),
        ({"sigma": None}, TypeError, r"difference_step: argument 'sigma' expected a real number, got NoneType None"),
        ({"sigma": 0.0}, ValueError, r"difference_step: argument 'sigma' expected a finite number > 0, got 0.0"),
        ({"sigma": math.nan}, ValueError, r"difference_step: argument 'sigma' expected a finite number > 0, got nan"),
        ({"size": -1.0}, ValueError, r"difference_step: argument 'size' expected a finite number > 0, got -1.0"),
        ({"size": torch.tensor([1.0, -1.0])}, ValueError, r"difference_step: argument 'size' expected finite values > 0"),
        ({"size": torch.tensor([1, 2])}, TypeError, r"difference_step: argument 'size' expected a real number or a floating-point"),
        ({"sigma": torch.tensor([0.5, 0.2]), "size": torch.ones(3)}, ValueError,
         r"difference_step: arguments 'sigma' and 'size' expected shapes that broadcast, got \(2,\) and \(3,\)"),
    ],
    ids=["dtype str", "dtype int", "sigma None", "sigma 0", "sigma nan", "size < 0", "size tensor < 0", "size int tensor",
         "shapes"],
)
def test_difference_step_refuses_bad_input_naming_the_argument(kwargs, error, match):
    # before: torch.finfo's TypeError, a step of 0 (then 1/0 in the estimator), a complex step for size < 0, NaN
    with pytest.raises(error, match=match):
        difference_step(**{"dtype": torch.float32, "sigma": 0.5, "size": 1.0, **kwargs})
    with pytest.raises(TypeError, match=r"difference_scale: argument 'dtype' expected a floating-point torch.dtype"):
        difference_scale("float32")


@pytest.mark.parametrize("sde_name, bound", [("rf", 6e-4), ("vp", 1e-4), ("ve", 6e-4)])
def test_float32_differences_near_the_data_are_not_swamped_by_the_rounding_of_x(sde_name, bound):
    """At t = 1e-3 a step c sigma is about 20 units in the last place of a float32 x of size 3: its rounding made
    the estimate 2e-4 (VP) to 2e-3 (RF, VE) off, relative; DifferenceSteps' longer step balances it against the
    truncation (float32 differences against the float64 VJP estimate with the same probe)."""
    sde = {"vp": sf.VPSDE(), "ve": sf.VESDE(), "rf": sf.RectifiedFlow()}[sde_name]
    law = make_law("mixture16d")
    t = torch.tensor(1e-3, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    x = law.marginal(sde, t).sample(256, generator=g)
    probes = draw_probes(x, 1, generator=g)
    exact_model, model = ((m.velocity(sde).predict if sde_name == "rf" else m.score(sde)) for m in (law, law.to(torch.float32)))
    with torch.no_grad():
        _, exact = value_and_hutchinson_divergence(lambda y: exact_model(y, t.expand(y.shape[0])), x, probes)
    alpha, sigma = (float(c) for c in sde.marginal(t))
    step = DifferenceSteps(x.float(), alpha, sigma)(alpha, sigma)
    _, est = CentralDifferences(probes.float(), x.float())(lambda y: model(y, t.float().expand(y.shape[0])), x.float(), step)
    assert float((est.double() - exact).abs().mean() / exact.abs().mean()) < bound


def test_float32_log_likelihood_by_differences_near_the_data():
    """Rectified flow from t_min = 1e-3, float32 differences against the float64 VJP solve on the same grid and probe:
    the log-density change within 1.2e-4 nats on average (2.4e-4 with steps c sigma)."""
    sde, law = sf.RectifiedFlow(), make_law("mixture16d")
    x = law.marginal(sde, 1e-3).sample(64, generator=torch.Generator().manual_seed(2))
    runs = {}
    for dtype, trace in ((torch.float64, "hutchinson"), (torch.float32, "hutchinson_fd")):
        with torch.no_grad():
            runs[trace] = sf.log_likelihood(law.to(dtype).velocity(sde), sde, x.to(dtype), trace=trace, method="rk4",
                                            steps=16, t_min=1e-3, generator=torch.Generator().manual_seed(5))
    error = (runs["hutchinson_fd"].delta_log_prob.double() - runs["hutchinson"].delta_log_prob).abs().mean()
    assert float(error) < 1.2e-4


def test_a_difference_estimate_is_rounded_as_its_size_not_as_the_values(generator):
    """Values of size 100 differing by about 1e-3 over the step, in float32: the estimate is within a few units in its
    own last place of the same values' v^T (up - down) summed in float64 (summing the signed products v_i up_i and
    -v_i down_i in float32 left about 100 eps per term, up to 20 % of the estimate)."""
    d = 16
    a = torch.randn(d, d, generator=generator) / d
    seen = []

    def fn(y):  # large values, small differences
        seen.append(100.0 + y @ a)
        return seen[-1]

    x = torch.randn(32, d, generator=generator)
    probes = draw_probes(x, 2, generator=generator)
    differences = CentralDifferences(probes, x)
    for scale, call in ((0.5 / 1e-3, differences), (1.0, differences.sums)):  # the estimates, and 2 delta times them
        seen.clear()
        _, est = call(fn, x, 1e-3)
        up, down = seen[0].double().reshape(2, 2, 32, d)
        reference = scale * ((up - down) * probes.double()).sum(dim=-1)
        assert float(((est.double() - reference).abs() / reference.abs()).max()) < 1e-5


def test_central_differences_are_exact_for_a_linear_field(generator):
    """A Gaussian's score is affine: its differences have no truncation error at any step."""
    problem = make_problem("gaussian16d", "vp")
    x = torch.randn(8, 16, generator=generator, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    probes = draw_probes(x, 2, generator=generator)
    fn = lambda y: problem.score(y, t.expand(y.shape[0]))  # noqa: E731
    value, exact = value_and_hutchinson_divergence(fn, x, probes)
    mean, est = value_and_difference_hutchinson(fn, x, probes, 0.5)
    torch.testing.assert_close(est, exact, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mean, value, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name, method, kw", [
    ("vp", "expint_pc_adaptive", {"rtol": 1e-7, "atol": 1e-7}),
    ("vp", "expint_pc", {"steps": 12}),
    ("ve", "dopri5", {"rtol": 1e-7, "atol": 1e-7}),
    ("rf", "expint_pc_adaptive", {"rtol": 1e-7, "atol": 1e-7}),
    ("rf", "dopri5", {"rtol": 1e-7, "atol": 1e-7}),
])
def test_log_likelihood_by_differences_equals_the_vjp_estimate(sde_name, method, kw):
    sde = {"vp": sf.VPSDE(), "ve": sf.VESDE(), "rf": sf.RectifiedFlow()}[sde_name]
    law = make_law("mixture16d").to(torch.float64)
    model = law.velocity(sde) if sde_name == "rf" else law.score(sde)
    x = law.marginal(sde, 1e-3).sample(16, generator=torch.Generator().manual_seed(2))
    runs = {}
    for trace in ("hutchinson", "hutchinson_fd"):
        with torch.no_grad():
            runs[trace] = sf.log_likelihood(model, sde, x, trace=trace, n_probes=2, method=method, t_min=1e-3,
                                            generator=torch.Generator().manual_seed(5), **kw)
    vjp, fd = runs["hutchinson"], runs["hutchinson_fd"]
    torch.testing.assert_close(fd.log_prob, vjp.log_prob, rtol=0, atol=1e-6)
    torch.testing.assert_close(fd.std_error, vjp.std_error, rtol=0, atol=1e-6)
    # (the adaptive methods' steps agree up to their tolerance) every evaluation of the differences is 2 x n_probes model evaluations, none a VJP
    assert fd.nfe_vjp == 0 and vjp.nfe_vjp > 0
    if "steps" in kw:
        assert fd.nfe == 4 * vjp.nfe
    else:
        assert fd.nfe % 4 == 0 and fd.nfe == pytest.approx(4 * vjp.nfe, rel=0.1)


@pytest.mark.parametrize("method, kw", [("expint_pc_adaptive", {"rtol": 1e-6, "atol": 1e-6}), ("rk4", {"steps": 8})])
def test_differences_accept_a_channels_last_model(method, kw):
    # a network in channels_last memory format returns non-contiguous (N, C, H, W) tensors
    sde = sf.VPSDE()
    law = sf.analytic.Gaussian(torch.zeros(12, dtype=torch.float64), torch.eye(12, dtype=torch.float64) * 0.3,
                               event_shape=(3, 2, 2))
    exact = law.score(sde)

    def channels_last(y, t):
        return exact(y, t).contiguous(memory_format=torch.channels_last)

    x = law.marginal(sde, sde.t_min).sample(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        runs = [sf.log_likelihood(model, sde, x, trace="hutchinson_fd", method=method, n_probes=2,
                                  generator=torch.Generator().manual_seed(1), **kw) for model in (exact, channels_last)]
    torch.testing.assert_close(runs[1].log_prob, runs[0].log_prob, rtol=0, atol=1e-12)


def test_differences_stop_at_a_non_finite_score_naming_its_time():
    problem = make_problem("gaussian2d", "vp")
    score = non_finite_after(problem.score, 0.5)
    x = problem.law.marginal(problem.sde, 1e-3).sample(4, generator=torch.Generator().manual_seed(0))
    for method, kw in (("expint_pc_adaptive", {"rtol": 1e-4, "atol": 1e-4}), ("dopri5", {"rtol": 1e-4, "atol": 1e-4})):
        score.times.clear()
        with torch.no_grad(), pytest.raises(sf.NonFiniteError, match=r"non-finite") as info:
            sf.log_likelihood(score, problem.sde, x, trace="hutchinson_fd", method=method, **kw)
        first = next(t for t in score.times if t > 0.5)
        assert f"at t={first:.6g}" in str(info.value), (str(info.value), first)


def test_differences_refuse_an_adjoint_and_a_start_without_noise():
    problem = make_problem("gaussian2d", "vp")
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"log_likelihood: argument 'adjoint' applies to the differentiable traces"):
        sf.log_likelihood(problem.score, problem.sde, x, trace="hutchinson_fd", adjoint=True)
    rf = sf.RectifiedFlow()
    velocity = make_law("gaussian2d").to(torch.float64).velocity(rf)
    with pytest.raises(ValueError, match=r"trace='hutchinson_fd' takes steps that vanish with sigma\(t\), which is 0 at t_min=0"):
        sf.log_likelihood(velocity, rf, x, trace="hutchinson_fd", t_min=0.0)
    with pytest.raises(ValueError, match=r"difference_hutchinson: argument 'probes' expected shape \(P, 2, 2\)"):
        value_and_difference_hutchinson(lambda y: y, x, torch.ones(2, 2), 1e-3)
    with pytest.raises(ValueError, match=r"argument 'trace' .*hutchinson_fd"):
        sf.log_likelihood(problem.score, problem.sde, x, trace="fd")


def test_differences_refuse_to_be_differentiated_in_x():
    # the differences carry no graph, so a gradient in x came only through the state's identity part of each step:
    # about 1/200 of the true score here, silently
    problem = make_problem("gaussian2d", "vp")
    x = problem.law.marginal(problem.sde, 1e-3).sample(3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with pytest.raises(ValueError, match=r"log_likelihood: argument 'x' requires grad, but trace='hutchinson_fd' is not differentiable"):
        sf.log_likelihood(problem.score, problem.sde, x, trace="hutchinson_fd")
    with torch.no_grad():  # values only: fine
        res = sf.log_likelihood(problem.score, problem.sde, x, trace="hutchinson_fd")
    assert not res.log_prob.requires_grad


def test_a_wrong_shape_under_differences_names_the_input_the_model_was_called_with():
    # the two points of every sample go to the model in one call of 2B rows: the message read "expected shape (8, 3)
    # (the shape of x)" for an x of shape (4, 3)
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"log_likelihood: the score expected shape \(8, 3\) \(the shape of the x it was called with\), got shape \(4, 3\)"):
        sf.log_likelihood(lambda x, t: x[:4], sf.VPSDE(), x, trace="hutchinson_fd", method="expint_pc", steps=4)
