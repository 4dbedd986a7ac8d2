"""sample_sde against the exact perturbed law, and its strong order on a shared Brownian path (via scoreflow.testing)."""

import warnings

import pytest
import torch

import scoreflow as sf
from scoreflow.testing import assert_order, assert_samples_follow, make_problem

N_SAMPLES = 20_000


@pytest.mark.slow
@pytest.mark.parametrize("law_name, sde_name", [("ring2d", "vp"), ("ring2d", "ve"), ("gaussian16d", "vp")])
def test_euler_maruyama_reproduces_the_data_law(law_name, sde_name):
    """Mean, covariance, sliced W2 and (mixtures) mode weights agree with the exact law at t_min
    within the Monte-Carlo error of N_SAMPLES draws (each check at level 1e-3, Bonferroni over entries)."""
    problem = make_problem(law_name, sde_name)
    sde, law = problem.sde, problem.law
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sample((N_SAMPLES, law.dim), generator=g, dtype=torch.float64)
    res = sf.sample_sde(problem.score, sde, x_T, method="euler", steps=500, generator=g)
    assert res.nfe == 500
    assert_samples_follow(res.samples, law.marginal(sde, sde.t_min), generator=g)


@pytest.fixture(scope="module")
def shared_path():
    """Gaussian data under VP, one query-independent Brownian path and a fine Euler-Maruyama reference on it."""
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((200, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(5),
                            levy_area=True, query_independent=True)
    reference = sf.sample_sde(problem.score, sde, x_T, steps=2048, bm=bm).samples
    return problem, x_T, bm, reference


def test_euler_maruyama_has_strong_order_one_for_additive_noise(shared_path):
    problem, x_T, bm, reference = shared_path

    def euler_maruyama(score, sde, x, steps):
        return sf.sample_sde(score, sde, x, steps=steps, bm=bm).samples

    def fine_solution(x):
        # The helper draws the fixture's x_T (same size, seed and dtype), whose fine solution is cached.
        assert torch.equal(x, x_T)
        return reference

    assert_order(euler_maruyama, problem.law, problem.sde, 1.0, steps=(16, 32, 64, 128), tol=0.3, n=x_T.shape[0],
                 generator=torch.Generator().manual_seed(1), reference=fine_solution)


# edm_stochastic's churn, er_sde's and sa_solver's default noise scales make other reverse SDEs of the same marginals
# (their own path tests are in test_stochastic_solvers.py and test_extended_sde.py)
@pytest.mark.parametrize("method", sorted(m.name for m in sf.list_methods("sde") if m.name not in ("edm_stochastic", "er_sde", "sa_solver")))
def test_every_torchsde_method_converges_to_the_same_path(shared_path, method):
    """Each method, on the same Brownian path, lands near the fine Euler-Maruyama solution."""
    problem, x_T, bm, reference = shared_path
    # Reversible Heun is non-dissipative with a small stability region: it diverges on the stiff
    # end of the VP flow below ~100 steps (8.8 at 32 steps, 0.15 at 128, 0.018 at 256).
    steps = 256 if method == "reversible_heun" else 128
    res = sf.sample_sde(problem.score, problem.sde, x_T, method=method, steps=steps, bm=bm)
    err = float((res.samples - reference).norm(dim=1).mean())
    assert err < 0.05, f"{method}: mean path error {err:.3g}"
    assert res.nfe >= steps


def test_adaptive_stepping_runs_and_counts_rejected_steps():
    problem = make_problem("gaussian2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((100, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = sf.sample_sde(problem.score, sde, x_T, steps=20, adaptive=True, rtol=1e-2, atol=1e-2,
                        generator=torch.Generator().manual_seed(0))
    assert res.nfe > 20 and torch.isfinite(res.samples).all()


def test_same_generator_gives_bit_identical_samples():
    problem = make_problem("ring2d", "ve")
    sde = problem.sde
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = [
        sf.sample_sde(problem.score, sde, x_T, method=m, steps=30, generator=torch.Generator().manual_seed(7)).samples
        for m in ("euler", "euler", "srk", "srk")
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], runs[3])
    other = sf.sample_sde(problem.score, sde, x_T, steps=30, generator=torch.Generator().manual_seed(8)).samples
    assert not torch.equal(runs[0], other)


def test_trajectory_and_any_data_shape_float32():
    law = sf.analytic.Gaussian(torch.zeros(6), torch.eye(6), event_shape=(3, 2))
    sde = sf.SubVPSDE()
    x_T = sde.prior_sample((8, 3, 2), generator=torch.Generator().manual_seed(0))
    res = sf.sample_sde(law.score(sde), sde, x_T, steps=10, generator=torch.Generator().manual_seed(0),
                        return_trajectory=True, denoise_final=True)
    assert res.samples.shape == (8, 3, 2) and res.samples.dtype == torch.float32
    assert res.trajectory.shape == (11, 8, 3, 2)
    assert torch.equal(res.trajectory[0], x_T)
    assert torch.allclose(res.times[[0, -1]], torch.tensor([sde.T, sde.t_min]))
    assert res.nfe == 11


def test_thousands_of_steps_do_not_exhaust_the_recursion_limit():
    # torchsde's Brownian interval, built without a step hint, nested its dependency tree past Python's
    # recursion limit at 20 000 steps; sample_sde now hands it the step size.
    problem = make_problem("gaussian2d", "vp")
    x_T = problem.sde.prior_sample((2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sf.sample_sde(problem.score, problem.sde, x_T, steps=20_000, generator=torch.Generator().manual_seed(1))
    assert res.nfe == 20_000 and torch.isfinite(res.samples).all()


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE(), sf.RectifiedFlow(T=0.999)], ids=repr)
def test_float32_torchsde_solves_step_on_the_uniform_grid(sde):
    """torchsde advances its time in the grid's dtype: a float32 grid summed in float32 fell short of the end by an ulp
    and took one more, vanishing step (one more NFE than ``steps``)."""
    law = sf.analytic.Gaussian(torch.zeros(2), torch.eye(2))
    x_T = sde.prior_sample((3, 2), generator=torch.Generator().manual_seed(0))
    for steps in (6, 7, 17, 100):
        seen = []

        def score(x, t):
            seen.append(t[0].item())
            return law.score(sde)(x, t)

        res = sf.sample_sde(score, sde, x_T, steps=steps, schedule="t", generator=torch.Generator().manual_seed(1))
        assert res.nfe == steps and res.samples.dtype == torch.float32
        grid = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=torch.float64)[:-1]
        assert torch.allclose(torch.tensor(seen, dtype=torch.float64), grid, rtol=0, atol=1e-6 * sde.T)
        res = sf.sample_sde(score, sde, x_T, method="heun", steps=steps, schedule="t", generator=torch.Generator().manual_seed(1))
        assert res.nfe == 2 * steps
        # the default grid (Karras' on EDM, run step by step) takes as many steps
        assert sf.sample_sde(score, sde, x_T, steps=steps, generator=torch.Generator().manual_seed(1)).nfe == steps


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.EDMSDE(), sf.RectifiedFlow(T=0.999)], ids=repr)
def test_a_float32_solve_on_a_path_made_for_t_to_t_min_stays_on_the_path(sde):
    """A path made as documented, ``brownian_motion(x_T, sde.T - sde.t_min)``, ends a hair before the solver time of
    a float32 grid's last time (T minus t_min rounded to float32, 0.99900001 > 0.999 under VP): torchsde clipped the
    last query to the path's end with a UserWarning at every solve.  The solve now ends on the path's end."""
    law = sf.analytic.Gaussian(torch.zeros(2), torch.eye(2))
    x_T = sde.prior_sample((3, 2), generator=torch.Generator().manual_seed(0))
    assert float(sde.T - torch.tensor(sde.t_min, dtype=torch.float32)) > sde.T - sde.t_min  # the case at hand
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(1))
    runs = {
        "uniform t, one sdeint call": dict(steps=7, schedule="t"),
        "default grid": dict(steps=7),
        "step_size": dict(step_size=sde.T / 7.5),
        "with a callback": dict(steps=7, schedule="t", callback=lambda info: None),
        "adaptive": dict(steps=7, adaptive=True, rtol=1e-2, atol=1e-2),
    }
    for name, kwargs in runs.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = sf.sample_sde(law.score(sde), sde, x_T, bm=bm, **kwargs)
        assert not caught, f"{name}: {caught[0].message}"
        assert torch.isfinite(res.samples).all()


def test_a_query_independent_path_resolves_the_short_steps_of_a_log_snr_grid():
    """torchsde's halfway tree rounds its points to the decimal digits of its tolerance; with 2**-20 of the span two
    query times within one rounding cell (the steps near t_min of a log-SNR grid) recursed without end."""
    sde = sf.EDMSDE()
    law = sf.analytic.Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    x_T = law.marginal(sde, sde.T).sample(4, generator=torch.Generator().manual_seed(0))
    bm = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(1), query_independent=True)
    # two query times 1e-7 of the span apart, then a fresh path with the same seed queried only there: the same increment
    a = 0.7 * bm.duration
    first = bm(a, a + 1e-7 * bm.duration)
    fresh = sf.brownian_motion(x_T, sde.T - sde.t_min, generator=torch.Generator().manual_seed(1), query_independent=True)
    assert torch.equal(fresh(a, a + 1e-7 * bm.duration), first)
    res = sf.sample_sde(law.score(sde), sde, x_T, method="ddim", steps=400, bm=bm)
    assert res.nfe == 400 and torch.isfinite(res.samples).all()


@pytest.mark.parametrize("method", ["euler", "heun", "srk"])
def test_torchsde_methods_take_a_schedule_on_the_same_path(method):
    """A grid for torchsde's methods: the uniform t grid given as a tensor is the default solve (one sdeint call; to round-off), and
    a non-uniform one runs step by step on the same Brownian path, as a callback's solve does (the same samples)."""
    problem = make_problem("ring2d", "vp")
    sde = problem.sde
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda **kw: sf.sample_sde(problem.score, sde, x_T, method=method, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    uniform = torch.linspace(sde.T, sde.t_min, 21, dtype=torch.float64)
    assert torch.allclose(run(schedule=uniform).samples, run(steps=20).samples, rtol=0, atol=1e-12)
    grid = sf.time_grid(sde, 20, "log_snr")
    plain = run(schedule=grid)
    stepped = run(schedule=grid, callback=lambda info: None)
    assert torch.allclose(plain.samples, stepped.samples, rtol=0, atol=1e-12)
    assert plain.nfe == 20 * sf.get_method("sde", method).nfe_per_step
    assert not torch.allclose(plain.samples, run(steps=20).samples, atol=1e-3)  # another grid: other samples


def test_on_edm_euler_maruyama_defaults_to_the_karras_grid_and_finds_the_law_uniform_t_misses():
    """EDM's clock is sigma: a uniform t grid leaves all of the data's scale to its last step.  Euler-Maruyama's
    sample covariance at 40 steps is 25 away from the exact one there (Frobenius), 0.14 on Karras' grid."""
    sde, law = sf.EDMSDE(), make_problem("gaussian2d", "vp").law
    score = law.score(sde)
    x_T = sde.prior_sample((4000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = law.marginal(sde, sde.t_min).covariance
    errors = {
        schedule: float((torch.cov(sf.sample_sde(score, sde, x_T, steps=40, schedule=schedule,
                                                 generator=torch.Generator().manual_seed(1)).samples.T) - exact).norm())
        for schedule in ("t", "karras", None)
    }
    assert errors["karras"] < 0.05 * errors["t"], errors
    assert errors[None] == errors["karras"]  # the default grid on EDM


def test_a_non_finite_score_stops_a_torchsde_solve_on_a_karras_grid_naming_the_time():
    """The step-by-step solve (EDM's default grid for torchsde's methods) stops at the first non-finite score."""
    sde = sf.EDMSDE()
    score = lambda x, t: torch.where(t[:, None] < 1.0, torch.nan, -x / (1 + t[:, None] ** 2))  # noqa: E731
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.\d+"):
        sf.sample_sde(score, sde, torch.zeros(4, 2), steps=10, generator=torch.Generator().manual_seed(0))


def test_flags_must_be_true_or_false():
    """A string flag such as denoise_final="no" read as true and was applied silently."""
    law = sf.analytic.Gaussian(torch.zeros(2), torch.eye(2))
    sde = sf.VPSDE()
    x_T = torch.zeros(3, 2)
    with pytest.raises(TypeError, match=r"sample_sde: argument 'adaptive' expected True or False, got str 'yes'"):
        sf.sample_sde(law.score(sde), sde, x_T, steps=5, adaptive="yes")
    with pytest.raises(TypeError, match=r"sample_sde: argument 'denoise_final' expected True or False, got str 'no'"):
        sf.sample_sde(law.score(sde), sde, x_T, steps=5, denoise_final="no")
    with pytest.raises(TypeError, match=r"sample_pc: argument 'denoise_final' expected True or False, got int 1"):
        sf.sample_pc(law.score(sde), sde, x_T, steps=5, denoise_final=1)
