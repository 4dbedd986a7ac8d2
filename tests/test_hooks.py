"""Step callbacks, progress bars and dense output on every sampling front-end."""

import sys

import pytest
import torch

import scoreflow as sf
from scoreflow.methods import StepMonitor, resolve_stepping
from scoreflow.testing import make_law, make_problem

F64 = torch.float64
ODE_METHODS = [m.name for m in sf.list_methods("ode")]


def _setting(method):
    return {"rtol": 1e-5, "atol": 1e-5} if sf.get_method("ode", method).adaptive else {"steps": 6}


def _ring():
    law, sde = make_law("ring2d").to(F64), sf.VPSDE()
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    return law, sde, x_T


def posterior_mean(law, sde, x, t):
    r"""E[x0 | x_t = x] of a Gaussian mixture in closed form (not through the score):
    :math:`\sum_k r_k(x)\,(\mu_k + \alpha C_k(\alpha^2 C_k + \sigma^2 I)^{-1}(x - \alpha\mu_k))`."""
    alpha, sigma = sde.marginal(torch.as_tensor(t, dtype=F64))
    eye = torch.eye(law.dim, dtype=F64)
    cov_t = alpha**2 * law.covs + sigma**2 * eye  # (K, D, D)
    resid = x[:, None, :] - alpha * law.means  # (B, K, D)
    comp = torch.distributions.MultivariateNormal(alpha * law.means, cov_t)
    resp = torch.softmax(torch.log(law.weights) + comp.log_prob(x[:, None, :]), dim=1)
    gain = alpha * law.covs @ torch.linalg.inv(cov_t)  # (K, D, D)
    means = law.means + torch.einsum("kde,bke->bkd", gain, resid)
    return (resp[..., None] * means).sum(1)


class Recorder:
    def __init__(self, read_denoised=False):
        self.read_denoised, self.steps = read_denoised, []

    def __call__(self, info):
        assert set(info) == {"i", "t", "x", "denoised"}
        denoised = info["denoised"] if self.read_denoised else None
        self.steps.append((info["i"], info["t"], info["x"], denoised))

    @property
    def times(self):
        return [float(t) for _, t, _, _ in self.steps]


@pytest.mark.parametrize("method", ODE_METHODS)
def test_sample_ode_calls_back_once_per_accepted_step_down_to_t_min(method):
    law, sde, x_T = _ring()
    rec = Recorder()
    res = sf.sample_ode(law.score(sde), sde, x_T, method=method, callback=rec, **_setting(method))
    plain = sf.sample_ode(law.score(sde), sde, x_T, method=method, return_trajectory=True, **_setting(method))
    assert [i for i, *_ in rec.steps] == list(range(len(rec.steps)))
    assert all(a > b for a, b in zip(rec.times, rec.times[1:])) and rec.times[-1] == pytest.approx(sde.t_min, rel=1e-12)
    # one call per accepted step: the states of the trajectory, whose steps are the grid or the accepted ones
    torch.testing.assert_close(torch.stack([x for *_, x, _ in rec.steps]), plain.trajectory[1:], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.tensor(rec.times, dtype=F64), plain.times[1:], rtol=1e-12, atol=0)
    if not sf.get_method("ode", method).adaptive:
        assert len(rec.steps) == 6
    # observing changes nothing: same samples, same NFE
    torch.testing.assert_close(res.samples, plain.samples, rtol=0, atol=0)
    assert res.nfe == plain.nfe


def test_adaptive_steps_lie_on_the_exact_flow():
    problem = make_problem("gaussian2d", "vp")
    sde, x_T = problem.sde, problem.sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    for method in ("dopri5", "dpmpp_4m_pc_adaptive"):
        rec = Recorder()
        sf.sample_ode(problem.score, sde, x_T, method=method, rtol=1e-7, atol=1e-7, callback=rec)
        for _, t, x, _ in rec.steps:
            torch.testing.assert_close(x, problem.law.flow_map(sde, x_T, sde.T, float(t)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["ddim", "dpmpp_3m", "dpmpp_3m_pc", "dpm_solver_2", "edm_heun", "ipndm", "rk4", "dopri5", "dpmpp_4m_pc_adaptive"])
def test_denoised_is_the_posterior_mean_and_costs_what_is_documented(method):
    law, sde, x_T = _ring()
    setting = dict(_setting(method), **({"time": "sigma"} if method == "rk4" else {}))
    rec = Recorder(read_denoised=True)
    res = sf.sample_ode(law.score(sde), sde, x_T, method=method, callback=rec, **setting)
    base = sf.sample_ode(law.score(sde), sde, x_T, method=method, **setting)
    for _, t, x, denoised in rec.steps:
        torch.testing.assert_close(denoised, posterior_mean(law, sde, x, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.samples, base.samples, rtol=0, atol=0)
    # Methods whose next step evaluates the score at the state reported reuse that evaluation: only the last
    # step's prediction costs one; the predictor-correctors and torchdiffeq's methods pay one per step.
    reuses = sf.get_method("ode", method).backend == "native" and "pc" not in method
    assert res.nfe - base.nfe == (1 if reuses else len(rec.steps))


def test_sde_pc_and_langevin_call_back_every_step():
    law, sde, x_T = _ring()
    score = law.score(sde)
    for run, steps in (
        (lambda **kw: sf.sample_sde(score, sde, x_T, steps=5, generator=torch.Generator().manual_seed(0), **kw), 5),
        (lambda **kw: sf.sample_pc(score, sde, x_T, steps=5, generator=torch.Generator().manual_seed(0), **kw), 5),
    ):
        rec = Recorder(read_denoised=True)
        res, base = run(callback=rec), run()
        assert [i for i, *_ in rec.steps] == list(range(steps))
        assert all(a > b for a, b in zip(rec.times, rec.times[1:])) and rec.times[-1] == pytest.approx(sde.t_min)
        for _, t, x, denoised in rec.steps:
            torch.testing.assert_close(denoised, posterior_mean(law, sde, x, t), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(res.samples, base.samples, rtol=1e-7, atol=1e-7)
    rec = Recorder(read_denoised=True)
    res = sf.langevin(law.grad_log_prob, x_T, step_size=0.01, steps=4, callback=rec, generator=torch.Generator().manual_seed(0))
    assert rec.times == pytest.approx([0.01, 0.02, 0.03, 0.04]) and res.nfe == 4
    assert all(d is x for _, _, x, d in rec.steps)  # a chain on p itself: nothing to denoise
    edm = sf.EDMSDE(0.1, 2.0)
    rec = Recorder(read_denoised=True)
    sf.annealed_langevin(law.score(edm), x_T, [2.0, 1.0, 0.5], steps=2, step_size=1e-3, callback=rec,
                         generator=torch.Generator().manual_seed(0))
    assert [i for i, *_ in rec.steps] == list(range(6)) and rec.times == [2.0, 2.0, 1.0, 1.0, 0.5, 0.5]
    for _, sigma, x, denoised in rec.steps:
        torch.testing.assert_close(denoised, posterior_mean(law, edm, x, sigma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", [m.name for m in sf.list_methods("sde") if m.backend == "torchsde"])
def test_a_callback_leaves_torchsde_on_the_brownian_path_of_the_solve_without_one(method):
    # before: torchsde steps a grid by sums of stretched steps, dt * (1 + 1e-9), which land 1e-10 beside the grid
    # times the step-by-step solve of a callback queried; its BrownianInterval fixes the path where it is first
    # queried, so the two drew different paths (38 steps: the samples 10 % apart; 5 steps happened to agree)
    law, sde, x_T = _ring()

    def run(**kw):
        return sf.sample_sde(law.score(sde), sde, x_T, method=method, steps=38, generator=torch.Generator().manual_seed(4),
                             **kw)

    base, called = run(), run(callback=lambda info: None)
    assert called.nfe == base.nfe
    torch.testing.assert_close(called.samples, base.samples, rtol=1e-6, atol=1e-6)


def test_a_callback_that_reads_no_prediction_costs_no_evaluation():
    law, sde, x_T = _ring()
    score = law.score(sde)
    runs = [lambda m=m, **kw: sf.sample_ode(score, sde, x_T, method=m, **_setting(m), **kw) for m in ODE_METHODS]
    runs += [lambda m=m.name, **kw: sf.sample_sde(score, sde, x_T, method=m, steps=4, generator=torch.Generator().manual_seed(0), **kw)
             for m in sf.list_methods("sde")]
    runs += [lambda **kw: sf.sample_pc(score, sde, x_T, steps=4, denoise_final=True, **kw),
             lambda **kw: sf.langevin(law.grad_log_prob, x_T, step_size=0.01, steps=3, log_prob=law.log_prob, **kw),
             lambda **kw: sf.annealed_langevin(score, x_T, [1.0, 0.5], steps=2, **kw)]
    for run in runs:
        assert run(callback=Recorder()).nfe == run().nfe


def _replace_at(k, new_state):
    def callback(info):
        if info["i"] == k:
            return new_state(info["x"])
        return None

    return callback


@pytest.mark.parametrize("method", ["ddim", "dpm_solver_3", "edm_heun", "rk4"])
def test_a_returned_state_is_where_the_next_step_starts(method):
    law, sde, x_T = _ring()
    score, k, shift = law.score(sde), 2, lambda x: 0.5 * x + 0.1
    spec = sf.get_method("ode", method)
    grid = sf.time_grid(sde, 6, spec.default_schedule or "t", dtype=F64)
    replaced = sf.sample_ode(score, sde, x_T, method=method, schedule=grid, callback=_replace_at(k, shift))
    # the same solve in two pieces: to the time of step k, then from the returned state on the rest of the grid
    first = sf.sample_ode(score, sde, x_T, method=method, schedule=grid[: k + 2], t_min=float(grid[k + 1]))
    rest = resolve_stepping("test", spec, sde, x_T, start=float(grid[k + 1]), end=sde.t_min, schedule=grid[k + 1 :])
    solver = spec.build("test", None)
    second = solver.sample(sf.CountedScore(score, caller="test"), sde, shift(first.samples), rest, monitor=StepMonitor("test"))
    torch.testing.assert_close(replaced.samples, second.state, rtol=1e-13, atol=1e-13)


def test_a_returned_state_restarts_an_adaptive_torchdiffeq_solve_from_it():
    law, sde, x_T = _ring()
    score = law.score(sde)
    base = sf.sample_ode(score, sde, x_T, method="dopri5", return_trajectory=True)
    steps = len(base.times) - 1
    # returning a copy restarts the solve after every step but the last, with the step the controller proposed:
    # the same steps, one more evaluation each (the first stage at the restart)
    copied = sf.sample_ode(score, sde, x_T, method="dopri5", callback=lambda info: info["x"].clone())
    torch.testing.assert_close(copied.samples, base.samples, rtol=1e-12, atol=1e-12)
    assert copied.nfe == base.nfe + steps - 1


def test_a_returned_state_starts_the_next_langevin_and_sde_step():
    law, sde, x_T = _ring()
    g, saved = torch.Generator().manual_seed(0), {}

    def callback(info):
        if info["i"] == 1:
            saved["state"] = g.get_state()
            return info["x"] * 0.5
        return None

    replaced = sf.langevin(law.grad_log_prob, x_T, step_size=0.01, steps=4, generator=g, callback=callback)
    first = sf.langevin(law.grad_log_prob, x_T, step_size=0.01, steps=2, generator=torch.Generator().manual_seed(0))
    g2 = torch.Generator()
    g2.set_state(saved["state"])
    second = sf.langevin(law.grad_log_prob, first.samples * 0.5, step_size=0.01, steps=2, generator=g2)
    torch.testing.assert_close(replaced.samples, second.samples, rtol=0, atol=0)

    score = law.score(sde)
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(3))
    hit = sf.sample_sde(score, sde, x_T, steps=4, bm=bm, callback=_replace_at(1, torch.zeros_like))
    grid = torch.linspace(sde.T, sde.t_min, 5, dtype=F64)
    spec = sf.get_method("sde", "euler")
    rest = resolve_stepping("test", spec, sde, x_T, start=float(grid[2]), end=sde.t_min, schedule=grid[2:])
    second = spec.build("test", None).sample(sf.CountedScore(score, caller="test"), sde, torch.zeros_like(x_T), rest, bm,
                                               monitor=StepMonitor("test", callback=lambda info: None))
    torch.testing.assert_close(hit.samples, second.state, rtol=1e-12, atol=1e-12)


def test_progress_bar_shows_and_can_be_turned_off(capsys):
    law, sde, x_T = _ring()
    sf.sample_ode(law.score(sde), sde, x_T, method="ddim", steps=7, progress=True)
    shown = capsys.readouterr().err
    assert "sample_ode" in shown and "7/7" in shown
    sf.sample_ode(law.score(sde), sde, x_T, method="dopri5", progress=True)
    assert "sample_ode" in capsys.readouterr().err
    sf.sample_pc(law.score(sde), sde, x_T, steps=3, progress=True)
    assert "3/3" in capsys.readouterr().err
    sf.sample_ode(law.score(sde), sde, x_T, method="ddim", steps=7, progress=False)
    assert capsys.readouterr().err == ""


def test_progress_without_tqdm_names_the_extra(monkeypatch):
    law, sde, x_T = _ring()
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"sample_sde: progress=True needs tqdm.*pip install 'scoreflow\[progress\]'"):
        sf.sample_sde(law.score(sde), sde, x_T, steps=3, progress=True)
    sf.sample_sde(law.score(sde), sde, x_T, steps=3)


def test_bad_callbacks_and_progress_name_the_argument():
    law, sde, x_T = _ring()
    run = lambda **kw: sf.sample_ode(law.score(sde), sde, x_T, method="ddim", steps=3, **kw)  # noqa: E731
    with pytest.raises(TypeError, match=r"sample_ode: argument 'callback' expected a callable callback\(info\)"):
        run(callback=3)
    with pytest.raises(ValueError, match=r"sample_ode: the state the callback returned expected shape \(6, 2\)"):
        run(callback=lambda info: info["x"][:2])
    with pytest.raises(TypeError, match=r"sample_ode: the state the callback returned expected a tensor shaped like x"):
        run(callback=lambda info: 1.0)
    with pytest.raises(TypeError, match=r"sample_pc: argument 'progress' expected True or False, got str"):
        sf.sample_pc(law.score(sde), sde, x_T, steps=3, progress="yes")


def test_save_at_returns_the_state_at_given_times():
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(2), dtype=F64)
    times = torch.tensor([sde.T, 0.7, 0.3, 0.05, sde.t_min], dtype=F64)
    exact = torch.stack([problem.law.flow_map(sde, x_T, sde.T, float(t)) for t in times])
    for method in ("dopri5", "bosh3", "dpmpp_4m_pc_adaptive"):
        for callback in (None, Recorder()):
            res = sf.sample_ode(problem.score, sde, x_T, method=method, rtol=1e-6, atol=1e-6, save_at=times, callback=callback)
            torch.testing.assert_close(res.times, times)
            torch.testing.assert_close(res.trajectory, exact, rtol=0, atol=2e-5)
            torch.testing.assert_close(res.trajectory[-1], res.samples, rtol=0, atol=0)
    res = sf.sample_sde(problem.score, sde, x_T, steps=20, adaptive=True, rtol=1e-2, atol=1e-2, save_at=times[1:4],
                        generator=torch.Generator().manual_seed(0))
    assert res.trajectory.shape == (3, 4, 2)
    torch.testing.assert_close(res.times, times[1:4])


def test_save_at_errors_name_the_fix():
    problem = make_problem("gaussian2d", "vp")
    sde, x_T = problem.sde, torch.zeros(3, 2, dtype=F64)
    times = torch.tensor([0.5, 0.1], dtype=F64)
    with pytest.raises(ValueError, match=r"sample_ode: 'save_at' picks the times .* the fixed-grid method 'rk4' .*schedule="):
        sf.sample_ode(problem.score, sde, x_T, method="rk4", steps=4, save_at=times)
    with pytest.raises(ValueError, match=r"sample_ode: argument 'save_at' expected finite, strictly decreasing times between 1 and 0.001"):
        sf.sample_ode(problem.score, sde, x_T, save_at=times.flip(0))
    with pytest.raises(ValueError, match=r"sample_ode: argument 'save_at' expected .* got \[2.0\]"):
        sf.sample_ode(problem.score, sde, x_T, save_at=torch.tensor([2.0]))
    with pytest.raises(TypeError, match=r"sample_sde: argument 'save_at' expected a 1-D floating tensor"):
        sf.sample_sde(problem.score, sde, x_T, steps=4, adaptive=True, save_at=[0.5])
    with pytest.raises(ValueError, match=r"give 'save_at' .* or return_trajectory=True .* not both"):
        sf.sample_ode(problem.score, sde, x_T, save_at=times, return_trajectory=True)
    with pytest.raises(ValueError, match=r"sample_sde: 'save_at' picks the times .* the fixed-grid method 'euler'"):
        sf.sample_sde(problem.score, sde, x_T, steps=4, save_at=times)


def test_sample_consistency_calls_back_after_every_evaluation_of_f():
    law, sde, x_T = _ring()
    f = law.consistency_function(sde)
    run = lambda **kw: sf.sample_consistency(f, sde, x_T, steps=3, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    rec = Recorder(read_denoised=True)
    res, base = run(callback=rec, return_trajectory=True), run()
    assert [i for i, *_ in rec.steps] == [0, 1, 2] and res.nfe == 3
    assert rec.times == [pytest.approx(sde.t_min)] * 3  # every step maps to t_min
    for k, (_, _, x, denoised) in enumerate(rec.steps):  # x is f's output, its own prediction of the clean sample
        assert denoised is x and torch.equal(x, res.trajectory[k])
    torch.testing.assert_close(res.samples, base.samples, rtol=0, atol=0)
    # A returned state is what the next step re-noises: replacing after step 1 = a one-step run from it.
    hit = run(callback=lambda info: torch.zeros_like(info["x"]) if info["i"] == 1 else None, return_trajectory=True)
    tau = hit.stats["times"][2:]
    g = torch.Generator().manual_seed(0)
    torch.randn(x_T.shape, generator=g, dtype=F64)  # the first re-noising's draw
    alpha, sigma = sde.marginal(tau)
    alpha0, sigma0 = sde.marginal(torch.tensor(sde.t_min, dtype=F64))
    noisy = torch.sqrt(sigma**2 - (alpha / alpha0 * sigma0) ** 2) * torch.randn(x_T.shape, generator=g, dtype=F64)
    torch.testing.assert_close(hit.samples, f(noisy, tau.expand(6)), rtol=1e-12, atol=1e-12)
    assert torch.equal(hit.trajectory[1], torch.zeros_like(x_T))


def test_sample_consistency_progress_and_bad_callbacks(capsys):
    law, sde, x_T = _ring()
    f = law.consistency_function(sde)
    sf.sample_consistency(f, sde, x_T, steps=4, progress=True, generator=torch.Generator().manual_seed(0))
    shown = capsys.readouterr().err
    assert "sample_consistency" in shown and "4/4" in shown
    with pytest.raises(TypeError, match=r"sample_consistency: argument 'callback' expected a callable"):
        sf.sample_consistency(f, sde, x_T, callback="print")
    with pytest.raises(ValueError, match=r"sample_consistency: the state the callback returned expected shape \(6, 2\)"):
        sf.sample_consistency(f, sde, x_T, callback=lambda info: info["x"][:1])
    with pytest.raises(TypeError, match=r"sample_consistency: argument 'progress' expected True or False"):
        sf.sample_consistency(f, sde, x_T, progress=1)


@pytest.mark.parametrize("method", ["ddim", "dpmpp_sde", "edm_stochastic"])
def test_a_returned_state_starts_the_next_native_sde_step(method):
    law, sde, x_T = _ring()
    score, k = law.score(sde), 1
    spec = sf.get_method("sde", method)
    grid = sf.time_grid(sde, 6, spec.default_schedule, dtype=F64)
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(3))
    hit = sf.sample_sde(score, sde, x_T, method=method, schedule=grid, bm=bm, callback=_replace_at(k, lambda x: 0.5 * x))
    first = sf.sample_sde(score, sde, x_T, method=method, schedule=grid[: k + 2], t_min=float(grid[k + 1]), bm=bm)
    # the rest of the grid from the returned state, on the same path (edm_stochastic's churn is at its cap on both grids)
    rest = resolve_stepping("test", spec, sde, x_T, start=float(grid[k + 1]), end=sde.t_min, schedule=grid[k + 1 :])
    second = spec.build("test", None).sample(sf.CountedScore(score, caller="test"), sde, 0.5 * first.samples, rest, bm,
                                               monitor=StepMonitor("test"))
    torch.testing.assert_close(hit.samples, second.state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["dpmpp_2m_sde", "dpmpp_3m_sde_pc"])
def test_a_native_multistep_sde_solver_predicts_again_at_a_returned_state(method):
    law, sde, x_T = _ring()
    score = law.score(sde)
    run = lambda **kw: sf.sample_sde(score, sde, x_T, method=method, steps=6,  # noqa: E731
                                     generator=torch.Generator().manual_seed(3), **kw)
    base, copied = run(), run(callback=lambda info: info["x"].clone())
    # a returned copy is a new state: its prediction is evaluated again (one NFE after each step but the last)
    assert copied.nfe == base.nfe + 5
    if method == "dpmpp_2m_sde":
        # equal in value to the state the step reached, whose prediction the next step would have used
        torch.testing.assert_close(copied.samples, base.samples, rtol=0, atol=0)
    # (the predictor-corrector's next step otherwise uses the prediction at the predicted, not the corrected, state)


@pytest.mark.parametrize(
    ("kind", "method"),
    [("ode", "dopri5"), ("ode", "dpmpp_2m_pc"), ("ode", "dpmpp_4m_pc_adaptive"), ("sde", "reversible_heun"),
     ("sde", "dpmpp_2m_sde"), ("langevin", "mala")],
)
def test_a_state_changed_in_place_by_the_callback_is_a_replacement_like_a_returned_one(kind, method):
    # before: the solver, which tells a replacement by identity, kept what it carried from the old state
    # (the prediction, torchdiffeq's first stage, reversible_heun's auxiliary state): dopri5's samples moved
    # by 3.5e-2, reversible_heun's by 1.8e2, from those of the same edit returned as a new tensor
    law, sde, x_T = _ring()
    score = law.score(sde)

    def run(callback):
        g = torch.Generator().manual_seed(3)
        if kind == "ode":
            kw = {"rtol": 1e-4, "atol": 1e-4} if sf.get_method("ode", method).adaptive else {"steps": 6}
            return sf.sample_ode(score, sde, x_T, method=method, callback=callback, **kw)
        if kind == "sde":
            return sf.sample_sde(score, sde, x_T, method=method, steps=6, generator=g, callback=callback)
        return sf.langevin(law.grad_log_prob, x_T, step_size=0.05, steps=6, generator=g, callback=callback,
                           log_prob=law.log_prob)

    def in_place_returning_none(info):
        info["x"].mul_(0.9)

    returned = run(lambda info: info["x"] * 0.9)
    for in_place in (in_place_returning_none, lambda info: info["x"].mul_(0.9)):  # the latter returns x itself
        changed = run(in_place)
        assert changed.nfe == returned.nfe
        torch.testing.assert_close(changed.samples, returned.samples, rtol=0, atol=0)


def test_a_callback_asking_for_k_diffusions_sigma_is_told_what_the_keys_are():
    # before: a bare KeyError: 'sigma'
    law, sde, x_T = _ring()
    with pytest.raises(KeyError, match=r"info has the keys 'i', 't', 'x' and 'denoised', got 'sigma'. k-diffusion's 'sigma' is 't' here"):
        sf.sample_ode(law.score(sde), sde, x_T, method="dpmpp_2m", steps=3, callback=lambda info: info["sigma"])
    with pytest.raises(KeyError, match=r"got 'step'\.\"?$"):
        sf.sample_sde(law.score(sde), sde, x_T, steps=3, callback=lambda info: info["step"])
