"""inpaint: the known coordinates are kept, the schedules are RePaint's, and the samples are checked
against the exact posteriors where replacement is exact (independent blocks) and where it is not."""

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.analytic import Gaussian
from scoreflow.conditional import repaint_schedule
from scoreflow.sampling.predictors import predictor_coefficients
from scoreflow.testing import assert_samples_follow, make_law


def _reference_jump_schedule(t_T: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's published jump schedule in its own time index (t counts down to -1, the data), as the paper's
    code states it: after landing on a multiple of ``jump_length`` below ``t_T - jump_length``, go back up
    one step at a time ``jump_length`` steps, ``jump_n_sample - 1`` times."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return ts + [-1]


@pytest.mark.parametrize("steps, resample, jump", [(6, 3, 2), (10, 1, 1), (10, 4, 1), (25, 10, 10), (7, 2, 3)])
def test_repaint_schedule_is_repaints_jump_schedule(steps, resample, jump):
    visited = repaint_schedule(steps, resample, jump)
    reference = _reference_jump_schedule(steps, jump, resample)
    # grid index k is RePaint's state index steps - 1 - k (-1 is the output); the reference goes back up one
    # step at a time, ours in one exact transition
    ours = [steps - 1 - k for k in visited]
    theirs = [t for i, t in enumerate(reference) if i in (0, len(reference) - 1) or not reference[i - 1] < t < reference[i + 1]]
    assert ours == theirs
    assert visited[0] == 0 and visited[-1] == steps


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((0,), ValueError, r"argument 'steps' expected an int >= 1, got 0"),
        ((5, 0), ValueError, r"argument 'resample' expected an int >= 1, got 0"),
        ((5, 2, 0), ValueError, r"argument 'jump' expected an int >= 1, got 0"),
        ((5, 2, -1), ValueError, r"argument 'jump' expected an int >= 1, got -1"),
        ((5, 2, 5), ValueError, r"argument 'jump' expected fewer grid steps than steps=5, got jump=5"),
        ((2.5,), TypeError, r"argument 'steps' expected an int, got float"),
    ],
)
def test_repaint_schedule_rejects_bad_arguments(args, error, match):
    # a jump of 0 was a bare range() error; a negative one, or one past the grid, silently resampled nothing
    with pytest.raises(error, match=rf"repaint_schedule: {match}"):
        repaint_schedule(*args)


def _problem():
    law, sde = make_law("ring2d"), sf.VPSDE()
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return law, sde, x_T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_known_coordinates_are_kept_on_any_data_shape(dtype):
    # a law on 2x3 "images", a mask per sample and known values per sample
    base = make_law("mixture16d")
    law = sf.analytic.GaussianMixture(base.weights, base.means[:, :6], base.covs[:, :6, :6], event_shape=(2, 3)).to(dtype)
    sde = sf.VPSDE()
    g = torch.Generator().manual_seed(1)
    x_T = sde.prior_sample((5, 2, 3), generator=g, dtype=dtype)
    known = law.sample(5, generator=g)
    mask = torch.rand(5, 2, 3, generator=g) < 0.5
    for method, kw in (("replacement", {}), ("repaint", {"resample": 2})):
        res = sf.inpaint(law.score(sde), sde, x_T, known=known, mask=mask, method=method, steps=8, generator=g, **kw)
        assert res.samples.shape == x_T.shape and res.samples.dtype == dtype
        assert torch.equal(res.samples[mask], known[mask])
        assert torch.isfinite(res.samples).all() and not torch.equal(res.samples[~mask], known[~mask])


@pytest.mark.parametrize("mask_shape", [(5, 1, 3), (1, 3), (2, 1)])
def test_a_mask_with_size_one_dimensions_acts_as_its_broadcast(mask_shape):
    # diffusers' inpainting pipelines give a (B, 1, H, W) mask shared by the channels; it (and any shape that
    # broadcasts to x_T's without growing it) must give the same samples as the mask expanded by hand
    base = make_law("mixture16d")
    law = sf.analytic.GaussianMixture(base.weights, base.means[:, :6], base.covs[:, :6, :6], event_shape=(2, 3))
    sde = sf.VPSDE()
    x_T = sde.prior_sample((5, 2, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    known = law.sample(5, generator=torch.Generator().manual_seed(2))
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[(0,) * len(mask_shape)], mask[(-1,) * len(mask_shape)] = True, False
    run = lambda m, k: sf.inpaint(law.score(sde), sde, x_T, known=k, mask=m, steps=6, generator=torch.Generator().manual_seed(4)).samples
    assert torch.equal(run(mask, known), run(mask.expand(x_T.shape).clone(), known))
    shared = known[:1, :1] if len(mask_shape) == 3 else known[0, :1]  # known with size-1 dimensions too
    assert torch.equal(run(mask, shared), run(mask.expand(x_T.shape).clone(), shared.expand(x_T.shape).clone()))


def test_nfe_and_times_follow_the_schedule():
    law, sde, x_T = _problem()
    mask = torch.tensor([True, False])
    known = torch.tensor([0.5, float("nan")], dtype=torch.float64)  # unknown entries are ignored, NaN included
    counter = RecordingScore(law.score(sde))
    res = sf.inpaint(counter, sde, x_T, known=known, mask=mask, steps=20, generator=torch.Generator().manual_seed(0))
    assert res.nfe == counter.calls == 20 and res.samples[:, 0].eq(0.5).all()
    counter = RecordingScore(law.score(sde))
    res = sf.inpaint(counter, sde, x_T, known=known, mask=mask, method="repaint", steps=20, resample=3,
                     options={"jump": 5}, return_trajectory=True, generator=torch.Generator().manual_seed(0))
    # jump points 1, 6, 11 steps before the end, each re-descended twice by 5 steps
    assert res.nfe == counter.calls == 20 + 3 * 2 * 5 == res.stats["reverse_steps"] and res.stats["jumps"] == 6
    visited = repaint_schedule(20, 3, 5)
    grid = torch.linspace(sde.T, sde.t_min, 21, dtype=torch.float64)
    torch.testing.assert_close(res.times, grid[visited])
    # the score is evaluated at the start of every reverse step
    starts = [grid[a].item() for a, b in zip(visited[:-1], visited[1:]) if b == a + 1]
    assert counter.times == pytest.approx(starts)
    assert res.trajectory.shape == (len(visited), 64, 2)
    counter = RecordingScore(law.score(sde))
    res = sf.inpaint(counter, sde, x_T, known=known, mask=mask, steps=10, corrector="langevin", corrector_steps=2,
                     denoise_final=True, generator=torch.Generator().manual_seed(0))
    assert res.nfe == counter.calls == 10 * 3 + 1


def test_seeded_generators_reproduce_bit_for_bit():
    law, sde, x_T = _problem()
    kw = dict(known=torch.zeros(2, dtype=torch.float64), mask=torch.tensor([False, True]), method="repaint", steps=10, resample=2)
    a = sf.inpaint(law.score(sde), sde, x_T, generator=torch.Generator().manual_seed(3), **kw).samples
    b = sf.inpaint(law.score(sde), sde, x_T, generator=torch.Generator().manual_seed(3), **kw).samples
    c = sf.inpaint(law.score(sde), sde, x_T, generator=torch.Generator().manual_seed(4), **kw).samples
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_replacement_is_exact_when_the_blocks_are_independent():
    # x_u independent of x_o: the score of x_u does not see the noisy x_o, so replacement samples p(x_u | x_o)
    cov = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]], dtype=torch.float64)
    law, sde = Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), cov), sf.VPSDE()
    mask, known = torch.tensor([False, False, True]), torch.tensor([0.0, 0.0, 1.7], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sample((4000, 3), generator=g, dtype=torch.float64)
    res = sf.inpaint(law.score(sde), sde, x_T, known=known, mask=mask, steps=200, predictor="ancestral", generator=g)
    assert_samples_follow(res.samples[:, :2], law.condition(mask, known).marginal(sde, sde.t_min), generator=g)


def test_replacement_is_biased_on_correlated_blocks_and_repaint_reduces_the_bias():
    # correlation 0.9, x_o = 1.5: the exact posterior of x_u is N(1.35, 0.19); replacement pulls its mean towards
    # the prior's because every step sees a freshly noised x_o (the known effect the benchmark measures)
    law = Gaussian(torch.zeros(2, dtype=torch.float64), torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64))
    sde, mask, known = sf.VPSDE(), torch.tensor([True, False]), torch.tensor([1.5, 0.0], dtype=torch.float64)
    exact = float(law.condition(mask, known).marginal(sde, sde.t_min).mean)
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sample((4000, 2), generator=g, dtype=torch.float64)
    kw = dict(known=known, mask=mask, steps=100, predictor="ancestral", generator=g)
    replaced = sf.inpaint(law.score(sde), sde, x_T, **kw).samples[:, 1]
    repainted = sf.inpaint(law.score(sde), sde, x_T, method="repaint", resample=10, **kw).samples[:, 1]
    standard_error = 0.45 / 4000**0.5
    assert float(replaced.mean()) - exact < -60 * standard_error  # about 0.42 low
    assert abs(float(repainted.mean()) - exact) < 0.2 * abs(float(replaced.mean()) - exact)


def test_inpaint_errors_name_the_argument():
    law, sde, x_T = _problem()
    counter = RecordingScore(law.score(sde))
    kw = dict(known=torch.zeros(2, dtype=torch.float64), mask=torch.tensor([True, False]), steps=10)
    with pytest.raises(ValueError, match=r"inpaint: argument 'method' expected one of 'replacement', 'repaint', got 'dps'"):
        sf.inpaint(counter, sde, x_T, method="dps", **kw)
    with pytest.raises(ValueError, match=r"inpaint: argument 'resample' applies to method='repaint', got resample=3 with method='replacement'"):
        sf.inpaint(counter, sde, x_T, resample=3, **kw)
    with pytest.raises(TypeError, match=r"inpaint: method 'replacement' takes no option 'jump'; its options: none"):
        sf.inpaint(counter, sde, x_T, options={"jump": 2}, **kw)
    with pytest.raises(ValueError, match=r"inpaint: option 'jump' expected fewer grid steps than steps=10, got jump=10"):
        sf.inpaint(counter, sde, x_T, method="repaint", resample=2, options={"jump": 10}, **kw)
    with pytest.raises(ValueError, match=r"inpaint: argument 'resample' expected an int >= 1, got 0"):
        sf.inpaint(counter, sde, x_T, method="repaint", resample=0, **kw)
    with pytest.raises(ValueError, match=r"inpaint: argument 'predictor' expected one of .*got 'ddim'"):
        sf.inpaint(counter, sde, x_T, predictor="ddim", **kw)
    with pytest.raises(ValueError, match=r"inpaint: predictor='ancestral' is defined for VP processes .* got SubVPSDE; use predictor='reverse_diffusion'"):
        sf.inpaint(counter, sf.SubVPSDE(), x_T, predictor="ancestral", **kw)
    with pytest.raises(ValueError, match=r"inpaint: the reverse SDE of RectifiedFlow.* has infinite drift and diffusion at t=T"):
        sf.inpaint(counter, sf.RectifiedFlow(), x_T, **kw)
    kw.pop("mask")
    with pytest.raises(TypeError, match=r"inpaint: argument 'mask' expected a boolean tensor that broadcasts to \(64, 2\) \(\(\*D\), \(B, \*D\) or either with size-1 dimensions\), got tensor"):
        sf.inpaint(counter, sde, x_T, mask=torch.tensor([1.0, 0.0]), **kw)
    with pytest.raises(ValueError, match=r"inpaint: argument 'mask' expected a shape that broadcasts to \(64, 2\) \(.*\), got \(3,\)"):
        sf.inpaint(counter, sde, x_T, mask=torch.tensor([True, False, True]), **kw)
    kw.pop("known")
    with pytest.raises(ValueError, match=r"inpaint: argument 'known' expected a shape that broadcasts to \(64, 2\) \(.*\), got \(63, 2\)"):
        sf.inpaint(counter, sde, x_T, mask=torch.tensor([True, False]), known=torch.zeros(63, 2), **kw)
    with pytest.raises(ValueError, match=r"inpaint: argument 'known' expected a shape that broadcasts to \(64, 2\) \(.*\), got \(1, 64, 2\)"):
        sf.inpaint(counter, sde, x_T, mask=torch.tensor([True, False]), known=torch.zeros(1, 64, 2), **kw)
    with pytest.raises(ValueError, match=r"inpaint: argument 'known' contains NaN or infinite values where 'mask' is True"):
        sf.inpaint(counter, sde, x_T, mask=torch.tensor([True, False]), known=torch.tensor([float("nan"), 0.0]), **kw)
    assert counter.calls == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_state_is_refused_as_sample_pc_refuses_it(dtype):
    # inpaint runs sample_pc's steps; in bfloat16 a grid of 1000 steps collapses to 506 distinct times, so the score
    # was silently evaluated at the wrong times (it was accepted while sample_pc refuses it)
    law, sde, x_T = _problem()
    counter = RecordingScore(law.score(sde))
    with pytest.raises(TypeError, match=r"inpaint: argument 'x_T' expected a float32 or float64 tensor .*got dtype"):
        sf.inpaint(counter, sde, x_T.to(dtype), known=torch.zeros(2, dtype=dtype), mask=torch.tensor([True, False]), steps=1000)
    assert counter.calls == 0


def test_inpaint_calls_back_after_every_move_with_the_models_prediction():
    from test_hooks import posterior_mean

    law, sde = make_law("ring2d").to(torch.float64), sf.VPSDE()
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask, known = torch.tensor([True, False]), torch.tensor([1.2, 0.0], dtype=torch.float64)
    for method, resample in (("replacement", None), ("repaint", 3)):
        seen = []

        def watch(info):
            seen.append((info["i"], float(info["t"]), info["x"], info["denoised"]))

        def run(**kw):
            return sf.inpaint(law.score(sde), sde, x_T, known=known, mask=mask, method=method, steps=5, resample=resample,
                              generator=torch.Generator().manual_seed(1), return_trajectory=True, **kw)

        res, base = run(callback=watch), run()
        visited = repaint_schedule(5, resample or 1)
        grid = torch.linspace(sde.T, sde.t_min, 6, dtype=torch.float64)
        assert [i for i, *_ in seen] == list(range(len(visited) - 1))
        assert [t for _, t, *_ in seen] == pytest.approx(grid[visited[1:]].tolist(), rel=1e-12)
        for _, t, x, denoised in seen:
            torch.testing.assert_close(denoised, posterior_mean(law, sde, x, t), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(torch.stack([x for *_, x, _ in seen]), base.trajectory[1:], rtol=0, atol=0)
        # watching changes nothing; the prediction at a state the next reverse step evaluates is shared, so only
        # the states a jump leaves and the last one cost an evaluation
        torch.testing.assert_close(res.samples, base.samples, rtol=0, atol=0)
        states_left_by_a_jump = sum(c < b for b, c in zip(visited[1:], visited[2:]))
        assert res.nfe - base.nfe == 1 + states_left_by_a_jump


def test_inpaint_continues_from_the_state_a_callback_returns_and_shows_progress(capsys):
    law, sde = make_law("ring2d").to(torch.float64), sf.VPSDE()
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask, known = torch.tensor([True, False]), torch.tensor([1.2, 0.0], dtype=torch.float64)

    def run(**kw):
        return sf.inpaint(law.score(sde), sde, x_T, known=known, mask=mask, steps=4, generator=torch.Generator().manual_seed(1), **kw)

    base = run(return_trajectory=True)
    # zero the state after the third step: the last step starts from 0 with the noise it would have drawn
    moved = run(callback=lambda info: torch.zeros_like(info["x"]) if info["i"] == 2 else None, progress=True)
    assert "inpaint" in capsys.readouterr().err
    (c_x, c_s, c_z) = (c[-1] for c in predictor_coefficients("reverse_diffusion", sde, torch.linspace(sde.T, sde.t_min, 5, dtype=torch.float64)))
    t3 = torch.tensor(sde.T + 0.75 * (sde.t_min - sde.T), dtype=torch.float64)
    noise = (base.trajectory[-1] - c_x * base.trajectory[-2] - c_s * law.score(sde)(base.trajectory[-2], t3)) / c_z
    expected = c_s * law.score(sde)(torch.zeros_like(x_T), t3) + c_z * noise
    torch.testing.assert_close(moved.samples[:, 1], expected[:, 1], rtol=1e-9, atol=1e-9)
    assert torch.equal(moved.samples[:, 0], known[0].expand(6))
    with pytest.raises(TypeError, match=r"inpaint: argument 'callback' expected a callable"):
        run(callback=3)


# --- grids: schedule= as in sample_pc (Karras' by default on EDM), RePaint's jumps along any grid ---------------------

def _independent_blocks():
    # x_u = coordinates 0, 1 independent of x_o = coordinate 2: replacement and RePaint sample p(x_u | x_o) exactly,
    # up to the discretization of the reverse steps, which the grid decides
    cov = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]], dtype=torch.float64)
    law = Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), cov)
    return law, torch.tensor([False, False, True]), torch.tensor([0.0, 0.0, 1.7], dtype=torch.float64)


def test_inpainting_on_edm_follows_the_exact_conditional_law_on_the_default_grid():
    # EDM's uniform t grid leaves sigma < 1 to its last 1/80 (at 400 steps its last step goes from sigma 0.2 to
    # 0.002): the covariance entries came out 6-9 standard errors too large on seeds 0-5 (the reverse-diffusion
    # chain's variance, propagated exactly, is 13-28 % too large along the two eigenvectors, on Karras' grid 2-3 %,
    # about 1 standard error here); the default grid is sample_pc's, Karras' on EDM
    law, mask, known = _independent_blocks()
    sde = sf.EDMSDE()
    exact = law.condition(mask, known).marginal(sde, sde.t_min)

    def run(**kw):
        g = torch.Generator().manual_seed(1)
        x_T = sde.prior_sample((4000, 3), generator=g, dtype=torch.float64)
        return sf.inpaint(law.score(sde), sde, x_T, known=known, mask=mask, steps=400, generator=g, **kw).samples[:, :2]

    for kw in ({}, {"method": "repaint", "resample": 2, "options": {"jump": 5}}):
        assert_samples_follow(run(**kw), exact, generator=torch.Generator().manual_seed(5))
    with pytest.raises(AssertionError, match=r"measured max \|z\| = .* at covariance"):
        assert_samples_follow(run(schedule="t"), exact, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("sde, schedule", [(sf.EDMSDE(), "karras"), (sf.VESDE(), "t"), (sf.VPSDE(), "t")], ids=repr)
def test_default_grid_is_sample_pcs_and_repaint_jumps_back_along_it(sde, schedule):
    law, mask, known = _independent_blocks()
    x_T = sde.prior_sample((8, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = sf.time_grid(sde, 12, schedule)
    pc = sf.sample_pc(law.score(sde), sde, x_T, steps=12, return_trajectory=True)
    counter = RecordingScore(law.score(sde))

    def run(score, **kw):
        return sf.inpaint(score, sde, x_T, known=known, mask=mask, method="repaint", resample=3, options={"jump": 4},
                          generator=torch.Generator().manual_seed(1), return_trajectory=True, **kw)

    res = run(counter, steps=12)
    visited = repaint_schedule(12, 3, 4)
    assert torch.equal(pc.times, grid) and torch.equal(res.times, grid[visited])
    # each reverse step evaluates the score at the grid time it starts from; a jump noises back `jump` grid steps
    assert counter.times == [grid[a].item() for a, b in zip(visited[:-1], visited[1:]) if b == a + 1]
    assert [(a, b) for a, b in zip(visited[:-1], visited[1:]) if b < a] == [(7, 3), (7, 3), (11, 7), (11, 7)]
    # the grid by name or as a tensor, with or without its number of steps, is the same run
    for kw in ({"steps": 12, "schedule": schedule}, {"schedule": grid}, {"schedule": grid, "steps": 12}):
        assert torch.equal(run(law.score(sde), **kw).samples, res.samples)
    uniform = run(law.score(sde), steps=12, schedule="t").samples
    assert torch.equal(uniform, res.samples) == (schedule == "t")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(schedule="karras"),
        dict(steps=5, schedule="cosine"),
        dict(schedule=[1.0, 0.5, 0.001]),
        dict(schedule=torch.tensor([1.0, 0.5, 0.001], dtype=torch.float64), steps=3),
        dict(schedule=torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)),
        dict(schedule=torch.tensor([1.0, 0.2, 0.5, 0.001], dtype=torch.float64)),
        dict(steps=0, schedule="t"),
        dict(steps=2.5),
    ],
    ids=lambda kw: ", ".join(f"{k}={v if not torch.is_tensor(v) else v.tolist()}" for k, v in kw.items()) or "none",
)
def test_schedule_is_checked_as_in_sample_pc(kwargs):
    law, sde, x_T = _problem()
    counter = RecordingScore(law.score(sde))
    with pytest.raises((TypeError, ValueError)) as expected:
        sf.sample_pc(counter, sde, x_T, **kwargs)
    with pytest.raises(expected.type) as got:
        sf.inpaint(counter, sde, x_T, known=torch.zeros(2, dtype=torch.float64), mask=torch.tensor([True, False]), **kwargs)
    assert str(got.value) == str(expected.value).replace("sample_pc:", "inpaint:", 1)
    assert counter.calls == 0


def test_jump_is_checked_against_the_steps_of_a_schedule_grid():
    law, sde, x_T = _problem()
    grid = sf.time_grid(sde, 4, "log_snr")
    kw = dict(known=torch.zeros(2, dtype=torch.float64), mask=torch.tensor([True, False]), method="repaint", resample=2)
    with pytest.raises(ValueError, match=r"inpaint: option 'jump' expected fewer grid steps than steps=4, got jump=4"):
        sf.inpaint(law.score(sde), sde, x_T, schedule=grid, options={"jump": 4}, **kw)
    res = sf.inpaint(law.score(sde), sde, x_T, schedule=grid, options={"jump": 3}, return_trajectory=True, **kw)
    assert torch.equal(res.times, grid[repaint_schedule(4, 2, 3)])


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_grid_results_are_unchanged_on_vp_and_ve(sde, dtype):
    # before schedule=, inpaint built torch.linspace(T, t_min, steps + 1) in float64 (given as the grid, the new code
    # reproduces those samples bit for bit); sample_pc's uniform grid is time_grid's "t", 1 ulp apart at some times:
    # float32 samples are bit-identical, float64 ones moved by at most 1.2e-13 here (the ring's sharp score amplifies
    # the 1-ulp differences; 2.3e-15 on a Gaussian)
    law = make_law("ring2d").to(dtype)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=dtype)
    mask, known = torch.tensor([True, False]), torch.tensor([1.2, 0.0], dtype=dtype)
    linspace = torch.linspace(sde.T, sde.t_min, 51, dtype=torch.float64)
    for method, resample in (("replacement", None), ("repaint", 3)):
        def run(**kw):
            return sf.inpaint(law.score(sde), sde, x_T, known=known, mask=mask, method=method, resample=resample,
                              generator=torch.Generator().manual_seed(1), **kw).samples

        default = run(steps=50)
        assert torch.equal(default, run(steps=50, schedule="t"))
        tolerance = 0.0 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(default, run(schedule=linspace), rtol=tolerance, atol=tolerance)
