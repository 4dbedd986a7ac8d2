"""Langevin samplers: ULA's known stationary law, MALA's exactness, annealing's mode weights, errors."""

import importlib
import math

import pytest
import torch

import scoreflow as sf
from scoreflow.metrics import mode_weights, moment_standard_errors
from scoreflow.testing import make_law

F64 = torch.float64


def _moment_z(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """Largest deviation of the sample mean and covariance from (mean, cov), in Monte-Carlo standard errors."""
    reference = sf.analytic.Gaussian(mean, cov).sample(100_000, generator=torch.Generator().manual_seed(99))
    se_mean, se_cov = moment_standard_errors(reference, x.shape[0])
    z_mean = ((x.mean(0) - mean) / se_mean).abs().max()
    z_cov = ((torch.cov(x.T) - cov) / se_cov).abs().max()
    return float(z_mean), float(z_cov)


def _ula_stationary_cov(law: sf.analytic.GaussianMixture, eps: float) -> torch.Tensor:
    r"""ULA on N(mu, C) is linear, x' = (I - eps C^{-1}) x + ...; per eigenvalue lam its invariant
    variance v solves v = (1 - eps/lam)^2 v + 2 eps, i.e. v = lam / (1 - eps / (2 lam))."""
    lam, u = law.eigvals[0], law.eigvecs[0]
    return (u * (lam / (1 - eps / (2 * lam)))) @ u.T


# gaussian2d has eigenvalues 0.1 and 1: eps = 0.15 quadruples the small variance under ULA.
EPS = 0.15
N_CHAINS = 2000


def test_ula_reaches_the_stationary_law_of_the_discretized_chain(generator):
    law = make_law("gaussian2d")
    x0 = torch.full((N_CHAINS, 2), 3.0, dtype=F64)
    # The slowest mode contracts by 1 - eps/1 = 0.85 a step: 150 steps leave 0.85^150 < 1e-10 of the start.
    res = sf.langevin(law.grad_log_prob, x0, step_size=EPS, steps=150, generator=generator)
    assert res.nfe == 150
    biased = _ula_stationary_cov(law, EPS)
    z_mean, z_cov = _moment_z(res.samples, law.mean, biased)
    assert z_mean < 5 and z_cov < 5
    # The bias is real and resolved: the target's own covariance is far outside the error bars.
    _, z_target = _moment_z(res.samples, law.mean, law.covariance)
    assert z_target > 10


def test_mala_matches_the_target_where_ula_is_biased(generator):
    law = make_law("gaussian2d")
    x0 = torch.full((N_CHAINS, 2), 3.0, dtype=F64)
    res = sf.langevin(law.grad_log_prob, x0, step_size=0.1, steps=300, generator=generator, log_prob=law.log_prob)
    assert res.nfe == 301  # one score call per proposal plus the start
    assert res.stats["n_log_prob"] == 301
    rate = res.stats["acceptance_rate"]
    assert 0.2 < rate < 0.95
    assert res.stats["chain_acceptance_rate"].shape == (N_CHAINS,)
    assert math.isclose(float(res.stats["chain_acceptance_rate"].mean()), rate, rel_tol=1e-12)
    z_mean, z_cov = _moment_z(res.samples, law.mean, law.covariance)
    assert z_mean < 5 and z_cov < 5


def test_mala_accepts_almost_every_small_step(generator):
    # The MH log-ratio of a Gaussian target is O(eps^{3/2}); at eps = 1e-4 rejections are rare.
    law = make_law("gaussian2d")
    x0 = law.sample(500, generator=generator)
    res = sf.langevin(law.grad_log_prob, x0, step_size=1e-4, steps=20, generator=generator, log_prob=law.log_prob)
    assert res.stats["acceptance_rate"] > 0.99


def _two_modes(dtype=F64) -> sf.analytic.GaussianMixture:
    """Weights 0.2 / 0.8, modes 20 standard deviations apart: plain Langevin never crosses between them."""
    means = torch.tensor([[-2.5], [2.5]], dtype=dtype)
    return sf.analytic.GaussianMixture(torch.tensor([0.2, 0.8], dtype=dtype), means, 0.0625 * torch.ones(2, 1, 1, dtype=dtype))


def test_annealing_recovers_mode_weights_that_plain_langevin_misses():
    law = _two_modes()
    n = 3000  # standard error of a weight sqrt(0.2 * 0.8 / n) = 0.0073: 0.03 is 4 of them
    sigma_max, sigma_min = 2.5, 0.3
    x0 = sigma_max * torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=F64)

    plain = sf.langevin(law.grad_log_prob, x0, step_size=0.01, steps=200, generator=torch.Generator().manual_seed(1))
    plain_error = (mode_weights(law, plain.samples) - law.weights).abs().max()
    # Each chain stays in the basin it starts in, about half on each side: far beyond 0.03.
    assert plain_error > 0.15

    # 15 levels, 40 steps each; alpha_i = 0.2 sigma_i^2 keeps ULA's variance bias per level near 5 %.
    sigmas = sf.geometric_sigmas(sigma_min, sigma_max, 15)
    ncsn_score = law.score(sf.EDMSDE(sigma_min, sigma_max))  # exact s(x, sigma): its time is sigma
    annealed = sf.annealed_langevin(
        ncsn_score, x0, sigmas, steps=40, step_size=0.2 * sigma_min**2, generator=torch.Generator().manual_seed(1)
    )
    assert annealed.nfe == 15 * 40 + 1
    annealed_error = (mode_weights(law, annealed.samples) - law.weights).abs().max()
    assert annealed_error < 0.03


def test_annealed_step_sizes_follow_ncsn():
    law = _two_modes()
    sigmas = torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    x0 = torch.zeros(4, 1, dtype=F64)
    res = sf.annealed_langevin(law.score(sf.EDMSDE(0.5, 2.0)), x0, sigmas, steps=3, step_size=1e-3, denoise_final=False)
    assert res.nfe == 9
    assert res.stats["step_sizes"] == pytest.approx([1e-3 * 16, 1e-3 * 4, 1e-3])


def test_annealed_denoising_is_tweedie_at_the_last_level():
    # With zero Langevin noise the result would equal x + sigma_L^2 s(x, sigma_L); check the
    # final step alone by comparing runs with and without it from the same generator state.
    law = _two_modes()
    sigmas = sf.geometric_sigmas(0.2, 2.0, 3)
    score = law.score(sf.EDMSDE(0.2, 2.0))
    x0 = 2.0 * torch.randn(64, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    raw = sf.annealed_langevin(score, x0, sigmas, steps=5, step_size=1e-2, generator=torch.Generator().manual_seed(4), denoise_final=False)
    den = sf.annealed_langevin(score, x0, sigmas, steps=5, step_size=1e-2, generator=torch.Generator().manual_seed(4))
    assert den.nfe == raw.nfe + 1
    sig_l = torch.full((64,), 0.2, dtype=F64)
    expected = raw.samples + 0.04 * law.marginal(sf.EDMSDE(0.2, 2.0), sig_l).grad_log_prob(raw.samples)
    torch.testing.assert_close(den.samples, expected, rtol=1e-12, atol=1e-12)


def test_geometric_sigmas():
    s = sf.geometric_sigmas(0.01, 10.0, 7)
    assert s.dtype == F64 and s.shape == (7,)
    torch.testing.assert_close(s[[0, -1]], torch.tensor([10.0, 0.01], dtype=F64))
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full((6,), 0.001 ** (1 / 6), dtype=F64))
    assert sf.geometric_sigmas(0.01, 10.0, 3, dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seeded_runs_are_bit_identical_in_any_shape(dtype):
    law = sf.analytic.Gaussian(torch.zeros(6, dtype=F64), torch.eye(6, dtype=F64), event_shape=(2, 3)).to(dtype)
    x0 = torch.ones(5, 2, 3, dtype=dtype)

    def run():
        g = torch.Generator().manual_seed(7)
        ula = sf.langevin(law.grad_log_prob, x0, step_size=0.05, steps=10, generator=g)
        mala = sf.langevin(law.grad_log_prob, x0, step_size=0.5, steps=10, generator=g, log_prob=law.log_prob)
        ald = sf.annealed_langevin(law.score(sf.EDMSDE(0.1, 1.0)), x0, [1.0, 0.3, 0.1], steps=4, step_size=1e-2, generator=g)
        return ula.samples, mala.samples, ald.samples

    first, second = run(), run()
    for a, b in zip(first, second):
        assert a.shape == x0.shape and a.dtype == dtype
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[1])


def test_errors():
    law = _two_modes()
    x0 = torch.zeros(4, 1, dtype=F64)
    score = law.score(sf.EDMSDE(0.1, 1.0))
    with pytest.raises(ValueError, match=r"langevin: argument 'step_size' expected a finite number > 0, got -0.1"):
        sf.langevin(law.grad_log_prob, x0, step_size=-0.1, steps=5)
    with pytest.raises(ValueError, match=r"langevin: argument 'step_size' expected a finite number > 0, got 0.0"):
        sf.langevin(law.grad_log_prob, x0, step_size=0.0, steps=5)
    with pytest.raises(ValueError, match=r"langevin: argument 'steps' expected an int >= 1, got 0"):
        sf.langevin(law.grad_log_prob, x0, step_size=0.1, steps=0)
    with pytest.raises(ValueError, match=r"langevin: argument 'x0' expected a tensor of shape \(B, \*D\)"):
        sf.langevin(law.grad_log_prob, torch.zeros(4, dtype=F64), step_size=0.1, steps=5)
    with pytest.raises(TypeError, match=r"langevin: argument 'generator' expected a torch.Generator"):
        sf.langevin(law.grad_log_prob, x0, step_size=0.1, steps=5, generator=0)
    with pytest.raises(ValueError, match=r"langevin: log_prob returned .* expected a tensor of shape \(4,\)"):
        sf.langevin(law.grad_log_prob, x0, step_size=0.1, steps=5, log_prob=lambda x: x)
    with pytest.raises(ValueError, match=r"langevin: the score expected shape \(4, 1\) \(the shape of the x it was called with\), got shape \(4, 2\)"):
        sf.langevin(lambda x: torch.cat([x, x], 1), x0, step_size=0.1, steps=5)
    with pytest.raises(ValueError, match=r"annealed_langevin: argument 'sigmas' expected strictly decreasing .* got \[0.1, 1.0\]"):
        sf.annealed_langevin(score, x0, [0.1, 1.0], steps=2, step_size=1e-3)
    with pytest.raises(ValueError, match=r"annealed_langevin: argument 'sigmas' expected strictly decreasing"):
        sf.annealed_langevin(score, x0, [1.0, 1.0], steps=2, step_size=1e-3)
    with pytest.raises(ValueError, match=r"annealed_langevin: argument 'sigmas' expected finite noise levels > 0"):
        sf.annealed_langevin(score, x0, [1.0, 0.0], steps=2, step_size=1e-3)
    with pytest.raises(ValueError, match=r"annealed_langevin: argument 'step_size' expected a finite number > 0"):
        sf.annealed_langevin(score, x0, [1.0, 0.1], steps=2, step_size=-1e-3)
    with pytest.raises(ValueError, match=r"annealed_langevin: argument 'steps' expected an int >= 1"):
        sf.annealed_langevin(score, x0, [1.0, 0.1], steps=0, step_size=1e-3)
    with pytest.raises(TypeError, match=r"annealed_langevin: argument 'denoise_final' expected True or False, got str 'no'"):
        sf.annealed_langevin(score, x0, [1.0, 0.1], steps=2, step_size=1e-3, denoise_final="no")
    with pytest.raises(ValueError, match=r"geometric_sigmas: expected sigma_min < sigma_max"):
        sf.geometric_sigmas(1.0, 0.1, 5)
    with pytest.raises(ValueError, match=r"geometric_sigmas: argument 'n' expected an int >= 2"):
        sf.geometric_sigmas(0.1, 1.0, 1)


def test_non_finite_score_names_the_time():
    # Diverging ULA: s(x) = 10 x with step 1 multiplies the state by about 11 a step until float32 overflows.
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=\d+ "):
        sf.langevin(lambda x: 10 * x, torch.ones(3, 2), step_size=1.0, steps=100)
    x0 = torch.ones(3, 2, dtype=F64)
    bad_at_small_sigma = lambda x, s: torch.where(s[:, None] < 0.5, torch.nan, -x)  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"at t=0.3"):
        sf.annealed_langevin(bad_at_small_sigma, x0, [1.0, 0.3], steps=2, step_size=1e-2)


def test_mala_counts_the_evaluations_a_returned_state_costs():
    # A callback that returns a state makes MALA evaluate the score and log-density there (its next proposal starts
    # from it): nfe and n_log_prob count those calls as they happen, against counters wrapped around the target.
    law = make_law("gaussian2d")
    calls = {"score": 0, "log_prob": 0}

    def counting(name, fn):
        def wrapped(x):
            calls[name] += 1
            return fn(x)
        return wrapped

    def every_third_step_returns_a_copy(info):
        return info["x"].clone() if info["i"] % 3 == 0 else None

    res = sf.langevin(counting("score", law.grad_log_prob), law.sample(50, generator=torch.Generator().manual_seed(0)),
                      step_size=0.1, steps=10, generator=torch.Generator().manual_seed(1),
                      log_prob=counting("log_prob", law.log_prob), callback=every_third_step_returns_a_copy)
    assert calls["score"] == calls["log_prob"] == 10 + 1 + 4  # steps, the start, steps 0, 3, 6 and 9
    assert res.nfe == calls["score"] and res.stats["n_log_prob"] == calls["log_prob"]


def test_a_chain_longer_than_the_clocks_chunk_is_the_same_chain(monkeypatch):
    # the Langevin times are made a chunk at a time (a chain of millions of steps held them all): a small chunk gives
    # the bit-identical chain, MALA included, and a non-finite score past the first chunks is named at its time
    module = importlib.import_module("scoreflow.sampling.langevin")
    x0 = torch.zeros(4, 2, dtype=F64)
    seen = []

    def run(**kw):  # a standard normal target
        seen.clear()
        watch = lambda info: seen.append(float(info["t"]))  # noqa: E731
        return sf.langevin(lambda x: -x, x0, step_size=0.1, steps=23, generator=torch.Generator().manual_seed(0),
                           callback=watch, **kw).samples, list(seen)

    for kw in ({}, {"log_prob": lambda x: -0.5 * (x**2).sum(1)}):
        reference = run(**kw)
        monkeypatch.setattr(module._LangevinClock, "CHUNK", 4)
        chunked = run(**kw)
        monkeypatch.undo()
        assert torch.equal(chunked[0], reference[0]) and chunked[1] == reference[1]
        assert chunked[1] == [0.1 * k for k in range(1, 24)]
    monkeypatch.setattr(module._LangevinClock, "CHUNK", 4)
    calls = iter(range(100))
    nan_at_11 = lambda x: torch.full_like(x, torch.nan) if next(calls) == 11 else -x  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"at t=1\.1 "):
        sf.langevin(nan_at_11, x0, step_size=0.1, steps=23)
