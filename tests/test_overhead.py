"""The per-evaluation work of a native solve: its operator count per step, the caches of its set-up, the helpers."""

import collections
import random

import numpy
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import scoreflow as sf
from scoreflow._cache import clear_caches
from scoreflow._checks import all_finite
from scoreflow.solvers.base import columns_on_device, lagrange_basis, lagrange_weights, on_device

NATIVE_FIXED = [m.name for m in sf.list_methods("ode") if m.backend == "native" and not m.adaptive]


def _gaussian_score(sde, c2=0.25):
    def score(x, t):
        alpha, sigma = sde.marginal(t)
        return -x / (alpha[:, None] ** 2 * c2 + sigma[:, None] ** 2)

    return score


class _CountOps(TorchDispatchMode):
    """Counts the aten operators run outside the score (the score switches counting off)."""

    def __init__(self):
        super().__init__()
        self.counts, self.on = collections.Counter(), True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _counted(solve):
    """``solve(score, sde)`` with a Gaussian's score under VP, without gradients: its result and the number of aten
    operators it ran outside the score."""
    sde = sf.VPSDE()
    exact, mode = _gaussian_score(sde), _CountOps()

    def score(x, t):
        mode.on = False
        try:
            return exact(x, t)
        finally:
            mode.on = True

    with torch.no_grad(), mode:
        result = solve(score, sde)
    return result, sum(mode.counts.values())


def _ops(method, steps, *, cold):
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    if cold:
        clear_caches()
    return _counted(lambda score, sde: sf.sample_ode(score, sde, x_T, method=method, steps=steps))[1]


@pytest.mark.parametrize("method", NATIVE_FIXED)
def test_a_native_solve_runs_the_same_few_operators_per_step_whatever_its_length(method):
    nfe_per_step = sf.get_method("ode", method).nfe_per_step
    for cold in (True, False):
        # cold: the set-up from scratch; warm: a repeated solve, its grid and plan cached by the one before
        ops = {}
        for steps in (10, 20, 40):
            if not cold:
                _ops(method, steps, cold=False)
            ops[steps] = _ops(method, steps, cold=cold)
        per_step = (ops[20] - ops[10]) / 10
        assert ops[40] - ops[20] == 2 * (ops[20] - ops[10])  # linear in the steps: nothing grows along the solve
        # per evaluation: the model's time (a view), the finiteness record (two) and the step's combination
        assert per_step <= 5 * nfe_per_step + 12, (method, per_step)
    warm_setup = ops[10] - 10 * per_step
    assert warm_setup <= 20, (method, warm_setup)  # a repeated solve's set-up: the input check and the final read


@pytest.mark.parametrize("method", ["dpmpp_2m", "dpmpp_3m_pc", "dpm_solver_3"])
def test_a_nan_in_a_repeated_solve_still_names_its_first_time(method):
    sde = sf.VPSDE()
    exact = _gaussian_score(sde)
    x_T = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seen = []

    def bad(x, t):
        seen.append(float(t[0]))
        return torch.where(t[:, None] < 0.3, torch.nan, exact(x, t))

    sf.sample_ode(exact, sde, x_T, method=method, steps=8)  # the plan of this setting is now cached
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite") as info:
        sf.sample_ode(bad, sde, x_T, method=method, steps=8)
    first_bad = next(t for t in seen if t < 0.3)
    assert f"at t={first_bad:.6g} " in str(info.value)


@pytest.mark.parametrize("method", ["dpmpp_3m", "dpmpp_4m_pc", "ipndm", "dpm_solver_2"])
def test_a_cached_plan_gives_the_same_samples_bit_for_bit(method):
    sde = sf.VPSDE()
    score, x_T = _gaussian_score(sde), torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    clear_caches()
    first = sf.sample_ode(score, sde, x_T, method=method, steps=7).samples
    again = sf.sample_ode(score, sde, x_T, method=method, steps=7).samples
    assert torch.equal(first, again)


def test_a_changed_process_or_grid_is_planned_again():
    score_of = _gaussian_score
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sde = sf.VPSDE()
    sf.sample_ode(score_of(sde), sde, x_T, method="dpmpp_2m", steps=6)
    sde.beta_max = 12.0  # the same object with another parameter: another grid and plan
    changed = sf.sample_ode(score_of(sde), sde, x_T, method="dpmpp_2m", steps=6).samples
    fresh_sde = sf.VPSDE(beta_max=12.0)
    fresh = sf.sample_ode(score_of(fresh_sde), fresh_sde, x_T, method="dpmpp_2m", steps=6).samples
    assert torch.equal(changed, fresh)

    grid = sf.time_grid(sde, 6, "log_snr")
    sf.sample_ode(score_of(sde), sde, x_T, method="dpmpp_3m_pc", schedule=grid)
    grid[3] = 0.5 * (grid[2] + grid[3])  # the user's grid modified in place: the cached plan is stale
    moved = sf.sample_ode(score_of(sde), sde, x_T, method="dpmpp_3m_pc", schedule=grid).samples
    clear_caches()
    assert torch.equal(moved, sf.sample_ode(score_of(sde), sde, x_T, method="dpmpp_3m_pc", schedule=grid.clone()).samples)


def test_lagrange_weights_integrate_polynomials_of_lower_degree_exactly():
    rng = random.Random(0)
    for _ in range(200):
        k = rng.randint(1, 6)
        nodes = [0.0] + rng.sample([-5.0, -4.0, -3.1, -2.2, -1.5, -0.7, 0.4, 1.0], k - 1)
        moments = [1.0 / (p + 1) for p in range(k)]  # Lebesgue measure on [0, 1]
        weights = lagrange_weights(nodes, moments)
        for p in range(k):
            assert sum(w * u**p for w, u in zip(weights, nodes)) == pytest.approx(moments[p], rel=1e-9, abs=1e-9)
        basis = lagrange_basis(nodes)
        assert lagrange_weights(nodes, moments, basis) == weights  # a basis given: the same weights
        q, denominators = basis  # Q(u) = prod_j (u - u_j) and Q'(u_j), against numpy's polynomials
        roots = numpy.polynomial.polynomial.polyfromroots(nodes)
        numpy.testing.assert_allclose(q, roots, rtol=1e-12, atol=1e-12)
        slopes = numpy.polynomial.polynomial.polyval(nodes, numpy.polynomial.polynomial.polyder(roots))
        numpy.testing.assert_allclose(denominators, slopes, rtol=1e-9)


def test_columns_go_to_the_device_as_one_at_a_time_would():
    like = torch.zeros(2, dtype=torch.float32)
    columns = {"ratio": [0.5, 0.25, 0.125], "w": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "none": []}
    together = columns_on_device(columns, like)
    for name, column in columns.items():
        alone = on_device(column, like)
        assert len(together[name]) == len(alone)
        for a, b in zip(together[name], alone):
            assert torch.equal(torch.stack(a) if isinstance(a, tuple) else a, torch.stack(b) if isinstance(b, tuple) else b)
            assert (a[0] if isinstance(a, tuple) else a).dtype == torch.float32


def test_all_finite_finds_nan_and_both_infinities_and_no_overflow():
    x = torch.full((1000, 3), 3e38)  # finite, with a sum far past float32's largest number
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[500, 1] = bad
        assert not all_finite(y)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x, t):
        return self.linear(x) * t[:, None]


def test_counted_score_keeps_a_module_score_registered_and_counts_through_its_attribute():
    counted = sf.CountedScore(_Net(), caller="test")
    assert set(dict(counted.named_parameters())) == {"score.linear.weight", "score.linear.bias"}
    x, t = torch.randn(3, 2), torch.tensor(0.5)
    first = counted(x, t)
    assert counted(x, t) is first  # the same state and time object: no new evaluation
    counted(x + 1, t)
    assert counted.nfe == 2
    counted.nfe = 0  # a reset through the attribute is seen by the next count
    counted(x - 1, t)
    assert counted.nfe == 1


def test_a_plan_cached_in_inference_mode_does_not_reach_a_differentiated_solve():
    sde = sf.VPSDE()
    score = _gaussian_score(sde)
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():  # (a solve in inference mode works, and gives what one without grad gives)
        inferred = sf.sample_ode(score, sde, x_T, method="dpmpp_2m", steps=5).samples
    assert torch.equal(inferred, sf.sample_ode(score, sde, x_T, method="dpmpp_2m", steps=5).samples)
    start = x_T.clone().requires_grad_(True)
    out = sf.sample_ode(score, sde, start, method="dpmpp_2m", steps=5, enable_grad=True).samples
    (grad,) = torch.autograd.grad(out.sum(), start)
    # the Gaussian's flow map is linear: its gradient is the same for every sample and finite
    assert torch.isfinite(grad).all() and torch.allclose(grad, grad[:1].expand_as(grad))


@pytest.mark.parametrize("trace", ["hutchinson", "hutchinson_fd"])
def test_the_adaptive_likelihood_runs_the_same_few_operators_per_step_whatever_its_length(trace):
    # every step combines the ring of its last five evaluations by matrix products: the operators per step (views
    # included) do not grow with the number of steps.  Measured as the operators each further step adds, between three
    # solves of growing length, so that the set-up of a solve (built once) does not enter
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = []
    for tol in (1e-3, 1e-5, 1e-7):
        res, ops = _counted(lambda score, sde: sf.log_likelihood(
            score, sde, x, method="expint_pc_adaptive", rtol=tol, atol=tol, trace=trace,
            generator=torch.Generator().manual_seed(1)))
        runs.append((res.nfe // (2 if trace == "hutchinson_fd" else 1) - 1, ops))
    (s1, o1), (s2, o2), (s3, o3) = runs
    assert s1 < s2 < s3
    per_step = [(o2 - o1) / (s2 - s1), (o3 - o2) / (s3 - s2)]
    assert abs(per_step[0] - per_step[1]) <= 0.05 * per_step[1] and max(per_step) <= 80, per_step


def test_a_paused_finite_watch_records_nothing_and_resumes():
    from scoreflow.dynamics.counting import FiniteWatch

    watch = FiniteWatch()
    with watch.paused():
        watch.record("score", torch.tensor([float("nan")]), 0.25)
    watch.check()  # nothing was recorded inside
    watch.record("score", torch.tensor([1.0, float("inf")]), 0.5)
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.5 "):
        watch.check()


def test_a_long_run_keeps_a_bounded_record_and_still_names_the_first_non_finite_value():
    # A Langevin chain of millions of steps held one record per evaluation (about 2 kB a step): the records are now
    # read every CHUNK and dropped, the first non-finite one kept, so check() names the same time as before.
    from scoreflow.dynamics.counting import FiniteWatch

    watch = FiniteWatch()
    for k in range(3 * watch.CHUNK + 7):
        watch.record("score", torch.ones(2), float(k))
    assert len(watch._records) < watch.CHUNK
    watch.check()
    for bad in (5, watch.CHUNK - 1, watch.CHUNK, 2 * watch.CHUNK + 3):
        watch = FiniteWatch()
        for k in range(3 * watch.CHUNK):
            value = torch.tensor([1.0, float("nan") if k in (bad, bad + 1, 3 * watch.CHUNK - 1) else 2.0])
            watch.record("score", value, float(k))
        assert len(watch._records) < watch.CHUNK
        with pytest.raises(sf.NonFiniteError, match=rf"score became non-finite .* at t={bad} "):
            watch.check()
