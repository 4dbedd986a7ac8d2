"""Predictor-corrector sampling: the data law is reproduced, NFE is counted, times stay on the grid."""

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.adapters import DiscreteVPSDE
from scoreflow.analytic import Gaussian
from scoreflow.metrics import mode_weights, moment_standard_errors
from scoreflow.sampling.predictors import corrector_alphas, predictor_coefficients
from scoreflow.testing import make_problem

F64 = torch.float64


# Mode weights of 8 equal components have standard error sqrt(1/8 * 7/8 / n) = 0.0047 at
# n = 5000, so the required 0.02 is 4.3 standard errors.
N_SAMPLES = 5000


@pytest.mark.parametrize(
    "sde_name, predictor",
    [(sde, pred) for sde in ("vp", "ve") for pred in ("reverse_diffusion", "ancestral", "euler_maruyama")]
    + [("subvp", "reverse_diffusion")],
)
def test_pc_reproduces_the_ring_mixture(sde_name, predictor):
    problem = make_problem("ring2d", sde_name)
    law, sde = problem.law, problem.sde
    g = torch.Generator().manual_seed(11)
    x_T = sde.prior_sample((N_SAMPLES, 2), generator=g, dtype=F64)
    res = sf.sample_pc(problem.score, sde, x_T, steps=50, predictor=predictor, generator=g)
    assert res.nfe == 100
    x = res.samples
    reference = law.sample(100_000, generator=torch.Generator().manual_seed(12))
    se_mean, se_cov = moment_standard_errors(reference, N_SAMPLES)
    assert ((x.mean(0) - law.mean) / se_mean).abs().max() < 5
    assert ((torch.cov(x.T) - law.covariance) / se_cov).abs().max() < 5
    assert (mode_weights(law, x) - law.weights).abs().max() < 0.02


def test_ancestral_on_a_discrete_vp_schedule_reproduces_the_exact_gaussian_marginal():
    # DDPM's chain on its own 100-step schedule (betas 1e-3..0.2, the 1000-step linear one's equivalent), one step per
    # knot down to t_min = 1/N. Its samples have the exact marginal's moments at t_min to 5 standard errors; the
    # covariance also to DDPM's variance excess (sigma_t^2 = beta_t exceeds the posterior's by O(beta) per step),
    # allowed as 2 % of the largest variance.
    betas = torch.linspace(1e-3, 0.2, 100, dtype=F64)
    sde = DiscreteVPSDE(torch.cumprod(1 - betas, 0))
    law = Gaussian(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64))
    n = 40_000
    x_T = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    res = sf.sample_pc(law.score(sde), sde, x_T, steps=99, predictor="ancestral", corrector=None,
                       generator=torch.Generator().manual_seed(1))
    assert res.nfe == 99
    exact = law.marginal(sde, sde.t_min)
    se_mean, se_cov = moment_standard_errors(exact.sample(100_000, generator=torch.Generator().manual_seed(2)), n)
    x = res.samples
    assert ((x.mean(0) - exact.mean) / se_mean).abs().max() < 5
    excess = 0.02 * float(exact.covariance.diagonal().max())
    assert ((torch.cov(x.T) - exact.covariance).abs() - excess < 5 * se_cov).all(), (torch.cov(x.T), exact.covariance)


def sliced_w2_to_law(x, law, *, n_projections=64, grid=4096, seed=7):
    """Sliced W2 between a sample and an exact Gaussian mixture: the projected law of each
    direction is a 1-D mixture whose CDF is tabulated on a fine grid and inverted at the
    sample's quantile levels (i + 1/2)/n, so no reference sample adds its own noise."""
    theta = torch.randn(law.dim, n_projections, generator=torch.Generator().manual_seed(seed), dtype=F64)
    theta = theta / theta.norm(dim=0)
    proj = torch.sort((x.reshape(x.shape[0], -1).double() @ theta).T, dim=1).values
    m = law.means @ theta  # (K, P)
    sd = torch.einsum("dp,kde,ep->kp", theta, law.covs, theta).sqrt()
    lo, hi = (m - 12 * sd).min(0).values, (m + 12 * sd).max(0).values
    z = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, grid, dtype=F64)  # (P, G)
    cdf = (law.weights[:, None, None] * 0.5 * torch.erfc((m[..., None] - z) / (sd[..., None] * 2**0.5))).sum(0)
    u = ((torch.arange(x.shape[0], dtype=F64) + 0.5) / x.shape[0]).expand(n_projections, -1).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u).clamp(1, grid - 1)
    c0, c1, z0, z1 = cdf.gather(1, idx - 1), cdf.gather(1, idx), z.gather(1, idx - 1), z.gather(1, idx)
    quantiles = z0 + (z1 - z0) * (u - c0) / (c1 - c0).clamp_min(1e-300)
    return float((proj - quantiles).pow(2).mean().sqrt())


def test_sliced_w2_to_law_is_at_the_monte_carlo_floor_for_exact_samples():
    law = make_problem("ring2d", "ve").law
    exact = sliced_w2_to_law(law.sample(10_000, generator=torch.Generator().manual_seed(1)), law)
    shifted = sliced_w2_to_law(law.sample(10_000, generator=torch.Generator().manual_seed(1)) + 0.2, law)
    assert exact < 0.05 and 0.15 < shifted < 0.25  # a shift by (0.2, 0.2) projects to |0.2 (cos + sin)|


def test_corrector_beats_predictor_only_at_equal_nfe_for_ve():
    # Ten reverse-diffusion steps each followed by one Langevin step (20 NFE) against twenty
    # reverse-diffusion steps (20 NFE), from the same prior draws.  Over four seeds the exact
    # samples' sliced W2 (the Monte-Carlo floor at n = 10^4) is 0.027-0.041, the corrected
    # chain's 0.028-0.039 and the predictor's alone 0.043-0.054 (ratios 0.57-0.72).
    problem = make_problem("ring2d", "ve")
    n = 10_000

    def sw2(steps, **kwargs):
        g = torch.Generator().manual_seed(0)
        x_T = problem.sde.prior_sample((n, 2), generator=g, dtype=F64)
        res = sf.sample_pc(problem.score, problem.sde, x_T, steps=steps, generator=g, **kwargs)
        return res.nfe, sliced_w2_to_law(res.samples, problem.law)

    nfe_pc, sw2_pc = sw2(10, snr=0.5)
    nfe_p, sw2_p = sw2(20, corrector=None)
    assert nfe_pc == nfe_p == 20
    assert sw2_pc < 0.8 * sw2_p


@pytest.mark.parametrize(
    "predictor, corrector, n_corr, expected",
    [
        ("reverse_diffusion", "langevin", 2, 7 * 3),
        ("euler_maruyama", None, 1, 7),
        (None, "langevin", 3, 7 * 3),
        ("ancestral", "langevin", 1, 7 * 2),
    ],
)
@pytest.mark.parametrize("denoise_final", [False, True])
def test_nfe_counts_every_call_and_times_stay_on_the_grid(predictor, corrector, n_corr, expected, denoise_final):
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    score = RecordingScore(problem.score)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    t_min = 0.01
    res = sf.sample_pc(
        score, sde, x_T, steps=7, predictor=predictor, corrector=corrector, corrector_steps=n_corr,
        t_min=t_min, denoise_final=denoise_final, generator=torch.Generator().manual_seed(1),
    )
    assert res.nfe == expected + denoise_final
    # The validation call is the solver's first evaluation: the model is called exactly nfe times.
    assert score.calls == res.nfe
    grid = sf.time_grid(sde, 7, "t", t_min=t_min)  # sample_sde's schedule="t"
    assert all(t_min <= t <= sde.T for t in score.times)
    assert set(score.times) <= set(grid.tolist())
    if predictor is None:  # the corrector alone never needs the score at T
        assert max(score.times) == grid[1]


def test_predictor_only_sde_matches_sample_sde_with_fine_steps():
    # Euler-Maruyama predictor and torchsde's Euler scheme discretize the same reverse SDE:
    # on a Gaussian both reach the data covariance (within Monte-Carlo error) with enough steps.
    problem = make_problem("gaussian2d", "subvp")
    n = 4000
    g = torch.Generator().manual_seed(5)
    x_T = problem.sde.prior_sample((n, 2), generator=g, dtype=F64)
    res = sf.sample_pc(problem.score, problem.sde, x_T, steps=200, predictor="euler_maruyama", corrector=None, generator=g)
    reference = problem.law.sample(100_000, generator=torch.Generator().manual_seed(6))
    se_mean, se_cov = moment_standard_errors(reference, n)
    assert ((res.samples.mean(0) - problem.law.mean) / se_mean).abs().max() < 5
    assert ((torch.cov(res.samples.T) - problem.law.covariance) / se_cov).abs().max() < 5


def test_denoise_final_is_tweedie_and_trajectory_is_on_the_grid():
    problem = make_problem("gaussian2d", "ve")
    sde = problem.sde
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    kwargs = dict(steps=5, return_trajectory=True)
    raw = sf.sample_pc(problem.score, sde, x_T, generator=torch.Generator().manual_seed(1), **kwargs)
    den = sf.sample_pc(problem.score, sde, x_T, generator=torch.Generator().manual_seed(1), denoise_final=True, **kwargs)
    expected = sf.denoiser_from_score(problem.score, sde)(raw.samples, torch.full((8,), sde.t_min, dtype=F64))
    torch.testing.assert_close(den.samples, expected, rtol=1e-12, atol=1e-12)
    assert raw.trajectory.shape == (6, 8, 2)
    torch.testing.assert_close(raw.times, torch.linspace(sde.T, sde.t_min, 6, dtype=F64))
    assert torch.equal(raw.trajectory[0], x_T) and torch.equal(raw.trajectory[-1], raw.samples)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE()], ids=repr)
def test_seeded_runs_are_bit_identical_for_any_data_shape(sde, dtype):
    law = sf.analytic.Gaussian(torch.zeros(6, dtype=F64), torch.eye(6, dtype=F64), event_shape=(2, 3)).to(dtype)
    x_T = sde.prior_sample((4, 2, 3), generator=torch.Generator().manual_seed(0), dtype=dtype)
    predictor = "reverse_diffusion" if isinstance(sde, sf.SubVPSDE) else "ancestral"

    def run():
        return sf.sample_pc(law.score(sde), sde, x_T, steps=6, predictor=predictor, generator=torch.Generator().manual_seed(3))

    a, b = run(), run()
    assert a.samples.shape == x_T.shape and a.samples.dtype == dtype
    assert torch.equal(a.samples, b.samples)
    assert torch.isfinite(a.samples).all()


def test_errors():
    problem = make_problem("gaussian2d", "vp")
    score, sde = problem.score, problem.sde
    x_T = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"argument 'predictor' expected one of 'reverse_diffusion', 'euler_maruyama', 'ancestral', got 'euler'"):
        sf.sample_pc(score, sde, x_T, steps=5, predictor="euler")
    with pytest.raises(ValueError, match=r"argument 'corrector' expected one of 'langevin', got 'ald'"):
        sf.sample_pc(score, sde, x_T, steps=5, corrector="ald")
    with pytest.raises(ValueError, match=r"predictor and corrector are both None"):
        sf.sample_pc(score, sde, x_T, steps=5, predictor=None, corrector=None)
    with pytest.raises(ValueError, match=r"sample_pc: predictor='ancestral' is defined for VP processes .* got SubVPSDE; use predictor='reverse_diffusion'"):
        sf.sample_pc(score, sf.SubVPSDE(), x_T, steps=5, predictor="ancestral")
    with pytest.raises(ValueError, match=r"argument 'snr' expected a finite number > 0, got 0.0"):
        sf.sample_pc(score, sde, x_T, steps=5, snr=0.0)
    with pytest.raises(ValueError, match=r"argument 'steps' expected an int >= 1, got 0"):
        sf.sample_pc(score, sde, x_T, steps=0)
    with pytest.raises(ValueError, match=r"argument 'corrector_steps' expected an int >= 1, got 0"):
        sf.sample_pc(score, sde, x_T, steps=5, corrector_steps=0)
    with pytest.raises(ValueError, match=r"sample_pc: argument 't_min' expected a time in \(0, T=1\), got 2.0"):
        sf.sample_pc(score, sde, x_T, steps=5, t_min=2.0)
    with pytest.raises(TypeError, match=r"argument 'sde' expected a ForwardSDE"):
        sf.sample_pc(score, "vp", x_T, steps=5)
    with pytest.raises(TypeError, match=r"the score expected dtype torch.float64 \(the dtype of x\), got torch.float32"):
        sf.sample_pc(lambda x, t: x.float(), sde, x_T, steps=5)


def test_non_finite_score_names_the_time():
    sde = sf.VPSDE()
    bad_below_half = lambda x, t: torch.where(t[:, None] < 0.5, torch.nan, -x)  # noqa: E731
    x_T = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(sf.NonFiniteError, match=r"at t=0.4"):
        sf.sample_pc(bad_below_half, sde, x_T, steps=4, t_min=0.2, corrector=None)


# --- grids: schedule= as in sample_sde, and the coefficients on a grid that is not uniform ---------------------------


def test_ancestral_on_respaced_discrete_vp_knots_is_respaced_ddpm():
    # A non-uniform subsequence of a 100-step DDPM schedule's knots (improved-diffusion's respacing): the ancestral
    # predictor is DDPM's step with the respaced beta_j = 1 - abar_j / abar_prev, written here in DDPM's own form
    # (posterior mean of q(x_prev | x_t, x0_hat), variance beta_j), with the same noise draws.
    betas = torch.linspace(1e-3, 0.2, 100, dtype=F64)
    abar = torch.cumprod(1 - betas, 0)
    sde = DiscreteVPSDE(abar)
    knots = [99, 80, 55, 35, 20, 10, 6, 3, 1, 0]  # abar index i sits at t = (i + 1)/N
    times = torch.tensor([(i + 1) / 100 for i in knots], dtype=F64)
    law = Gaussian(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64))
    score = law.score(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    res = sf.sample_pc(score, sde, x_T, schedule=times, predictor="ancestral", corrector=None,
                       generator=torch.Generator().manual_seed(1))
    g, x = torch.Generator().manual_seed(1), x_T
    for j in range(len(knots) - 1):
        a_t, a_prev = abar[knots[j]], abar[knots[j + 1]]
        beta = 1 - a_t / a_prev
        eps = -(1 - a_t).sqrt() * score(x, times[j].expand(64))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * x) / (1 - a_t)
        x = mean + beta.sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
    assert res.nfe == len(knots) - 1
    torch.testing.assert_close(res.samples, x, rtol=1e-11, atol=1e-11)


def _karras(sde, steps=12):
    ts = sf.time_grid(sde, steps, "karras")
    assert not torch.allclose(ts[1:] - ts[:-1], ts[1] - ts[0])  # a grid that is not uniform
    return ts


def test_vp_coefficients_on_a_karras_grid_are_the_exact_transitions():
    # VP: alpha(t)^2 = exp(-B(t)), B(t) = beta_min t + (beta_max - beta_min) t^2 / 2, so the forward step from t_{i+1}
    # up to t_i has 1 - beta_i = exp(-(B(t_i) - B(t_{i+1}))): the corrector's alpha_i, and the reverse-diffusion step
    # is x' = (2 - sqrt(1 - beta_i)) x + beta_i s + sqrt(beta_i) z (score_sde's with its beta_i).
    sde = sf.VPSDE()
    ts = _karras(sde)
    B = sde.beta_min * ts + (sde.beta_max - sde.beta_min) * ts**2 / 2
    one_minus_beta = torch.exp(-(B[:-1] - B[1:]))
    torch.testing.assert_close(corrector_alphas(sde, ts), one_minus_beta, rtol=1e-13, atol=0)
    c_x, c_s, c_z = predictor_coefficients("reverse_diffusion", sde, ts)
    torch.testing.assert_close(c_x, 2 - one_minus_beta.sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(c_s, 1 - one_minus_beta, rtol=1e-12, atol=0)
    torch.testing.assert_close(c_z, (1 - one_minus_beta).sqrt(), rtol=1e-12, atol=0)
    c_x, c_s, c_z = predictor_coefficients("ancestral", sde, ts)  # DDPM: (x + beta s)/sqrt(1 - beta) + sqrt(beta) z
    torch.testing.assert_close(c_x, one_minus_beta.rsqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(c_s, (1 - one_minus_beta) / one_minus_beta.sqrt(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde", [sf.VESDE(), sf.EDMSDE()], ids=repr)
def test_variance_exploding_coefficients_on_a_karras_grid_are_smld_steps(sde):
    # sigma(t)^2 = sigma_min^2 ((sigma_max/sigma_min)^(2t) - 1) (VE started at clean data), t^2 (EDM): SMLD's steps
    # between adjacent grid noise levels, and the corrector's alpha_i = 1 on any grid.
    ts = _karras(sde)
    sigma = ts if isinstance(sde, sf.EDMSDE) else sde.sigma_min * ((sde.sigma_max / sde.sigma_min) ** (2 * ts) - 1).sqrt()
    gap = sigma[:-1] ** 2 - sigma[1:] ** 2
    assert torch.equal(corrector_alphas(sde, ts), torch.ones(len(ts) - 1, dtype=F64))
    c_x, c_s, c_z = predictor_coefficients("reverse_diffusion", sde, ts)
    torch.testing.assert_close(c_x, torch.ones_like(gap), rtol=0, atol=1e-15)
    torch.testing.assert_close(c_s, gap, rtol=1e-12, atol=0)
    torch.testing.assert_close(c_z, gap.sqrt(), rtol=1e-12, atol=0)
    _, c_s, c_z = predictor_coefficients("ancestral", sde, ts)
    torch.testing.assert_close(c_s, gap, rtol=1e-12, atol=0)
    torch.testing.assert_close(c_z, (sigma[1:] ** 2 * gap / sigma[:-1] ** 2).sqrt(), rtol=1e-12, atol=0)


def test_vp_corrector_alpha_on_the_uniform_grid_is_score_sdes_to_second_order():
    # score_sde (N grid points t_j = linspace(T, eps, N)) corrects at t_j with alpha = 1 - discrete_betas[k],
    # discrete_betas = linspace(beta_min/N, beta_max/N, N), k = floor(t_j (N - 1)/T); here the correction at t_{i+1}
    # uses the step just taken, exp(-int beta) over [t_{i+1}, t_i].  The two differ by O(dt^2) (not to the bit):
    # ten times the points, a hundred times less.
    sde = sf.VPSDE()

    def gap(n):
        ts = sf.time_grid(sde, n - 1, "t", t_min=1e-3)
        k = (ts[1:] * (n - 1) / sde.T).floor().long()
        theirs = 1 - torch.linspace(sde.beta_min / n, sde.beta_max / n, n, dtype=F64)[k]
        return float((corrector_alphas(sde, ts) - theirs).abs().max())

    ratio = gap(100) / gap(1000)
    assert 50 < ratio < 200, ratio


def test_schedule_places_the_steps_as_in_sample_sde():
    problem = make_problem("gaussian2d", "ve")
    sde = problem.sde
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = sf.time_grid(sde, 6, "karras", t_min=0.01)
    score = RecordingScore(problem.score)

    def run(score, **kwargs):
        return sf.sample_pc(score, sde, x_T, t_min=0.01, generator=torch.Generator().manual_seed(1), **kwargs)

    by_name = run(score, steps=6, schedule="karras", return_trajectory=True)
    assert set(score.times) == set(grid[:-1].tolist()) | set(grid[1:].tolist())
    torch.testing.assert_close(by_name.times, grid, rtol=0, atol=0)
    assert by_name.nfe == 12
    assert torch.equal(run(problem.score, schedule=grid).samples, by_name.samples)
    assert torch.equal(run(problem.score, schedule=grid, steps=6).samples, by_name.samples)
    assert not torch.equal(run(problem.score, steps=6).samples, by_name.samples)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        # (no step_size: sample_pc does not take one, so the message does not list it)
        (dict(), ValueError, r"needs exactly one of 'steps' \(with an optional 'schedule'\), a 'schedule' grid; got steps=None, schedule=None\.$"),
        (dict(schedule="karras"), ValueError, r"'schedule' places the grid of a fixed-grid method and needs 'steps', got steps=None"),
        (dict(steps=5, schedule="cosine"), ValueError, r"argument 'schedule' expected one of 't', 'log_snr', 'karras', .*got 'cosine'"),
        (dict(schedule=[1.0, 0.5, 0.001]), TypeError, r"argument 'schedule' expected a schedule name .* or a 1-D tensor of times"),
        (dict(schedule=torch.tensor([1.0, 0.5, 0.001], dtype=F64), steps=3), ValueError, r"a grid of 3 times has 2 steps, got steps=3"),
        (dict(schedule=torch.tensor([1.0, 0.5, 0.1], dtype=F64)), ValueError, r"expected a grid that starts at T=1 and ends at t_min=0.001, got end 0.1"),
        (dict(schedule=torch.tensor([1.0, 0.2, 0.5, 0.001], dtype=F64)), ValueError, r"expected finite, strictly decreasing times"),
        (dict(steps=0, schedule="t"), ValueError, r"argument 'steps' expected an int >= 1, got 0"),
    ],
)
def test_schedule_is_checked_as_in_sample_sde(kwargs, error, pattern):
    problem = make_problem("gaussian2d", "vp")
    x_T = torch.zeros(4, 2, dtype=F64)
    for front_end in (sf.sample_pc, sf.sample_sde):
        if front_end is sf.sample_sde:
            kwargs = {**kwargs, "method": "ddim"}  # a native method: it takes no step_size either
        with pytest.raises(error, match=f"{front_end.__name__}: .*" + pattern):
            front_end(problem.score, problem.sde, x_T, **kwargs)


@pytest.mark.parametrize("sde, schedule", [(sf.EDMSDE(), "karras"), (sf.VESDE(), "t"), (sf.VPSDE(), "t"),
                                           (sf.SubVPSDE(), "t")], ids=repr)
def test_default_grid_is_karras_on_edm_and_uniform_in_t_elsewhere(sde, schedule):
    # EDM's uniform t grid leaves sigma < 1 to its last 1/80 (benchmarks/bench_pc_grids.py: Karras' had 0.03-0.05 of its
    # moment error); on VE, VP and sub-VP score_sde's uniform grid stays.
    law = Gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)

    def run(**kwargs):
        return sf.sample_pc(law.score(sde), sde, x_T, steps=8, generator=torch.Generator().manual_seed(1), **kwargs)

    default = run(return_trajectory=True)
    assert torch.equal(default.times, sf.time_grid(sde, 8, schedule))
    assert torch.equal(default.samples, run(schedule=schedule).samples)
