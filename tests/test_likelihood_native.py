"""The native likelihood solvers (expint_pc, expint_pc_adaptive) against closed forms, dopri5 and bad input."""

import collections
import math

import pytest
import torch

import scoreflow as sf
from scoreflow._cache import clear_caches
from scoreflow.analytic import GaussianMixture
from scoreflow.solvers.likelihood import step_weights
from scoreflow.testing import make_problem

from _helpers import non_finite_after

SDES = ["vp", "subvp", "ve"]


def _data(problem, n, seed=0, dtype=torch.float64):
    x = problem.law.marginal(problem.sde, problem.sde.t_min).sample(n, generator=torch.Generator().manual_seed(seed))
    return x.to(dtype)


def _exact(problem, x):
    return problem.law.marginal(problem.sde, problem.sde.t_min).log_prob(x.double())


def _recording(problem):
    """The problem's score and the list it appends to on every call."""
    calls = []

    def score(x, t):
        calls.append(1)
        return problem.score(x, t)

    return score, calls


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_fixed_grid_converges_to_the_exact_log_density_with_its_declared_order(sde):
    problem = make_problem("gaussian2d", sde)
    x = _data(problem, 8)
    p_T = problem.law.marginal(problem.sde, problem.sde.T).log_prob
    errors = []
    with torch.no_grad():
        for steps in (32, 64, 128):
            res = sf.log_likelihood(problem.score, problem.sde, x, method="expint_pc", steps=steps, prior_log_prob=p_T)
            errors.append(float((res.log_prob - _exact(problem, x)).abs().max()))
    slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    order = sf.get_method("likelihood", "expint_pc").order
    assert order == 5 and all(order - 0.7 <= s for s in slopes), (errors, slopes)
    assert errors[-1] < 2e-5


@pytest.mark.parametrize("sde", ["rf", "vp", "ve"])
def test_default_grid_of_24_steps_is_within_a_few_hundredths_of_a_nat_on_a_mixture(sde):
    # On a log-SNR grid (the default before "noise_fraction") the same solves were off by 0.18 (rf), 0.20 (vp) and
    # 0.34 (ve) nats in the mean: its many short steps near the data leave long ones where the mixture's modes
    # separate, and a multistep predictor extrapolated over them.
    problem = make_problem("mixture16d", sde)
    t_min = max(1e-3, problem.sde.t_min)
    marginal = problem.law.marginal(problem.sde, t_min)
    x = marginal.sample(64, generator=torch.Generator().manual_seed(3))
    p_T = problem.law.marginal(problem.sde, problem.sde.T).log_prob
    with torch.no_grad():
        res = sf.log_likelihood(problem.score, problem.sde, x, t_min=t_min, method="expint_pc", steps=24, prior_log_prob=p_T)
    error = (res.log_prob - marginal.log_prob(x)).abs().mean()
    assert res.nfe == 25 and error < 0.03, float(error)


@pytest.mark.parametrize("sde", SDES + ["edm"])
def test_adaptive_matches_the_exact_log_density_of_a_mixture(sde):
    problem = make_problem("mixture16d", sde) if sde != "edm" else None
    if problem is None:
        law = make_problem("mixture16d", "vp").law
        problem = type(make_problem("mixture16d", "vp"))("edm", law, sf.EDMSDE())
    x = _data(problem, 6)
    p_T = problem.law.marginal(problem.sde, problem.sde.T).log_prob
    with torch.no_grad():
        res = sf.log_likelihood(problem.score, problem.sde, x, method="expint_pc_adaptive", rtol=1e-8, atol=1e-8,
                                prior_log_prob=p_T)
    assert float((res.log_prob - _exact(problem, x)).abs().max()) < 1e-6
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta_log_prob)


def test_adaptive_agrees_with_dopri5_on_the_same_hutchinson_probe():
    problem = make_problem("mixture16d", "vp")
    x = _data(problem, 32)
    p_T = problem.law.marginal(problem.sde, problem.sde.T).log_prob
    kwargs = {"trace": "hutchinson", "prior_log_prob": p_T, "n_probes": 2}
    with torch.no_grad():
        ours = sf.log_likelihood(problem.score, problem.sde, x, method="expint_pc_adaptive", rtol=1e-8, atol=1e-8,
                                 generator=torch.Generator().manual_seed(3), **kwargs)
        theirs = sf.log_likelihood(problem.score, problem.sde, x, method="dopri5", rtol=1e-9, atol=1e-9,
                                   generator=torch.Generator().manual_seed(3), **kwargs)
    # one probe's estimate is off the exact value by about a nat; both solve the same estimator
    assert float((ours.log_prob - _exact(problem, x)).abs().mean()) > 0.1
    assert float((ours.log_prob - theirs.log_prob).abs().max()) < 1e-6
    torch.testing.assert_close(ours.std_error, theirs.std_error, atol=1e-6, rtol=0)


@pytest.mark.parametrize("options", [{"reject_above": 0.5}, {"reject_above": 0.1}, {"safety": 1.5}])
def test_a_stricter_step_control_retries_rejected_steps_shorter(options):
    # with reject_above below safety^(p+1) (or safety > 1) a rejected step's factor safety * e^(-1/(p+1)) exceeded 1:
    # it was retried longer, rejected again, until max_steps
    problem = make_problem("mixture16d", "vp")
    x = _data(problem, 6)
    p_T = problem.law.marginal(problem.sde, problem.sde.T).log_prob
    with torch.no_grad():
        res = sf.log_likelihood(problem.score, problem.sde, x, method="expint_pc_adaptive", rtol=1e-6, atol=1e-6,
                                prior_log_prob=p_T, options={**options, "max_steps": 2000})
    assert float((res.log_prob - _exact(problem, x)).abs().max()) < 1e-4 and res.nfe < 2000


def test_a_flow_path_ends_at_pure_noise_and_reaches_the_exact_density():
    rf = sf.RectifiedFlow()
    law = make_problem("mixture16d", "vp").law
    x = law.marginal(rf, rf.t_min).sample(6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for method, kwargs in (("expint_pc_adaptive", {"rtol": 1e-8, "atol": 1e-8}), ("expint_pc", {"steps": 200})):
            res = sf.log_likelihood(law.velocity(rf), rf, x, method=method, **kwargs)
            assert float((res.log_prob - law.marginal(rf, rf.t_min).log_prob(x)).abs().max()) < 1e-4, method
    with pytest.raises(ValueError, match=r"log_likelihood: the native method 'expint_pc_adaptive' .* t_min=0"):
        sf.log_likelihood(law.velocity(rf), rf, x, method="expint_pc_adaptive", t_min=0.0)


def test_native_methods_refuse_t_min_0_for_every_prediction():
    # the same message whatever the model predicts and for the fixed grid too (a data prediction divided by
    # sigma(0) = 0 in float arithmetic, and the fixed grid's schedule failed first, naming time_grid)
    rf = sf.RectifiedFlow()
    law = make_problem("gaussian2d", "vp").law
    velocity = law.velocity(rf).predict

    def denoiser(y, t):  # E[x0 | x_t] = x_t - t u(x_t, t) on rectified flow, finite on [0, 1]
        return y - t[:, None] * velocity(y, t)

    x = law.sample(3, generator=torch.Generator().manual_seed(0))
    for model in (law.velocity(rf), sf.score_from_denoiser(denoiser, rf)):
        for method, kwargs in (("expint_pc_adaptive", {}), ("expint_pc", {"steps": 8})):
            with pytest.raises(ValueError, match=rf"^log_likelihood: the native method '{method}' steps in the log-SNR, which is \+inf at t_min=0"):
                sf.log_likelihood(model, rf, x, method=method, t_min=0.0, **kwargs)


def test_image_shaped_data_and_float32():
    problem = make_problem("gaussian16d", "vp")
    law = problem.law
    shaped = GaussianMixture(law.weights, law.means, law.covs, event_shape=(1, 4, 4))
    x = _data(problem, 5)
    with torch.no_grad():
        flat = sf.log_likelihood(problem.score, problem.sde, x, method="expint_pc_adaptive", rtol=1e-6, atol=1e-6)
        boxed = sf.log_likelihood(shaped.score(problem.sde), problem.sde, x.reshape(5, 1, 4, 4), method="expint_pc_adaptive",
                                  rtol=1e-6, atol=1e-6)
        single = sf.log_likelihood(law.to(torch.float32).score(problem.sde), problem.sde, x.float(), method="expint_pc",
                                   steps=64)
    torch.testing.assert_close(boxed.log_prob, flat.log_prob)
    assert boxed.latent.shape == (5, 1, 4, 4)
    assert single.log_prob.dtype == torch.float32
    assert float((single.log_prob.double() - flat.log_prob).abs().max()) < 1e-2


def test_evaluations_and_vjps_are_counted():
    problem = make_problem("gaussian16d", "vp")
    score, calls = _recording(problem)
    x = _data(problem, 3)
    with torch.no_grad():
        res = sf.log_likelihood(score, problem.sde, x, method="expint_pc", steps=12, trace="hutchinson", n_probes=3,
                                generator=torch.Generator().manual_seed(0))
        exact = sf.log_likelihood(score, problem.sde, x, method="expint_pc", steps=12)
        adaptive = sf.log_likelihood(score, problem.sde, x, method="expint_pc_adaptive", rtol=1e-4, atol=1e-4)
    assert res.nfe == exact.nfe == 13 and res.nfe_vjp == 3 * 13 and exact.nfe_vjp == 16 * 13
    assert len(calls) == res.nfe + exact.nfe + adaptive.nfe and adaptive.nfe_vjp == 16 * adaptive.nfe


def test_log_prob_is_differentiable_through_the_native_steps():
    sde = sf.VPSDE()

    class Score(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.log_scale = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, t):
            alpha, sigma = sde.marginal(t)
            return -x / (alpha**2 * torch.exp(2 * self.log_scale) + sigma**2)[:, None]

    x = 0.5 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = []
    for method, kwargs in (("expint_pc", {"steps": 64}), ("expint_pc_adaptive", {"rtol": 1e-8, "atol": 1e-8}),
                           ("rk4", {"steps": 200})):
        model = Score()
        sf.log_likelihood(model, sde, x, method=method, **kwargs).log_prob.mean().backward()
        grads.append(model.log_scale.grad)
    # backpropagation through the steps against a classical method's; both near the closed form (see docs/likelihood.md)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=0)
    torch.testing.assert_close(grads[1], grads[2], rtol=1e-7, atol=0)
    alpha, sigma = sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64))
    v = alpha**2 + sigma**2
    closed = -(0.5 / v - x.pow(2) / (2 * v**2)).sum(dim=1).mean() * 2 * alpha**2
    torch.testing.assert_close(grads[1], closed, rtol=1e-4, atol=0)


def test_a_nan_stops_the_solve_naming_its_time():
    problem = make_problem("gaussian2d", "vp")
    score = non_finite_after(problem.score, 0.5)
    x = _data(problem, 4)
    grid = torch.linspace(problem.sde.t_min, problem.sde.T, 9, dtype=torch.float64)
    first = float(grid[grid > 0.5][0])
    with torch.no_grad(), pytest.raises(sf.NonFiniteError, match=rf"score became non-finite .* at t={first:.6g} "):
        sf.log_likelihood(score, problem.sde, x, method="expint_pc", schedule=grid)
    with torch.no_grad(), pytest.raises(sf.NonFiniteError, match=r"non-finite .* at t=0\.5"):
        sf.log_likelihood(score, problem.sde, x, method="expint_pc_adaptive", rtol=1e-3, atol=1e-3)


def test_bad_arguments_are_refused_before_any_evaluation():
    problem = make_problem("gaussian2d", "vp")
    score, calls = _recording(problem)
    x = _data(problem, 2)
    cases = [
        (ValueError, r"log_likelihood: argument 'adjoint' applies to torchdiffeq's methods, got adjoint=True",
         {"method": "expint_pc", "steps": 8, "adjoint": True}),
        (ValueError, r"'rtol'/'atol' apply to adaptive methods; the fixed-grid method 'expint_pc'",
         {"method": "expint_pc", "steps": 8, "rtol": 1e-3}),
        (ValueError, r"the fixed-grid method 'expint_pc' needs exactly one of", {"method": "expint_pc"}),
        (ValueError, r"the adaptive method 'expint_pc_adaptive' chooses its own steps",
         {"method": "expint_pc_adaptive", "steps": 8}),
        (ValueError, r"the method 'expint_pc' takes 'steps', not 'step_size'", {"method": "expint_pc", "step_size": 0.1}),
        (TypeError, r"method 'expint_pc_adaptive' takes no option 'order'; its options: 'h_init'",
         {"method": "expint_pc_adaptive", "options": {"order": 3}}),
        (ValueError, r"option 'safety' expected a finite number > 0, got -1.0", {"method": "expint_pc_adaptive", "options": {"safety": -1.0}}),
        (TypeError, r"option 'switch' expected a real number, got str", {"method": "expint_pc", "steps": 8,
                                                                          "options": {"switch": "high"}}),
        (ValueError, r"option 'switch' expected a number in \[-20, 20\], got inf", {"method": "expint_pc_adaptive",
                                                                                   "options": {"switch": math.inf}}),
        (ValueError, r"argument 'method' expected one of .*expint_pc", {"method": "expint"}),
    ]
    for error, message, kwargs in cases:
        with pytest.raises(error, match=message):
            sf.log_likelihood(score, problem.sde, x, **kwargs)
    assert calls == []
    with pytest.raises(RuntimeError, match=r"expint_pc_adaptive took max_steps=3 steps .* raise options"):
        sf.log_likelihood(score, problem.sde, x, method="expint_pc_adaptive", options={"max_steps": 3})


def test_step_weights_integrate_polynomials_exactly():
    # nodes at log-SNRs on both sides of the switch; a step in sigma_bar (lam_s > 0) and one in r (lam_s <= 0)
    lam = [2.0, 1.5, 1.0, 0.5, 0.2, -0.4, -1.0]
    alpha = [1.0 / math.sqrt(1 + math.exp(-2 * v)) for v in lam]
    sigma = [a * math.exp(-v) for a, v in zip(alpha, lam)]
    for start, end, sign in ((3, 4, -1.0), (5, 6, 1.0)):
        predictor = [start, start - 1, start - 2, start - 3]
        noise, ratio, (wp, _, _), (w, _, _) = step_weights(lam, alpha, sigma, predictor, end, 0.0)
        assert noise == (sign < 0)
        v_s, v_t = math.exp(sign * lam[start]), math.exp(sign * lam[end])
        scale = alpha[end] if noise else sigma[end]
        # the predictor integrates a cubic in the step's variable exactly, the corrector (the end added) a quartic
        for weights, points, degree in ((wp, predictor, 4), (w, [start, end, *predictor[1:]], 5)):
            v = [math.exp(sign * lam[j]) for j in points]
            for p in range(degree):
                exact = (v_t ** (p + 1) - v_s ** (p + 1)) / (p + 1)
                assert sum(wj * vj**p for wj, vj in zip(weights, v)) == pytest.approx(scale * exact, rel=1e-9)
        assert ratio == pytest.approx(alpha[end] / alpha[start] if noise else sigma[end] / sigma[start])


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_the_adaptive_solver_gives_the_same_density_for_every_native_prediction(kind):
    # the solver forms x0 and eps from each prediction by the node's affine maps; the density must not depend on them
    problem = make_problem("mixture16d", "vp")
    x = _data(problem, 8)
    to_net = {"eps": sf.eps_from_score, "x0": sf.denoiser_from_score, "v": sf.velocity_from_score}[kind]
    from_net = {"eps": sf.score_from_eps, "x0": sf.score_from_denoiser, "v": sf.score_from_velocity}[kind]
    model = from_net(to_net(problem.score, problem.sde), problem.sde)
    assert model.prediction == kind
    with torch.no_grad():
        ref, res = (sf.log_likelihood(m, problem.sde, x, trace="hutchinson", method="expint_pc_adaptive", rtol=1e-6,
                                      atol=1e-6, generator=torch.Generator().manual_seed(2)) for m in (problem.score, model))
    torch.testing.assert_close(res.log_prob, ref.log_prob, rtol=0, atol=1e-7)


def test_the_adaptive_solver_stops_at_the_first_non_finite_step():
    problem = make_problem("gaussian2d", "vp")
    score = non_finite_after(problem.score, 0.5, torch.inf)
    with torch.no_grad(), pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.5"):
        sf.log_likelihood(score, problem.sde, _data(problem, 4), method="expint_pc_adaptive", rtol=1e-6, atol=1e-6)
    # the error norm read every step sees the infinity at once: no step is taken past it
    assert sum(t > 0.5 for t in score.times) == 1 and score.times[-1] > 0.5


def test_the_adaptive_solver_reads_the_state_once_per_step():
    """One read of a tensor of the state's dtype per step (the error norm); the node's coefficients are float64 host
    arithmetic (one read of a CPU tensor per step, none at the step that lands on T)."""
    sde = sf.VPSDE()

    def score(x, t):  # N(0, c I) data with c in [0.05, 1] by coordinate, written without a host read
        alpha, sigma = sde.marginal(t)
        return -x / (alpha[:, None] ** 2 * torch.linspace(0.05, 1.0, 16) + sigma[:, None] ** 2)

    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    names = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def solve(tol):
        clear_caches()  # both solves cold, whatever ran before in this process
        reads = collections.Counter()

        def counted(name):
            def read(self, *args, **kwargs):
                reads[self.dtype] += 1
                return originals[name](self, *args, **kwargs)

            return read

        for name in names:
            setattr(torch.Tensor, name, counted(name))
        try:
            with torch.no_grad():
                res = sf.log_likelihood(score, sde, x, trace="hutchinson", method="expint_pc_adaptive", rtol=tol,
                                        atol=tol, generator=torch.Generator().manual_seed(0))
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
        return res.nfe - 1, reads  # steps (accepted and rejected): one evaluation each after the first

    (few, loose), (many, tight) = solve(1e-2), solve(1e-4)
    assert many > few + 10
    assert tight[torch.float32] - many == loose[torch.float32] - few <= 6
    assert tight[torch.float64] - loose[torch.float64] == many - few
    assert sum(tight.values()) - tight[torch.float32] - tight[torch.float64] == sum(loose.values()) - loose[torch.float32] - loose[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_adaptive_solver_writes_its_weights_in_place_only_without_a_graph(dtype):
    """Without a graph the step's weights are written into one table in place (through a NumPy view); with one (x
    requires grad) each step makes a new table.  Both give the same steps and values, and the model is given each
    node's time as its own tensor, not a view of the table written again."""
    problem = make_problem("gaussian2d", "vp")
    x, calls = _data(problem, 8, dtype=dtype), []

    def score(y, t):
        calls.append((t, float(t[0])))  # the time as given, and its value then
        return problem.score(y, t)

    def solve(x):
        calls.clear()
        res = sf.log_likelihood(score, problem.sde, x, trace="hutchinson", method="expint_pc_adaptive", rtol=1e-4,
                                atol=1e-4, generator=torch.Generator().manual_seed(0))
        return res, [value for _, value in calls], [float(t[0]) for t, _ in calls]

    with torch.no_grad():
        in_place, given, kept = solve(x)
    graph, given_graph, _ = solve(x.clone().requires_grad_(True))
    assert graph.log_prob.requires_grad and not in_place.log_prob.requires_grad
    assert in_place.nfe == graph.nfe > 10 and given == given_graph
    assert kept == given and len(set(given)) == len(given)  # no time changed after the call that was given it
    torch.testing.assert_close(in_place.log_prob, graph.log_prob.detach(), rtol=0, atol=0)
