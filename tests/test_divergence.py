"""Exact and Hutchinson divergences against Jacobians, closed forms, finite differences and Monte-Carlo bounds."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoreflow as sf
from scoreflow.dynamics.divergence import (
    CentralDifferences,
    draw_probes,
    exact_divergence,
    hutchinson_divergence,
    value_and_difference_hutchinson,
    value_and_exact_divergence,
)
from scoreflow.testing import make_problem


def _mlp_field(data_shape, seed=0, dtype=torch.float64):
    """A per-sample nonlinear field x -> tanh(x W1) W2 + x * b with parameters (W1, W2, b)."""
    d = math.prod(data_shape)
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(d, 8, generator=g, dtype=dtype), torch.randn(8, d, generator=g, dtype=dtype),
              torch.randn(d, generator=g, dtype=dtype)]

    def field(x, params=params):
        w1, w2, b = params
        flat = x.reshape(x.shape[0], -1)
        return (torch.tanh(flat @ w1) @ w2 + flat * b).reshape(x.shape)

    return field, params


def _jacobians(fn, x):
    """Per-sample Jacobians ``(B, D, D)`` of a per-sample field, one full reverse-mode Jacobian per sample."""
    d = x[0].numel()
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda y: fn(y[None])[0].reshape(-1), x[b]).reshape(d, d) for b in range(x.shape[0])]
    )


def _jacobian_trace(fn, x):
    return _jacobians(fn, x).diagonal(dim1=1, dim2=2).sum(-1)


@given(
    data_shape=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
    batch=st.integers(1, 4),
    chunk=st.one_of(st.none(), st.integers(1, 30)),
)
def test_exact_divergence_equals_jacobian_trace_for_any_shape_and_chunk(data_shape, batch, chunk):
    fn, _ = _mlp_field(data_shape)
    x = torch.randn((batch, *data_shape), generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    out, div = value_and_exact_divergence(fn, x, chunk_size=chunk)
    torch.testing.assert_close(out, fn(x))
    torch.testing.assert_close(div, _jacobian_trace(fn, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_exact_divergence_of_a_gaussian_score_is_minus_trace_of_inverse_covariance(sde, generator):
    problem = make_problem("gaussian16d", sde)
    t = 0.3
    x = problem.law.marginal(problem.sde, t).sample(5, generator=generator)
    div = exact_divergence(lambda y: problem.score(y, torch.full((y.shape[0],), t, dtype=y.dtype)), x, chunk_size=5)
    cov_t = problem.law.marginal(problem.sde, t).covariance
    expected = -torch.linalg.inv(cov_t).diagonal().sum()
    torch.testing.assert_close(div, expected.expand(5), rtol=1e-10, atol=1e-10)


def test_divergences_work_under_no_grad_and_through_a_counted_score(generator):
    fn, _ = _mlp_field((2, 3))
    counted = sf.CountedScore(lambda x, t: fn(x), caller="test")
    x = torch.randn(3, 2, 3, generator=generator, dtype=torch.float64)
    probes = draw_probes(x, 2, generator=generator)
    with torch.no_grad():
        div = exact_divergence(lambda y: counted(y, 0.5), x)
        est = hutchinson_divergence(lambda y: counted(y, 0.5), x, probes)
    assert counted.nfe == 2  # one forward per call; the VJPs are not score evaluations
    torch.testing.assert_close(div, _jacobian_trace(fn, x))
    # v^T J v from the full Jacobians (not forward-mode jvp, whose first use makes torch script its
    # decompositions and print torch.jit.script deprecation warnings)
    flat = probes.reshape(probes.shape[0], x.shape[0], -1)
    ref = torch.einsum("pbi,bij,pbj->pb", flat, _jacobians(fn, x), flat)
    torch.testing.assert_close(est, ref)


@pytest.mark.parametrize("n_probes", [1, 3])
def test_hutchinson_under_inference_mode_is_the_estimate_from_the_full_jacobians(n_probes, generator):
    # torch.enable_grad() records no graph of inference tensors: every estimate came out 0, and log_likelihood with
    # trace="hutchinson" under torch.inference_mode() was off by 11 nats on a 2-D Gaussian, silently.
    fn, _ = _mlp_field((2, 3))
    x = torch.randn(3, 2, 3, generator=generator, dtype=torch.float64)
    probes = draw_probes(x, n_probes, generator=generator)
    flat = probes.reshape(n_probes, x.shape[0], -1)
    ref = torch.einsum("pbi,bij,pbj->pb", flat, _jacobians(fn, x), flat)
    with torch.inference_mode():
        est = hutchinson_divergence(fn, x.clone(), probes.clone())
    torch.testing.assert_close(est, ref)


def test_hutchinson_log_likelihood_is_the_same_under_inference_mode_as_under_no_grad():
    problem = make_problem("gaussian2d", "vp")
    x = problem.law.marginal(problem.sde, problem.sde.t_min).sample(16, generator=torch.Generator().manual_seed(0))
    for method, stepping in (("dopri5", {"rtol": 1e-6, "atol": 1e-6}), ("expint_pc", {"steps": 16})):
        results = []
        for mode in (torch.no_grad, torch.inference_mode):
            with mode():
                results.append(sf.log_likelihood(problem.score, problem.sde, x, trace="hutchinson", method=method,
                                                 generator=torch.Generator().manual_seed(1), **stepping).log_prob)
        torch.testing.assert_close(results[1], results[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_divergence_gradient_in_captured_parameters_matches_finite_differences(trace, generator):
    fn, params = _mlp_field((5,), seed=3)
    x = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    probes = draw_probes(x, 3, "gaussian", generator=generator)

    def objective(ps):
        field = lambda y: fn(y, ps)  # noqa: E731
        if trace == "exact":
            return exact_divergence(field, x, chunk_size=2).pow(2).mean()
        return hutchinson_divergence(field, x, probes).pow(2).mean()

    leaves = [p.clone().requires_grad_(True) for p in params]
    grads = torch.autograd.grad(objective(leaves), leaves)
    eps = 1e-6
    for k, p in enumerate(params):
        for idx in [(0,), (3,)] if p.ndim == 1 else [(0, 0), (4, 7) if p.shape[1] > 7 else (7, 4)]:
            plus = [q.clone() for q in params]
            minus = [q.clone() for q in params]
            plus[k][idx] += eps
            minus[k][idx] -= eps
            fd = (objective(plus) - objective(minus)) / (2 * eps)
            torch.testing.assert_close(grads[k][idx], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_estimates_are_exact_per_probe_whether_vmapped_or_looped(kind, generator):
    # elementwise field: J = diag(w (1 - tanh(x)^2)), so v^T J v = sum_i v_i^2 J_ii for each probe;
    # 3 x 2048 elements take one VJP per probe, one sample at a time is vmapped two probes at a time
    w = torch.randn(2048, generator=generator, dtype=torch.float64)
    x = torch.randn(3, 2048, generator=generator, dtype=torch.float64)
    probes = draw_probes(x, 3, kind, generator)
    expected = (probes**2 * (w * (1 - torch.tanh(x) ** 2))).sum(dim=2)
    field = lambda y: torch.tanh(y) * w  # noqa: E731
    torch.testing.assert_close(hutchinson_divergence(field, x, probes), expected)
    per_sample = torch.cat([hutchinson_divergence(field, x[i : i + 1], probes[:, i : i + 1]) for i in range(3)], dim=1)
    torch.testing.assert_close(per_sample, expected)


def _linear_case():
    """A field x -> A x with a known Jacobian whose diagonal dominates (where Rademacher must win)."""
    g = torch.Generator().manual_seed(7)
    a = torch.diag(torch.tensor([3.0, -2.0, 1.5, 2.5], dtype=torch.float64))
    a = a + 0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    a_sym = 0.5 * (a + a.T)
    var_gauss = 2 * a_sym.pow(2).sum()
    var_rad = var_gauss - 2 * a.diagonal().pow(2).sum()
    return a, a.trace(), {"gaussian": float(var_gauss), "rademacher": float(var_rad)}


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_the_theoretical_variance(kind, generator):
    a, trace, variance = _linear_case()
    x = torch.randn(1, 4, generator=generator, dtype=torch.float64)
    n = 20_000
    est = hutchinson_divergence(lambda y: y @ a.T, x, draw_probes(x, n, kind, generator)).reshape(-1)
    # mean within 5 standard errors of the exact trace
    assert abs(float(est.mean() - trace)) < 5 * math.sqrt(variance[kind] / n)
    # sample variance within 5 of its standard errors (fourth moment estimated from the sample)
    dev = est - est.mean()
    se_var = math.sqrt(float((dev.pow(4).mean() - dev.pow(2).mean() ** 2) / n))
    assert abs(float(dev.pow(2).mean()) - variance[kind]) < 5 * se_var


def test_rademacher_variance_is_lower_than_gaussian_where_theory_says_so(generator):
    a, _, variance = _linear_case()
    assert variance["rademacher"] < 0.5 * variance["gaussian"]  # the diagonal dominates
    x = torch.zeros(1, 4, dtype=torch.float64)
    n = 5000
    var = {
        kind: float(hutchinson_divergence(lambda y: y @ a.T, x, draw_probes(x, n, kind, generator)).var())
        for kind in ("rademacher", "gaussian")
    }
    assert var["rademacher"] < var["gaussian"]


def test_draw_probes_shapes_values_and_reproducibility():
    x = torch.zeros(3, 2, 5, dtype=torch.float32)
    rad = draw_probes(x, 4, "rademacher", torch.Generator().manual_seed(0))
    assert rad.shape == (4, 3, 2, 5) and rad.dtype == torch.float32
    assert set(rad.unique().tolist()) == {-1.0, 1.0}
    again = draw_probes(x, 4, "rademacher", torch.Generator().manual_seed(0))
    assert torch.equal(rad, again)
    gauss = draw_probes(x.double(), 2, "gaussian", torch.Generator().manual_seed(0))
    assert gauss.dtype == torch.float64 and gauss.shape == (2, 3, 2, 5)


def test_divergence_errors_name_the_argument_and_the_fix():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="draw_probes: argument 'kind' expected one of 'rademacher', 'gaussian'"):
        draw_probes(x, 1, "uniform")
    with pytest.raises(ValueError, match="argument 'n_probes' expected an int >= 1"):
        draw_probes(x, 0)
    with pytest.raises(TypeError, match="argument 'generator'"):
        draw_probes(x, 1, generator=0)
    with pytest.raises(ValueError, match=r"'fn' must map x of shape \(2, 3\) to a tensor of the same shape, got shape \(2, 2\)"):
        exact_divergence(lambda y: y[:, :2], x)
    with pytest.raises(ValueError, match=r"argument 'probes' expected shape \(P, 2, 3\).*draw_probes"):
        hutchinson_divergence(lambda y: y, x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="argument 'chunk_size' expected an int >= 1"):
        exact_divergence(lambda y: y, x, chunk_size=0)


def test_divergence_points_must_be_a_floating_point_tensor():
    levels = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(TypeError, match=r"exact_divergence: argument 'x' expected a floating-point tensor .* got dtype torch\.int64"):
        exact_divergence(lambda y: y, levels)
    with pytest.raises(TypeError, match=r"hutchinson_divergence: argument 'x' expected a floating-point tensor .* got dtype torch\.int64"):
        hutchinson_divergence(lambda y: y, levels, torch.ones(1, 2, 3))
    with pytest.raises(TypeError, match=r"exact_divergence: argument 'x' expected a floating-point tensor .* got list"):
        exact_divergence(lambda y: y, [[0.0, 1.0]])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, p: sf.exact_divergence("fn", x), TypeError, r"^exact_divergence: argument 'fn' expected a callable fn\(x\), got str 'fn'\.$"),
        (lambda x, p: sf.hutchinson_divergence(None, x, p), TypeError, r"^hutchinson_divergence: argument 'fn' expected a callable"),
        (lambda x, p: sf.exact_divergence(lambda y: -y, x[0]), ValueError,
         r"^exact_divergence: argument 'x' expected a non-empty batch of shape \(B, \*D\) with at least 2 dimensions, got shape \(2,\)\.$"),
        (lambda x, p: sf.exact_divergence(lambda y: -y, x[:0]), ValueError,
         r"^exact_divergence: argument 'x' expected a non-empty batch .* got shape \(0, 2\)\.$"),
        (lambda x, p: sf.hutchinson_divergence(lambda y: -y, x, p[:0]), ValueError,
         r"^hutchinson_divergence: argument 'probes' expected shape \(P, 4, 2\) with P >= 1, got \(0, 4, 2\)"),
        (lambda x, p: draw_probes([[0.0, 1.0]], 2), TypeError, r"^draw_probes: argument 'x' expected a floating-point tensor"),
        (lambda x, p: CentralDifferences(p, "x"), TypeError, r"^difference_hutchinson: argument 'like' expected a floating-point tensor"),
        (lambda x, p: value_and_difference_hutchinson(lambda y: -y, x, p, 0.0), ValueError,
         r"^difference_hutchinson: argument 'step' expected a finite number > 0, got 0.0\.$"),
        (lambda x, p: value_and_difference_hutchinson(lambda y: -y, x, p, torch.full((2,), 1e-3, dtype=torch.float64)), ValueError,
         r"^difference_hutchinson: argument 'step' expected a number or a tensor of shape \(\) or \(4,\) .* got shape \(2,\)\.$"),
    ],
    ids=["exact fn str", "hutchinson fn None", "x 1-D", "x empty", "no probes", "draw_probes list", "CentralDifferences like",
         "step 0", "step shape"],
)
def test_divergences_refuse_bad_input_naming_the_argument(call, error, match):
    # before: "'str' object is not callable", IndexErrors, a reshape error for P = 0, "'list' object has no attribute
    # 'shape'", ZeroDivisionError for step=0 and a broadcast error for a step per probe
    x = torch.randn(4, 2, dtype=torch.float64)
    probes = torch.ones(3, 4, 2, dtype=torch.float64)
    with pytest.raises(error, match=match):
        call(x, probes)
