"""Consistency models on flow paths (rectified flow), which start from pure noise where sigma/alpha is infinite."""

import torch

import scoreflow as sf
from scoreflow.losses import consistency_distillation_loss as cd_loss
from scoreflow.testing import assert_samples_follow, make_law


def test_one_step_from_pure_noise_is_the_flow_map(generator):
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x1 = rf.prior_sample((64, 2), generator=generator, dtype=torch.float64)
    res = sf.sample_consistency(law.consistency_function(rf), rf, x1)
    solved = sf.sample_ode(law.velocity(rf), rf, x1, method="dopri5", rtol=1e-10, atol=1e-10).samples
    assert (res.samples - solved).abs().max() < 1e-6


def test_the_parameterization_is_finite_at_pure_noise_and_exact_at_t_min():
    rf = sf.RectifiedFlow()
    f = sf.consistency.parameterize(lambda x, t: 10 * torch.sin(x), rf, 0.5)
    c_skip, c_out = f.coefficients(torch.tensor([1.0, rf.t_min], dtype=torch.float64))
    a_min = 1 - rf.t_min
    assert c_skip[0] == 0 and torch.isclose(c_out[0], torch.tensor(0.5 * a_min, dtype=torch.float64), rtol=1e-14)
    assert c_skip[1] == 1 and c_out[1] == 0
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(f(x, rf.t_min), x) and torch.isfinite(f(x, rf.T)).all()


def test_multistep_on_rectified_flow_samples_the_exact_law():
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    g = torch.Generator().manual_seed(5)
    x1 = rf.prior_sample((3000, 2), generator=g, dtype=torch.float64)
    res = sf.sample_consistency(law.consistency_function(rf), rf, x1, steps=3, generator=g)
    assert torch.allclose(res.stats["times"][1:], sf.time_grid(rf, 3, "log_snr_capped")[1:-1])
    assert_samples_follow(res.samples, law.marginal(rf, rf.t_min), generator=torch.Generator().manual_seed(6),
                          n_replicates=5, n_reference=8000)


def test_cd_on_rectified_flow_is_small_at_the_exact_function_only(generator):
    law, rf = make_law("gaussian2d"), sf.RectifiedFlow()
    x0 = law.sample(256, generator=generator)
    f = law.consistency_function(rf)

    def off(x, t):
        return f(x, t) + 0.3 * torch.sin(3 * x) * (t - rf.t_min)[:, None]

    teacher = law.velocity(rf)
    exact = cd_loss(f, f, teacher, rf, x0, solver="heun", generator=torch.Generator().manual_seed(1))
    wrong = cd_loss(off, off, teacher, rf, x0, solver="heun", generator=torch.Generator().manual_seed(1))
    assert exact < wrong / 30
    ct = sf.losses.consistency_training_loss(off, off, rf, x0, schedule="t", generator=generator)
    assert torch.isfinite(ct)
