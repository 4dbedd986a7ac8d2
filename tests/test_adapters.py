"""Adapters: diffusers UNets and schedules, k-diffusion denoisers, classifier-free guidance."""

from __future__ import annotations

import math

import pytest
import torch

import scoreflow as sf
from scoreflow.adapters import DiscreteVPSDE, from_diffusers, from_kdiffusion, guided_score, sde_from_scheduler
from scoreflow.analytic import Gaussian, GaussianMixture
from scoreflow.testing import make_law

diffusers = pytest.importorskip("diffusers")

N_TRAIN = 1000


def tiny_unet(**kwargs) -> torch.nn.Module:
    """A randomly initialised 8x8 single-channel UNet2DModel with a few thousand parameters."""
    torch.manual_seed(0)
    config = dict(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=2,
    )
    return diffusers.UNet2DModel(**{**config, **kwargs}).eval()


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return tiny_unet()


def hand_score(raw: torch.Tensor, x: torch.Tensor, t: torch.Tensor, prediction_type: str, beta_1: float, beta_n: float):
    """score_sde's linear VP: beta(t) = N(beta_1 + t (beta_N - beta_1)), alpha^2 = exp(-int_0^t beta)."""
    b0, b1 = N_TRAIN * beta_1, N_TRAIN * beta_n
    alpha2 = torch.exp(-(b1 - b0) * t**2 / 2 - b0 * t).reshape(-1, 1, 1, 1)
    alpha, sigma = alpha2.sqrt(), (1 - alpha2).sqrt()
    if prediction_type == "epsilon":
        return -raw / sigma
    if prediction_type == "sample":
        return (alpha * raw - x) / sigma**2
    return -(sigma * x + alpha * raw) / sigma  # v = alpha eps - sigma x0 and alpha^2 + sigma^2 = 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_diffusers_score_is_the_hand_conversion_of_the_unet_output(unet, prediction_type, generator):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, prediction_type=prediction_type)
    score, sde = from_diffusers(unet, scheduler)
    x = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.01, 0.4, 0.97], dtype=torch.float64)
    with torch.no_grad():
        raw = unet(x.float(), (t * (N_TRAIN - 1)).float()).sample.double()
        got = score(x, t)
    assert isinstance(sde, sf.VPSDE)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, hand_score(raw, x, t, prediction_type, 1e-4, 0.02), rtol=1e-6, atol=1e-8)


def test_linear_schedule_follows_score_sde_and_bounds_the_discretisation_gap():
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02)
    sde, scale, shift = sde_from_scheduler(scheduler)
    betas = scheduler.betas.double()
    assert (sde.beta_min, sde.beta_max) == pytest.approx((N_TRAIN * 1e-4, N_TRAIN * 0.02), rel=1e-6)
    assert (scale, shift) == (N_TRAIN - 1, 0.0)
    # At t = 1 the continuous integral N (beta_1 + beta_N) / 2 equals sum(beta), so the gap is
    # sum(-log(1 - b) - b), between sum(b^2)/2 and sum(b^2)/(2 (1 - max b)).
    log_alpha_bar = torch.log1p(-betas).sum()  # log of the last alphas_cumprod, in float64
    gap = 2 * sde.log_alpha(torch.tensor(1.0, dtype=torch.float64)) - log_alpha_bar
    lo = (betas**2).sum() / 2
    assert lo * (1 - 1e-3) <= gap <= lo / (1 - betas.max()) * (1 + 1e-3)
    # At low noise the gap is relative: sigma(0) = 0 where index 0 has sigma^2 = beta_1, and at index i (t = i/(N-1))
    # the continuous sigma^2 is about i/(i+1) of the scheduler's, N (beta_1 i/(N-1) + ...) against beta_1 (i + 1) + ...
    i = torch.arange(1, N_TRAIN, dtype=torch.float64)
    sigma2 = sde.marginal(i / (N_TRAIN - 1))[1] ** 2
    ratio = sigma2 / (1 - scheduler.alphas_cumprod[1:].double())
    torch.testing.assert_close(ratio, i / (i + 1), rtol=2e-3, atol=0)


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "scaled_linear", "linear"])
def test_discrete_vp_sde_passes_through_every_discrete_noise_level(beta_schedule):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule=beta_schedule)
    sde, scale, shift = sde_from_scheduler(scheduler, schedule="discrete")
    assert isinstance(sde, DiscreteVPSDE) and (scale, shift) == (N_TRAIN, -1.0)
    i = torch.arange(N_TRAIN, dtype=torch.float64)
    t = (i + 1) / N_TRAIN
    alpha, sigma = sde.marginal(t)
    torch.testing.assert_close(alpha**2, scheduler.alphas_cumprod.double(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    assert torch.equal(scale * t + shift, i)  # the UNet sees its own training timesteps
    # t_from_log_snr inverts log_snr between the knots too.
    s = torch.linspace(0.003, 0.999, 101, dtype=torch.float64)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(s)), s, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "scaled_linear"])
def test_discrete_vp_sde_drift_and_diffusion_transport_its_marginals(beta_schedule, generator):
    """The PF-ODE of a Gaussian under an interpolated schedule matches the closed-form flow map.

    The drift's derivative jumps at the 1000 knots, so dopri5 converges slowly (error ~1e-5 at
    tolerance 1e-7); a drift inconsistent with the marginals would be off by O(1).
    """
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule=beta_schedule)
    sde = DiscreteVPSDE(scheduler.alphas_cumprod)
    law = Gaussian(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64))
    x_T = law.marginal(sde, sde.T).sample(16, generator=generator)
    res = sf.sample_ode(law.score(sde), sde, x_T, method="dopri5", rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(res.samples, law.flow_map(sde, x_T, sde.T, sde.t_min), rtol=1e-4, atol=1e-4)
    t = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    fd = -(sde.log_alpha(t + 1e-7) - sde.log_alpha(t - 1e-7)) / 1e-7  # beta = -d log alpha^2 / dt
    torch.testing.assert_close(sde.beta(t), fd, rtol=1e-3, atol=1e-6)  # beta varies fast near the cosine clip
    assert (sde.beta(t) > 0).all()


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
def test_ancestral_pc_on_a_discrete_schedule_is_diffusers_ddpm_with_the_same_model_and_noise(beta_schedule):
    # DDPMScheduler's step with sigma_t^2 = beta_t (variance_type="fixed_large", score_sde's ancestral predictor) and no
    # clipping, on the same exact model and the same seeded noise: sample_pc's ancestral predictor over the knots,
    # then Tweedie's step at t_min (diffusers' last step, to alpha_bar = 1, is the posterior mean given x0_hat).
    # diffusers keeps alphas_cumprod in float32 (its chain then drifts ~1e-3 over 1000 steps); set in float64 here.
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=N_TRAIN, beta_schedule=beta_schedule, variance_type="fixed_large", clip_sample=False
    )
    sde = DiscreteVPSDE(scheduler.alphas_cumprod)
    law = Gaussian(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64))
    score = law.score(sde)
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sf.sample_pc(score, sde, x_T, steps=N_TRAIN - 1, predictor="ancestral", corrector=None, denoise_final=True,
                       generator=torch.Generator().manual_seed(5))
    scheduler.set_timesteps(N_TRAIN)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    x, g = x_T, torch.Generator().manual_seed(5)
    for k in scheduler.timesteps:
        t = torch.full((4,), (int(k) + 1) / N_TRAIN, dtype=torch.float64)  # timestep k sits at t = (k + 1)/N
        eps = -sde.marginal(t)[1][:, None] * score(x, t)
        x = scheduler.step(eps, k, x, generator=g).prev_sample
    torch.testing.assert_close(res.samples, x, rtol=1e-9, atol=1e-9)


def test_unet_runs_through_ode_and_sde_samplers_in_the_requested_dtype(unet, generator):
    for beta_schedule in ("linear", "squaredcos_cap_v2"):
        score, sde = from_diffusers(unet, diffusers.DDPMScheduler(beta_schedule=beta_schedule))
        x_T = sde.prior_sample((2, 1, 8, 8), generator=generator, dtype=torch.float64)
        ode = sf.sample_ode(score, sde, x_T, method="rk4", steps=4)
        sde_res = sf.sample_sde(score, sde, x_T, method="euler", steps=8, generator=generator)
        # rk4: 4 evaluations a step; Euler-Maruyama: 1 a step (the validation call is the first).
        for res, nfe in ((ode, 16), (sde_res, 8)):
            assert res.samples.shape == x_T.shape and res.samples.dtype == torch.float64
            assert torch.isfinite(res.samples).all() and res.nfe == nfe


def test_learned_variance_channels_are_dropped(generator):
    unet = tiny_unet(out_channels=2)
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range")
    score, _ = from_diffusers(unet, scheduler)
    x = torch.randn(2, 1, 8, 8, generator=generator)
    t = torch.tensor([0.3, 0.6])
    with torch.no_grad():
        raw = unet(x, t * (N_TRAIN - 1)).sample[:, :1].double()
        torch.testing.assert_close(score(x, t).double(), hand_score(raw, x.double(), t.double(), "epsilon", 1e-4, 0.02), rtol=1e-5, atol=1e-5)


def test_conditioning_is_passed_through_and_broadcast(generator):
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=2, cross_attention_dim=6, attention_head_dim=2,
    ).eval()
    text = torch.randn(1, 3, 6, generator=generator)
    score, _ = from_diffusers(unet, diffusers.DDPMScheduler(), encoder_hidden_states=text)
    x = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    with torch.no_grad():
        raw = unet(x.float(), (t * (N_TRAIN - 1)).float(), encoder_hidden_states=text.expand(2, 3, 6)).sample.double()
        other = from_diffusers(unet, diffusers.DDPMScheduler(), encoder_hidden_states=-text)[0](x, t)
        got = score(x, t)
    torch.testing.assert_close(got, hand_score(raw, x, t, "epsilon", 1e-4, 0.02), rtol=1e-6, atol=1e-8)
    assert not torch.allclose(got, other)  # the condition reaches the network


def test_guided_score_of_gaussians_is_the_score_of_the_tilted_gaussian(generator):
    """With equal covariances p_u^(1-w) p_c^w is Gaussian with mean (1-w) m_u + w m_c, at every t and any w."""
    sde = sf.VPSDE()
    cov = torch.tensor([[0.6, 0.1], [0.1, 0.4]], dtype=torch.float64)
    m_c, m_u = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([-0.5, 0.0], dtype=torch.float64)
    cond, uncond = Gaussian(m_c, cov).score(sde), Gaussian(m_u, cov).score(sde)
    x = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    t = torch.rand(8, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    for w in (0.0, 0.3, 1.0, 3.0):
        tilted = Gaussian((1 - w) * m_u + w * m_c, cov).score(sde)
        torch.testing.assert_close(guided_score(cond, uncond, w)(x, t), tilted(x, t), rtol=1e-10, atol=1e-10)


def test_guided_score_with_class_labels_on_a_unet(generator):
    unet = tiny_unet(num_class_embeds=3)
    scheduler = diffusers.DDPMScheduler()
    labels, null = torch.tensor([0, 1]), torch.tensor([2, 2])
    cond, sde = from_diffusers(unet, scheduler, class_labels=labels)
    uncond, _ = from_diffusers(unet, scheduler, class_labels=null)
    x = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.3, 0.5], dtype=torch.float64)
    with torch.no_grad():
        s_c, s_u = cond(x, t), uncond(x, t)
        torch.testing.assert_close(guided_score(cond, uncond, 4.0)(x, t), s_u + 4.0 * (s_c - s_u))
        res = sf.sample_ode(guided_score(cond, uncond, 2.0), sde, x, method="euler", steps=3)
    assert res.nfe == 3 and torch.isfinite(res.samples).all()


def test_a_per_sample_condition_on_a_subset_of_rows_is_named(generator):
    # Solvers that evaluate subsets of the batch cannot pair rows with per-sample labels: a clear error, not the
    # UNet's broadcasting error (or, for one row, an output broadcast to the whole batch).
    unet = tiny_unet(num_class_embeds=3)
    score, sde = from_diffusers(unet, diffusers.DDPMScheduler(), class_labels=torch.tensor([0, 1, 2, 0]))
    x = torch.randn(4, 1, 8, 8, generator=generator)
    match = r"from_diffusers: condition 'class_labels' holds 4 rows, but the network is called on 2"
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        sf.consistency.teacher_step(score, sde, x, torch.tensor([0.5, 0.5, 0.6, 0.6]), 0.3)
    with torch.no_grad(), pytest.raises(ValueError, match=r"from_kdiffusion: condition 'cond' holds 4 rows, but the network is called on 1"):
        from_kdiffusion(lambda x, sigma, cond: x, cond=torch.zeros(4, 3))[0](x[:1], torch.tensor([1.0]))
    shared, _ = from_diffusers(unet, diffusers.DDPMScheduler(), class_labels=torch.tensor([1]))
    with torch.no_grad():
        out, nfe = sf.consistency.teacher_step(shared, sde, x, torch.tensor([0.5, 0.5, 0.6, 0.6]), 0.3)
    assert out.shape == x.shape and nfe == 2 * 2  # two pairs of times, two evaluations each (heun)


def sdxl_like_unet() -> torch.nn.Module:
    """A tiny UNet2DConditionModel with SDXL's extra conditions, ``added_cond_kwargs={"text_embeds", "time_ids"}``."""
    torch.manual_seed(2)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=2, cross_attention_dim=6, attention_head_dim=2,
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=5 + 6 * 4,
    ).eval()


def test_conditions_inside_a_dict_are_checked_broadcast_and_cast_as_top_level_ones(generator):
    # SDXL's UNet takes its pooled text embedding and size ids in a dict, added_cond_kwargs: per-sample rows there meet
    # the same check as a top-level condition (not a shape error deep inside the UNet), and a row for all is broadcast.
    unet, scheduler = sdxl_like_unet(), diffusers.DDPMScheduler()
    text = torch.randn(1, 3, 6, generator=generator)
    per_sample = {"text_embeds": torch.randn(4, 5, generator=generator), "time_ids": torch.randn(4, 6, generator=generator)}
    score, sde = from_diffusers(unet, scheduler, encoder_hidden_states=text, added_cond_kwargs=per_sample)
    x = torch.randn(4, 1, 8, 8, generator=generator)
    match = r"from_diffusers: condition 'added_cond_kwargs\['text_embeds'\]' holds 4 rows, but the network is called on 2"
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        sf.consistency.teacher_step(score, sde, x, torch.tensor([0.5, 0.5, 0.6, 0.6]), 0.3)
    seen = []

    def plain(x, timestep, added_cond_kwargs, return_dict):
        seen.append({k: tuple(v.shape) for k, v in added_cond_kwargs.items()})
        return (x,)

    shared = {k: v[:1] for k, v in per_sample.items()}
    from_diffusers(plain, scheduler, added_cond_kwargs=shared)[0](x, torch.full((4,), 0.5))
    assert seen == [{"text_embeds": (4, 5), "time_ids": (4, 6)}]

    class HalfNet(torch.nn.Module):  # reads its condition through a bfloat16 layer: torch refuses a float32 input
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(5, 1, dtype=torch.bfloat16)

        def forward(self, x, timestep, added_cond_kwargs, return_dict):
            return (x + self.proj(added_cond_kwargs["text_embeds"])[:, :, None, None],)

    half = HalfNet()
    with torch.no_grad():
        got = from_diffusers(half, scheduler, added_cond_kwargs=shared)[0](x, torch.full((4,), 0.5))
        ref = from_diffusers(half, scheduler, added_cond_kwargs={"text_embeds": shared["text_embeds"].bfloat16()})[0](
            x, torch.full((4,), 0.5))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def mixture_denoiser(law: GaussianMixture):
    """E[x0 | x0 + sigma eps = x] = sum_k r_k(x) (m_k + C_k (C_k + sigma^2 I)^-1 (x - m_k)), written out directly."""
    means, covs, log_w = law.means, law.covs, torch.log(law.weights)
    eye = torch.eye(means.shape[1], dtype=means.dtype)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.reshape(-1, 1, 1, 1) ** 2
        total = covs[None] + s2 * eye  # (B, K, d, d)
        diff = x[:, None, :] - means[None]  # (B, K, d)
        sol = torch.linalg.solve(total, diff.unsqueeze(-1)).squeeze(-1)
        log_r = log_w - 0.5 * (diff * sol).sum(-1) - 0.5 * torch.logdet(total)
        r = torch.softmax(log_r, dim=1)
        post = means[None] + (covs[None] @ sol.unsqueeze(-1)).squeeze(-1)
        return (r.unsqueeze(-1) * post).sum(1)

    return denoise


def test_kdiffusion_adapter_on_an_analytic_denoiser_reproduces_native_samples(generator):
    law = make_law("ring2d")
    score, sde = from_kdiffusion(mixture_denoiser(law), sigma_min=0.01, sigma_max=20.0)
    native = law.score(sde)
    x = torch.randn(6, 2, generator=generator, dtype=torch.float64) * 3
    sig = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 20.0], dtype=torch.float64)
    torch.testing.assert_close(score(x, sig), native(x, sig), rtol=1e-9, atol=1e-9)
    x_T = sde.prior_sample((32, 2), generator=generator, dtype=torch.float64)
    ours = sf.sample_ode(score, sde, x_T, rtol=1e-7, atol=1e-7).samples
    ref = sf.sample_ode(native, sde, x_T, rtol=1e-7, atol=1e-7).samples
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


class TinyDenoiser(torch.nn.Module):
    """A small MLP denoiser D(x, sigma) with k-diffusion's preconditioning (c_skip x + c_out F)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma[:, None]
        f = self.net(torch.cat([x / (1 + s**2).sqrt(), torch.log(s) / 4], dim=1))
        return x / (1 + s**2) + f * s / (1 + s**2).sqrt()


def test_compiled_model_gives_the_same_samples(generator):
    model = TinyDenoiser()
    compiled = torch.compile(model, backend="eager", dynamic=False)
    x_T = 20.0 * torch.randn(8, 2, generator=generator, dtype=torch.float64)
    runs = [sf.sample_ode(from_kdiffusion(m, sigma_max=20.0)[0], sf.EDMSDE(sigma_max=20.0), x_T, method="heun", steps=6) for m in (model, compiled)]
    assert runs[1].samples.dtype == torch.float64
    torch.testing.assert_close(runs[1].samples, runs[0].samples, rtol=0, atol=0)


def test_autocast_runs_only_the_network_in_reduced_precision(unet, generator):
    scheduler = diffusers.DDPMScheduler()
    full, sde = from_diffusers(unet, scheduler)
    half, _ = from_diffusers(unet, scheduler, autocast=torch.bfloat16)
    x = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        a, b = full(x, t), half(x, t)
    assert b.dtype == torch.float64
    assert 0 < (a - b).norm() / a.norm() < 0.05  # bfloat16 keeps ~3 significant digits
    for state_dtype in (torch.float32, torch.float64):
        x_T = x.to(state_dtype)
        res = sf.sample_ode(half, sde, x_T, method="rk4", steps=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res_outer = sf.sample_sde(full, sde, x_T, steps=2, generator=generator)
        assert res.samples.dtype == res_outer.samples.dtype == state_dtype


def test_adapter_errors():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="prediction_type.*'epsilon', 'sample', 'v_prediction'"):
        from_diffusers(unet, diffusers.DDPMScheduler(), prediction_type="x0")
    # read from the scheduler, not given: the error says where it came from (SCMScheduler's is sCM's TrigFlow)
    with pytest.raises(ValueError, match=r"from_diffusers: the scheduler's prediction_type 'trigflow' \(SCMScheduler.config\) is not one of 'epsilon', 'sample', 'v_prediction', 'flow_prediction'"):
        from_diffusers(unet, diffusers.SCMScheduler())
    with pytest.raises(ValueError, match="schedule='linear' needs linearly spaced betas"):
        from_diffusers(unet, diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"), schedule="linear")
    with pytest.raises(TypeError, match="'betas' and 'alphas_cumprod'"):
        from_diffusers(unet, object())
    with pytest.raises(ValueError, match="autocast.*bfloat16"):
        from_diffusers(unet, diffusers.DDPMScheduler(), autocast=torch.float64)
    with pytest.raises(ValueError, match="learned .* time embedding"):
        from_diffusers(tiny_unet(time_embedding_type="learned", num_train_timesteps=N_TRAIN), diffusers.DDPMScheduler())
    with pytest.raises(TypeError, match="'model' expected a denoiser"):
        from_kdiffusion("model")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        DiscreteVPSDE(torch.tensor([0.9, 0.5, 0.0]))
    with pytest.raises(TypeError, match=r"DiscreteVPSDE: argument 'alphas_cumprod' expected a 1-D tensor of noise levels .*got str 'cosine'"):
        DiscreteVPSDE("cosine")
    with pytest.raises(ValueError, match="'w' expected a finite number"):
        guided_score(unet, unet, math.nan)
    with pytest.raises(TypeError, match="'uncond' expected a callable"):
        guided_score(unet, None, 1.0)


@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_unet_log_likelihood_runs_in_float64(unet, trace, generator):
    score, sde = from_diffusers(unet, diffusers.DDPMScheduler())
    x = torch.rand(2, 1, 8, 8, generator=generator, dtype=torch.float64) * 2 - 1
    # Not under torch.no_grad(): vmapped VJPs of a UNet fail there in torch 2.13 ("NYI: querying
    # is_contiguous inside of vmap"); with grad mode on they work (docs/adapters.md).
    ll = sf.log_likelihood(score, sde, x, trace=trace, method="rk4", steps=2, generator=generator)
    assert ll.log_prob.shape == (2,) and ll.log_prob.dtype == torch.float64
    assert torch.isfinite(ll.log_prob).all()
    torch.testing.assert_close(ll.log_prob, ll.prior_log_prob + ll.delta_log_prob)


def test_flow_matching_scheduler_becomes_rectified_flow_and_reproduces_its_euler_sampler(unet, generator):
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=N_TRAIN, shift=3.0)
    model, path = from_diffusers(unet, scheduler)
    assert isinstance(path, sf.RectifiedFlow) and model.prediction == "flow_velocity"
    steps = 6
    scheduler.set_timesteps(steps)
    # its shifted sigmas are the "shift" schedule (the last one, 0, is appended by diffusers)
    grid = sf.time_grid(path, steps - 1, "shift", shift=3.0, t_min=float(scheduler.sigmas[-2]))
    torch.testing.assert_close(grid, scheduler.sigmas[:-1].double(), rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 1, 8, 8, generator=generator)
    y = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            y = scheduler.step(unet(y, t.expand(2)).sample, t, y).prev_sample
        res = sf.sample_ode(model, path, x.double(), method="euler", schedule=scheduler.sigmas.double(), t_min=0.0)
    assert res.nfe == steps
    torch.testing.assert_close(res.samples, y.double(), rtol=1e-5, atol=1e-5)


def test_flow_matching_scheduler_options_are_checked(unet):
    with pytest.raises(ValueError, match="from_diffusers: argument 'prediction_type' expected one of"):
        from_diffusers(unet, diffusers.FlowMatchEulerDiscreteScheduler(), prediction_type="velocity")
    for scheduler in (diffusers.DDPMScheduler(), diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction")):
        # without flow sigmas diffusers' DDPM schedule has no velocity eps - x0: refused, not read as the VP's dx/dt
        with pytest.raises(ValueError, match=r"from_diffusers: prediction_type='flow_prediction' .* needs a flow-matching scheduler"):
            from_diffusers(unet, scheduler, prediction_type="flow_prediction")
    for schedule in ("linear", "discrete"):  # DDPM mappings: not silently ignored on a flow path
        with pytest.raises(ValueError, match=f"sde_from_scheduler: argument 'schedule' = '{schedule}' maps a DDPM schedule"):
            from_diffusers(unet, diffusers.FlowMatchEulerDiscreteScheduler(), schedule=schedule)
    with pytest.raises(ValueError, match="sde_from_scheduler: a flow-matching scheduler with invert_sigmas=True"):
        sde_from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True))


class _ForwardOfX(torch.nn.Module):
    def forward(self, x):
        return x


def _inner_type_error(x, timestep, return_dict=False):
    return x + "a string"  # a TypeError raised inside a network whose signature fits the call


@pytest.mark.parametrize(
    "adapter, net, condition, match",
    [
        (from_diffusers, _ForwardOfX(), {}, r"_ForwardOfX.forward has the signature \(x\)"),
        (from_diffusers, lambda x, t: x, {"class_labels": torch.zeros(1, dtype=torch.long)},
         r"class_labels=a tensor of shape \(2,\), return_dict=False\), but <lambda> has the signature \(x, t\)"),
        (from_kdiffusion, _ForwardOfX(), {}, r"from_kdiffusion: the network is called as model\(x, sigma, \*\*condition\)"),
        (from_kdiffusion, torch.compile(_ForwardOfX(), backend="eager"), {}, r"_ForwardOfX.forward has the signature \(x\)"),
    ],
)
def test_a_network_whose_signature_cannot_take_the_call_is_named_with_the_call(adapter, net, condition, match):
    args = (diffusers.DDPMScheduler(),) if adapter is from_diffusers else ()
    score, _ = adapter(net, *args, **condition)
    x, t = torch.randn(2, 3), torch.full((2,), 0.5)
    with pytest.raises(TypeError, match=match) as info:
        score(x, t)
    assert info.value.__cause__ is not None  # Python's own message stays in the chain
    if adapter is from_diffusers:
        assert "unet(x, timestep, **condition, return_dict=False)" in str(info.value)
    score, _ = from_diffusers(_inner_type_error, diffusers.DDPMScheduler())
    with pytest.raises(TypeError, match="unsupported operand"):  # not a signature problem: passed unchanged
        score(x, t)


@pytest.mark.parametrize("wrap", [lambda out: (out,), lambda out: {"sample": out}, lambda out: out])
def test_a_unet_output_as_tuple_dict_or_tensor_gives_the_same_score(unet, wrap, generator):
    x = torch.randn(2, 1, 8, 8, generator=generator)  # float32: a plain function is called in x's dtype
    t = torch.tensor([0.3, 0.8])
    wrapped = lambda x, timestep, return_dict: wrap(unet(x, timestep).sample)  # noqa: E731
    with torch.no_grad():
        got = from_diffusers(wrapped, diffusers.DDPMScheduler())[0](x, t)
        ref = from_diffusers(unet, diffusers.DDPMScheduler())[0](x, t)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_network_gets_its_float_conditions_in_its_own_dtype(dtype, generator):
    # The state is cast to the network's dtype; a float32 text embedding must be too (torch refuses mixed matmuls).
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=2, cross_attention_dim=4, attention_head_dim=2,
    ).to(dtype).eval()
    emb = torch.randn(2, 3, 4, generator=generator)
    x = torch.randn(2, 1, 8, 8, generator=generator)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        got = from_diffusers(unet, diffusers.DDPMScheduler(), encoder_hidden_states=emb)[0](x, t)
        ref = from_diffusers(unet, diffusers.DDPMScheduler(), encoder_hidden_states=emb.to(dtype))[0](x, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    seen = []  # a plain function (no parameters to read a dtype from) gets its conditions as given
    plain = lambda x, timestep, emb, return_dict: seen.append(emb.dtype) or (x,)  # noqa: E731
    from_diffusers(plain, diffusers.DDPMScheduler(), emb=emb)[0](x.double(), t.double())
    assert seen == [torch.float32]


def _ddim_both_ways(unet, score, sde, scheduler, n: int, steps: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """scoreflow's ddim on the scheduler's own timesteps and diffusers' DDIM loop, from the same n draws of x_T.

    diffusers' last step goes to alphas_cumprod[0] (t = 1/N), or with set_alpha_to_one to alpha = 1: Tweedie's
    x0_hat at the last timestep, scoreflow's denoise_final."""
    scheduler.set_timesteps(steps)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T
    for k in scheduler.timesteps:
        x = scheduler.step(unet(x, k.expand(n))[0], k, x).prev_sample
    ts = (scheduler.timesteps.double() + 1) / N_TRAIN
    if scheduler.config.set_alpha_to_one:
        return sf.sample_ode(score, sde, x_T, method="ddim", schedule=ts, t_min=float(ts[-1]), denoise_final=True).samples, x
    ts = torch.cat([ts, torch.tensor([1 / N_TRAIN], dtype=torch.float64)])
    return sf.sample_ode(score, sde, x_T, method="ddim", schedule=ts).samples, x


def test_a_zero_terminal_snr_scheduler_samples_as_diffusers_ddim_with_v_prediction():
    # rescale_betas_zero_snr=True: alphas_cumprod[-1] == 0, pure noise at the last step. The exact v-prediction of
    # a Gaussian law at the discrete levels drives diffusers' DDIM loop and scoreflow's DDIM on the same timesteps.
    # scoreflow's last level is 2^-24 (alpha(T) = 2^-12), so its first x0 estimate moves by alpha(T) |x| <= 1e-3.
    scheduler = diffusers.DDIMScheduler(
        rescale_betas_zero_snr=True, beta_schedule="scaled_linear", timestep_spacing="trailing",
        prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
    )
    assert scheduler.alphas_cumprod[-1] == 0
    alphas_cumprod = scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    mean, var = 0.7, 0.3

    def exact_v(x, timestep, return_dict=True):
        a2 = alphas_cumprod[timestep.double().round().long()][:, None]
        a, s = a2.sqrt(), (1 - a2).sqrt()
        x0 = mean + a * var / (a2 * var + s**2) * (x - a * mean)  # E[x0 | x_t]
        return (a * (x - a * x0) / s - s * x0,)  # v = alpha eps - sigma x0

    score, sde = from_diffusers(exact_v, scheduler)
    assert isinstance(sde, DiscreteVPSDE)
    ours, theirs = _ddim_both_ways(exact_v, score, sde, scheduler, 64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)


class _ClampedGaussianDenoiser(torch.nn.Module):
    """A stand-in for k-diffusion's DiscreteSchedule wrappers (CompVisDenoiser): it states its noise range as
    sigma_min/sigma_max tensors and evaluates any sigma outside it at the nearest end; inside, it is the exact
    denoiser E[x0 | x0 + sigma eps] of x0 ~ N(mean, var I)."""

    def __init__(self, mean: float, var: float) -> None:
        super().__init__()
        self.mean, self.var = mean, var
        self.register_buffer("sigmas", torch.tensor([0.03, 0.5, 14.6]))

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def forward(self, x, sigma):
        s2 = sigma.clamp(float(self.sigmas[0]), float(self.sigmas[-1]))[:, None] ** 2
        return (s2 * self.mean + self.var * x) / (self.var + s2)


def test_kdiffusion_adapter_takes_a_discrete_schedule_wrappers_own_noise_range(generator):
    model = _ClampedGaussianDenoiser(0.5, 0.2)
    score, sde = from_kdiffusion(model)
    assert (sde.sigma_min, sde.sigma_max) == (float(model.sigma_min), float(model.sigma_max))
    law = Gaussian(torch.full((2,), 0.5, dtype=torch.float64), 0.2 * torch.eye(2, dtype=torch.float64))
    x = sde.prior_sample((8, 2), generator=generator, dtype=torch.float64)
    for t in (sde.T, sde.t_min):  # the ends of the solve: where a clamping wrapper is still exact
        tt = torch.full((8,), t, dtype=torch.float64)
        torch.testing.assert_close(score(x, tt), law.score(sde)(x, tt), rtol=1e-6, atol=1e-8)
    assert from_kdiffusion(model, sigma_min=0.1, sigma_max=10.0)[1].sigma_max == 10.0  # inside: as given
    for sigma_max in (80.0, torch.tensor(80.0)):  # a tensor too: it is checked as a number, not let through
        with pytest.raises(ValueError, match=r"from_kdiffusion: argument 'sigma_max' = 80 lies outside the model's own noise levels \[0.03, 14.6\]"):
            from_kdiffusion(model, sigma_max=sigma_max)
    with pytest.raises(ValueError, match="argument 'sigma_min' = 0.002 lies outside"):
        from_kdiffusion(model, sigma_min=0.002)
    edm_like = _ForwardOfX()
    edm_like.sigma_min, edm_like.sigma_max = 0.0, math.inf  # EDM's networks (EDMPrecond) state no limit
    sde = from_kdiffusion(edm_like)[1]
    assert (sde.sigma_min, sde.sigma_max) == (0.002, 80.0)


def test_a_continuous_timestep_scheduler_calls_the_unet_with_c_noise_as_diffusers_euler_does():
    # EulerDiscreteScheduler(timestep_type="continuous", prediction_type="v_prediction") calls the UNet with
    # 0.25 log(sigma/alpha). The exact v-prediction of a Gaussian reads its noise level back from that timestep;
    # diffusers' Euler loop in sigma and scoreflow's euler in time="sigma" on the same sigmas, then Tweedie's step.
    scheduler = diffusers.EulerDiscreteScheduler(timestep_type="continuous", prediction_type="v_prediction")
    mean, var = 0.7, 0.3

    def exact_v(x, timestep, return_dict=True):
        sig = torch.exp(4 * timestep.double())[:, None]  # sigma/alpha
        a = (1 + sig**2).rsqrt()
        s = sig * a
        x0 = mean + a * var / (a**2 * var + s**2) * (x - a * mean)
        return (a * (x - a * x0) / s - s * x0,)

    score, sde = from_diffusers(exact_v, scheduler, schedule="discrete")
    scheduler.set_timesteps(10)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T * scheduler.init_noise_sigma
    for k in scheduler.timesteps:
        x = scheduler.step(exact_v(scheduler.scale_model_input(x, k), k.expand(64))[0], k, x).prev_sample
    sigmas = scheduler.sigmas[:-1].double()
    ts = sde.t_from_log_snr(-sigmas.log())
    ts[0] = 1.0  # the first sigma is the last training level's, up to float32 rounding
    res = sf.sample_ode(score, sde, x_T, method="euler", time="sigma", schedule=ts, t_min=float(ts[-1]), denoise_final=True)
    torch.testing.assert_close(res.samples, x, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "spacing, steps_offset, set_alpha_to_one", [("trailing", 0, False), ("leading", N_TRAIN // 10 - 1, True)]
)
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ddim_on_a_discrete_schedule_is_diffusers_ddim_for_every_prediction_type(prediction_type, beta_schedule, spacing,
                                                                                  steps_offset, set_alpha_to_one):
    # The exact prediction of a Gaussian law at the scheduler's own levels (its timestep must be an integer), run
    # through diffusers' DDIM loop and through the adapter with scoreflow's ddim on the same timesteps (10 steps from
    # timestep N - 1: "leading" spacing reaches it through steps_offset), ending at t = 1/N or with Tweedie's step.
    scheduler = diffusers.DDIMScheduler(
        beta_schedule=beta_schedule, prediction_type=prediction_type, timestep_spacing=spacing,
        steps_offset=steps_offset, clip_sample=False, set_alpha_to_one=set_alpha_to_one,
    )
    alphas_cumprod = scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    mean, var = 0.7, 0.3

    def exact(x, timestep, return_dict=True):
        index = timestep.double().round().long()
        assert torch.equal(index.double(), timestep.double())
        a2 = alphas_cumprod[index][:, None]
        a, s = a2.sqrt(), (1 - a2).sqrt()
        x0 = mean + a * var / (a2 * var + s**2) * (x - a * mean)
        eps = (x - a * x0) / s
        return ({"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}[prediction_type],)

    score, sde = from_diffusers(exact, scheduler, schedule="discrete")
    ours, theirs = _ddim_both_ways(exact, score, sde, scheduler, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)  # diffusers' final alpha is float32


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_clip_sample_is_ddim_through_the_clipping_wrap_with_the_clipped_model_output(prediction_type):
    # diffusers' clip_sample=True is not read; x0_correction(sde, "clipping").wrap(score) clips x0_hat inside the
    # update, with the noise estimate of the clipped x0_hat: DDIMScheduler.step(..., use_clipped_model_output=True).
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", prediction_type=prediction_type, timestep_spacing="trailing",
        clip_sample=True, set_alpha_to_one=False,
    )
    alphas_cumprod = scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    mean, var = 0.9, 0.5  # a law whose x0_hat leaves [-1, 1] often, so that clipping acts

    def exact(x, timestep, return_dict=True):
        a2 = alphas_cumprod[timestep.double().round().long()][:, None]
        a, s = a2.sqrt(), (1 - a2).sqrt()
        x0 = mean + a * var / (a2 * var + s**2) * (x - a * mean)
        eps = (x - a * x0) / s
        return (eps if prediction_type == "epsilon" else a * eps - s * x0,)

    score, sde = from_diffusers(exact, scheduler, schedule="discrete")
    scheduler.set_timesteps(10)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x_T
    for k in scheduler.timesteps:
        x = scheduler.step(exact(x, k.expand(16))[0], k, x, use_clipped_model_output=True).prev_sample
    ts = torch.cat([(scheduler.timesteps.double() + 1) / N_TRAIN, torch.tensor([1 / N_TRAIN], dtype=torch.float64)])
    clipped = sf.sample_ode(sf.x0_correction(sde, "clipping").wrap(score), sde, x_T, method="ddim", schedule=ts).samples
    plain = sf.sample_ode(score, sde, x_T, method="ddim", schedule=ts).samples
    torch.testing.assert_close(clipped, x, rtol=1e-6, atol=1e-6)  # diffusers' final alpha is float32
    assert (plain - x).abs().max() > 1e-2
