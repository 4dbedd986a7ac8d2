"""sample_consistency against diffusers' CMStochasticIterativeScheduler (openai's multistep sampler) on the same
network, times and noise: under EDM the two are the same algorithm, so their samples agree to float32 rounding."""

import pytest
import torch

import scoreflow as sf

diffusers = pytest.importorskip("diffusers")


def _mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))


@pytest.mark.parametrize("timesteps", [[0], [22, 0], [33, 22, 10, 0]])
def test_multistep_sampler_matches_diffusers_consistency_scheduler(timesteps):
    mlp = _mlp(0)
    sde = sf.EDMSDE()  # sigma_min = 0.002, sigma_max = 80: the scheduler's defaults

    def net(x, sigma):  # F(c_in x, sigma), the input scaled as scale_model_input does
        return mlp(torch.cat([x / torch.sqrt(sigma**2 + 0.25)[:, None], sigma[:, None].log() / 4], dim=1))

    f = sf.consistency.parameterize(net, sde, sigma_data=0.5)
    sched = diffusers.CMStochasticIterativeScheduler(clip_denoised=False)
    sched.set_timesteps(timesteps=timesteps)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * sched.init_noise_sigma
    g = torch.Generator().manual_seed(2)
    x = x_T
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            sigma = sched.sigmas[i].expand(x.shape[0])
            out = mlp(torch.cat([sched.scale_model_input(x, t), sigma[:, None].log() / 4], dim=1))
            x = sched.step(out, t, x, generator=g).prev_sample
        # the scheduler's re-noising times: its Karras sigmas between the first and sigma_min
        ours = sf.sample_consistency(f, sde, x_T, times=sched.sigmas[1:-1].double() if len(timesteps) > 1 else None,
                                     generator=torch.Generator().manual_seed(2))
    assert ours.nfe == len(timesteps)
    torch.testing.assert_close(ours.samples, x, rtol=1e-4, atol=1e-4)
    assert (ours.samples - x).abs().max() < 1e-3 * x.abs().max()
