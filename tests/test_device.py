"""Every solve, likelihood, loss and conditional sampler keeps to the device of ``x``.

The device is simulated on the CPU (``_fake_cuda``): an op that mixes a tensor on it with a CPU tensor of dimension
>= 1, or draws its noise from a generator on the other device, raises as CUDA would.  Each run is compared with the
same call on plain CPU tensors: the simulated device computes on the CPU, so the numbers must agree.
"""

import pytest
import torch

import scoreflow as sf
from _fake_cuda import DEVICE, DeviceMismatch, FakeCudaGenerator, fake_cuda, is_tagged, on_device
from scoreflow.dynamics import divergence
from scoreflow.metrics import sliced_wasserstein2
from scoreflow.testing import make_law

SDE = sf.VPSDE()
ADAPTIVE = {"rtol": 1e-3, "atol": 1e-3}


def _law():
    return sf.analytic.Gaussian(torch.zeros(2, dtype=torch.float64), 0.5 * torch.eye(2, dtype=torch.float64))


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, generator=g, dtype=torch.float64), 0.5 * torch.randn(3, 2, generator=g, dtype=torch.float64)


def _on_both(run, law=_law):
    """``run(law, x_T, x0, generator)`` on plain CPU tensors and on the simulated device: both results as tensors,
    the device one checked to be on the device."""
    x_T, x0 = _inputs()
    expected = run(law(), x_T, x0, torch.Generator().manual_seed(1))
    with fake_cuda(divergence):
        got = run(law().to(device=DEVICE), on_device(x_T), on_device(x0), FakeCudaGenerator().manual_seed(1))
        assert is_tagged(got) and got.device == DEVICE
    return got, expected


def _assert_same(run, law=_law):
    got, expected = _on_both(run, law)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_the_simulated_device_refuses_what_cuda_refuses():
    with fake_cuda():
        x = on_device(torch.zeros(3, 2))
        assert x.device == DEVICE and (x + torch.tensor(1.0)).device == DEVICE  # a 0-dim CPU tensor mixes
        with pytest.raises(DeviceMismatch, match="CPU tensors of shapes"):
            x + torch.ones(2)
        with pytest.raises(DeviceMismatch, match="generator on cpu"):
            torch.randn(x.shape, generator=torch.Generator(), device=x.device)
        assert not is_tagged(x.cpu() + torch.ones(2)) and is_tagged(torch.ones(2, device=x.device) + x)


def _kw(kind, name):
    return ADAPTIVE if sf.get_method(kind, name).adaptive else {"steps": 3}


@pytest.mark.parametrize("name", [m.name for m in sf.list_methods("ode")])
def test_sample_ode(name):
    _assert_same(lambda law, x_T, x0, g: sf.sample_ode(law.score(SDE), SDE, x_T, method=name, **_kw("ode", name)).samples)


@pytest.mark.parametrize("name", [m.name for m in sf.list_methods("sde")])
def test_sample_sde(name):
    _assert_same(
        lambda law, x_T, x0, g: sf.sample_sde(law.score(SDE), SDE, x_T, method=name, generator=g, **_kw("sde", name)).samples
    )


# The estimated traces share one code path: a fixed-grid and an adaptive method of each backend suffice.
TRACES = [(m.name, "exact") for m in sf.list_methods("likelihood")] + [
    (name, trace) for trace in ("hutchinson", "hutchinson_fd") for name in ("rk4", "dopri5", "expint_pc", "expint_pc_adaptive")
]


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m_sde"])
def test_sample_sde_refuses_a_brownian_path_on_another_device(name):
    # A path built for a CPU x_T passed the shape and dtype check and failed inside the first step.
    x_T, _ = _inputs()
    with fake_cuda():
        law = _law().to(device=DEVICE)
        cpu_path = sf.brownian_motion(x_T, SDE.T - SDE.t_min)
        with pytest.raises(ValueError, match=r"sample_sde: argument 'bm' expected .* device cuda:0 .* device cpu"):
            sf.sample_sde(law.score(SDE), SDE, on_device(x_T), method=name, steps=3, bm=cpu_path)
        x_T = on_device(x_T)
        res = sf.sample_sde(law.score(SDE), SDE, x_T, method=name, steps=3, bm=sf.brownian_motion(x_T, SDE.T - SDE.t_min))
        assert res.samples.device == DEVICE


def test_dps_score_refuses_a_measurement_on_another_device():
    # A CPU y met operator(x0) on the device in the residual, inside the first step.
    x_T, _ = _inputs()
    with fake_cuda():
        law = _law().to(device=DEVICE)
        dps = sf.dps_score(law.score(SDE), SDE, lambda x: x[:, :1], torch.tensor([0.3], dtype=torch.float64), noise_std=0.5)
        with pytest.raises(ValueError, match=r"dps_score: argument 'y' expected the device of operator\(x0\), cuda:0, got cpu"):
            sf.sample_ode(dps, SDE, on_device(x_T), method="euler", steps=3)


def test_fit_schedule_refuses_a_reference_on_another_device():
    # A CPU reference (a saved FittedSchedule's) met the first candidate's samples on the device, after its solve.
    x_T, _ = _inputs()
    with fake_cuda():
        law = _law().to(device=DEVICE)
        with pytest.raises(ValueError, match="fit_schedule: argument 'reference' expected the device of x_pilot, cuda:0, got cpu"):
            sf.fit_schedule(law.score(SDE), SDE, on_device(x_T), 3, method="dpmpp_2m", reference=torch.zeros_like(x_T))
        fitted = sf.fit_schedule(law.score(SDE), SDE, on_device(x_T), 3, method="dpmpp_2m")
        assert fitted.reference.device == DEVICE


@pytest.mark.parametrize(("name", "trace"), TRACES)
def test_log_likelihood(name, trace):
    options = {} if trace == "exact" else {"trace": trace}
    _assert_same(
        lambda law, x_T, x0, g: sf.log_likelihood(
            law.score(SDE), SDE, x0, method=name, **options, **({} if trace == "exact" else {"generator": g}),
            **_kw("likelihood", name),
        ).log_prob
    )


@pytest.mark.parametrize("corrector", [None] + [m.name for m in sf.list_methods("corrector")])
@pytest.mark.parametrize("predictor", [m.name for m in sf.list_methods("predictor")])
def test_sample_pc(predictor, corrector):
    _assert_same(
        lambda law, x_T, x0, g: sf.sample_pc(
            law.score(SDE), SDE, x_T, steps=3, predictor=predictor, corrector=corrector, generator=g
        ).samples
    )


@pytest.mark.parametrize("name", [m.name for m in sf.list_methods("conditional")])
def test_conditional(name):
    def run(law, x_T, x0, g):
        score = law.score(SDE)
        if name in ("clipping", "dynamic_thresholding"):
            return sf.sample_ode(score, SDE, x_T, method="dpmpp_2m", steps=3, callback=sf.x0_correction(SDE, name)).samples
        if name in ("replacement", "repaint"):
            mask = torch.tensor([True, False], device=x_T.device).expand(x_T.shape)
            extra = {"resample": 2} if name == "repaint" else {}
            return sf.inpaint(score, SDE, x_T, known=x0, mask=mask, method=name, steps=3, generator=g, **extra).samples
        A = torch.tensor([[1.0, 0.0]], dtype=x_T.dtype, device=x_T.device)
        y = torch.tensor([0.3], dtype=x_T.dtype, device=x_T.device)
        if name == "dps":
            model = sf.dps_score(score, SDE, lambda x: x @ A.T, y, noise_std=0.5)
        else:
            model = sf.classifier_guided_score(score, sf.analytic.observation_log_likelihood(law, SDE, A=A, y=y, noise_std=0.5))
        return sf.sample_ode(model, SDE, x_T, method="euler", steps=3).samples

    _assert_same(run)


@pytest.mark.parametrize("steps", [1, 3])
def test_sample_consistency_with_an_exact_consistency_function(steps):
    # Gaussian.flow_map built its times on the CPU, (1, 1) coefficients that met the law's mean on the device.
    _assert_same(
        lambda law, x_T, x0, g: sf.sample_consistency(law.consistency_function(SDE), SDE, x_T, steps=steps, generator=g).samples
    )


def test_mixture_flow_map():
    # The DOP853 solve of a mixture's flow map called the law (on the device) on its CPU states.
    _assert_same(
        lambda law, x_T, x0, g: law.flow_map(SDE, x_T, SDE.T, 0.5, rtol=1e-6, atol=1e-8), law=lambda: make_law("ring2d")
    )


def test_langevin_and_annealed_langevin():
    _assert_same(lambda law, x_T, x0, g: sf.langevin(law.grad_log_prob, x_T, steps=3, step_size=0.01, generator=g).samples)
    sigmas = sf.geometric_sigmas(0.01, 1.0, 3)  # on the CPU, as users build them
    _assert_same(
        lambda law, x_T, x0, g: sf.annealed_langevin(
            lambda x, s: -x / (1 + s[:, None] ** 2), x_T, sigmas, steps=2, step_size=0.01, generator=g
        ).samples
    )


LOSSES = {
    "esm": lambda law, x0, g: sf.losses.esm_loss(law.score(SDE), x0, -x0, t=0.5),
    "ism": lambda law, x0, g: sf.losses.ism_loss(law.score(SDE), x0, t=0.5),
    "ssm": lambda law, x0, g: sf.losses.ssm_loss(law.score(SDE), x0, t=0.5, generator=g),
    "ssm_vr": lambda law, x0, g: sf.losses.ssm_vr_loss(law.score(SDE), x0, t=0.5, generator=g),
    "dsm": lambda law, x0, g: sf.losses.dsm_loss(lambda x, s: -x, x0, 0.5, generator=g),
    "multiscale_dsm": lambda law, x0, g: sf.losses.multiscale_dsm_loss(
        lambda x, s: -x, x0, sf.geometric_sigmas(0.01, 1.0, 3), generator=g
    ),
    "sde_dsm": lambda law, x0, g: sf.losses.sde_dsm_loss(law.score(SDE), SDE, x0, generator=g),
    "sde_dsm_log_snr": lambda law, x0, g: sf.losses.sde_dsm_loss(law.score(SDE), SDE, x0, generator=g, time_sampling="log_snr"),
    "cfm_ot": lambda law, x0, g: sf.losses.cfm_loss(lambda x, t: -x, sf.RectifiedFlow(), x0, coupling="ot", generator=g),
    "consistency_distillation": lambda law, x0, g: sf.losses.consistency_distillation_loss(
        law.consistency_function(SDE), law.consistency_function(SDE), law.score(SDE), SDE, x0, generator=g
    ),
    "consistency_training": lambda law, x0, g: sf.losses.consistency_training_loss(
        law.consistency_function(SDE), law.consistency_function(SDE), SDE, x0, generator=g
    ),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses(name):
    _assert_same(lambda law, x_T, x0, g: LOSSES[name](law, x0, g))


def test_sliced_wasserstein2_of_samples_on_the_device():
    # The projection directions were drawn on the CPU and multiplied with the samples on their device.
    x, y = _inputs()
    expected = sliced_wasserstein2(x, y, generator=torch.Generator().manual_seed(2))
    with fake_cuda():
        got = sliced_wasserstein2(on_device(x), on_device(y), generator=torch.Generator().manual_seed(2))
        on_its_device = sliced_wasserstein2(on_device(x), on_device(y), generator=FakeCudaGenerator().manual_seed(2))
    assert got == expected and on_its_device == expected  # (the fake device's generator is the CPU's stream)


GENERATOR_SITES = {
    "sample_pc": lambda law, x, g: sf.sample_pc(law.score(SDE), SDE, x, steps=2, generator=g),
    "inpaint": lambda law, x, g: sf.inpaint(law.score(SDE), SDE, x, known=x, mask=torch.ones_like(x), steps=2, generator=g),
    "langevin": lambda law, x, g: sf.langevin(law.grad_log_prob, x, steps=2, step_size=0.01, generator=g),
    "annealed_langevin": lambda law, x, g: sf.annealed_langevin(lambda y, s: -y, x, [1.0, 0.1], steps=2, generator=g),
    "sample_consistency": lambda law, x, g: sf.sample_consistency(law.consistency_function(SDE), SDE, x, steps=2, generator=g),
    "log_likelihood": lambda law, x, g: sf.log_likelihood(law.score(SDE), SDE, x, trace="hutchinson", generator=g),
    "draw_probes": lambda law, x, g: divergence.draw_probes(x, 1, generator=g),
    "dequantize": lambda law, x, g: sf.dequantize(torch.zeros_like(x), generator=g),
    **{name: (lambda name: lambda law, x, g: LOSSES[name](law, x, g))(name) for name in LOSSES if name not in ("esm", "ism")},
}


@pytest.mark.parametrize("name", list(GENERATOR_SITES))
def test_a_generator_on_another_device_than_the_data_is_named(name):
    # before: torch's own "Expected a 'cuda' device type for generator but found 'cpu'" from inside the first draw,
    # naming neither the function nor the argument (sample_sde, whose generator only seeds a Brownian path, takes any)
    x, _ = _inputs()
    with fake_cuda(divergence):
        with pytest.raises(ValueError, match=r"argument 'generator' expected a generator on 'cuda', the device of '\w+'.*"
                                             r"got one on 'cpu'\. Fix: torch\.Generator\(device='cuda:0'\)"):
            GENERATOR_SITES[name](_law().to(device=DEVICE), on_device(x), torch.Generator().manual_seed(0))
