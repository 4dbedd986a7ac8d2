"""Every public entry point given bad input: a scoreflow error naming the argument (or the model output at fault),
or, where the input is legitimate (size-1 batches, float64 data of huge magnitude), a finite result of the right
shape and dtype.  Issue 14; the command line's half is tests/test_cli_errors.py and tests/test_cli_outputs.py."""

from __future__ import annotations

import inspect
import sys
import types

import pytest
import torch

import scoreflow as sf
from scoreflow import NonFiniteError
from scoreflow.adapters import from_diffusers, from_kdiffusion, guided_score

L = sf.losses
SDE = sf.VPSDE()
GAUSS = sf.analytic.Gaussian(torch.zeros(2), torch.eye(2))
SCORE = GAUSS.score(SDE)


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


def _nan_score(x, t):
    return torch.full_like(x, float("nan"))


def _nan_after(t_bad, *, upwards=False):
    """A score that is exact before the solve passes ``t_bad`` (downwards, or upwards for a likelihood) and NaN
    after: finite at the first call, non-finite later."""

    def score(x, t):
        ok = t <= t_bad if upwards else t >= t_bad
        return torch.where(ok[:, None], SCORE(x, t), torch.nan)

    return score


def _narrow(x, t):
    """A network output of shape (B, 1): it would broadcast against x into valid-looking values."""
    return x[:, :1]


def _fake_scheduler(prediction_type="epsilon", n=50):
    betas = torch.linspace(1e-4, 0.02, n)
    config = types.SimpleNamespace(prediction_type=prediction_type, num_train_timesteps=n, beta_schedule="linear")
    return types.SimpleNamespace(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, 0), config=config)


def _unet(out):
    """A diffusers-like UNet returning ``out(x)`` as a one-element tuple (return_dict=False)."""
    return lambda x, timestep, return_dict=True: (out(x),)


# ---------------------------------------------------------------- front-ends: shapes, dtypes, options

SOLVES = {
    "sample_ode": lambda s, x, **kw: sf.sample_ode(s, SDE, x, method="euler", steps=kw.pop("steps", 3), **kw),
    "sample_sde": lambda s, x, **kw: sf.sample_sde(s, SDE, x, method="euler", steps=kw.pop("steps", 3), **kw),
    "sample_pc": lambda s, x, **kw: sf.sample_pc(s, SDE, x, steps=kw.pop("steps", 3), **kw),
    "log_likelihood": lambda s, x, **kw: sf.log_likelihood(s, SDE, x, method="euler", steps=kw.pop("steps", 3), **kw),
}
NAMES = {"sample_ode": "x_T", "sample_sde": "x_T", "sample_pc": "x_T", "log_likelihood": "x"}


@pytest.mark.parametrize("fn", SOLVES)
@pytest.mark.parametrize(
    ("bad", "error", "what"),
    [
        (lambda: [[0.0, 1.0]], TypeError, "torch.Tensor"),
        (lambda: torch.zeros(2), ValueError, "batch dimension"),
        (lambda: torch.zeros(0, 2), ValueError, "non-empty batch"),
        (lambda: torch.zeros(3, 2, dtype=torch.int64), TypeError, "floating-point"),
        (lambda: torch.zeros(3, 2, dtype=torch.float16), TypeError, "float32 or float64"),
        (lambda: torch.zeros(3, 2, dtype=torch.bfloat16), TypeError, "float32 or float64"),
        (lambda: torch.full((3, 2), float("inf")), ValueError, "NaN or infinite"),
    ],
    ids=["list", "1-D", "empty", "int64", "float16", "bfloat16", "inf"],
)
def test_a_solve_refuses_a_malformed_state_naming_it(fn, bad, error, what):
    with pytest.raises(error, match=rf"{fn}: argument '{NAMES[fn]}'.*{what}"):
        SOLVES[fn](SCORE, bad())


def test_a_bfloat16_state_is_refused_before_an_adaptive_solver_divides_by_its_underflowed_error():
    with pytest.raises(TypeError, match=r"sample_ode: argument 'x_T' expected a float32 or float64 .* Fix: pass x_T.float\(\)"):
        sf.sample_ode(SCORE, SDE, _x(3, 2).bfloat16(), method="dpmpp_4m_pc_adaptive")


@pytest.mark.parametrize("fn", SOLVES)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 0}, ValueError, "'steps' expected an int >= 1"),
        ({"steps": 2.5}, TypeError, "'steps' expected an int"),
        ({"generator": 0}, TypeError, "'generator' expected a torch.Generator"),
    ],
    ids=["steps=0", "steps=2.5", "generator=0"],
)
def test_a_solve_refuses_wrong_option_types_and_values(fn, kwargs, error, match):
    if fn == "sample_ode" and "generator" in kwargs:
        pytest.skip("sample_ode draws no noise and takes no generator")
    with pytest.raises(error, match=rf"{fn}: argument {match}"):
        SOLVES[fn](SCORE, _x(3, 2), **kwargs)


@pytest.mark.parametrize("fn", ["sample_ode", "log_likelihood"])
def test_options_of_the_wrong_type_or_name_are_refused(fn):
    run = {"sample_ode": sf.sample_ode, "log_likelihood": sf.log_likelihood}[fn]
    with pytest.raises(TypeError, match=rf"{fn}: argument 'options' expected a dict or None, got str 'fast'"):
        run(SCORE, SDE, _x(3, 2), method="dopri5", options="fast")
    with pytest.raises(TypeError, match=rf"{fn}: method 'dopri5' takes no option 'bogus'; its options: 'first_step'"):
        run(SCORE, SDE, _x(3, 2), method="dopri5", options={"bogus": 1})


def test_an_adaptive_solve_past_its_step_budget_is_a_runtime_error_naming_the_option():
    with pytest.raises(RuntimeError, match="max_num_steps=2"):
        sf.sample_ode(SCORE, SDE, _x(3, 2), method="dopri5", rtol=1e-10, atol=1e-10, options={"max_num_steps": 2})


@pytest.mark.parametrize("fn", SOLVES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_size_one_batch_gives_a_finite_result_of_its_shape_and_dtype(fn, dtype):
    score = sf.analytic.Gaussian(torch.zeros(2, dtype=dtype), torch.eye(2, dtype=dtype)).score(SDE)
    seeded = {} if fn == "sample_ode" else {"generator": torch.Generator().manual_seed(1)}
    res = SOLVES[fn](score, _x(1, 2, dtype=dtype), **seeded)
    out = res.log_prob if fn == "log_likelihood" else res.samples
    assert out.shape == ((1,) if fn == "log_likelihood" else (1, 2)) and out.dtype == dtype
    assert torch.isfinite(out).all()


def test_float64_data_of_huge_magnitude_is_legitimate_and_float32_stops_naming_the_time():
    x = torch.full((2, 2), 1e30, dtype=torch.float64)
    ll = sf.log_likelihood(lambda y, t: -y, SDE, x, method="euler", steps=2).log_prob
    assert ll.dtype == torch.float64 and torch.isfinite(ll).all() and (ll < -1e59).all()
    with pytest.raises(NonFiniteError, match=r"at t="):
        sf.log_likelihood(lambda y, t: -y, SDE, x.float(), method="euler", steps=2)


# ---------------------------------------------------------------- the score model's output: first call and later


@pytest.mark.parametrize("fn", SOLVES)
def test_a_score_of_the_wrong_shape_dtype_or_type_stops_at_the_first_call(fn):
    with pytest.raises(ValueError, match=rf"{fn}: the score expected shape \(3, 2\).*got shape \(3, 1\)"):
        SOLVES[fn](_narrow, _x(3, 2))
    with pytest.raises(TypeError, match=rf"{fn}: the score expected dtype torch.float32.*got torch.float64"):
        SOLVES[fn](lambda x, t: x.double(), _x(3, 2))
    with pytest.raises(TypeError, match=rf"{fn}: the score expected a tensor"):
        SOLVES[fn](lambda x, t: 0.0, _x(3, 2))


class _NeedsLabel(torch.nn.Module):
    def forward(self, x, t, y):
        return -x


WRONG_SIGNATURES = {
    "one positional": (lambda x: -x, r"\(x\)"),
    "three positional": (lambda x, t, y: -x, r"\(x, t, y\)"),
    "keyword-only t": (lambda x, *, t: -x, r"\(x, \*, t\)"),
    "module forward(x, t, y)": (_NeedsLabel(), r"_NeedsLabel.forward with signature \(x, t, y\)"),
}


@pytest.mark.parametrize("fn", SOLVES)
@pytest.mark.parametrize("wrong", WRONG_SIGNATURES)
def test_a_score_of_the_wrong_signature_is_named_with_the_front_end_and_the_call_made(fn, wrong):
    score, signature = WRONG_SIGNATURES[wrong]
    with pytest.raises(TypeError, match=rf"{fn}: argument 'score' expected a callable score\(x, t\), called with 2 "
                       rf"positional argument\(s\) \(a tensor of shape \(3, 2\), a tensor of shape \(3,\)\); got .*{signature}") as err:
        SOLVES[fn](score, _x(3, 2))
    assert isinstance(err.value.__cause__, TypeError)  # Python's own message is kept as the cause


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sf.langevin(lambda x, t: -x, _x(3, 2), step_size=0.1, steps=2), r"langevin: argument 'score' expected a callable score\(x\)"),
        (lambda: sf.langevin(lambda x: -x, _x(3, 2), step_size=0.1, steps=2, log_prob=lambda x, t: x.sum(1)),
         r"langevin: argument 'log_prob' expected a callable log_prob\(x\)"),
        (lambda: sf.annealed_langevin(lambda x: -x, _x(3, 2), [1.0, 0.5], steps=2), r"annealed_langevin: argument 'score' expected a callable score\(x, sigma\)"),
        (lambda: sf.sample_ode(sf.score_from_eps(lambda x: x, SDE), SDE, _x(3, 2), method="euler", steps=2),
         r"score_from_eps: argument 'net' expected a callable net\(x, t\)"),
        (lambda: sf.sample_ode(SCORE, SDE, _x(3, 2), method="dpmpp_2m", steps=2, callback=lambda i, x: None),
         r"sample_ode: argument 'callback' expected a callable callback\(info\).*keys 'i', 't', 'x' and 'denoised'"),
        (lambda: L.dsm_loss(lambda x: x, _x(3, 2), 0.5), r"dsm_loss: argument 'score' expected a callable score\(x, t\)"),
        (lambda: sf.sample_ode(sf.classifier_guided_score(lambda x: x, lambda x, t: x.sum(1)), SDE, _x(3, 2), method="euler", steps=2),
         r"classifier_guided_score: argument 'score' expected a callable score\(x, t\)"),
        (lambda: sf.sample_consistency(lambda x: x, SDE, _x(3, 2), steps=1), r"sample_consistency: argument 'f' expected a callable f\(x, t\)"),
    ],
    ids=["langevin", "mala log_prob", "annealed", "score_from_eps net", "callback", "dsm_loss", "classifier guidance", "consistency f"],
)
def test_every_user_callable_of_the_wrong_signature_is_named(call, match):
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("fn", SOLVES)
def test_a_type_error_raised_inside_a_score_of_the_right_signature_passes_unchanged(fn):
    def score(x, t):
        return torch.add(x, "not a tensor")

    with pytest.raises(TypeError) as err:
        SOLVES[fn](score, _x(3, 2))
    assert "add()" in str(err.value) and "argument 'score'" not in str(err.value)


@pytest.mark.parametrize("fn", SOLVES)
def test_a_score_non_finite_at_the_first_call_or_later_names_the_time(fn):
    upwards = fn == "log_likelihood"  # integrates from t_min up to T
    with pytest.raises(NonFiniteError, match=rf"score became non-finite .* at t={'0.001' if upwards else '1'} "):
        SOLVES[fn](_nan_score, _x(3, 2))
    with pytest.raises(NonFiniteError, match=r"became non-finite .* at t=") as err:
        SOLVES[fn](_nan_after(0.5, upwards=upwards), _x(3, 2), steps=4)
    t = float(str(err.value).split(" at t=")[1].split(" ")[0])
    assert (t > 0.5) if upwards else (t < 0.5)


def test_a_nan_prior_log_prob_is_named_instead_of_nan_log_likelihoods():
    class NanPrior(sf.VPSDE):
        def prior_log_prob(self, z):
            return torch.full(z.shape[:1], float("nan"), dtype=z.dtype)

    sde = NanPrior()
    with pytest.raises(NonFiniteError, match="prior_log_prob became non-finite"):
        sf.log_likelihood(GAUSS.score(sde), sde, _x(3, 2), method="euler", steps=2)


def test_a_corrector_given_a_zero_score_skips_its_step_instead_of_dividing_by_zero():
    """A freshly initialised network may output zeros: the signal-to-noise step rule has no step size then."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x_T = _x(4, 2)
    res = sf.sample_pc(zero, SDE, x_T, steps=3, predictor=None, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.samples, x_T, rtol=0, atol=0)  # no predictor, no corrector step: x unchanged
    res = sf.sample_pc(zero, SDE, x_T, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.samples).all()


# ---------------------------------------------------------------- wrappers and adapters: the network's first output

WRAPPERS = {
    "score_from_eps": lambda net: sf.score_from_eps(net, SDE),
    "score_from_denoiser": lambda net: sf.score_from_denoiser(net, SDE),
    "score_from_velocity": lambda net: sf.score_from_velocity(net, SDE),
    "score_from_flow_velocity": lambda net: sf.score_from_flow_velocity(net, sf.RectifiedFlow()),
    "from_kdiffusion": lambda net: from_kdiffusion(lambda x, sigma: net(x, sigma))[0],
    "from_diffusers": lambda net: from_diffusers(_unet(lambda x: net(x, None)), _fake_scheduler())[0],
    "guided_score": lambda net: guided_score(net, SCORE, 2.0),
    "classifier_guided_score": lambda net: sf.classifier_guided_score(net, lambda x, t: -(x**2).sum(1)),
    "dps_score": lambda net: sf.dps_score(net, SDE, lambda x0: x0[:, :1], torch.zeros(1, 1), noise_std=0.1),
    "X0Correction.wrap": lambda net: sf.x0_correction(SDE, "clipping", max_value=3.0).wrap(net),
}


@pytest.mark.parametrize("fn", WRAPPERS)
def test_a_wrapper_refuses_a_network_output_that_would_broadcast(fn):
    model = WRAPPERS[fn](_narrow)
    with pytest.raises(ValueError, match=rf"{fn}: the (network|cond model|score) expected shape \(3, 2\).*got shape \(3, 1\)"):
        model(_x(3, 2), torch.full((3,), 0.5))
    # and through a solve, where the wrapper's own check speaks before the solver's
    with pytest.raises(ValueError, match=rf"{fn}: .*got shape \(3, 1\)"):
        sf.sample_ode(WRAPPERS[fn](_narrow), sf.RectifiedFlow() if "flow" in fn else SDE, _x(3, 2), method="euler", steps=2)


@pytest.mark.parametrize("fn", WRAPPERS)
def test_a_wrapper_stops_on_a_non_finite_first_network_output_naming_the_time(fn):
    with pytest.raises(NonFiniteError, match=rf"{fn}: .* not finite \(NaN or inf\) at t=0\.5"):
        WRAPPERS[fn](_nan_score)(_x(3, 2), torch.full((3,), 0.5))


@pytest.mark.parametrize("fn", ["score_from_eps", "score_from_denoiser", "score_from_velocity"])
def test_a_wrapper_called_at_t_0_where_sigma_is_0_stops_instead_of_returning_inf(fn):
    with pytest.raises(NonFiniteError, match=rf"{fn}: the score converted from .* at t=0\. .*sigma\(t\) = 0"):
        WRAPPERS[fn](lambda x, t: 0.5 * x)(_x(3, 2), torch.zeros(3))
    model = WRAPPERS[fn](lambda x, t: 0.5 * x)
    model(_x(3, 2), 0.5)  # checked once; a number t is still checked at every call, at no cost
    with pytest.raises(ValueError, match=rf"{fn}: argument 't' expected a time > 0 .* got 0"):
        model(_x(3, 2), 0)


@pytest.mark.parametrize("fn", WRAPPERS)
def test_a_wrapper_given_a_t_of_the_wrong_batch_stops_before_the_network(fn):
    called = []

    def net(x, t):
        called.append(t)
        return x

    with pytest.raises(ValueError, match=r"t expected a scalar or shape \(3,\).*got shape \(2,\)"):
        WRAPPERS[fn](net)(_x(3, 2), torch.full((2,), 0.5))
    assert not called


@pytest.mark.parametrize("fn", WRAPPERS)
def test_a_wrapper_of_a_good_network_is_finite_with_the_shape_and_dtype_of_x(fn):
    for dtype in (torch.float32, torch.float64):
        out = WRAPPERS[fn](lambda x, t: 0.5 * x)(_x(1, 2, dtype=dtype), 0.5)
        assert out.shape == (1, 2) and out.dtype == dtype and torch.isfinite(out).all()


def test_dps_refuses_a_measurement_y_of_another_shape_or_batch():
    model = sf.dps_score(SCORE, SDE, lambda x0: x0[:, :1], torch.zeros(2, 1), noise_std=0.1)
    with pytest.raises(ValueError, match=r"dps_score: argument 'y' expected the shape of operator\(x0\), \(3, 1\), .* got shape \(2, 1\)"):
        model(_x(3, 2), torch.full((3,), 0.5))


def test_an_energy_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"score_from_energy: the energy expected one value per sample, shape \(3,\)"):
        sf.score_from_energy(lambda x, t: x**2)(_x(3, 2), 0.5)


# ---------------------------------------------------------------- losses

LOSSES = {
    "esm_loss": lambda s, x, **kw: L.esm_loss(s, x, -x, **kw),
    "ism_loss": lambda s, x, **kw: L.ism_loss(s, x, **kw),
    "ssm_loss": lambda s, x, **kw: L.ssm_loss(s, x, **kw),
    "ssm_vr_loss": lambda s, x, **kw: L.ssm_vr_loss(s, x, **kw),
    "dsm_loss": lambda s, x, **kw: L.dsm_loss(s, x, 0.5, **kw),
    "multiscale_dsm_loss": lambda s, x, **kw: L.multiscale_dsm_loss(s, x, [1.0, 0.5], **kw),
    "sde_dsm_loss": lambda s, x, **kw: L.sde_dsm_loss(s, SDE, x, **kw),
    # taken as a plain velocity net: the analytic VP score declares itself a score, which cfm_loss refuses on RF
    "cfm_loss": lambda s, x, **kw: L.cfm_loss(lambda y, t: s(y, t), sf.RectifiedFlow(), x, **kw),
}
NAMED_T = ["esm_loss", "ism_loss", "ssm_loss", "ssm_vr_loss", "dsm_loss"]


@pytest.mark.parametrize("fn", LOSSES)
def test_a_loss_of_a_non_finite_model_output_is_a_non_finite_error_naming_it(fn):
    what = "velocity" if fn == "cfm_loss" else "score"
    with pytest.raises(NonFiniteError, match=rf"{fn}: the loss is not finite: the {what} has NaN or infinite entries"):
        LOSSES[fn](_nan_score, _x(3, 2))


@pytest.mark.parametrize("fn", LOSSES)
def test_a_loss_refuses_a_narrow_model_output_and_malformed_data(fn):
    with pytest.raises(ValueError, match=rf"{fn}: the (score|velocity) expected shape \(3, 2\)"):
        LOSSES[fn](_narrow, _x(3, 2))
    name = "x0" if fn == "cfm_loss" else "x"
    with pytest.raises(TypeError, match=rf"{fn}: argument '{name}' expected a floating-point tensor"):
        LOSSES[fn](SCORE, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=rf"{fn}: argument '{name}' expected a non-empty batch"):
        LOSSES[fn](SCORE, torch.zeros(0, 2))


@pytest.mark.parametrize("fn", LOSSES)
def test_a_loss_overflowing_float32_says_so_and_a_size_one_batch_is_legitimate(fn):
    huge = torch.full((2, 2), 1e30)
    with pytest.raises(NonFiniteError, match=rf"{fn}: the loss is not finite: the loss overflowed in torch.float32"):
        LOSSES[fn](lambda x, t: 1e30 * torch.ones_like(x), huge)
    loss = LOSSES[fn](SCORE, _x(1, 2), reduction="none")
    assert loss.shape == (1,) and loss.dtype == torch.float32 and torch.isfinite(loss).all()
    # in float64 the advice is to rescale, not to use float64
    with pytest.raises(NonFiniteError, match=rf"{fn}: the loss is not finite: the loss overflowed in torch.float64 \(.*\); rescale the data\.$"):
        LOSSES[fn](lambda x, t: 1e200 * torch.ones_like(x), torch.full((2, 2), 1e200, dtype=torch.float64))


@pytest.mark.parametrize("fn", NAMED_T)
def test_a_loss_given_a_bad_t_names_it(fn):
    with pytest.raises(ValueError, match=rf"{fn}: argument 't' expected a scalar or a tensor of shape \(3,\).*got shape \(2,\)"):
        LOSSES[fn](SCORE, _x(3, 2), t=torch.full((2,), 0.5))
    with pytest.raises(ValueError, match=rf"{fn}: argument 't'.*(finite|NaN)"):
        LOSSES[fn](SCORE, _x(3, 2), t=float("nan"))


def test_esm_loss_refuses_a_non_finite_target_score():
    with pytest.raises(ValueError, match="esm_loss: argument 'target_score' contains NaN"):
        L.esm_loss(SCORE, _x(3, 2), torch.full((3, 2), float("nan")))


# ---------------------------------------------------------------- grids, noise, bits


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sf.time_grid(None, 10), TypeError, r"time_grid: argument 'sde' expected a ForwardSDE"),
        (lambda: sf.time_grid(SDE, 5, dtype=torch.int64), TypeError, r"time_grid: argument 'dtype' expected a floating"),
        (lambda: sf.time_grid(SDE, 0), ValueError, r"time_grid: argument 'steps' expected an int >= 1"),
        (lambda: sf.VPSDE(beta_max=1e4), ValueError, r"VPSDE: beta_min=0.1, beta_max=10000.0 give log alpha\(T\) = -2500"),
        (lambda: sf.SubVPSDE(beta_max=1e4), ValueError, r"SubVPSDE: .*alpha\(T\)\^2 underflows float64"),
        (lambda: sf.time_grid(sf.RectifiedFlow(), 10, "log_snr"), ValueError, r"time_grid: schedule 'log_snr' needs a finite log-SNR"),
        (lambda: sf.geometric_sigmas(0.01, 1.0, 5, dtype=torch.int64), TypeError, r"geometric_sigmas: argument 'dtype'"),
        (lambda: sf.geometric_sigmas(1.0, 0.01, 5), ValueError, r"geometric_sigmas: expected sigma_min < sigma_max"),
        (lambda: sf.brownian_motion(_x(2, 2), -1.0), ValueError, r"brownian_motion: argument 'duration'"),
        (lambda: sf.brownian_motion(_x(2, 2), 1.0, generator=0), TypeError, r"brownian_motion: argument 'generator'"),
        (lambda: sf.brownian_motion([[0.0]], 1.0), TypeError, r"brownian_motion: argument 'x_T'"),
        (lambda: sf.bits_per_dim(_x(3), 2.0), TypeError, r"bits_per_dim: argument 'x_shape' expected the shape"),
        (lambda: sf.bits_per_dim(_x(3), (2, 0)), ValueError, r"bits_per_dim: argument 'x_shape'"),
        (lambda: sf.dequantize((torch.arange(256) / 255.0).bfloat16()), TypeError, r"dequantize: argument 'x' of dtype torch.bfloat16"),
        (lambda: sf.dequantize(torch.tensor([0.5001])), ValueError, r"dequantize: argument 'x' is not on the grid"),
    ],
    ids=lambda v: "" if callable(v) or isinstance(v, type) else v.split(":")[0].strip("r"),
)
def test_grids_noise_and_bits_refuse_bad_input_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_log_snr_grid_and_a_solve_of_an_extreme_but_representable_vp_process_are_finite():
    sde = sf.VPSDE(beta_max=1000.0)  # log alpha(T) = -250: SNR(T) = e^-500, still a float64
    for schedule in ("log_snr", "log_snr_capped", "karras"):
        ts = sf.time_grid(sde, 10, schedule)
        assert torch.isfinite(ts).all() and (ts[1:] < ts[:-1]).all()
    law = sf.analytic.Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    res = sf.sample_ode(law.score(sde), sde, _x(4, 2, dtype=torch.float64), method="dpmpp_2m", steps=10)
    assert res.samples.shape == (4, 2) and torch.isfinite(res.samples).all()


def test_dequantize_accepts_an_8_bit_image_in_half_precision():
    levels = torch.arange(256)
    for image in (levels.to(torch.uint8), levels / 255.0, (levels / 255.0).half()):
        y = sf.dequantize(image, generator=torch.Generator().manual_seed(0))
        assert y.dtype in (torch.float32, torch.float64)
        assert torch.equal((y.double() * 256).floor().long(), levels)  # every value stays in its own bin


# ---------------------------------------------------------------- long fixed-step SDE runs


def _recursion_budget(extra: int):
    """Set the recursion limit ``extra`` frames above the current depth; return the old limit."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + extra)
    return old


def test_long_euler_maruyama_runs_do_not_recurse_with_the_number_of_steps():
    """One million steps would take ~10 minutes here; the recursion depth is what broke them (torchsde's Brownian
    interval nests one level per query unless given the step size).  Under a limit 120 frames above this test, the
    path of a 10^6-step solve is queried at its first and last 3000 steps, and a 1000-step solve runs; the same
    queries on a path built without the hint exceed the limit (so the limit is tight enough to tell)."""
    x, n = torch.randn(1, 1), 1_000_000
    hinted = sf.brownian_motion(x, 1.0, generator=torch.Generator().manual_seed(0), step_size=1.0 / n)
    plain = sf.brownian_motion(x, 1.0, generator=torch.Generator().manual_seed(0))
    score = sf.analytic.Gaussian(torch.zeros(1), torch.eye(1)).score(SDE)
    old = _recursion_budget(120)
    try:
        for i in [*range(3000), *range(n - 3000, n)]:
            hinted(i / n, (i + 1) / n)
        res = sf.sample_sde(score, SDE, x, method="euler", steps=1000, generator=torch.Generator().manual_seed(0))
        with pytest.raises(RecursionError):
            for i in range(3000):
                plain(i / n, (i + 1) / n)
    finally:
        sys.setrecursionlimit(old)
    assert res.samples.shape == (1, 1) and torch.isfinite(res.samples).all()


@pytest.mark.parametrize(
    ("call", "order"),
    [
        (lambda s: sf.sample_ode(SCORE, SDE, _x(3, 2), method="dpmpp_2m", schedule=s), "decreasing from T to t_min"),
        (lambda s: sf.sample_sde(SCORE, SDE, _x(3, 2), method="ddim", schedule=s), "decreasing from T to t_min"),
        (lambda s: sf.log_likelihood(SCORE, SDE, _x(3, 2), method="euler", schedule=s[::-1]), "increasing from t_min to T"),
        (lambda s: L.consistency_training_loss(lambda x, t: x, lambda x, t: x, SDE, _x(3, 2), schedule=s), "decreasing from T to t_min"),
    ],
    ids=["sample_ode", "sample_sde", "log_likelihood", "consistency_training_loss"],
)
def test_a_grid_given_as_a_list_of_times_is_told_to_be_a_tensor(call, order):
    # before: "argument 'schedule' expected one of 't', 'log_snr', ..., got [1.0, 0.5, 0.001]", silent on the tensor form
    with pytest.raises(TypeError, match=rf"argument 'schedule' expected a schedule name \('t', .*\) or a 1-D tensor of times "
                       rf"{order}, got list .* Fix: pass torch.tensor\(schedule, dtype=torch.float64\)"):
        call([SDE.T, 0.5, SDE.t_min])


@pytest.mark.parametrize("fn", SOLVES)
def test_a_score_returning_a_tuple_or_an_array_is_described_by_shape_not_by_every_value(fn):
    # before: the message held the repr of the returned values (every number of a big batch)
    x = torch.full((64, 2), 0.123456789, dtype=torch.float64)
    with pytest.raises(TypeError, match=rf"{fn}: the score expected a tensor shaped like x \(64, 2\), got tuple of 1 item\(s\) "
                       r"\(tensor of shape \(64, 2\), dtype torch.float64, device cpu\)\.$") as err:
        SOLVES[fn](lambda y, t: (SCORE(y, t),), x)
    assert "0.123" not in str(err.value)
    if fn == "log_likelihood":  # its score is called under torch.func, where .numpy() itself fails
        return
    with pytest.raises(TypeError, match=rf"{fn}: the score expected .* got ndarray of shape \(64, 2\), dtype float64 \(from numpy, "
                       r"not a torch.Tensor\)\.$"):
        SOLVES[fn](lambda y, t: SCORE(y, t).detach().numpy(), x)


# ---------------------------------------------------------------- flags: a string such as "no" reads as true

FLAGS = {
    "sample_sde enable_grad": lambda v: sf.sample_sde(SCORE, SDE, _x(3, 2), method="euler", steps=2, enable_grad=v),
    "sample_pc enable_grad": lambda v: sf.sample_pc(SCORE, SDE, _x(3, 2), steps=2, enable_grad=v),
    "langevin enable_grad": lambda v: sf.langevin(lambda x: -x, _x(3, 2), step_size=0.1, steps=2, enable_grad=v),
    "annealed_langevin enable_grad": lambda v: sf.annealed_langevin(lambda x, s: -x, _x(3, 2), [1.0, 0.5], steps=2, enable_grad=v),
    "sample_consistency enable_grad": lambda v: sf.sample_consistency(lambda x, t: x, SDE, _x(3, 2), steps=2, enable_grad=v),
    "inpaint enable_grad": lambda v: sf.inpaint(SCORE, SDE, _x(3, 2), known=_x(3, 2), mask=torch.tensor([True, False]), steps=2,
                                                enable_grad=v),
    "inpaint denoise_final": lambda v: sf.inpaint(SCORE, SDE, _x(3, 2), known=_x(3, 2), mask=torch.tensor([True, False]), steps=2,
                                                  denoise_final=v),
    "brownian_motion levy_area": lambda v: sf.brownian_motion(_x(3, 2), 1.0, levy_area=v),
    "brownian_motion query_independent": lambda v: sf.brownian_motion(_x(3, 2), 1.0, query_independent=v),
}


@pytest.mark.parametrize("case", FLAGS)
def test_a_flag_given_a_string_is_refused_naming_it(case):
    # before: enable_grad="no" kept the graph of the whole solve, denoise_final="no" took Tweedie's step, levy_area="no"
    # built the Levy-area tree, all silently
    fn, name = case.split()
    with pytest.raises(TypeError, match=rf"^{fn}: argument '{name}' expected True or False, got str 'no'\.$"):
        FLAGS[case]("no")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sf.score_from_flow_velocity(lambda x, t: x, "rf"), TypeError,
         r"^score_from_flow_velocity: argument 'path' expected a ForwardSDE \(e.g. scoreflow.RectifiedFlow\(\)\), got str 'rf'\.$"),
        (lambda: sf.fit_schedule("score", SDE, _x(3, 2), 4), TypeError,
         r"^fit_schedule: argument 'score' expected a callable score\(x, t\), got str 'score'\.$"),
        (lambda: sf.fit_schedule(SCORE, SDE, _x(3, 2), 4, method=None), TypeError,
         r"^fit_schedule: argument 'method' expected a method name or a non-empty sequence of them, got NoneType None\.$"),
    ],
    ids=["score_from_flow_velocity path", "fit_schedule score", "fit_schedule method"],
)
def test_the_error_names_the_function_called_and_its_own_argument(call, error, match):
    # before: 'sde' for score_from_flow_velocity's path, sample_ode for fit_schedule's score (after its pilot set-up),
    # and "'NoneType' object is not iterable" for method=None (consistency_distillation_loss's solver: its own test)
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: SDE.prior_sample(16), TypeError, r"^VPSDE.prior_sample: argument 'shape' expected a tuple of ints \(B, \*D\), e.g. \(16, 2\), got int 16\.$"),
        (lambda: SDE.prior_sample((2,)), ValueError, r"^VPSDE.prior_sample: argument 'shape' expected \(B, \*D\) .* got \(2,\)\.$"),
        (lambda: SDE.prior_sample((3, 2), generator=0), TypeError, r"^VPSDE.prior_sample: argument 'generator' expected a torch.Generator"),
        (lambda: SDE.prior_log_prob([[0.0, 1.0]]), TypeError, r"^VPSDE.prior_log_prob: argument 'x' expected a tensor of shape \(B, \*D\), got list\.$"),
        (lambda: SDE.prior_log_prob(torch.zeros(0, 2)), ValueError, r"^VPSDE.prior_log_prob: argument 'x' expected a non-empty batch"),
        (lambda: sf.ProbabilityFlowODE(SCORE, "vp"), TypeError, r"^ProbabilityFlowODE: argument 'sde' expected a ForwardSDE"),
        (lambda: sf.ReverseSDE(SCORE, "vp", (2,)), TypeError, r"^ReverseSDE: argument 'sde' expected a ForwardSDE"),
        (lambda: sf.analytic.condition_linear("ring2d", torch.ones(1, 2), torch.zeros(1), 0.1), TypeError,
         r"^condition_linear: argument 'law' expected a GaussianMixture"),
        (lambda: sf.analytic.inpainting_score("ring2d", SDE, torch.tensor([True, False]), torch.zeros(2)), TypeError,
         r"^inpainting_score: argument 'law' expected a GaussianMixture"),
    ],
    ids=["prior_sample int", "prior_sample 1-D", "prior_sample generator", "prior_log_prob list", "prior_log_prob empty",
         "ProbabilityFlowODE sde", "ReverseSDE sde", "condition_linear law", "inpainting_score law"],
)
def test_processes_fields_and_posteriors_refuse_bad_input_naming_it(call, error, match):
    # before: "'int' object is not iterable", a draw of shape (2,) that the solvers then refused as x_T, "'float' object
    # has no attribute 'numel'", an IndexError, a field built on a string that failed at its first call, and "'str'
    # object has no attribute 'batch_shape'"
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sf.consistency.renoise_times("vp", 3), TypeError, r"^renoise_times: argument 'sde' expected a ForwardSDE"),
        (lambda: sf.consistency.renoise_times(SDE, 3, "bad"), ValueError, r"^renoise_times: argument 'schedule' expected one of"),
        (lambda: sf.consistency.renoise_times(SDE, 3, t_min=2.0), ValueError,
         r"^renoise_times: argument 't_min' expected a time in \(0, T=1\), got 2.0\.$"),
        (lambda: sf.consistency.teacher_step(SCORE, SDE, _x(3, 2), "0.5", 0.4), TypeError,
         r"^teacher_step: argument 't_from' expected a real number, got str '0.5'\.$"),
        (lambda: sf.consistency.teacher_step(SCORE, SDE, _x(3, 2), 0.5, None), TypeError,
         r"^teacher_step: argument 't_to' expected a real number, got NoneType None\.$"),
    ],
    ids=["renoise sde", "renoise schedule", "renoise t_min", "teacher t_from str", "teacher t_to None"],
)
def test_consistency_helpers_name_themselves_and_the_argument(call, error, match):
    # before: renoise_times' errors named time_grid; teacher_step gave torch's "new(): invalid data type 'str'" and
    # "must be real number, not NoneType"
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: from_kdiffusion(lambda x, sigma: x, sigma_min=-1.0), ValueError,
         r"^from_kdiffusion: argument 'sigma_min' expected a finite number > 0, got -1.0\.$"),
        (lambda: from_kdiffusion(lambda x, sigma: x, sigma_max="80"), TypeError,
         r"^from_kdiffusion: argument 'sigma_max' expected a real number, got str '80'\.$"),
        (lambda: from_diffusers(_unet(lambda x: x), _fake_scheduler(), t_min=0.0), ValueError,
         r"^sde_from_scheduler: argument 't_min' expected a finite number > 0, got 0.0\.$"),
        (lambda: sf.adapters.sde_from_scheduler(_fake_scheduler(), t_min="1e-3"), TypeError,
         r"^sde_from_scheduler: argument 't_min' expected a real number, got str '1e-3'\.$"),
    ],
    ids=["kdiffusion sigma_min", "kdiffusion sigma_max", "diffusers t_min 0", "scheduler t_min str"],
)
def test_adapters_name_their_noise_range_arguments(call, error, match):
    # before: the process built inside named itself (EDMSDE, DiscreteVPSDE, VPSDE), not the adapter called
    with pytest.raises(error, match=match):
        call()
