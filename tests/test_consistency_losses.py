"""Consistency distillation and training losses against the exact consistency function of analytic laws."""

import copy
import math

import numpy as np
import pytest
import torch

import scoreflow as sf
from scoreflow.consistency import teacher_step
from scoreflow.losses import consistency_distillation_loss as cd_loss
from scoreflow.losses import consistency_training_loss as ct_loss
from scoreflow.testing import make_law

SDES = [sf.VPSDE(), sf.VESDE(), sf.EDMSDE()]
IDS = ["vp", "ve", "edm"]


def seeded(seed=1):
    return torch.Generator().manual_seed(seed)


def perturbed(f, sde, size=0.01):
    """The exact function plus a smooth bump that vanishes at t_min (a consistency model slightly off)."""

    def g(x, t):
        alpha, sigma = sde.marginal(t)
        return f(x, t) + size * torch.sin(3 * x) * (sigma / alpha - float(sde.marginal(torch.tensor(sde.t_min))[1]))[:, None]

    return g


def local_error(law, sde, solver, steps, n, seed):
    """E ||f*(Phi x) - f*(teacher x)||^2 over the loss's own draws: the loss at f* computed independently."""
    grid = sf.time_grid(sde, steps, "karras", dtype=torch.float64)
    g = seeded(seed)
    x0 = law.sample(n, generator=g)
    g = seeded(seed + 1)
    i = torch.randint(steps, (n,), generator=g)
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    t_hi, t_lo = grid[i], grid[i + 1]
    alpha, sigma = sde.marginal(t_hi)
    x_hi = alpha[:, None] * x0 + sigma[:, None] * z
    x_lo, _ = teacher_step(law.score(sde), sde, x_hi, t_hi, t_lo, method=solver)
    f = law.consistency_function(sde)
    exact = f(x_hi, t_hi)  # = f*(Phi_{t_hi -> t_lo} x_hi, t_lo)
    return (exact - f(x_lo, t_lo)).pow(2).sum(1).mean(), x0


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("solver", ["euler", "heun", "edm_heun"])
def test_cd_at_the_exact_function_is_the_teacher_steps_error(solver, sde):
    # At f = f* the loss is E||f*(Phi x) - f*(teacher x)||^2, the teacher step's local error seen through f*.
    law = make_law("gaussian2d")
    expected, x0 = local_error(law, sde, solver, 18, 512, 0)
    f = law.consistency_function(sde)
    loss = cd_loss(f, f, law.score(sde), sde, x0, solver=solver, steps=18, generator=seeded(1))
    assert torch.allclose(loss, expected, rtol=1e-10)
    off = perturbed(f, sde)
    # Euler in t has a large step error under VE (x moves like sigma(t), exponential in t): only 5x below the bump's.
    factor = 3 if solver == "euler" else 30
    assert cd_loss(off, off, law.score(sde), sde, x0, solver=solver, steps=18, generator=seeded(1)) > factor * loss


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_cd_with_an_exact_teacher_vanishes_only_at_the_exact_function(sde):
    law = make_law("gaussian2d")
    x0 = law.sample(256, generator=seeded(0))
    f = law.consistency_function(sde)
    exact = cd_loss(f, f, law.score(sde), sde, x0, solver="dopri5", rtol=1e-10, atol=1e-10, generator=seeded(1))
    off = perturbed(f, sde)
    wrong = cd_loss(off, off, law.score(sde), sde, x0, solver="dopri5", rtol=1e-10, atol=1e-10, generator=seeded(1))
    assert exact < 1e-15 and wrong > 1e-5


def test_cd_at_the_exact_function_falls_as_the_heun_steps_local_error_squared():
    # Heun's local error is O(h^3), so the loss at f* falls like N^-6 on the Karras grid.
    law, sde = make_law("gaussian2d"), sf.EDMSDE()
    f = law.consistency_function(sde)
    steps = [16, 32, 64]
    losses = []
    for n_steps in steps:
        x0 = law.sample(2048, generator=seeded(0))
        losses.append(float(cd_loss(f, f, law.score(sde), sde, x0, solver="heun", steps=n_steps, generator=seeded(1))))
    slope = -np.polyfit(np.log(steps), np.log(losses), 1)[0]
    assert 5.0 < slope < 7.0, (losses, slope)


def teacher_consistency_function(law, sde, grid, solver):
    """The discrete consistency function of a one-step teacher: its solve from a grid time down to t_min."""

    def f(x, t):
        x, t = x.clone(), t.clone()
        for k in range(len(grid) - 1):
            rows = t == grid[k]
            if rows.any():
                x[rows], _ = teacher_step(law.score(sde), sde, x[rows], grid[k], grid[k + 1], method=solver)
                t[rows] = grid[k + 1]
        return x

    f.t_min = float(grid[-1])
    return f


@pytest.mark.parametrize("solver", ["heun", "edm_heun"])
def test_the_cd_minimiser_is_the_teachers_solve_and_converges_to_the_exact_function(solver):
    # CD with a one-step teacher is zero at f_N (the teacher's solve through the grid); f_N(x, T) converges to
    # f*(x, T) at the teacher's order as the schedule is refined.
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    x0 = law.sample(64, generator=seeded(0))
    x_T = sde.prior_sample((64, 2), generator=seeded(2), dtype=torch.float64)
    exact = law.consistency_function(sde)(x_T, sde.T)
    errors = []
    for steps in (8, 16, 32, 64):
        grid = sf.time_grid(sde, steps, "karras")
        f_n = teacher_consistency_function(law, sde, grid, solver)
        assert cd_loss(f_n, f_n, law.score(sde), sde, x0, solver=solver, schedule=grid, generator=seeded(1)) < 1e-25
        errors.append(float((f_n(x_T, torch.full((64,), sde.T, dtype=torch.float64)) - exact).pow(2).mean().sqrt()))
    slope = -np.polyfit(np.log([8, 16, 32, 64]), np.log(errors), 1)[0]
    assert 1.7 < slope < 2.5, (errors, slope)


def identity(x, t):
    return x


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_ct_compares_the_same_noise_at_two_levels(sde):
    # With f = f- = identity the loss is E||x_hi - x_lo||^2 = (a_hi - a_lo)^2 E||x0||^2 + (s_hi - s_lo)^2 D when both
    # levels share z; independent noise would give (s_hi^2 + s_lo^2) D instead.
    law = make_law("gaussian2d")
    x0 = law.sample(40000, generator=seeded(0))
    per = ct_loss(identity, identity, sde, x0, steps=8, generator=seeded(1), reduction="none")
    grid = sf.time_grid(sde, 8, "karras")
    (a_hi, s_hi), (a_lo, s_lo) = sde.marginal(grid[:-1]), sde.marginal(grid[1:])
    m2 = float(law.covariance.trace() + law.mean.pow(2).sum())
    expected = ((a_hi - a_lo) ** 2 * m2 + (s_hi - s_lo) ** 2 * 2).mean()
    se = per.std() / math.sqrt(per.numel())
    assert abs(per.mean() - expected) < 4 * se + 1e-3 * expected


def test_distances_weightings_and_shared_steps():
    law, sde = make_law("gaussian2d"), sf.VPSDE()
    x0 = law.sample(32, generator=seeded(0))
    f = law.consistency_function(sde)
    off = perturbed(f, sde, 0.1)
    kw = dict(steps=10, generator=None, reduction="none")
    l2 = ct_loss(off, f, sde, x0, **{**kw, "generator": seeded(1)})
    ph = ct_loss(off, f, sde, x0, distance="pseudo_huber", huber_c=0.03, **{**kw, "generator": seeded(1)})
    assert torch.allclose(ph, torch.sqrt(l2 + 0.03**2) - 0.03, rtol=1e-12)
    weighted = ct_loss(off, f, sde, x0, weighting="inverse_step", **{**kw, "generator": seeded(1)})
    by_hand = ct_loss(off, f, sde, x0, weighting=lambda t_hi, t_lo: 1 / (sde.marginal(t_hi)[1] / sde.marginal(t_hi)[0]
                      - sde.marginal(t_lo)[1] / sde.marginal(t_lo)[0]), **{**kw, "generator": seeded(1)})
    assert torch.allclose(weighted, by_hand, rtol=1e-12) and not torch.allclose(weighted, l2)
    shared = cd_loss(off, f, law.score(sde), sde, x0, shared_step=True, **{**kw, "generator": seeded(1)})
    assert shared.shape == (32,)
    _, nfe = teacher_step(law.score(sde), sde, x0, 0.5, 0.4)  # the shared step is one call for the whole batch
    assert nfe == 2


def test_inverse_step_weighting_is_refused_where_sigma_over_alpha_is_infinite_at_T():
    # On rectified flow sigma/alpha = t/(1 - t) is infinite at T = 1: iCT's 1/(s_i - s_{i+1}) gave the step from T
    # weight 0, silently dropping a quarter of the draws at steps=4 (the only ones that train f at T).
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x0 = law.sample(8, generator=seeded(0))
    f = law.consistency_function(rf)
    match = r"argument 'weighting' 'inverse_step' .* gives the step from T=1 weight 0 on RectifiedFlow\(T=1"
    with pytest.raises(ValueError, match=match):
        ct_loss(f, f, rf, x0, steps=4, weighting="inverse_step")
    with pytest.raises(ValueError, match=match):
        cd_loss(f, f, law.velocity(rf), rf, x0, steps=4, weighting="inverse_step")


@pytest.mark.parametrize("solver", ["heun", "ddim", "euler"])
def test_cd_refuses_a_score_or_noise_teacher_on_a_path_that_reaches_pure_noise(solver):
    # The grid starts at T, where alpha = 0: a score or noise prediction says nothing of the flow there (the score of
    # every law is -x/sigma^2) and the drift is infinite. It was a NonFiniteError blaming the score at the next grid
    # time, a bare ZeroDivisionError (ddim), or f's error on NaN states, as sample_ode refuses such a model from T.
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x0 = law.sample(16, generator=seeded(0))
    f = law.consistency_function(rf)
    exact = law.velocity(rf)
    for teacher, kind in ((lambda x, t: exact(x, t), "score"), (sf.score_from_eps(lambda x, t: -t[:, None] * exact(x, t), rf), "eps")):
        with pytest.raises(ValueError, match=rf"consistency_distillation_loss: a model predicting '{kind}' cannot be integrated from t=T=1"):
            cd_loss(f, f, teacher, rf, x0, solver=solver, steps=8, generator=seeded(1))
    # the velocity the same law carries distils (the loss is the teacher's local error, small)
    assert cd_loss(f, f, exact, rf, x0, solver=solver, steps=8, generator=seeded(1)) < 0.05


@pytest.mark.parametrize("solver", ["dpm_solver_2", "dpm_solver_3", "deis", "edm_heun", "ipndm"])
def test_cd_refuses_up_front_a_teacher_that_cannot_step_from_pure_noise(solver):
    # These methods divide by alpha(T) = 0 on the grid's first step (from T) only: refused by the teacher, the loss
    # failed or not with the step drawn (shared_step: 1 draw in 8 at steps=8). Refused whatever the draw, by the loss.
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x0 = law.sample(4, generator=seeded(0))
    f = law.consistency_function(rf)
    for seed in range(4):
        with pytest.raises(ValueError, match=rf"consistency_distillation_loss: the native method \w+ divides by alpha\(T\) = 0"):
            cd_loss(f, f, law.velocity(rf), rf, x0, solver=solver, steps=8, shared_step=True, generator=seeded(seed))
    # a path stopped short of pure noise distils with them (the loss is the teacher's local error, small)
    short = rf.truncated(0.999)
    g = law.consistency_function(short)
    assert cd_loss(g, g, law.velocity(short), short, x0, solver=solver, steps=8, generator=seeded(1)) < 0.05


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_4m_pc_adaptive"])
def test_cd_refuses_up_front_a_teacher_in_log_snr_to_t_min_0(solver):
    # only the grid's last step ends at t = 0 (log-SNR +inf): the teacher's refusal, naming sample_ode, came with 1
    # draw in 8
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x0 = law.sample(4, generator=seeded(0))
    f = law.consistency_function(rf, t_min=0.0)
    for seed in range(4):
        with pytest.raises(ValueError, match=r"consistency_distillation_loss: the native method \w+ steps in log-SNR, which is \+inf at t_min=0"):
            cd_loss(f, f, law.velocity(rf), rf, x0, solver=solver, schedule="t", steps=8, shared_step=True,
                    generator=seeded(seed))
    assert cd_loss(f, f, law.velocity(rf), rf, x0, solver="heun", schedule="t", steps=8, generator=seeded(1)) < 0.05


@pytest.mark.parametrize("schedule", [None, "log_snr_capped", "karras", "log_snr"])
def test_a_log_snr_schedule_to_t_min_0_is_refused_by_the_loss_with_a_remedy_that_works(schedule):
    # It was time_grid's error, whose remedy was schedule='log_snr_capped', the default schedule that had failed.
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x0 = law.sample(4, generator=seeded(0))
    f = law.consistency_function(rf, t_min=0.0)
    named = schedule or "log_snr_capped"
    match = (rf"^consistency_\w+_loss: argument 't_min' expected a time > 0 for schedule '{named}', .* got 0\.0\. "
             r"Fix: t_min > 0 \(sde\.t_min=0\.001\), or schedule='shift', 't' or 'noise_fraction'"
             if named == "log_snr_capped" else
             rf"^consistency_\w+_loss: schedule '{named}' needs a finite log-SNR .* Fix: schedule='shift', 't' or "
             r"'noise_fraction' \(finite at both ends\), or 'log_snr_capped' \(finite at pure noise\) with t_min > 0")
    for call in (lambda s: ct_loss(f, f, rf, x0, t_min=0.0, schedule=s, steps=4, generator=seeded(1)),
                 lambda s: cd_loss(f, f, law.velocity(rf), rf, x0, t_min=0.0, schedule=s, steps=4, generator=seeded(1))):
        with pytest.raises(ValueError, match=match):
            call(schedule)
        for remedy in ("shift", "t", "noise_fraction"):  # the remedies it names work
            assert bool(torch.isfinite(call(remedy)))


def test_inverse_step_weighting_on_a_path_stopped_short_of_pure_noise_matches_a_hand_computation():
    # RectifiedFlow on [0, 0.999]: s = t/(1 - t) is finite at T (999), so every step, the first included, keeps a
    # positive weight 1/(s_i - s_{i+1}).
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow().truncated(0.999)
    x0 = law.sample(400, generator=seeded(0))
    f = law.consistency_function(rf)
    off = perturbed(f, rf, 0.1)
    grid = sf.time_grid(rf, 4, "karras")
    i = torch.randint(4, (400,), generator=seeded(1))
    t_hi, t_lo = grid[i], grid[i + 1]
    weight = 1 / (t_hi / (1 - t_hi) - t_lo / (1 - t_lo))
    uniform = ct_loss(off, f, rf, x0, schedule=grid, generator=seeded(1), reduction="none")
    weighted = ct_loss(off, f, rf, x0, schedule=grid, weighting="inverse_step", generator=seeded(1), reduction="none")
    assert bool((i == 0).any()) and bool((weighted[i == 0] > 0).all())
    torch.testing.assert_close(weighted, uniform * weight, rtol=1e-10, atol=0)


class TimeConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) / (1 + t[:, None, None, None])


def test_float32_images_gradients_and_seeds():
    sde = sf.EDMSDE()
    net = TimeConv()
    f = sf.consistency.parameterize(net, sde, 0.5)
    score = lambda x, t: -x / (1 + t[:, None, None, None] ** 2)  # the exact score of N(0, I) data  # noqa: E731
    x0 = torch.randn(4, 2, 5, 5, generator=seeded(0))
    runs = [cd_loss(f, f, score, sde, x0, solver="edm_heun", generator=seeded(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and runs[0].dtype == torch.float32
    runs[0].backward()
    assert net.conv.weight.grad is not None and torch.isfinite(net.conv.weight.grad).all()
    assert ct_loss(f, f, sde, x0, distance="pseudo_huber", generator=seeded(3)).ndim == 0


def test_curricula():
    steps = [sf.consistency.discretization_steps(k, 1000) for k in range(0, 1001, 50)]
    assert steps[0] == 1 and steps[-1] == 150 and steps == sorted(steps)
    ict = [sf.consistency.discretization_steps(k, 800, kind="ict") for k in range(0, 801, 100)]
    assert ict == [10, 20, 40, 80, 160, 320, 640, 1280, 1280]
    assert math.isclose(sf.consistency.target_ema_decay(1, mu0=0.9), math.exp(2 * math.log(0.9) / 2))
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    sf.consistency.ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * b.weight)
    sf.consistency.ema_update(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)


def test_ema_update_keeps_a_target_in_its_own_dtype():
    # an EMA kept in higher precision than the online network (or on another device, as timm's ModelEmaV2 allows)
    # stopped in torch's lerp_ error after the parameters before it had already moved: a half-applied update
    online = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    target = copy.deepcopy(online)
    target[1].double()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn(p.shape, generator=seeded(0)))
    sf.consistency.ema_update(target, online, 0.9)
    for (name, value), new in zip(before.items(), online.state_dict().values()):
        assert target.state_dict()[name].dtype == value.dtype
        torch.testing.assert_close(target.state_dict()[name], 0.9 * value + 0.1 * new.to(value.dtype), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"solver": "rk5"}, ValueError, r"consistency_distillation_loss: argument 'solver' expected one of .*'heun'"),
        ({"distance": "lpips"}, ValueError, r"argument 'distance' expected one of 'l2', 'pseudo_huber', got 'lpips'"),
        ({"weighting": "snr"}, ValueError, r"argument 'weighting' expected one of 'uniform', 'inverse_step'"),
        ({"schedule": "cosine"}, ValueError, r"argument 'schedule' expected one of 't', 'log_snr', 'karras'"),
        ({"steps": 0}, ValueError, r"argument 'steps' expected an int >= 1, got 0"),
        ({"schedule": torch.tensor([1.0, 0.5, 0.01])}, ValueError, r"expected a grid that starts at T=1 and ends at t_min=0\.001"),
        ({"schedule": torch.tensor([1.0, 0.001]), "steps": 3}, ValueError, r"a grid of 2 times has 1 steps, got steps=3"),
        ({"t_min": 0.01}, ValueError, r"argument 't_min' expected the boundary time of f, f\.t_min=0\.001, got 0\.01"),
        ({"huber_c": -1.0, "distance": "pseudo_huber"}, ValueError, r"argument 'huber_c' expected a finite number > 0"),
        # it was ignored: the L2 loss came back for a caller who set c and forgot the distance
        ({"huber_c": 0.03}, ValueError, r"argument 'huber_c' is the c of distance='pseudo_huber', got huber_c=0\.03 with distance='l2'"),
        ({"shared_step": 1}, TypeError, r"argument 'shared_step' expected True or False"),
        ({"reduction": "sum"}, ValueError, r"argument 'reduction' expected one of 'mean', 'none'"),
        ({"generator": 1}, TypeError, r"argument 'generator' expected a torch\.Generator"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    sde = sf.VPSDE()
    f = sf.consistency.parameterize(lambda x, t: x, sde)
    with pytest.raises(error, match=match):
        cd_loss(f, f, lambda x, t: -x, sde, torch.zeros(4, 2), **kwargs)


def test_bad_callables_and_outputs_are_named():
    sde = sf.VPSDE()
    f = sf.consistency.parameterize(lambda x, t: x, sde)
    x0 = torch.zeros(4, 2)
    with pytest.raises(TypeError, match=r"consistency_training_loss: argument 'f_target' expected a callable"):
        ct_loss(f, None, sde, x0)
    with pytest.raises(TypeError, match=r"consistency_distillation_loss: argument 'score' expected a callable"):
        cd_loss(f, f, None, sde, x0)
    with pytest.raises(ValueError, match=r"consistency_training_loss: f expected shape \(4, 2\)"):
        ct_loss(lambda x, t: x[:, :1], f, sde, x0)
    with pytest.raises(sf.NonFiniteError, match=r"consistency_training_loss: the loss became non-finite .* at t="):
        ct_loss(lambda x, t: x * float("nan"), f, sde, x0)
    with pytest.raises(sf.NonFiniteError, match=r"score became non-finite"):
        cd_loss(f, f, lambda x, t: x * float("inf"), sde, x0)


def test_a_grid_whose_steps_collapse_in_the_dtype_of_x0_is_refused():
    # VP's Karras grid of 150 steps has two neighbouring times equal in bfloat16 (629 of 1280 steps do): such a step
    # compared f(x_t, t) with f-(x_t, t), a zero loss that trained nothing, without a word
    sde = sf.VPSDE()
    f = sf.consistency.parameterize(lambda x, t: x, sde)
    x0 = torch.zeros(4, 2, dtype=torch.bfloat16)
    grid = sf.time_grid(sde, 150, "karras").to(torch.bfloat16)
    assert bool((grid[:-1] <= grid[1:]).any())  # the premise, computed independently
    with pytest.raises(ValueError, match=r"consistency_training_loss: argument 'steps' gives a grid of 150 steps, 1 of them of "
                                        r"zero length .* in torch\.bfloat16"):
        ct_loss(f, f, sde, x0, steps=150)
    assert ct_loss(f, f, sde, x0.float(), steps=150).dtype == torch.float32  # distinct in float32


def test_t_min_defaults_to_the_boundary_time_of_f():
    # documented default: f.t_min, else sde.t_min; a model built at t_min = 0.01 trains on a grid ending there
    sde = sf.VPSDE()
    seen = []

    def net(x, t):
        seen.append(t.detach().clone())
        return x

    f = sf.consistency.parameterize(net, sde, t_min=0.01)
    x0 = torch.randn(64, 2, generator=seeded(0))
    loss = ct_loss(f, f, sde, x0, steps=4, generator=seeded(1), reduction="none")
    grid = sf.time_grid(sde, 4, "karras", t_min=0.01)
    assert loss.shape == (64,) and float(torch.cat(seen).min()) == pytest.approx(float(grid[-1]))
    assert torch.equal(loss, ct_loss(f, f, sde, x0, steps=4, t_min=0.01, generator=seeded(1), reduction="none"))
