"""The hot path: no host read per step in a native solve, finiteness read once per solve, step loops traceable."""

import collections
import contextlib

import pytest
import torch
import torch._dynamo

import scoreflow as sf
from scoreflow._cache import clear_caches
from scoreflow.methods import StepMonitor, resolve_stepping
from scoreflow.solvers.base import Nodes, ScorePredictions, on_device

NATIVE_FIXED = [m.name for m in sf.list_methods("ode") if m.backend == "native" and not m.adaptive]
READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")


def _gaussian_score(sde, c2=0.25):
    """The exact score of N(0, c2 I) data, written without a host read."""

    def score(x, t):
        alpha, sigma = sde.marginal(t)
        return -x / (alpha[:, None] ** 2 * c2 + sigma[:, None] ** 2)

    return score


@contextlib.contextmanager
def _counting_host_reads():
    counts = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        def read(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _reads(run):
    with _counting_host_reads() as counts:
        run()
    return sum(counts.values())


def _cold_reads(run):
    """:func:`_reads` of a first call: the set-up caches emptied, whatever ran before in this process."""
    clear_caches()
    return _reads(run)


@pytest.mark.parametrize("method", NATIVE_FIXED)
def test_a_native_solve_reads_the_host_the_same_few_times_for_10_and_100_steps(method):
    sde = sf.VPSDE()
    score, x_T = _gaussian_score(sde), torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    solve = lambda steps: sf.sample_ode(score, sde, x_T, method=method, steps=steps)  # noqa: E731
    cold, warm = [], []
    for steps in (10, 100):
        cold.append(_cold_reads(lambda: solve(steps)))
        warm.append(_reads(lambda: solve(steps)))
    # Set-up reads, once per solve: the input check of x_T, the process's pure-noise test and the schedule's
    # finiteness checks (CPU scalars), the plan's read of the grid (and of any extra nodes, computed on the
    # CPU); then the non-finite check at the end.  Nothing per step.  A repeated solve finds its grid and plan
    # cached: fewer reads still.
    assert cold[0] == cold[1] <= 12
    assert warm[0] == warm[1] <= 3


def test_pc_langevin_and_consistency_loops_read_nothing_per_step():
    sde = sf.VPSDE()
    score, x_T = _gaussian_score(sde), torch.randn(8, 2, dtype=torch.float64)
    for run in (
        lambda n: sf.sample_pc(score, sde, x_T, steps=n, generator=torch.Generator().manual_seed(0)),
        lambda n: sf.langevin(lambda x: -x, x_T, step_size=0.1, steps=n),
        lambda n: sf.langevin(lambda x: -x, x_T, step_size=0.1, steps=n, log_prob=lambda x: -0.5 * x.pow(2).sum(1)),
        lambda n: sf.annealed_langevin(score, x_T, [1.0, 0.5], steps=n, step_size=1e-3),
        lambda n: sf.inpaint(score, sde, x_T, known=torch.zeros(2, dtype=torch.float64), mask=torch.tensor([True, False]),
                             method="repaint", resample=2, steps=n, generator=torch.Generator().manual_seed(0)),
        lambda n: sf.sample_pc(score, sde, x_T, steps=n, callback=sf.x0_correction(sde), generator=torch.Generator().manual_seed(0)),
        lambda n: sf.sample_consistency(lambda x, t: x / 2, sde, x_T, steps=n, generator=torch.Generator().manual_seed(0)),
    ):
        assert _cold_reads(lambda: run(10)) == _cold_reads(lambda: run(100))


@pytest.mark.parametrize("method", NATIVE_FIXED)
def test_the_step_loop_of_a_native_solve_traces_into_one_graph(method):
    sde = sf.VPSDE()
    score, x_T = _gaussian_score(sde), torch.randn(4, 2)
    spec = sf.get_method("ode", method)
    stepping = resolve_stepping("test", spec, sde, x_T, start=sde.T, end=sde.t_min, steps=3)
    solver = spec.build("test", None)
    nodes = Nodes(sde, stepping.times)
    plan = solver.plan(nodes, 3)
    columns = {k: v if k in solver.structure else on_device(v, x_T) for k, v in plan.items()}

    model = ScorePredictions(sf.CountedScore(score, caller="test"), nodes, x_T, stepping.times, uses=solver.uses)

    def loop(x):  # (the predictions' coefficients are set up once per solve, before the loop)
        return solver.solve(model, columns, x, StepMonitor("test"))

    explained = torch._dynamo.explain(loop)(x_T)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch.testing.assert_close(loop(x_T), sf.sample_ode(score, sde, x_T, method=method, steps=3).samples)


def _nan_below(score, t_bad):
    return lambda x, t: torch.where(t[:, None] < t_bad, torch.nan, score(x, t))


def test_a_solve_runs_on_after_a_nan_and_names_its_first_time():
    sde = sf.VPSDE()
    seen = []
    bad = _nan_below(_gaussian_score(sde), 0.5)

    def score(x, t):
        seen.append(float(t[0]))
        return bad(x, t)

    x_T = torch.zeros(4, 2, dtype=torch.float64)
    grid = torch.linspace(sde.T, sde.t_min, 11, dtype=torch.float64).tolist()  # euler's default grid
    first_bad = next(t for t in grid if t < 0.5)
    with pytest.raises(sf.NonFiniteError, match=rf"score became non-finite \(NaN or inf\) at t={first_bad:.6g} "):
        sf.sample_ode(score, sde, x_T, method="euler", steps=10)
    # the fixed-grid solve went on to its last step (no read per step) and the error names the first bad evaluation
    assert seen == pytest.approx(grid[:-1])


def test_torchdiffeq_step_control_failing_on_nan_becomes_a_non_finite_error():
    sde = sf.VPSDE()
    with pytest.raises(sf.NonFiniteError, match=r"at t=0\.[0-4]\d* ") as info:
        sf.sample_ode(_nan_below(_gaussian_score(sde), 0.5), sde, torch.zeros(4, 2, dtype=torch.float64), method="dopri5")
    # torchdiffeq stopped with its own assertion on the NaN; the error says where the NaN appeared
    assert isinstance(info.value.__cause__, AssertionError)


def test_adaptive_sde_with_a_nan_names_the_time():
    sde = sf.VPSDE()
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite .* at t=0\.4"):
        sf.sample_sde(_nan_below(_gaussian_score(sde), 0.45), sde, torch.zeros(4, 2, dtype=torch.float64), steps=20,
                      adaptive=True, rtol=1e-2, atol=1e-2, generator=torch.Generator().manual_seed(0))


def test_a_non_finite_divergence_of_a_finite_score_is_named_with_its_time():
    def cube_root(x, t):  # finite at x = 0, where its Jacobian is not
        return x.abs().pow(1 / 3)

    with torch.no_grad(), pytest.raises(sf.NonFiniteError, match=r"divergence became non-finite .* at t=0\.001 "):
        sf.log_likelihood(cube_root, sf.VPSDE(), torch.zeros(2, 2, dtype=torch.float64), method="euler", steps=8)


def test_hutchinson_probes_share_one_forward_pass():
    sde = sf.VPSDE()
    calls = []
    score = _gaussian_score(sde)

    def recording(x, t):
        calls.append(1)
        return score(x, t)

    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        res = sf.log_likelihood(recording, sde, x, trace="hutchinson", n_probes=4, method="euler", steps=6,
                                generator=torch.Generator().manual_seed(1))
        exact = sf.log_likelihood(score, sde, x, method="euler", steps=6)
    assert len(calls) == res.nfe == 6 and res.nfe_vjp == 24
    # the Gaussian's score is linear, so every probe gives the exact trace
    torch.testing.assert_close(res.log_prob, exact.log_prob)


NATIVE_SDE = [m.name for m in sf.list_methods("sde") if m.backend == "native"]


@pytest.mark.parametrize("method", NATIVE_SDE)
def test_a_native_reverse_sde_solve_reads_the_host_the_same_few_times_for_10_and_100_steps(method):
    sde = sf.VPSDE()
    score, x_T = _gaussian_score(sde), torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # the Brownian path's increments are read at Python-float times planned before the loop (sa_solver's plan also
    # reads the log-SNRs of its noise window's ends, once)
    reads = [_cold_reads(lambda: sf.sample_sde(score, sde, x_T, method=method, steps=steps,
                                               generator=torch.Generator().manual_seed(1)))
             for steps in (10, 100)]
    assert reads[0] == reads[1] <= (13 if method == "sa_solver" else 12)


NATIVE_LIKELIHOOD_FIXED = [m.name for m in sf.list_methods("likelihood") if m.backend == "native" and not m.adaptive]


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("method", NATIVE_LIKELIHOOD_FIXED)
def test_a_native_likelihood_solve_reads_the_host_the_same_few_times_for_10_and_100_steps(method, trace):
    sde = sf.VPSDE()
    score, x = _gaussian_score(sde), torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def solve(steps):
        with torch.no_grad():
            sf.log_likelihood(score, sde, x, method=method, steps=steps, trace=trace, generator=torch.Generator().manual_seed(1))

    reads = [_cold_reads(lambda: solve(steps)) for steps in (10, 100)]
    # set-up reads (input checks, the plan's read of the grid) and the non-finite check at the end; nothing per step
    assert NATIVE_LIKELIHOOD_FIXED and reads[0] == reads[1] <= 10


def test_a_user_subclass_changed_through_a_class_attribute_gets_a_new_grid():
    # The set-up cache was keyed on instance attributes only: with the class attribute changed between two solves,
    # the second reused the first grid.
    class Stretched(sf.VPSDE):
        stretch = 1.0

        def t_from_log_snr(self, log_snr):
            return super().t_from_log_snr(log_snr) / self.stretch

    sde = Stretched()
    score, x_T = _gaussian_score(sf.VPSDE()), torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    times = lambda: sf.sample_ode(score, sde, x_T, method="dpmpp_2m", steps=3, return_trajectory=True).times  # noqa: E731
    torch.testing.assert_close(times(), sf.time_grid(sde, 3, "log_snr").to(x_T), rtol=0, atol=0)
    Stretched.stretch = 2.0
    torch.testing.assert_close(times(), sf.time_grid(sde, 3, "log_snr").to(x_T), rtol=0, atol=0)
