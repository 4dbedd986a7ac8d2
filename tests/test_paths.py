"""Flow paths as forward processes, the prediction conversions, and the analytic laws' exact velocities."""

from __future__ import annotations

import itertools

import pytest
import torch

import scoreflow as sf
from scoreflow.parameterizations import PREDICTIONS, convert
from scoreflow.testing import make_law

F64 = torch.float64
PATHS = {
    "rf": sf.RectifiedFlow(),
    "cosine": sf.AffinePath(lambda t: torch.cos(0.5 * torch.pi * t), lambda t: torch.sin(0.5 * torch.pi * t)),
    "vp": sf.VPSDE(),
}


def finite_difference(fn, t: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    return (fn(t + h) - fn(t - h)) / (2 * h)


@pytest.mark.parametrize("name", ["rf", "cosine", "vp", "subvp", "ve"])
def test_marginal_derivatives_and_sde_coefficients_match_finite_differences(name):
    sde = PATHS.get(name) or {"subvp": sf.SubVPSDE(), "ve": sf.VESDE()}[name]
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=F64)
    d_alpha, d_sigma = sde.marginal_derivatives(t)
    torch.testing.assert_close(d_alpha, finite_difference(lambda s: sde.marginal(s)[0], t), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(d_sigma, finite_difference(lambda s: sde.marginal(s)[1], t), rtol=1e-6, atol=1e-8)
    alpha, sigma = sde.marginal(t)
    # f = d log(alpha)/dt and g^2 = d sigma^2/dt - 2 f sigma^2, the SDE with these marginals
    torch.testing.assert_close(sde.drift_coef(t), d_alpha / alpha, rtol=1e-6, atol=1e-10)
    g2 = finite_difference(lambda s: sde.marginal(s)[1] ** 2, t) - 2 * d_alpha / alpha * sigma**2
    torch.testing.assert_close(sde.diffusion(t) ** 2, g2, rtol=1e-5, atol=1e-8)


def test_correct_given_derivatives_are_accepted_even_at_a_kink():
    """The check of given derivatives accepts exact ones: smooth, steep near 0, on T != 1, and with a kink."""
    c = torch.pi / 4
    cosine = sf.AffinePath(lambda t: torch.cos(c * t), lambda t: torch.sin(c * t), T=2.0,
                           d_alpha=lambda t: -c * torch.sin(c * t), d_sigma=lambda t: c * torch.cos(c * t))
    t = torch.tensor([0.1, 1.0, 1.9], dtype=F64)
    torch.testing.assert_close(torch.stack(cosine.marginal_derivatives(t)), torch.stack([-c * torch.sin(c * t), c * torch.cos(c * t)]))
    sf.AffinePath(lambda t: torch.sqrt(1 - t), torch.sqrt, d_alpha=lambda t: -0.5 / torch.sqrt(1 - t),
                  d_sigma=lambda t: 0.5 / torch.sqrt(t), T=0.999)
    ramp = lambda t: torch.where(t < 0.5, 0.5 * t, t - 0.25)  # noqa: E731  (a kink at t = 0.5, a check point)
    slope = lambda t: torch.where(t < 0.5, 0.5, 1.0).to(t)  # noqa: E731
    sf.AffinePath(lambda t: 1 - ramp(t) / 0.76, lambda t: 0.01 + ramp(t), d_alpha=lambda t: -slope(t) / 0.76, d_sigma=slope)


def test_alpha_rounded_below_zero_at_T_is_pure_noise():
    """alpha = 0.3 - 0.1 t is 0 at T = 3, which floating point makes -5.6e-17: that is pure noise, as cos(pi/2) = 6e-17
    is (the docstring's |alpha(T)| <= eps T |alpha'(T)|); the path was refused for an alpha < 0."""
    path = sf.AffinePath(lambda t: 0.3 - 0.1 * t, lambda t: 0.1 * t, T=3.0)
    T = torch.tensor(3.0, dtype=F64)
    assert path.pure_noise_at_T and float(path.marginal(T)[0]) == 0.0 and path.log_snr(T) == -torch.inf
    assert path.prior_std == pytest.approx(0.3)
    with pytest.raises(ValueError, match="expected alpha\\(t\\) >= 0"):  # a true negative alpha still is refused
        sf.AffinePath(lambda t: 0.3 - 0.1 * t, lambda t: 0.1 * t, T=3.01)


def test_rectified_flow_is_the_linear_path_and_its_generic_form_agrees():
    rf = PATHS["rf"]
    generic = sf.AffinePath(lambda t: 1 - t, lambda t: t.clone())  # derivatives by autograd, inverse by bisection
    t = torch.tensor([0.01, 0.25, 0.5, 0.99], dtype=F64)
    torch.testing.assert_close(torch.stack(rf.marginal(t)), torch.stack([1 - t, t]))
    torch.testing.assert_close(torch.stack(generic.marginal_derivatives(t)), torch.stack(rf.marginal_derivatives(t)))
    torch.testing.assert_close(rf.diffusion(t) ** 2, 2 * t / (1 - t))
    lam = rf.log_snr(t)
    torch.testing.assert_close(rf.t_from_log_snr(lam), t)
    torch.testing.assert_close(generic.t_from_log_snr(lam), t, rtol=1e-12, atol=1e-12)
    assert rf.pure_noise_at_T and generic.pure_noise_at_T and not sf.VPSDE().pure_noise_at_T
    assert rf.log_snr(torch.tensor(1.0, dtype=F64)) == -torch.inf and rf.prior_std == 1.0
    assert not rf.truncated(0.99).pure_noise_at_T and rf.truncated(0.99).prior_std == pytest.approx(0.99)


def test_path_arguments_are_checked():
    with pytest.raises(TypeError, match=r"AffinePath: argument 'alpha' expected a callable alpha\(t\)"):
        sf.AffinePath(1.0, lambda t: t)
    with pytest.raises(ValueError, match="AffinePath: expected alpha.* sigma\\(t\\) > 0"):
        sf.AffinePath(lambda t: 1 - t, lambda t: t - 0.5)
    with pytest.raises(ValueError, match="strictly decreasing log-SNR"):
        sf.AffinePath(lambda t: 1 + t, lambda t: 0.5 + 0 * t)
    with pytest.raises(ValueError, match=r"argument 'sigma' must map a \(N,\) time tensor"):
        sf.AffinePath(lambda t: 1 - t, lambda t: t.sum())
    # given derivatives are the schedules' (they were taken on trust: a NaN or wrong-sign d_alpha built a path whose
    # diffusion was NaN, a d_sigma off by 1% one that sampled the wrong law, a float one whose shape was wrong)
    with pytest.raises(ValueError, match=r"argument 'd_alpha' returned non-finite values"):
        sf.AffinePath(lambda t: 1 - t, lambda t: t.clone(), d_alpha=lambda t: torch.full_like(t, torch.nan))
    with pytest.raises(ValueError, match=r"argument 'd_sigma' must map a \(N,\) time tensor to a \(N,\) tensor, got float"):
        sf.AffinePath(lambda t: 1 - t, lambda t: t.clone(), d_sigma=lambda t: 1.0)
    with pytest.raises(ValueError, match=r"argument 'd_alpha' expected the time derivative of 'alpha', got 1 "):
        sf.AffinePath(lambda t: 1 - t, lambda t: t.clone(), d_alpha=torch.ones_like)
    with pytest.raises(ValueError, match=r"argument 'd_sigma' expected the time derivative of 'sigma', got 1.01 "):
        sf.AffinePath(lambda t: 1 - t, lambda t: t.clone(), d_sigma=lambda t: 1.01 * torch.ones_like(t))
    # a schedule autograd cannot differentiate had a derivative 0 by torch.func.jvp, and a wrong diffusion, silently
    with pytest.raises(ValueError, match=r"argument 'alpha' is not differentiable by autograd: its derivative by "
                                         r"torch.func.jvp is 0 at t=.*difference quotient of 'alpha' is -1"):
        sf.AffinePath(lambda t: (1 - t).detach(), lambda t: t.clone())
    with pytest.raises(ValueError, match=r"RectifiedFlow: argument 'T' expected a time in \(0, 1\]"):
        sf.RectifiedFlow(T=1.5)
    with pytest.raises(ValueError, match="RectifiedFlow.truncated: argument 'T'"):
        sf.RectifiedFlow(T=0.5).truncated(0.9)


@pytest.mark.parametrize("path", ["rf", "cosine", "vp"])
def test_conversions_round_trip_and_agree_with_the_exact_posterior(path):
    sde, law = PATHS[path], make_law("ring2d")
    x = law.marginal(sde, 0.4).sample(16, generator=torch.Generator().manual_seed(0))
    t = torch.full((16,), 0.4, dtype=F64)
    x0, score = law.posterior(sde, x, t)
    sigma = sde.marginal(t)[1][:, None]
    d_alpha, d_sigma = (c[:, None] for c in sde.marginal_derivatives(t))
    exact = {"x0": x0, "score": score, "eps": -sigma * score, "flow_velocity": d_alpha * x0 - d_sigma * sigma * score}
    exact["v"] = sde.marginal(t)[0][:, None] * exact["eps"] - sigma * x0
    for source, target in itertools.product(PREDICTIONS, PREDICTIONS):
        torch.testing.assert_close(convert(exact[source], source, target, x, t, sde), exact[target], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(law.velocity(sde).predict(x, t), exact["flow_velocity"])


def test_exact_velocity_is_the_time_derivative_of_the_gaussian_flow_map():
    rf, law = PATHS["rf"], make_law("gaussian2d")
    x1 = rf.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    for t in (0.2, 0.7):
        xt = law.flow_map(rf, x1, 1.0, t)
        dx = (law.flow_map(rf, x1, 1.0, t + 1e-6) - law.flow_map(rf, x1, 1.0, t - 1e-6)) / 2e-6
        torch.testing.assert_close(law.velocity(rf).predict(xt, t), dx, rtol=1e-6, atol=1e-7)
    # at pure noise x_1 = eps, so u = E[eps - x0 | x_1] = x_1 - E[x0]
    torch.testing.assert_close(law.velocity(rf).predict(x1, 1.0), x1 - law.mean)


def test_flow_velocity_model_converts_through_its_own_prediction():
    rf, law = PATHS["rf"], make_law("mixture16d")
    exact = law.velocity(rf)
    model = sf.score_from_flow_velocity(lambda x, t: exact.predict(x, t), rf)
    x = rf.prior_sample((4, 16), generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.tensor([1.0, 0.8, 0.3, 0.01], dtype=F64)
    assert model.prediction == "flow_velocity"
    torch.testing.assert_close(model(x[1:], t[1:]), law.marginal(rf, t[1:]).grad_log_prob(x[1:]))
    x0 = sf.denoiser_from_score(model, rf)(x, t)  # through the velocity: finite at t = 1, where it is E[x0]
    torch.testing.assert_close(x0[0], law.mean)
    torch.testing.assert_close(sf.flow_velocity_from_score(model, rf)(x, t), exact.predict(x, t))
    with pytest.raises(TypeError, match="score_from_flow_velocity: argument 'net' expected a callable"):
        sf.score_from_flow_velocity(3, rf)


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_shift_schedule_is_sd3s_time_shift_of_a_uniform_grid(shift):
    rf = PATHS["rf"]
    ts = sf.time_grid(rf, 8, "shift", shift=shift, t_min=0.0)
    u = torch.linspace(1, 0, 9, dtype=F64)
    torch.testing.assert_close(ts, shift * u / (1 + (shift - 1) * u))
    ends = sf.time_grid(rf, 5, "shift", shift=shift)
    assert (ends[0], ends[-1]) == (1.0, rf.t_min) and bool((ends[1:] < ends[:-1]).all())


def test_log_snr_schedules_need_finite_ends():
    rf = PATHS["rf"]
    with pytest.raises(ValueError, match="time_grid: schedule 'log_snr' needs a finite log-SNR.*log_snr_capped"):
        sf.time_grid(rf, 4, "log_snr")
    # the remedy is one that works: not 'log_snr_capped' for the schedule already in use (it was), nor it alone
    # where t = 0 needs t_min > 0 too
    with pytest.raises(ValueError, match=r"time_grid: argument 't_min' expected a time > 0 for schedule 'log_snr_capped'"
                                         r", .* got 0\.0\. Fix: t_min > 0 \(sde\.t_min=0\.001\), or schedule='shift', 't' or"):
        sf.time_grid(rf, 4, "log_snr_capped", t_min=0.0)
    with pytest.raises(ValueError, match=r"time_grid: schedule 'karras' needs .* Fix: schedule='shift', 't' or "
                                         r"'noise_fraction' \(finite at both ends\), or 'log_snr_capped' .* with t_min > 0"):
        sf.time_grid(rf, 4, "karras", t_min=0.0)
    for schedule in ("shift", "t", "noise_fraction"):  # the remedies
        assert sf.time_grid(rf, 4, schedule, t_min=0.0)[-1] == 0.0
    capped = sf.time_grid(rf, 4, "log_snr_capped")
    assert capped[0] == 1.0 and bool(torch.isfinite(capped).all())
    with pytest.raises(ValueError, match=r"time_grid: argument 't_min' expected a time in \(0, T=1\)"):
        sf.time_grid(sf.VPSDE(), 4, t_min=0.0)


_C = 0.5 * torch.pi * 0.95


def _cos(t):
    return torch.cos(_C * t)


def _sin(t):
    return torch.sin(_C * t)


@pytest.mark.parametrize(
    ("d_alpha", "d_sigma", "match"),
    [
        (lambda t: _C * torch.sin(_C * t), None, r"'d_alpha' expected the time derivative of 'alpha', got .* where the difference quotient"),
        (None, lambda t: torch.cos(_C * t), r"'d_sigma' expected the time derivative of 'sigma'"),  # the chain rule's factor forgotten
        (lambda t: -_C * torch.sin(_C * t)[:1], None, r"'d_alpha' must map a \(N,\) time tensor to a \(N,\) tensor, got shape \(1,\)"),
        (lambda t: 1.0, None, r"'d_alpha' must map a \(N,\) time tensor to a \(N,\) tensor, got float"),
        (lambda t: t * torch.nan, None, r"'d_alpha' returned non-finite values"),
    ],
    ids=["wrong sign", "missing factor", "wrong shape", "a float", "NaN"],
)
def test_a_given_derivative_that_is_not_the_schedules_is_refused_when_the_path_is_made(d_alpha, d_sigma, match):
    # before: accepted, and every sample, velocity and likelihood of the path silently used the wrong derivative
    with pytest.raises(ValueError, match=rf"AffinePath: argument {match}"):
        sf.AffinePath(_cos, _sin, d_alpha=d_alpha, d_sigma=d_sigma)


@pytest.mark.parametrize(
    ("alpha", "sigma", "d_alpha", "d_sigma"),
    [
        (_cos, _sin, lambda t: -_C * torch.sin(_C * t), lambda t: _C * torch.cos(_C * t)),
        # float32 schedules: the difference step follows their precision
        (lambda t: _cos(t.float()), lambda t: _sin(t.float()), lambda t: -_C * torch.sin(_C * t.float()), lambda t: _C * torch.cos(_C * t.float())),
        # infinite derivative at the noise end
        (lambda t: torch.sqrt(1 - t), torch.sqrt, lambda t: -0.5 / torch.sqrt(1 - t), lambda t: 0.5 / torch.sqrt(t)),
        # a kink on a check point: either one-sided derivative is the schedule's
        (lambda t: torch.where(t < 0.5, 1 - 0.5 * t, 1.5 - 1.5 * t), lambda t: t.clone(),
         lambda t: torch.where(t < 0.5, -0.5, -1.5) * torch.ones_like(t), torch.ones_like),
    ],
    ids=["cosine", "cosine float32", "sqrt", "kink"],
)
def test_a_correct_given_derivative_is_accepted_and_agrees_with_autograd(alpha, sigma, d_alpha, d_sigma):
    given = sf.AffinePath(alpha, sigma, d_alpha=d_alpha, d_sigma=d_sigma)
    autograd = sf.AffinePath(alpha, sigma)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    for a, b in zip(given.marginal_derivatives(t), autograd.marginal_derivatives(t)):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


def test_a_schedule_of_the_wrong_signature_is_named():
    with pytest.raises(TypeError, match=r"AffinePath: argument 'sigma' expected a callable sigma\(t\), called with 1 positional"):
        sf.AffinePath(_cos, lambda: 1.0)


# alpha = sqrt(1 - t), sigma = sqrt(t): d_alpha is -inf at T = 1 and d_sigma is +inf at 0, so the probability-flow
# velocity is infinite there whatever the model (the score of the data law itself is finite at t = 0).
_SQRT_PATH = sf.AffinePath(lambda t: torch.sqrt(1 - t), torch.sqrt)
_SQRT_LAW = sf.analytic.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), 0.5 * torch.eye(2, dtype=F64))


def test_a_solve_from_where_the_path_is_singular_names_the_path_not_the_model():
    x_T = _SQRT_PATH.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    for method, options in (("dopri5", {}), ("velocity_3m_pc", {"steps": 10})):
        with pytest.raises(sf.NonFiniteError, match=r"at t=1 .*singular there .*d_alpha\(1\) = -inf; start below T") as err:
            sf.sample_ode(_SQRT_LAW.score(_SQRT_PATH), _SQRT_PATH, x_T, method=method, **options)
        assert err.value.t == 1.0


def test_a_solve_ending_where_the_path_is_singular_is_not_silently_nan():
    """rk4's last stage evaluates the drift at t = 0, NaN there although the score is finite: the samples were NaN
    with no error."""
    path = _SQRT_PATH.truncated(0.99)
    x_T = path.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(sf.NonFiniteError, match=r"state became non-finite .* at t=0 .*d_sigma\(0\) = inf; end above it") as err:
        sf.sample_ode(_SQRT_LAW.score(path), path, x_T, method="rk4", steps=10, t_min=0.0, schedule="t")
    assert err.value.t == 0.0
    res = sf.sample_ode(_SQRT_LAW.score(path), path, x_T, method="rk4", steps=10, t_min=1e-3, schedule="t")
    assert torch.isfinite(res.samples).all()
    with pytest.raises(sf.NonFiniteError, match=r"at t=0 .*d_sigma\(0\) = inf; end above it, with a larger t_min"):
        sf.log_likelihood(_SQRT_LAW.score(path), path, _SQRT_LAW.sample(4), t_min=0.0)


def test_a_model_that_fails_on_a_regular_process_is_still_blamed():
    sde = sf.VPSDE()
    score = _SQRT_LAW.score(sde)

    def nan_late(x, t):
        return torch.where((t < 0.5)[:, None], torch.nan, score(x, t))

    with pytest.raises(sf.NonFiniteError, match="check the score model at this time") as err:
        sf.sample_ode(nan_late, sde, sde.prior_sample((4, 2), dtype=F64), method="euler", steps=10)
    assert 0.4 <= err.value.t < 0.5
    assert sde.singular_flow_at(sde.T) is None and sde.singular_flow_at(sde.t_min) is None
