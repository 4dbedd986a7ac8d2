"""The method registry is what the front-ends accept: every listed method runs, nothing else is accepted."""

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.methods import KINDS, Method
from scoreflow.testing import make_problem

FRONT_END_KINDS = ("ode", "sde", "likelihood")
ALL_NAMES = {m.name for m in sf.list_methods()}


@pytest.fixture(scope="module")
def gaussian():
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return problem, x_T, problem.law.flow_map(sde, x_T, sde.T, sde.t_min)


def _run(kind, name, score, sde, x, **kw):
    """Call the front-end of ``kind`` with ``method=name``; a budget that every method meets."""
    method = sf.get_method(kind, name) if name in {m.name for m in sf.list_methods(kind)} else None
    budget = {"rtol": 1e-6, "atol": 1e-6} if method is not None and method.adaptive else {"steps": 64}
    budget.update(kw)
    if kind == "ode":
        return sf.sample_ode(score, sde, x, method=name, **budget)
    if kind == "sde":
        return sf.sample_sde(score, sde, x, method=name, generator=torch.Generator().manual_seed(1), **budget)
    return sf.log_likelihood(score, sde, x, method=name, **budget)


def test_every_record_is_well_formed():
    for method in sf.list_methods():
        assert isinstance(method, Method) and method.kinds and set(method.kinds) <= set(KINDS)
        assert method.summary and method.nfe_per_step >= 1 and callable(method.solver)
        assert not (method.adaptive and method.tolerance), method.name  # adaptive already; tolerance is for fixed grids
        for kind in method.kinds:
            assert sf.get_method(kind, method.name) is method
    # a name means one method: a method of two kinds is one record
    for kind in KINDS:
        names = [m.name for m in sf.list_methods(kind)]
        assert len(names) == len(set(names)) and names, kind


def test_the_ode_methods_have_their_declared_orders_and_options():
    # the facts the docs tables print, spot-checked against the solvers' literature values
    expected = {"euler": 1, "heun": 2, "rk4": 4, "dopri5": 5, "ddim": 1, "dpmpp_2m": 2, "dpm_solver_3": 3}
    for name, order in expected.items():
        assert sf.get_method("ode", name).order == order
    assert sf.get_method("ode", "dopri5").adaptive and not sf.get_method("ode", "rk4").adaptive
    assert sf.get_method("sde", "srk").levy_area and sf.get_method("sde", "srk").strong_order == 1.5
    assert set(sf.get_method("ode", "dpmpp_4m_pc_adaptive").options) == {"h_init", "safety", "max_factor", "reject_above", "max_steps"}


@pytest.mark.parametrize("kind, name", [(k, m.name) for k in ("ode", "sde") for m in sf.list_methods(k)])
def test_every_listed_sampling_method_runs_and_counts_its_evaluations(kind, name, gaussian):
    problem, x_T, exact = gaussian
    counter = RecordingScore(problem.score)
    res = _run(kind, name, counter, problem.sde, x_T)
    assert res.samples.shape == x_T.shape and res.samples.dtype == x_T.dtype
    assert res.nfe == counter.calls >= 1
    method = sf.get_method(kind, name)
    if not method.adaptive:
        # a fixed grid of 64 steps costs nfe_per_step per step (a multistep start-up adds one; torchsde's
        # contract check shares the first evaluation)
        assert 64 * method.nfe_per_step - 1 <= res.nfe <= 64 * method.nfe_per_step + 1
    if kind == "ode":  # lands near the exact flow (the order tests measure how near)
        assert float((res.samples - exact).abs().max()) < 0.1, name


@pytest.mark.parametrize("name", [m.name for m in sf.list_methods("likelihood")])
def test_every_likelihood_method_gives_the_exact_log_density(name):
    problem = make_problem("ring2d", "vp")
    sde = problem.sde
    x = problem.law.marginal(sde, sde.t_min).sample(4, generator=torch.Generator().manual_seed(3))
    exact = problem.law.marginal(sde, sde.t_min).log_prob(x)
    method = sf.get_method("likelihood", name)
    # budgets at which each method's error is far below the 1e-3 nats asked
    tol = 1e-7 if method.order > 2 else 1e-6
    budget = {"rtol": tol, "atol": tol} if method.adaptive else {"steps": {1: 2000, 2: 400}.get(method.order, 100)}
    with torch.no_grad():
        res = sf.log_likelihood(problem.score, sde, x, method=name, prior_log_prob=problem.law.marginal(sde, sde.T).log_prob, **budget)
    tolerance = 2e-2 if method.order == 1 else 1e-3
    assert float((res.log_prob - exact).abs().max()) < tolerance, (name, res.log_prob, exact)


@pytest.mark.parametrize("kind", FRONT_END_KINDS)
def test_a_front_end_accepts_its_listed_methods_and_nothing_else(kind, gaussian):
    problem, x_T, _ = gaussian
    listed = {m.name for m in sf.list_methods(kind)}
    for name in sorted(ALL_NAMES - listed) + ["rk45"]:
        counter = RecordingScore(problem.score)
        with pytest.raises(ValueError, match=rf"argument 'method' expected one of .*got '{name}'"):
            _run(kind, name, counter, problem.sde, x_T)
        assert counter.calls == 0, (kind, name)  # refused before any score evaluation


def test_log_likelihood_refuses_the_native_samplers_before_any_score_call():
    # they integrate the state only; the divergence integral would need another scheme
    problem = make_problem("ring2d", "vp")
    x = problem.law.sample(3, generator=torch.Generator().manual_seed(0))
    for name in ("dpmpp_2m", "ddim", "edm_heun", "dpmpp_4m_pc_adaptive"):
        counter = RecordingScore(problem.score)
        with pytest.raises(ValueError, match=r"log_likelihood: argument 'method' expected one of 'euler', .*'dopri5'.*got"):
            sf.log_likelihood(counter, problem.sde, x, method=name, steps=10)
        assert counter.calls == 0


def test_get_method_and_list_methods_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"list_methods: argument 'kind' expected one of 'ode', 'sde', 'likelihood'"):
        sf.list_methods("odes")
    with pytest.raises(ValueError, match=r"get_method: argument 'method' expected one of .*'dopri5'.*got 'rk45'"):
        sf.get_method("ode", "rk45")
    assert {m.name for m in sf.list_methods("predictor")} == {"reverse_diffusion", "euler_maruyama", "ancestral"}
    assert [m.name for m in sf.list_methods("corrector")] == ["langevin"]


def test_options_are_checked_by_the_record_before_any_score_call(gaussian):
    problem, x_T, _ = gaussian
    counter = RecordingScore(problem.score)
    with pytest.raises(TypeError, match=r"sample_ode: method 'rk4' takes no option 'max_num_steps'; its options: none"):
        sf.sample_ode(counter, problem.sde, x_T, method="rk4", steps=4, options={"max_num_steps": 3})
    with pytest.raises(TypeError, match=r"sample_ode: argument 'options' expected a dict or None, got str 'fast'"):
        sf.sample_ode(counter, problem.sde, x_T, options="fast")
    with pytest.raises(ValueError, match=r"sample_ode: option 'max_num_steps' expected an int >= 1, got 0"):
        sf.sample_ode(counter, problem.sde, x_T, options={"max_num_steps": 0})
    assert counter.calls == 0
    with pytest.raises(RuntimeError, match=r"dopri5: the adaptive solve took more than max_num_steps=3 steps"):
        sf.sample_ode(counter, problem.sde, x_T, rtol=1e-9, atol=1e-9, options={"max_num_steps": 3})


def test_register_refuses_a_second_method_of_the_same_name():
    with pytest.raises(ValueError, match=r"a 'ode' method named 'euler' is already registered"):
        sf.methods.register(sf.get_method("ode", "euler"))


class _UserEuler:
    """A user's own "ode" solver, written to the documented interface (docs/architecture.md): Euler in t."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def sample(self, score, sde, x_T, stepping, *, monitor):
        ts, x = stepping.times, x_T
        for i in range(len(ts) - 1):
            t = ts[i].expand(x.shape[0])
            drift = sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] ** 2 * score(x, ts[i])
            x = monitor.step(i, ts[i + 1], x + self.scale * (ts[i + 1] - ts[i]) * drift)
        return sf.methods.Solution(x)


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test (a user's record must not leak into the other tests)."""
    from scoreflow.methods import registry as module

    monkeypatch.setattr(module, "_REGISTRY", {kind: dict(methods) for kind, methods in module._REGISTRY.items()})
    return module


def test_a_user_registered_method_runs_through_sample_ode_as_the_front_end_steps_it(registry, gaussian):
    problem, x_T, _ = gaussian
    scale = sf.methods.positive_option(1.0, "a factor on the step")
    registry.register(Method("user_euler", ("ode",), "native", _UserEuler, "Euler in t", order=1,
                             default_schedule="t", options={"scale": scale}))
    assert "user_euler" in [m.name for m in sf.list_methods("ode")]
    mine = sf.sample_ode(problem.score, problem.sde, x_T, method="user_euler", steps=8, return_trajectory=True)
    # the same steps as torchdiffeq's Euler on its default grid (uniform in t)
    ref = sf.sample_ode(problem.score, problem.sde, x_T, method="euler", steps=8, return_trajectory=True)
    assert mine.nfe == ref.nfe == 8
    torch.testing.assert_close(mine.trajectory, ref.trajectory, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"sample_ode: option 'scale' expected a finite number > 0"):
        sf.sample_ode(problem.score, problem.sde, x_T, method="user_euler", steps=8, options={"scale": -1.0})
    with pytest.raises(ValueError, match=r"log_likelihood: argument 'method' expected one of .*got 'user_euler'"):
        sf.log_likelihood(problem.score, problem.sde, x_T, method="user_euler", steps=8)


def _record(**kw):
    fields = dict(name="user_euler", kinds=("ode",), backend="native", solver=_UserEuler, summary="Euler in t",
                  default_schedule="t")
    fields.update(kw)
    return Method(**fields)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"default_schedule": None}, ValueError, r"Method\('user_euler'\): a fixed-grid method that integrates in its own "
         r"variables \(time_variables=\(\)\) needs 'default_schedule'"),
        ({"default_schedule": "cosine"}, ValueError, r"argument 'default_schedule' expected one of 't', 'log_snr'"),
        ({"coarse_t_schedule": "cosine"}, ValueError, r"argument 'coarse_t_schedule' expected one of 't', 'log_snr'"),
        ({"default_schedule": "karras", "coarse_t_schedule": "log_snr"}, ValueError,
         r"'coarse_t_schedule' replaces a default uniform t grid, but default_schedule='karras'"),
        ({"coarse_t_schedule": "log_snr", "coarse_t_noise_level": 0}, ValueError,
         r"argument 'coarse_t_noise_level' expected a finite number > 0, got 0"),
        ({"time_variables": ("lambda",)}, ValueError, r"argument 'time_variables' expected one of 't', 'sigma', 'log_snr'"),
        ({"kinds": "ode"}, TypeError, r"argument 'kinds' expected a non-empty tuple of kinds, e.g. \('ode',\), got 'ode'"),
        ({"kinds": ()}, TypeError, r"argument 'kinds' expected a non-empty tuple"),
        ({"name": ""}, TypeError, r"Method: argument 'name' expected a non-empty str"),
        ({"solver": 3}, TypeError, r"argument 'solver' expected a callable solver\(\*\*options\)"),
        ({"order": -1}, ValueError, r"argument 'order' expected a finite number > 0, got -1"),
        ({"strong_order": "1"}, TypeError, r"argument 'strong_order' expected a real number, got str"),
        ({"nfe_per_step": 0}, ValueError, r"argument 'nfe_per_step' expected an int >= 1, got 0"),
        ({"options": {"scale": 1.0}}, TypeError, r"argument 'options\['scale'\]' expected a Option"),
        ({"options": {"scale": sf.methods.positive_option(-1.0, "")}}, ValueError,
         r"option 'scale' declares a default its own check refuses: .*expected a finite number > 0, got -1.0"),
        ({"options": {"scale": sf.methods.positive_option(0.5, "")}}, ValueError,
         r"option 'scale' declares default 0.5, but the solver's own default is 1.0"),
        ({"options": {"gain": sf.methods.positive_option(1.0, "")}}, ValueError, r"option 'gain' is not a keyword argument of the solver"),
    ],
    ids=["no default_schedule", "unknown schedule", "unknown coarse_t_schedule", "coarse_t_schedule without 't'",
         "coarse_t_noise_level 0", "unknown time variable", "kinds a str", "no kinds", "empty name",
         "solver not callable", "negative order", "str order", "nfe 0", "option not an Option", "default refused",
         "default not the solver's", "option the solver lacks"],
)
def test_a_malformed_method_record_is_refused_when_made_naming_the_field(kw, error, match):
    with pytest.raises(error, match=match):
        _record(**kw)


def test_a_method_with_time_variables_replaces_its_uniform_t_grid_where_t_is_coarse_at_its_noise_level():
    # torchdiffeq's fixed-step methods: uniform in `time`, log-SNR in place of t where a t grid is coarse at sigma/alpha = 1
    record = _record(default_schedule=None, time_variables=("t", "sigma"), coarse_t_schedule="log_snr",
                     coarse_t_noise_level=1.0)
    assert record.schedule_for(sf.EDMSDE()) == "log_snr"
    assert record.schedule_for(sf.EDMSDE(), "sigma") == "karras"  # the default of another variable stays
    assert record.schedule_for(sf.VPSDE()) == "t"  # coarse at the fine level 0.1, not at 1
    fine = _record(default_schedule=None, time_variables=("t",), coarse_t_schedule="log_snr")  # the level 0.1
    assert fine.schedule_for(sf.VPSDE()) == "log_snr"
    with pytest.raises(ValueError, match=r"'coarse_t_schedule' replaces a default uniform t grid, but default_schedule=None"):
        _record(default_schedule=None, time_variables=("sigma",), coarse_t_schedule="log_snr")


def test_register_refuses_what_is_not_a_method_record():
    with pytest.raises(TypeError, match=r"register: argument 'method' expected a Method"):
        sf.methods.register("user_euler")


def test_a_conditional_record_without_front_end_is_refused_instead_of_breaking_inpaint(registry):
    # before: accepted, and then every inpaint(...) call, whatever its method, stopped with
    # "AttributeError: 'NoneType' object has no attribute 'startswith'"
    with pytest.raises(TypeError, match=r"Method\('user_cond'\): a 'conditional' method needs 'front_end'"):
        Method("user_cond", ("conditional",), "native", _UserEuler, "a conditional sampler")


class _NoLikelihood(_UserEuler):
    """Samples (the "ode" entry point) but has neither likelihood entry point."""


@pytest.mark.parametrize(
    ("backend", "entry"), [("native", "likelihood"), ("torchdiffeq", "integrate")]
)
def test_a_solver_without_the_entry_point_its_kind_calls_is_named_by_build(registry, gaussian, backend, entry):
    problem, x_T, _ = gaussian
    registry.register(Method("user_both", ("ode", "likelihood"), backend, _NoLikelihood, "Euler in t",
                             default_schedule="t", time_variables=("t",) if backend == "torchdiffeq" else ()))
    # before: "AttributeError: '_NoLikelihood' object has no attribute 'likelihood'" from inside log_likelihood
    with pytest.raises(TypeError, match=rf"log_likelihood: the 'likelihood' method 'user_both' built a solver \(_NoLikelihood\) "
                       rf"without the {entry}\(\.\.\.\) method"):
        sf.log_likelihood(problem.score, problem.sde, x_T, method="user_both", steps=4)
