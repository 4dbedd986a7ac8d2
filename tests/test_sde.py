"""Forward SDE schedules against their own differential equations (finite differences)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoreflow as sf

vp_params = st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 30.0)).map(lambda b: sf.VPSDE(*b))
subvp_params = st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 30.0)).map(lambda b: sf.SubVPSDE(*b))
ve_params = st.tuples(st.floats(1e-3, 0.1), st.floats(1.0, 100.0)).map(lambda s: sf.VESDE(*s))
edm_params = st.tuples(st.floats(1e-3, 0.1), st.floats(1.0, 100.0)).map(lambda s: sf.EDMSDE(*s))
any_sde = st.one_of(vp_params, subvp_params, ve_params, edm_params)
unit = st.floats(0.02, 0.98)


def _time(sde, u):
    return torch.tensor(sde.t_min + u * (sde.T - sde.t_min), dtype=torch.float64)


def _central_diff(fn, t, h):
    return (fn(t + h) - fn(t - h)) / (2 * h)


@given(any_sde, unit)
def test_alpha_obeys_drift(sde, u):
    """d alpha / dt = f(t) alpha."""
    t = _time(sde, u)
    h = 1e-5 * sde.T
    dalpha = _central_diff(lambda s: sde.marginal(s)[0], t, h)
    alpha = sde.marginal(t)[0]
    assert torch.allclose(dalpha, sde.drift_coef(t) * alpha, rtol=1e-5, atol=1e-9)


@given(any_sde, unit)
def test_variance_obeys_lyapunov_equation(sde, u):
    """d sigma^2 / dt = 2 f(t) sigma^2 + g(t)^2."""
    t = _time(sde, u)
    h = 1e-6 * sde.T
    dvar = _central_diff(lambda s: sde.marginal(s)[1] ** 2, t, h)
    sigma = sde.marginal(t)[1]
    expected = 2 * sde.drift_coef(t) * sigma**2 + sde.diffusion(t) ** 2
    assert torch.allclose(dvar, expected, rtol=1e-5, atol=1e-9)


@given(vp_params, unit)
def test_vp_preserves_variance(sde, u):
    alpha, sigma = sde.marginal(_time(sde, u))
    assert torch.allclose(alpha**2 + sigma**2, torch.tensor(1.0, dtype=torch.float64), atol=1e-12)


@given(any_sde, unit)
def test_t_from_log_snr_inverts_log_snr(sde, u):
    t = _time(sde, u)
    assert torch.allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()], ids=repr)
def test_prior_matches_marginal_at_T(sde):
    """Data N(0, 1) diffused to T has the prior's variance up to the SDE's own truncation.

    The truncation is the data's share of the variance left at T, alpha(T)^2 Var(x_0).
    """
    alpha, sigma = sde.marginal(torch.tensor(sde.T, dtype=torch.float64))
    var_T = alpha**2 * 1.0 + sigma**2
    rel_gap = abs(float(var_T) - sde.prior_std**2) / sde.prior_std**2
    assert rel_gap <= float(alpha) ** 2 / sde.prior_std**2 + 1e-12
    if isinstance(sde, (sf.VPSDE, sf.SubVPSDE)):
        assert float(alpha) < 0.01  # the signal is nearly gone at T for the default betas


def test_drift_broadcasts_over_any_data_shape():
    sde = sf.VPSDE()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = sde.drift(x, t)
    for i in range(3):
        assert torch.allclose(out[i], sde.drift_coef(t[i]) * x[i])


def test_prior_log_prob_matches_torch_distributions():
    sde = sf.VESDE(0.01, 50.0)
    x = sde.prior_sample((7, 3, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, 50.0).log_prob(x).sum(dim=(1, 2))
    assert torch.allclose(sde.prior_log_prob(x), ref)


def test_prior_sample_is_reproducible():
    sde = sf.VPSDE()
    a = sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(3))
    b = sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_ve_marginal_is_exact_for_clean_data():
    sde = sf.VESDE(0.01, 50.0)
    # integral of g^2 from 0 to t is sigma(t)^2
    t = 0.7
    s = torch.linspace(0, t, 20001, dtype=torch.float64)
    integral = torch.trapezoid(sde.diffusion(s) ** 2, s)
    assert math.isclose(float(integral), float(sde.marginal(torch.tensor(t, dtype=torch.float64))[1] ** 2), rel_tol=1e-6)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: sf.VPSDE(-0.1, 20.0), "beta_min"),
        (lambda: sf.VPSDE(0.1, 0.0), "beta_max"),
        (lambda: sf.VPSDE(5.0, 1.0), "beta_min <= beta_max"),
        (lambda: sf.SubVPSDE(0.1, float("nan")), "beta_max"),
        (lambda: sf.VESDE(0.0, 50.0), "sigma_min"),
        (lambda: sf.VESDE(10.0, 1.0), "sigma_min < sigma_max"),
        (lambda: sf.VPSDE(t_min=1.5), "t_min"),
        (lambda: sf.VPSDE(T=-1.0), "'T'"),
        (lambda: sf.EDMSDE(1.0, 0.5), "sigma_min < sigma_max"),
    ],
)
def test_constructors_reject_impossible_parameters(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_constructor_rejects_wrong_type():
    with pytest.raises(TypeError, match="beta_max"):
        sf.VPSDE(0.1, "20")


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VPSDE(0.5, 7.0, T=2.0), sf.SubVPSDE(), sf.SubVPSDE(0.3, 5.0, T=3.0)], ids=repr)
def test_marginal_derivatives_keep_float32_precision_at_high_noise(sde):
    """d alpha/dt and d sigma/dt in float32 near T against the closed forms in float64 at the same (rounded) times.

    d sigma/dt = -alpha (d alpha/dt) / sigma (VP, sigma^2 = 1 - alpha^2) or -2 alpha (d alpha/dt) (sub-VP,
    sigma = 1 - alpha^2) is small where alpha << 1; the generic (g^2 + 2 f sigma^2)/(2 sigma) reached it as the
    difference of two O(beta) terms, which in float32 cost it up to all its digits (relative error 1.8e-3 for VPSDE()
    and 1.2e2 for SubVPSDE(0.3, 5, T=3) at T).
    """
    t32 = torch.tensor([0.5, 0.9, 1.0], dtype=torch.float32) * sde.T
    t = t32.double()
    beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
    alpha = torch.exp(-0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)
    d_alpha = -0.5 * beta * alpha
    d_sigma = -alpha * d_alpha / torch.sqrt(1 - alpha**2) if isinstance(sde, sf.VPSDE) else -2 * alpha * d_alpha
    got_alpha, got_sigma = sde.marginal_derivatives(t32)
    assert got_alpha.dtype == got_sigma.dtype == torch.float32
    torch.testing.assert_close(got_alpha.double(), d_alpha, rtol=1e-5, atol=0)
    torch.testing.assert_close(got_sigma.double(), d_sigma, rtol=1e-5, atol=0)


@pytest.mark.parametrize("sde", [sf.VPSDE(0.0, 20.0), sf.SubVPSDE(), sf.SubVPSDE(0.0, 20.0)], ids=repr)
def test_t_from_log_snr_keeps_relative_precision_near_t0(sde):
    """The inverse log-SNR is accurate relative to t down to t = 1e-7, in float64 and in float32, and is 0 at t = 0.

    Sub-VP's inverse took log(alpha) of an alpha rounded near 1: 5e-4 relative error at t = 1e-7 in float64 for
    beta_min = 0, and in float32 errors of 140% and NaN (from e^{2 lambda} overflowing) for lambda >= 45.
    """
    t = torch.logspace(-7, -1, 13, dtype=torch.float64)
    lam = sde.log_snr(t)
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=1e-12, atol=0)
    # float32: as accurate as the float32 log-SNR it is given allows (the float64 inverse of that same lambda)
    lam32 = lam.float()
    torch.testing.assert_close(sde.t_from_log_snr(lam32).double(), sde.t_from_log_snr(lam32.double()), rtol=1e-5, atol=0)
    assert float(sde.t_from_log_snr(torch.tensor(math.inf, dtype=torch.float64))) == 0.0


def test_the_repr_of_a_user_subclass_with_attributes_other_than_numbers_names_them():
    # before: "ValueError: Unknown format code 'g' for object of type 'str'", raised instead of every error
    # message that names the process (e.g. sample_sde's on a process that reaches pure noise)
    class Labelled(sf.VPSDE):
        def __init__(self):
            super().__init__(beta_max=10.0)
            self.label, self.flag = "cosine", True

    assert repr(Labelled()) == "Labelled(beta_min=0.1, beta_max=10, T=1, t_min=0.001, label='cosine', flag=True)"


@pytest.mark.parametrize("sde", [sf.EDMSDE(), sf.VPSDE(), sf.SubVPSDE(), sf.VESDE()], ids=repr)
def test_marginal_derivatives_match_difference_quotients_down_to_t0(sde):
    # Against one-sided difference quotients of marginal(), t = 0 included: EDM's generic (g^2 + 2 f sigma^2)/(2 sigma)
    # was 0/0 = NaN there for sigma' = 1 (VP's and VE's sigma' are infinite at 0, sqrt(t)-like: not compared there).
    t = torch.tensor([0.0, 1e-3, 0.3, 0.7], dtype=torch.float64) * sde.T
    h = 1e-7 * sde.T
    quotients = [(hi - lo) / h for hi, lo in zip(sde.marginal(t + h), sde.marginal(t))]
    for got, quotient in zip(sde.marginal_derivatives(t), quotients):
        finite = torch.isfinite(got)
        assert bool(finite[1:].all()) and (bool(finite[0]) or not isinstance(sde, sf.EDMSDE))
        torch.testing.assert_close(got[finite], quotient[finite], rtol=1e-4, atol=1e-6)
