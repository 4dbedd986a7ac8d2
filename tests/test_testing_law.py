"""scoreflow.testing.assert_samples_follow: Monte-Carlo-derived bounds pass exact and correct samplers, catch wrong ones."""

import pytest
import torch

import scoreflow as sf
from scoreflow.metrics import sliced_wasserstein2
from scoreflow.testing import assert_samples_follow, make_law


def em_reverse_sde(score, sde, x, steps, generator, *, score_sign=1.0):
    """A user's Euler-Maruyama reverse-SDE sampler; ``score_sign=-1`` plants the wrong-sign bug."""
    ts = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=x.dtype)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        h, tb, g = t0 - t1, t0.expand(x.shape[0]), sde.diffusion(t0)
        x = x - h * (sde.drift(x, tb) - score_sign * g**2 * score(x, tb))
        x = x + g * h.sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


@pytest.mark.parametrize("law_name", ["gaussian2d", "ring2d", "mixture16d"])
def test_exact_samples_pass_for_several_seeds(law_name):
    law = make_law(law_name)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        stats = assert_samples_follow(law.sample(1000, generator=g), law, generator=g)
        assert stats["moment_z_max"] <= stats["moment_z_bound"] and stats["sw2"] <= stats["sw2_bound"]
        assert len(stats["sw2_null"]) == 10


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_reverse_sde_sampler_passes_and_the_wrong_score_sign_fails(sde, generator):
    law = make_law("ring2d")
    target = law.marginal(sde, sde.t_min)
    x_T = sde.prior_sample((1000, 2), generator=generator, dtype=torch.float64)
    good = em_reverse_sde(law.score(sde), sde, x_T, 200, generator)
    assert_samples_follow(good, target, generator=generator)
    bad = em_reverse_sde(law.score(sde), sde, x_T, 200, generator, score_sign=-1.0)
    with pytest.raises(AssertionError, match=r"(?s)moments: measured max \|z\|.*bound z = .*Bonferroni.*sliced W2: measured"):
        assert_samples_follow(bad, target, generator=generator)


def test_scoreflow_sample_sde_follows_the_exact_marginal(generator):
    law, sde = make_law("ring2d"), sf.SubVPSDE()
    x_T = sde.prior_sample((1000, 2), generator=generator, dtype=torch.float64)
    res = sf.sample_sde(law.score(sde), sde, x_T, method="euler", steps=200, generator=generator)
    assert_samples_follow(res.samples, law.marginal(sde, sde.t_min), generator=generator)


def test_small_distortions_at_the_sample_size_are_caught(generator):
    law = make_law("ring2d")
    x = law.sample(2000, generator=generator)
    widened = law.mean + 1.1 * (x - law.mean)
    with pytest.raises(AssertionError, match=r"moments: measured max \|z\|"):
        assert_samples_follow(widened, law, generator=generator)
    # Reweighting the modes keeps the mean at the centre but shifts mass between components.
    k = law.responsibilities(x).argmax(1)
    reweighted = torch.cat([x[k < 4], x[k < 2]])[: x.shape[0]]
    with pytest.raises(AssertionError, match=r"mode weights: measured share of samples nearest component"):
        assert_samples_follow(reweighted, law, generator=generator)


def test_the_sw2_bound_scales_with_the_monte_carlo_error(generator):
    law = make_law("gaussian2d")
    small = assert_samples_follow(law.sample(250, generator=generator), law, generator=generator)
    large = assert_samples_follow(law.sample(4000, generator=generator), law, generator=generator)
    # SW2 between two exact samples shrinks like n^{-1/2}: 16x the samples, about 1/4 the distance.
    ratio = torch.tensor(large["sw2_null"]).median() / torch.tensor(small["sw2_null"]).median()
    assert 0.15 < float(ratio) < 0.4


def test_trimmed_sliced_w2_ignores_the_extreme_quantiles(generator):
    x = torch.randn(1000, 1, generator=generator, dtype=torch.float64)
    y = x.clone()
    y[x[:, 0].argmax(), 0] += 100.0  # in 1-D every direction puts this outlier in the top 1%
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert sliced_wasserstein2(x, y, generator=g()) > 1.0
    assert sliced_wasserstein2(x, y, generator=g(), trim=0.01) < 1e-12
    with pytest.raises(ValueError, match=r"argument 'trim' expected a fraction in \[0, 0.5\)"):
        sliced_wasserstein2(x, y, trim=0.5)


def test_samples_follow_rejects_bad_arguments(generator):
    law = make_law("gaussian2d")
    x = law.sample(100, generator=generator)
    with pytest.raises(ValueError, match=r"argument 'samples' expected shape \(n, \*\(2,\)\)"):
        assert_samples_follow(x[:, :1], law)
    for alpha in (1.5, 1.0, 0.0, -0.1, float("nan")):  # one message at either end (0 read "a finite number > 0")
        with pytest.raises(ValueError, match=rf"argument 'alpha' expected a probability in \(0, 1\), got {alpha!r}"):
            assert_samples_follow(x, law, alpha=alpha)
    with pytest.raises(ValueError, match=r"argument 'n_replicates' expected an int >= 3"):
        assert_samples_follow(x, law, n_replicates=2)
    with pytest.raises(TypeError, match=r"assert_samples_follow: argument 'trim' expected a real number, got str"):
        assert_samples_follow(x, law, trim="0.01")
    with pytest.raises(ValueError, match=r"expected an unbatched law"):
        assert_samples_follow(x, law.marginal(sf.VPSDE(), torch.full((100,), 0.5, dtype=torch.float64)))
