"""scoreflow.metrics against independent references (scipy, closed forms, brute force), and its input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import scoreflow as sf
from scoreflow.metrics import fit_order, gaussian_w2, mode_weights, moment_standard_errors, rms_error, sliced_wasserstein2
from scoreflow.testing import make_problem


def test_sliced_w2_of_one_dimensional_equal_size_samples_is_the_sorted_matching():
    """In 1-D every direction is +-1 and W2 between n-point samples pairs the sorted points (ties included)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 1, generator=g, dtype=torch.float64).round()  # ties
    y = torch.randn(9, 1, generator=g, dtype=torch.float64) + 0.5
    exact = (np.sort(x[:, 0].numpy()) - np.sort(y[:, 0].numpy())) ** 2
    assert sliced_wasserstein2(x, y, n_projections=3) == pytest.approx(math.sqrt(exact.mean()), rel=1e-12)
    assert sliced_wasserstein2(x[:1], y[:1], n_projections=3) == pytest.approx(abs(float(x[0, 0] - y[0, 0])), rel=1e-12)


@pytest.mark.parametrize("m, n, trim", [(3, 5, 0.0), (7, 4, 0.0), (1, 9, 0.0), (60, 45, 0.1), (10, 15, 0.2), (13, 13, 0.05)])
def test_sliced_w2_of_unequal_samples_is_the_exact_w2_of_the_empirical_laws(m, n, trim):
    """Repeating each sorted sample to the common size lcm(m, n) leaves its empirical law unchanged and makes W2 the
    sorted matching (the trimmed range integrated over whole and partial cells of 1/lcm)."""
    g = torch.Generator().manual_seed(m * 100 + n)
    x = torch.randn(m, 1, generator=g, dtype=torch.float64)
    y = 2.0 * torch.randn(n, 1, generator=g, dtype=torch.float64) + 1.0
    size = math.lcm(m, n)
    xs = np.repeat(np.sort(x[:, 0].numpy()), size // m)
    ys = np.repeat(np.sort(y[:, 0].numpy()), size // n)
    cells = np.arange(size + 1) / size
    width = np.diff(np.clip(cells, trim, 1.0 - trim))
    exact = math.sqrt(float(np.sum((xs - ys) ** 2 * width)) / (1.0 - 2.0 * trim))
    assert sliced_wasserstein2(x, y, n_projections=3, trim=trim) == pytest.approx(exact, rel=1e-12)
    assert sliced_wasserstein2(y, x, n_projections=3, trim=trim) == pytest.approx(exact, rel=1e-12)


def test_gaussian_w2_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    c1, c2, m1, m2 = a @ a.T + 0.1 * np.eye(3), b @ b.T, np.array([1.0, -2.0, 0.5]), np.zeros(3)
    s1 = scipy.linalg.sqrtm(c1)
    reference = math.sqrt(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ c2 @ s1))))
    assert gaussian_w2(torch.tensor(m1), torch.tensor(c1), m2, c2) == pytest.approx(reference, rel=1e-9)


def test_mode_weights_count_the_most_responsible_component():
    law = make_problem("ring2d", "vp").law
    x = law.sample(50, generator=torch.Generator().manual_seed(0))
    brute = [int(np.argmax([float(law.responsibilities(x[i : i + 1])[0, k]) for k in range(law.n_components)])) for i in range(50)]
    expected = torch.tensor([brute.count(k) / 50 for k in range(law.n_components)], dtype=torch.float64)
    torch.testing.assert_close(mode_weights(law, x), expected)


def test_moment_standard_errors_are_the_sample_standard_deviations_over_root_n():
    r = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    se_mean, se_cov = moment_standard_errors(r, 4)
    c = (r - r.mean(0)).numpy()
    torch.testing.assert_close(se_mean, torch.tensor(np.std(r.numpy(), axis=0, ddof=1) / 2))
    torch.testing.assert_close(se_cov[0, 1], torch.tensor(np.std(c[:, 0] * c[:, 1], ddof=1) / 2, dtype=torch.float64))


def test_fit_order_recovers_the_exponent_of_a_power_law():
    h = [0.1, 0.05, 0.025]
    assert fit_order(h, [3 * v**2.5 for v in h]) == pytest.approx(2.5, rel=1e-12)


def test_metrics_refuse_input_they_would_misread():
    law = make_problem("ring2d", "vp").law
    x = law.sample(10, generator=torch.Generator().manual_seed(0))
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="mode_weights: argument 'x' contains NaN"):  # was counted as component 0
        mode_weights(law, x)
    with pytest.raises(ValueError, match="mode_weights: argument 'x' expected a non-empty batch"):  # was NaN weights
        mode_weights(law, x[:0])
    with pytest.raises(ValueError, match=r"rms_error: .* same shape, got \(4, 2\) and \(2,\)"):  # was broadcast
        rms_error(torch.zeros(4, 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"rms_error: .* same shape, got \(4, 2\) and \(4, 1\)"):
        rms_error(torch.zeros(4, 2), torch.ones(4, 1))
    with pytest.raises(ValueError, match="fit_order: argument 'step_sizes' expected >= 2 distinct positive"):
        fit_order([0.1, 0.1], [1.0, 2.0])  # was a slope of -0.075 from a degenerate fit
    with pytest.raises(ValueError, match="fit_order: argument 'step_sizes' expected >= 2 distinct positive"):
        fit_order([0.0, 0.1], [1.0, 2.0])  # was LAPACK's "SVD did not converge"
    with pytest.raises(ValueError, match="fit_order: expected one error per step size, got 3 step sizes and 2"):
        fit_order([0.1, 0.2, 0.3], [1.0, 2.0])
    with pytest.raises(ValueError, match="moment_standard_errors: argument 'n' expected an int >= 1, got 0"):  # was inf
        moment_standard_errors(torch.randn(10, 2), 0)
    with pytest.raises(ValueError, match="moment_standard_errors: argument 'reference' expected >= 2 draws"):  # was NaN
        moment_standard_errors(torch.randn(1, 2), 10)
    with pytest.raises(ValueError, match=r"gaussian_w2: argument 'mean2' expected shape \(2,\) .* got \(3,\)"):
        gaussian_w2(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="gaussian_w2: argument 'mean1' contains NaN"):  # was a NaN distance
        gaussian_w2(torch.tensor([float("nan"), 0.0]), torch.eye(2), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match=r"sliced_wasserstein2: argument 'x' expected a non-empty batch .* got shape \(0, 2\)"):
        sliced_wasserstein2(torch.zeros(0, 2), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="sliced_wasserstein2: argument 'generator'"):  # was torch.randn's argument list
        sliced_wasserstein2(torch.zeros(3, 2), torch.zeros(3, 2), generator=7)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: rms_error([[0.0, 1.0]], torch.zeros(1, 2)), TypeError, r"^rms_error: argument 'x' expected a tensor, got list\.$"),
        (lambda: rms_error(torch.zeros(0, 2), torch.zeros(0, 2)), ValueError,
         r"^rms_error: arguments 'x' and 'y' expected non-empty batches, got shape \(0, 2\)\.$"),
        (lambda: mode_weights("ring2d", torch.zeros(4, 2)), TypeError, r"^mode_weights: argument 'law' expected a GaussianMixture"),
        (lambda: gaussian_w2(torch.zeros(2), None, torch.zeros(2), torch.eye(2)), TypeError,
         r"^gaussian_w2: argument 'cov1' expected a tensor or nested sequence of numbers, got NoneType None\.$"),
        (lambda: sf.testing.make_law("ring2d", dtype="float32"), TypeError, r"^make_law: argument 'dtype' expected a floating-point torch.dtype"),
    ],
    ids=["rms list", "rms empty", "mode_weights law str", "gaussian_w2 None", "make_law dtype str"],
)
def test_metrics_refuse_bad_input_naming_the_argument(call, error, match):
    # before: "'list' object has no attribute 'shape'", NaN for empty batches, "'str' object has no attribute
    # 'responsibilities'", torch's "Could not infer dtype of NoneType", torch.arange's "invalid combination of arguments"
    with pytest.raises(error, match=match):
        call()
