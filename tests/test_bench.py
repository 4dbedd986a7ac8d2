"""Convergence studies: measured orders against the declared ones, references, report files."""

import json
import math

import pytest
import torch

import scoreflow as sf
from scoreflow.bench import (
    measured_order,
    order_agrees,
    reference_flow,
    run_likelihood_study,
    run_ode_study,
    run_sde_study,
)
from scoreflow.bench.ode import step_grid, tolerance_grid
from scoreflow.bench.report import write_report
from scoreflow.testing import make_problem


@pytest.fixture(scope="module")
def gaussian_vp():
    return make_problem("gaussian2d", "vp")


@pytest.fixture(scope="module")
def ode_study(gaussian_vp):
    return run_ode_study(gaussian_vp, methods=("euler", "heun", "rk4", "dopri5"), n=32, max_nfe=256)


def test_measured_order_recovers_a_power_law_and_drops_the_floor():
    nfe = [8, 16, 32, 64, 128, 256]
    errors = [3.0 * n**-2.0 for n in nfe]
    assert measured_order(nfe, errors) == pytest.approx(2.0, abs=1e-12)
    # Points at round-off level must not bend the fit: replace the two finest by a flat floor.
    floored = errors[:4] + [1e-13, 1e-13]
    assert measured_order(nfe, floored, floor=1e-12) == pytest.approx(2.0, abs=1e-12)
    assert measured_order(nfe[:2], errors[:2]) is None
    assert measured_order(nfe, [float("nan")] * 6) is None


def test_order_agrees_rules():
    assert order_agrees(1, 1.2) and not order_agrees(1, 1.4) and not order_agrees(1, 0.6)
    assert order_agrees(4, 3.5) and not order_agrees(4, 3.3) and not order_agrees(4, 4.7)
    assert order_agrees(5, 4.1, kind="adaptive") and not order_agrees(5, 3.9, kind="adaptive")
    # A strong order is a lower bound, up to the order of the method's drift term (srk: 3, reversible Heun: 2).
    assert order_agrees(1.5, 1.9, kind="pathwise", upper=3) and not order_agrees(1.5, 1.1, kind="pathwise", upper=3)
    assert order_agrees(1, 2.3, kind="pathwise", upper=2) and not order_agrees(1, 2.9, kind="pathwise", upper=2)
    assert not order_agrees(1.5, 1.9, kind="pathwise")  # without a drift order, the strong order bounds it
    assert order_agrees(None, 1.0) is None and order_agrees(1, None) is None


def test_step_and_tolerance_grids_respect_the_budget():
    assert step_grid(4, 256) == [4, 8, 16, 32, 64]
    assert step_grid(10, 64, min_steps=8) == [8, 16, 32, 64]  # at least 4 points for a fit
    assert tolerance_grid(torch.float64)[-1] == pytest.approx(1e-10)
    assert tolerance_grid(torch.float32)[-1] == pytest.approx(1e-5)


def test_ode_orders_match_theory(ode_study):
    assert ode_study.order_of("euler") == pytest.approx(1.0, abs=0.3)
    assert ode_study.order_of("heun") == pytest.approx(2.0, abs=0.4)
    assert ode_study.order_of("rk4") == pytest.approx(4.0, abs=0.6)
    assert ode_study.order_of("dopri5") >= 4.0
    assert all(o["agrees"] for o in ode_study.orders)


def test_ode_rows_one_per_method_and_setting(ode_study):
    fixed = {m: [r["value"] for r in ode_study.rows if r["method"] == m] for m in ("euler", "heun", "rk4")}
    assert fixed == {"euler": step_grid(1, 256), "heun": step_grid(2, 256), "rk4": step_grid(4, 256)}
    for r in ode_study.rows:
        assert r["nfe"] > 0 and r["error"] > 0 and math.isfinite(r["error"])
    # The tolerance sweep stops after the first solve beyond the budget.
    dopri = [r["nfe"] for r in ode_study.rows if r["method"] == "dopri5"]
    assert all(n <= 256 for n in dopri[:-1])


def test_reference_flow_of_a_mixture_matches_torchdiffeq():
    """scipy's DOP853 reference against torchdiffeq's dopri8, two independent integrators."""
    problem = make_problem("ring2d", "vp")
    x_T = problem.law.marginal(problem.sde, problem.sde.T).sample(6, generator=torch.Generator().manual_seed(3))
    ref = reference_flow(problem, x_T)
    other = sf.sample_ode(problem.score, problem.sde, x_T, method="dopri8", rtol=1e-10, atol=1e-10).samples
    assert torch.allclose(ref, other, atol=1e-7)


def test_reference_flow_of_a_gaussian_is_the_closed_form(gaussian_vp):
    x_T = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sde = gaussian_vp.sde
    assert torch.equal(reference_flow(gaussian_vp, x_T), gaussian_vp.law.flow_map(sde, x_T, sde.T, sde.t_min))


def test_sde_study_euler_maruyama_strong_order_one(gaussian_vp):
    study = run_sde_study(gaussian_vp, methods=("euler",), n=64, max_nfe=64, min_steps=8, n_exact=2000)
    assert study.order_of("euler", "strong_error") == pytest.approx(1.0, abs=0.3)
    assert study.order_of("euler", "weak_error") > 0.7
    strong = [r["strong_error"] for r in study.rows]
    assert strong == sorted(strong, reverse=True)
    assert set(study.config["monte_carlo_floor"]) == {"mean_error", "cov_error", "w2", "sw2"}


def test_sample_sde_reuses_a_given_brownian_path(gaussian_vp):
    sde, score = gaussian_vp.sde, gaussian_vp.score
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(1))
    fine = sf.sample_sde(score, sde, x_T, steps=256, bm=bm).samples
    coarse = sf.sample_sde(score, sde, x_T, steps=64, bm=bm).samples
    fresh = sf.sample_sde(score, sde, x_T, steps=64, generator=torch.Generator().manual_seed(1)).samples
    # On the shared path the coarse solve is within its O(h) strong error of the fine one;
    # on a fresh path of another grid it is an independent sample.
    assert sf.metrics.rms_error(coarse, fine) < 0.25 * sf.metrics.rms_error(fresh, fine)
    with pytest.raises(ValueError, match="not both"):
        sf.sample_sde(score, sde, x_T, steps=4, bm=bm, generator=torch.Generator())


def test_likelihood_study_exact_trace_converges_at_rk4_order(gaussian_vp):
    study = run_likelihood_study(gaussian_vp, methods=("rk4",), traces=("exact",), n=4, max_nfe=256, min_steps=8)
    assert [r["value"] for r in study.rows] == [8, 16, 32, 64]
    assert study.order_of("rk4/exact") == pytest.approx(4.0, abs=0.6)
    assert min(r["error"] for r in study.rows) < 1e-5


def test_unknown_method_lists_the_registry(gaussian_vp):
    with pytest.raises(ValueError, match="run_ode_study: argument 'methods'.*'rk4'"):
        run_ode_study(gaussian_vp, methods=("rk5",))
    with pytest.raises(ValueError, match="run_sde_study: argument 'methods'.*'euler'"):
        run_sde_study(gaussian_vp, methods=("leapfrog",))


def test_write_report_files(ode_study, tmp_path):
    files = write_report([ode_study], tmp_path / "out")
    payload = json.loads(files["ode_json"].read_text())
    assert len(payload["rows"]) == len(ode_study.rows)
    assert {o["method"] for o in payload["orders"]} == {"euler", "heun", "rk4", "dopri5"}
    md = files["report"].read_text()
    assert "| rk4 | fixed | error | 4 |" in md and "ode_error.png" in md
    png = files["ode_error_png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_registered_method_joins_the_study(gaussian_vp, monkeypatch):
    from scoreflow.bench import ODE_METHODS, ODEMethod

    def explicit_midpoint(score, sde, x_T, steps):
        """A solver written outside scoreflow, on the public ProbabilityFlowODE."""
        field = sf.ProbabilityFlowODE(score, sde)
        ts = torch.linspace(sde.T, sde.t_min, int(steps) + 1, dtype=x_T.dtype)
        x = x_T
        for t0, t1 in zip(ts[:-1], ts[1:]):
            h = t1 - t0
            x = x + h * field(t0 + h / 2, x + h / 2 * field(t0, x))
        return sf.SampleResult(samples=x, nfe=field.nfe)

    monkeypatch.setitem(
        ODE_METHODS, "my_midpoint", ODEMethod("my_midpoint", False, 2, explicit_midpoint, nfe_per_step=2)
    )
    study = run_ode_study(gaussian_vp, methods=("my_midpoint",), n=8, max_nfe=128)
    assert [r["nfe"] for r in study.rows] == [8, 16, 32, 64, 128]
    assert study.order_of("my_midpoint") == pytest.approx(2.0, abs=0.4)


def test_studies_on_rectified_flow_run_from_pure_noise_and_truncate_the_sde():
    problem = make_problem("gaussian2d", "rf")
    ode = run_ode_study(problem, methods=("rk4",), n=16, max_nfe=64)
    assert ode.order_of("rk4") == pytest.approx(4.0, abs=0.6)
    sde = run_sde_study(problem, methods=("euler",), n=16, max_nfe=16, min_steps=4, n_exact=256)
    assert sde.config["T"] == 0.95 and all(math.isfinite(r["strong_error"]) for r in sde.rows)


@pytest.mark.parametrize(
    ("run", "kwargs", "error", "message"),
    [
        (run_ode_study, {"methods": "euler"}, TypeError, r"argument 'methods' expected a list of method names, got str 'euler'\."),
        (run_ode_study, {"methods": ["euler", "euler"]}, ValueError, r"argument 'methods' expected each method once, got \['euler', 'euler'\] \('euler' repeated\)\."),
        (run_sde_study, {"methods": []}, ValueError, r"argument 'methods' expected at least one method name, got \[\]\."),
        (run_sde_study, {"n": 1}, ValueError, r"argument 'n' expected an int >= 2, got 1\."),
        (run_ode_study, {"n": 0}, ValueError, r"argument 'n' expected an int >= 1, got 0\."),
        (run_likelihood_study, {"max_nfe": 0}, ValueError, r"argument 'max_nfe' expected an int >= 1, got 0\."),
        (run_likelihood_study, {"seed": "a"}, TypeError, r"argument 'seed' expected an int, got str 'a'\."),
        (run_likelihood_study, {"traces": "exact"}, TypeError, r"argument 'traces' expected a list of trace names, got str 'exact'\."),
        (run_ode_study, {"dtype": torch.float16}, TypeError, r"argument 'dtype' expected torch.float32 or torch.float64, got torch.float16\."),
    ],
)
def test_study_arguments_are_checked_naming_them(run, kwargs, error, message):
    # Before: a string was split into letters, a repeat solved twice, n=1 a NaN covariance deep in gaussian_w2,
    # max_nfe=0 ran anyway, seed='a' torch's "manual_seed expected a long", float16 a solver's error.
    with pytest.raises(error, match=rf"^{run.__name__}: {message}$"):
        run(make_problem("gaussian2d", "vp"), **kwargs)


def test_a_study_refuses_a_problem_name_for_a_problem():
    with pytest.raises(TypeError, match=r"run_ode_study: argument 'problem' expected a Problem \(e.g. scoreflow.testing.make_problem\(.*\), got str 'gaussian2d'\.$"):
        run_ode_study("gaussian2d")
