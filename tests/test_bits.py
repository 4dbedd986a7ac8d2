"""bits_per_dim and dequantize against discrete laws whose bits per dimension are known in closed form."""

import math

import pytest
import torch

import scoreflow as sf


def _levels(n, dims, n_bins, seed):
    return torch.randint(0, n_bins, (n, *dims), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("data_range", [(0.0, 1.0), (-1.0, 1.0), (-3.0, 5.0)])
def test_bits_per_dim_of_a_binwise_constant_density_is_the_discrete_entropy_term(data_range):
    # P(k) = prod_d q_d(k_d); the density constant on each bin, P(k) / bin volume, loses nothing to dequantization
    lo, hi = data_range
    n_bins, dims = 8, (3,)
    q = torch.softmax(torch.randn(3, n_bins, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    k = _levels(50, dims, n_bins, seed=1)
    y = sf.dequantize(k, n_bins, data_range=data_range, generator=torch.Generator().manual_seed(2)).double()
    width = (hi - lo) / n_bins
    k_back = ((y - lo) / width).floor().long()
    assert torch.equal(k_back, k)  # each dequantized point lies in its own bin
    log_p_y = torch.log(q.gather(1, k_back.T).T).sum(dim=1) - 3 * math.log(width)
    exact = -torch.log2(q.gather(1, k.T).T).sum(dim=1) / 3
    torch.testing.assert_close(sf.bits_per_dim(log_p_y, dims, n_bins, data_range), exact, rtol=0, atol=1e-12)


def test_dequantize_accepts_levels_or_the_float_grid_and_is_reproducible():
    k = _levels(10, (2, 3), 256, seed=0)
    grid = (-1.0 + 2.0 * k / 255).float()  # the [-1, 1] scaling of 8-bit data
    a = sf.dequantize(k, 256, data_range=(-1.0, 1.0), generator=torch.Generator().manual_seed(4))
    b = sf.dequantize(grid, 256, data_range=(-1.0, 1.0), generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.get_default_dtype() and b.dtype == torch.float32
    torch.testing.assert_close(a.float(), b)
    assert bool(((b >= -1) & (b < 1)).all())
    c = sf.dequantize(grid, 256, data_range=(-1.0, 1.0), generator=torch.Generator().manual_seed(4))
    assert torch.equal(b, c)


def test_bits_per_dim_offsets_follow_the_data_scaling():
    zero = torch.zeros(2, dtype=torch.float64)
    # -log p = 0: only the bin volume counts, log2(n_bins) - log2(hi - lo)
    torch.testing.assert_close(sf.bits_per_dim(zero, (3, 4, 4)), torch.full((2,), 8.0, dtype=torch.float64))
    torch.testing.assert_close(sf.bits_per_dim(zero, (3, 4, 4), 256, (-1.0, 1.0)), torch.full((2,), 7.0, dtype=torch.float64))
    lp = torch.tensor([-10.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(sf.bits_per_dim(lp, 5, n_bins=None), -lp / (5 * math.log(2)))


def test_dequantized_likelihood_bits_per_dim_matches_the_closed_form():
    # Diagonal Gaussian at t_min: E_u[log p(y)] over a bin is closed form, since for y ~ U[a, b]
    # E[(y - m)^2] = ((b - m)^3 - (a - m)^3) / (3 (b - a)).
    n_bins, lo, hi = 16, -1.0, 1.0
    sde = sf.VPSDE()
    mean = torch.tensor([0.2, -0.3], dtype=torch.float64)
    var0 = torch.tensor([0.09, 0.16], dtype=torch.float64)
    law = sf.analytic.Gaussian(mean, torch.diag(var0))
    alpha, sigma = sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))
    m, v = alpha * mean, alpha**2 * var0 + sigma**2

    k = torch.tensor([[8, 5], [10, 7], [3, 9]])
    reps = 12
    levels = k.repeat_interleave(reps, dim=0)
    y = sf.dequantize(levels, n_bins, data_range=(lo, hi), generator=torch.Generator().manual_seed(0)).double()
    p_T = law.marginal(sde, sde.T)
    with torch.no_grad():
        res = sf.log_likelihood(law.score(sde), sde, y, rtol=1e-7, atol=1e-7, prior_log_prob=p_T.log_prob)
    bpd = res.bits_per_dim(n_bins, (lo, hi)).reshape(3, reps)

    width = (hi - lo) / n_bins
    a, b = lo + width * k.double(), lo + width * (k.double() + 1)
    sq = ((b - m) ** 3 - (a - m) ** 3) / (3 * width)
    expected_log_p = (-0.5 * sq / v - 0.5 * torch.log(2 * math.pi * v)).sum(dim=1)
    closed = sf.bits_per_dim(expected_log_p, (2,), n_bins, (lo, hi))
    se = bpd.std(dim=1) / math.sqrt(reps)
    assert bool(((bpd.mean(dim=1) - closed).abs() < 5 * se + 1e-6).all())

    # the closed form bounds the exact discrete bits per dimension from above (Jensen)
    cdf = lambda z: 0.5 * (1 + torch.erf((z - m) / torch.sqrt(2 * v)))  # noqa: E731
    discrete = -torch.log2(cdf(b) - cdf(a)).sum(dim=1) / 2
    assert bool((closed >= discrete).all())


def test_bits_errors_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match=r"dequantize: argument 'x' is not on the grid of 256 levels spanning data_range=\(0, 1\)"):
        sf.dequantize(torch.tensor([[0.3]]), 256)
    with pytest.raises(ValueError, match="not on the grid"):
        sf.dequantize(torch.tensor([[300]]), 256)
    # a NaN made the message's range read [nan, nan] whatever the other values were
    with pytest.raises(ValueError, match=r"not on the grid of 256 levels .* \(got NaN or infinite values\)"):
        sf.dequantize(torch.tensor([[0.0, float("nan"), 1.0]]), 256)
    with pytest.raises(ValueError, match=r"argument 'data_range' expected a pair \(lo, hi\) of finite numbers with lo < hi"):
        sf.dequantize(torch.tensor([[1]]), 256, data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="argument 'n_bins' expected an int >= 2"):
        sf.bits_per_dim(torch.zeros(1), (2,), n_bins=1)
    with pytest.raises(ValueError, match=r"argument 'x_shape' expected the shape of one data point"):
        sf.bits_per_dim(torch.zeros(1), (3, 0))
    with pytest.raises(TypeError, match="argument 'log_prob' expected a tensor"):
        sf.bits_per_dim([0.0], (2,))
    with pytest.raises(ValueError, match="data_range"):
        sf.bits_per_dim(torch.zeros(1), (2,), data_range="01")
    # with n_bins=None a range other than (0, 1) was ignored without a word
    with pytest.raises(ValueError, match=r"bits_per_dim: argument 'data_range' applies to discrete data .* got data_range=\(-1.0, 1.0\)"):
        sf.bits_per_dim(torch.zeros(1), (2,), n_bins=None, data_range=(-1.0, 1.0))
    lp = torch.tensor([-3.0, -10.0], dtype=torch.float64)
    torch.testing.assert_close(sf.bits_per_dim(lp, (2,), n_bins=None, data_range=(0, 1)), -lp / (2 * math.log(2)))


def test_bits_per_dim_takes_numpy_integers_as_the_shape():
    # np.prod(x.shape[1:]) is an np.int64: refused as "not an int" before, though prior_sample takes NumPy's ints
    np = pytest.importorskip("numpy")
    lp = torch.tensor([-30.0, -12.0], dtype=torch.float64)
    expected = -lp / (48 * math.log(2)) + 8
    torch.testing.assert_close(sf.bits_per_dim(lp, np.prod((3, 4, 4))), expected)
    torch.testing.assert_close(sf.bits_per_dim(lp, (np.int64(3), 4, np.int32(4))), expected)
    with pytest.raises(ValueError, match="argument 'x_shape' expected the shape of one data point"):
        sf.bits_per_dim(lp, (True, 48))  # a bool is not a size
