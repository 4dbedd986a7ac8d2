"""x̂0 correction: Imagen's dynamic thresholding and clipping, through the callback and inside the score."""

import numpy as np
import pytest
import torch

import scoreflow as sf
from scoreflow.testing import make_law
from test_hooks import posterior_mean

F64 = torch.float64


def _ring(n=64):
    law, sde = make_law("ring2d").to(F64), sf.VPSDE()
    return law, sde, sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(0), dtype=F64)


def _imagen_threshold(x0, quantile, max_value):
    """Imagen's rule written out per sample in NumPy: s = max(quantile of |x0|, m); clip to [-s, s]; scale by m / s."""
    out = np.empty_like(x0)
    for b, row in enumerate(x0):
        s = max(np.quantile(np.abs(row), quantile), max_value)
        out[b] = np.clip(row, -s, s) * max_value / s
    return out


def test_corrections_are_clipping_and_imagens_dynamic_thresholding():
    x0 = 3 * torch.randn(7, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    sde = sf.VPSDE()
    for q, m in ((0.995, 1.0), (0.6, 2.0), (1.0, 0.5)):
        got = sf.x0_correction(sde, "dynamic_thresholding", max_value=m, options={"quantile": q}).correct(x0)
        expected = _imagen_threshold(x0.reshape(7, -1).numpy(), q, m).reshape(7, 3, 5)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
        assert float(got.abs().max()) <= m + 1e-12
    np.testing.assert_array_equal(sf.x0_correction(sde, "clipping", max_value=1.5).correct(x0).numpy(), np.clip(x0.numpy(), -1.5, 1.5))


@pytest.mark.parametrize("method", ["clipping", "dynamic_thresholding"])
def test_the_callback_corrects_the_prediction_and_keeps_the_noise_estimate(method):
    law, sde, x_T = _ring()
    correction = sf.x0_correction(sde, method, max_value=0.8, options={"quantile": 0.5} if method != "clipping" else None)
    steps = []

    def callback(info):
        out = correction(info)
        steps.append((float(info["t"]), info["x"], out))
        return out

    res = sf.sample_ode(law.score(sde), sde, x_T, method="ddim", steps=8, callback=callback)
    assert len(steps) == 8 and res.nfe == 8 + 8  # every step's prediction is at a state the next step leaves
    moved = 0
    for t, x, out in steps:
        alpha, sigma = sde.marginal(torch.tensor(t, dtype=F64))
        x0 = posterior_mean(law, sde, x, t)  # closed form, not through the score
        fixed = correction.correct(x0)
        # the returned state has the corrected prediction and the same noise estimate (x - alpha x0) / sigma
        torch.testing.assert_close((out - alpha * fixed) / sigma, (x - alpha * x0) / sigma, rtol=1e-9, atol=1e-9)
        moved += int(not torch.equal(out, x))
    assert moved >= 3  # the bound binds once the prediction leaves the box (the ring has radius 2)


def test_a_correction_that_never_binds_changes_nothing():
    law, sde, x_T = _ring()
    for method in ("clipping", "dynamic_thresholding"):
        correction = sf.x0_correction(sde, method, max_value=1e3)
        plain = sf.sample_ode(law.score(sde), sde, x_T, method="dpmpp_2m", steps=6)
        watched = sf.sample_ode(law.score(sde), sde, x_T, method="dpmpp_2m", steps=6, callback=correction)
        wrapped = sf.sample_ode(correction.wrap(law.score(sde)), sde, x_T, method="dpmpp_2m", steps=6)
        assert torch.equal(watched.samples, plain.samples) and torch.equal(wrapped.samples, plain.samples)
        # a returned state is a new state: the next step evaluates the model there (one NFE per step more)
        assert watched.nfe == 2 * plain.nfe and wrapped.nfe == plain.nfe


def test_the_wrapped_score_predicts_the_corrected_prediction_at_no_extra_nfe():
    law, sde, x_T = _ring()
    correction = sf.x0_correction(sde, "dynamic_thresholding", max_value=0.7, options={"quantile": 0.5})
    wrapped = correction.wrap(law.score(sde))
    x = 1.5 * x_T
    for t in (0.9, 0.3, 0.01):
        tt = torch.tensor(t, dtype=F64)
        alpha, sigma = sde.marginal(tt)
        torch.testing.assert_close((x + sigma**2 * wrapped(x, tt)) / alpha, correction.correct(posterior_mean(law, sde, x, t)),
                                   rtol=1e-9, atol=1e-9)
    rec = []
    res = sf.sample_ode(wrapped, sde, x_T, method="dpmpp_2m", steps=10, callback=lambda info: rec.append(info["denoised"]))
    assert res.nfe == 11  # the callback's predictions are the solver's own, but for the last
    assert all(float(d.abs().max()) <= 0.7 + 1e-12 for d in rec)


def test_correction_errors_name_the_argument():
    sde = sf.VPSDE()
    with pytest.raises(ValueError, match=r"x0_correction: argument 'method' expected one of .*'clipping'.*got 'imagen'"):
        sf.x0_correction(sde, "imagen")
    with pytest.raises(ValueError, match=r"x0_correction: argument 'max_value' expected .*> 0"):
        sf.x0_correction(sde, "clipping", max_value=0.0)
    with pytest.raises(ValueError, match=r"x0_correction: option 'quantile' expected a quantile in \(0, 1\], got 1.5"):
        sf.x0_correction(sde, options={"quantile": 1.5})
    with pytest.raises(TypeError, match=r"x0_correction: method 'clipping' takes no option 'quantile'"):
        sf.x0_correction(sde, "clipping", options={"quantile": 0.9})
    with pytest.raises(TypeError, match=r"x0_correction: argument 'sde'"):
        sf.x0_correction("vp")
    with pytest.raises(TypeError, match=r"X0Correction.wrap: argument 'score' expected a callable"):
        sf.x0_correction(sde).wrap(None)
