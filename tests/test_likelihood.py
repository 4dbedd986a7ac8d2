"""log_likelihood against exact log-densities of analytic laws, finite-difference gradients and Monte-Carlo bounds."""

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.analytic import GaussianMixture
from scoreflow.testing import make_problem

from _helpers import non_finite_after


def _data(problem, n, seed=0):
    """Points drawn from the exact law at t_min (where log_likelihood evaluates the density)."""
    return problem.law.marginal(problem.sde, problem.sde.t_min).sample(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("law", ["ring2d", "mixture16d"])
@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_exact_trace_matches_the_exact_log_density(law, sde):
    problem = make_problem(law, sde)
    x = _data(problem, 4)
    p_T = problem.law.marginal(problem.sde, problem.sde.T)
    with torch.no_grad():
        res = sf.log_likelihood(problem.score, problem.sde, x, rtol=1e-8, atol=1e-8, prior_log_prob=p_T.log_prob)
    exact = problem.law.marginal(problem.sde, problem.sde.t_min).log_prob(x)
    assert res.log_prob.shape == (4,) and res.log_prob.dtype == torch.float64
    assert float((res.log_prob - exact).abs().mean()) <= 1e-5
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta_log_prob)
    assert res.std_error is None


def test_any_data_shape_gives_the_flat_result():
    problem = make_problem("gaussian16d", "vp")
    law = problem.law
    shaped = GaussianMixture(law.weights, law.means, law.covs, event_shape=(2, 2, 4))
    x = _data(problem, 3)
    with torch.no_grad():
        flat = sf.log_likelihood(problem.score, problem.sde, x, rtol=1e-3, atol=1e-3)
        boxed = sf.log_likelihood(shaped.score(problem.sde), problem.sde, x.reshape(3, 2, 2, 4), rtol=1e-3, atol=1e-3, chunk_size=5)
    torch.testing.assert_close(boxed.log_prob, flat.log_prob, rtol=0, atol=1e-10)
    assert boxed.latent.shape == (3, 2, 2, 4)
    torch.testing.assert_close(boxed.bpd, -flat.log_prob / (16 * math.log(2)), rtol=0, atol=1e-10)


def test_nfe_counts_every_score_call_and_vjps_are_reported_separately():
    problem = make_problem("ring2d", "ve")
    calls = []

    def score(x, t):
        calls.append(1)
        return problem.score(x, t)

    x = _data(problem, 3)
    with torch.no_grad():
        exact = sf.log_likelihood(score, problem.sde, x, rtol=1e-3, atol=1e-3)
        n_exact = len(calls)
        hutch = sf.log_likelihood(score, problem.sde, x, trace="hutchinson", n_probes=3, rtol=1e-3, atol=1e-3,
                                  generator=torch.Generator().manual_seed(0))
    assert exact.nfe == n_exact
    assert hutch.nfe == len(calls) - n_exact
    # D (exact) or P (Hutchinson) VJPs per evaluation; the first evaluation is also the check of the model
    assert exact.nfe_vjp == 2 * exact.nfe
    assert hutch.nfe_vjp == 3 * hutch.nfe


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_reported_standard_error(probe):
    problem = make_problem("ring2d", "vp")
    x = _data(problem, 6)
    with torch.no_grad():
        exact = sf.log_likelihood(problem.score, problem.sde, x, rtol=1e-4, atol=1e-4)
        hutch = sf.log_likelihood(problem.score, problem.sde, x, trace="hutchinson", probe=probe, n_probes=16,
                                  rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(5))
    assert hutch.std_error.shape == (6,) and bool((hutch.std_error > 0).all())
    z = (hutch.log_prob - exact.log_prob) / hutch.std_error
    assert float(z.abs().max()) < 5  # each z is t-distributed with 15 degrees of freedom
    # the prior term is shared: only the divergence integral is estimated
    torch.testing.assert_close(hutch.prior_log_prob, exact.prior_log_prob, rtol=1e-4, atol=1e-4)


def test_hutchinson_is_reproducible_with_a_seeded_generator():
    problem = make_problem("ring2d", "ve")
    x = _data(problem, 2).float()
    score = problem.law.to(torch.float32).score(problem.sde)
    runs = [
        sf.log_likelihood(score, problem.sde, x, trace="hutchinson", probe="gaussian", n_probes=2, rtol=1e-3,
                          atol=1e-3, generator=torch.Generator().manual_seed(9)).log_prob
        for _ in range(2)
    ]
    assert runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1])


class _TinyScore(torch.nn.Module):
    """A small MLP score s(x, t) = W2 tanh(W1 [x, t] + b1) - x, for gradient tests."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(0.5 * torch.randn(6, dim + 1, generator=g, dtype=torch.float64))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(6, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(0.5 * torch.randn(dim, 6, generator=g, dtype=torch.float64))

    def forward(self, x, t):
        h = torch.tanh(torch.cat([x, t[:, None]], dim=1) @ self.w1.T + self.b1)
        return h @ self.w2.T - x


def _finite_difference(model, objective, eps=1e-5):
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            idx = (1,) if p.ndim == 1 else (1, 2)
            old = p[idx].clone()
            p[idx] = old + eps
            plus = objective()
            p[idx] = old - eps
            minus = objective()
            p[idx] = old
            out[name, idx] = float((plus - minus) / (2 * eps))
    return out


@pytest.mark.parametrize(
    "solver",
    [
        dict(trace="exact", method="rk4", steps=8),
        dict(trace="hutchinson", n_probes=2, method="rk4", steps=8),
        dict(trace="exact", method="rk4", steps=16, adjoint=True),
    ],
    ids=["exact-backprop", "hutchinson-backprop", "exact-adjoint"],
)
def test_mean_log_prob_gradient_in_model_parameters_matches_finite_differences(solver):
    model = _TinyScore(2)
    sde = sf.VPSDE()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def objective():
        return sf.log_likelihood(model, sde, x, t_min=1e-2, generator=torch.Generator().manual_seed(1), **solver).log_prob.mean()

    grads = torch.autograd.grad(objective(), list(model.parameters()))
    named = dict(zip([n for n, _ in model.named_parameters()], grads))
    # backprop through a fixed grid differentiates the discrete map exactly; the adjoint solves the
    # continuous adjoint ODE on the grid, so it agrees to rk4's O(h^4) error (about 6e-6 here)
    tol = 1e-7 if solver.get("adjoint") is None else 2e-5
    for (name, idx), fd in _finite_difference(model, objective).items():
        assert abs(float(named[name][idx]) - fd) <= tol * (1 + abs(fd)), (name, float(named[name][idx]), fd)


def test_log_likelihood_validates_its_inputs():
    problem = make_problem("ring2d", "vp")
    x = _data(problem, 2)
    score, sde = problem.score, problem.sde
    with pytest.raises(ValueError, match="argument 'trace' expected one of 'exact', 'hutchinson', 'hutchinson_fd', got 'hutch'"):
        sf.log_likelihood(score, sde, x, trace="hutch")
    with pytest.raises(ValueError, match="argument 'probe' expected one of 'rademacher', 'gaussian'"):
        sf.log_likelihood(score, sde, x, trace="hutchinson", probe="normal")
    with pytest.raises(ValueError, match="argument 'method' expected one of .*'dopri5'.*got 'rk45'"):
        sf.log_likelihood(score, sde, x, method="rk45")
    with pytest.raises(ValueError, match="argument 'n_probes' applies to the Hutchinson traces"):
        sf.log_likelihood(score, sde, x, n_probes=4)
    for probe in ("gaussian", "rademacher"):  # was silently dropped: an exact trace returned for a Gaussian probe asked for
        with pytest.raises(ValueError, match=f"argument 'probe' applies to the Hutchinson traces, got probe='{probe}' with trace='exact'"):
            sf.log_likelihood(score, sde, x, probe=probe)
    for trace in ("hutchinson", "hutchinson_fd"):  # nothing to chunk there: refused rather than ignored
        with pytest.raises(ValueError, match=f"argument 'chunk_size' applies to the exact trace, got chunk_size=2 with trace='{trace}'"):
            sf.log_likelihood(score, sde, x, trace=trace, chunk_size=2)
    with pytest.raises(ValueError, match="fixed-grid method 'rk4' needs exactly one of 'steps'"):
        sf.log_likelihood(score, sde, x, method="rk4")
    with pytest.raises(ValueError, match="the adaptive method 'dopri5' chooses its own steps from rtol/atol; omit 'steps'"):
        sf.log_likelihood(score, sde, x, steps=10)
    with pytest.raises(ValueError, match=r"argument 'x' expected a tensor of shape \(B, \*D\).*x\[None\]"):
        sf.log_likelihood(score, sde, x[0])
    with pytest.raises(ValueError, match=r"argument 't_min' expected a time in \(0, T=1\)"):
        sf.log_likelihood(score, sde, x, t_min=0.0)
    with pytest.raises(ValueError, match=r"log_likelihood: the score expected shape \(2, 2\) \(the shape of the x it was called with\), got shape \(2, 1\)"):
        sf.log_likelihood(lambda y, t: y[:, :1], sde, x)
    with pytest.raises(TypeError, match=r"log_likelihood: the score expected dtype torch.float64 \(the dtype of x\), got torch.float32"):
        sf.log_likelihood(lambda y, t: y.float(), sde, x)
    with pytest.raises(ValueError, match=r"prior_log_prob must return one value per sample, shape \(2,\), got shape \(2, 2\)"):
        sf.log_likelihood(score, sde, x, rtol=1e-3, atol=1e-3, prior_log_prob=lambda z: z)
    with pytest.raises(TypeError, match="argument 'prior_log_prob' expected a callable"):
        sf.log_likelihood(score, sde, x, prior_log_prob=1.0)
    with pytest.raises(TypeError, match="argument 'sde' expected a ForwardSDE"):
        sf.log_likelihood(score, "vp", x)
    with pytest.raises(TypeError, match=r"log_likelihood: argument 'adjoint' expected True or False, got str 'no'"):
        sf.log_likelihood(score, sde, x, adjoint="no")  # a string reads as true: it would have run the adjoint


def test_the_adjoint_refuses_a_score_whose_gradients_it_would_silently_miss():
    # odeint_adjoint differentiates a Module's parameters: a plain function's captured tensor got no gradient at all
    # (A.grad stayed None while x.grad was set), where backpropagation through the solver gives it
    sde, x = sf.VPSDE(), torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"log_likelihood: adjoint=True needs the score as a torch.nn.Module, got function"):
        sf.log_likelihood(lambda x, t: -a * x, sde, x, adjoint=True, method="rk4", steps=4)

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x, t):
            return -self.a * x

    grads = []
    for adjoint in (False, True):
        model = Scaled()
        sf.log_likelihood(model, sde, x, adjoint=adjoint, method="rk4", steps=16).log_prob.sum().backward()
        grads.append(model.a.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=0)


def test_a_bad_likelihood_grid_is_described_in_the_likelihood_direction():
    # the grid runs from t_min up to T; the messages and their fix must say so (they described it flipped)
    problem = make_problem("ring2d", "vp")
    x, sde = _data(problem, 2), problem.sde
    grid = sf.time_grid(sde, 8, "log_snr")  # a sampling grid, from T down to t_min
    with pytest.raises(ValueError, match=r"argument 'schedule' expected finite, strictly increasing times, got \[1\.0, .*time_grid\(.*\)\.flip\(0\)"):
        sf.log_likelihood(problem.score, sde, x, method="rk4", schedule=grid)
    with pytest.raises(ValueError, match=r"argument 'schedule' expected a grid that starts at t_min=0\.001 and ends at T=1, got start 0\.0\."):
        sf.log_likelihood(problem.score, sde, x, method="rk4", schedule=torch.linspace(0.0, 1.0, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got end 0\.5\."):
        sf.log_likelihood(problem.score, sde, x, method="expint_pc", schedule=torch.linspace(1e-3, 0.5, 9, dtype=torch.float64))
    res = sf.log_likelihood(problem.score, sde, x, method="rk4", schedule=grid.flip(0))  # the fix the message gives
    assert res.log_prob.shape == (2,)


def test_a_non_finite_score_stops_the_solve_naming_the_time():
    problem = make_problem("ring2d", "vp")
    score = non_finite_after(problem.score, 0.5)
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.[5-9]"):
        with torch.no_grad():
            sf.log_likelihood(score, problem.sde, _data(problem, 2))


def test_a_non_finite_prior_is_blamed_on_the_prior_or_the_end_state_not_on_the_model():
    # the message advised to check the score model or raise t_min, which cannot help when the model was finite
    problem = make_problem("ring2d", "vp")
    x, sde = _data(problem, 3), problem.sde
    nan_at_second = lambda z: sde.prior_log_prob(z).index_fill(0, torch.tensor([1]), float("nan"))  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"prior_log_prob became non-finite \(NaN or inf\) at t=T=1 \(sample 1 "
                                                r"of 3\) at a finite end state x_T.*check the prior_log_prob passed") as err:
        sf.log_likelihood(problem.score, sde, x, method="euler", steps=2, prior_log_prob=nan_at_second)
    assert "score model" not in str(err.value) and err.value.t == sde.T
    # a model whose outputs are finite but large enough to carry the float32 state past its range
    huge = lambda y, t: torch.full_like(y, 3e38)  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"the end state x_T became non-finite \(NaN or inf\) at t=T=1 \(sample 0 "
                                                r"of 3\), though the model's outputs were finite") as err:
        sf.log_likelihood(huge, sde, x.float(), method="euler", steps=4)
    assert "score model" not in str(err.value)
