"""Classifier guidance and DPS: the guided scores against finite differences and closed forms, guidance with
the exact noise-aware likelihood against the exact conditional score, and sampling with them."""

import math

import pytest
import torch

import scoreflow as sf
from _helpers import RecordingScore
from scoreflow.analytic import inpainting_score, observation_log_likelihood
from scoreflow.testing import assert_samples_follow, make_law


def _central_difference(f, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Gradient of sum(f(x)) by central differences, one coordinate at a time (no autograd)."""
    flat = x.reshape(x.shape[0], -1)
    grad = torch.empty_like(flat)
    for j in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, j] = h
        grad[:, j] = (f((flat + e).reshape(x.shape)) - f((flat - e).reshape(x.shape))) / (2 * h)
    return grad.reshape(x.shape)


def test_classifier_guided_score_adds_the_scaled_gradient():
    law, sde = make_law("ring2d"), sf.VPSDE()
    g = torch.Generator().manual_seed(0)
    x = law.marginal(sde, 0.4).sample(8, generator=g)
    t = torch.full((8,), 0.4, dtype=torch.float64)
    w = torch.tensor([0.3, -1.2], dtype=torch.float64)

    def log_likelihood(x, t):  # a logistic "classifier" of the half-plane w.x > 0 whose confidence falls with t
        return torch.nn.functional.logsigmoid((x @ w) / (0.1 + t))

    guided = sf.classifier_guided_score(law.score(sde), log_likelihood, scale=2.5)
    expected = law.score(sde)(x, t) + 2.5 * _central_difference(lambda z: log_likelihood(z, t), x)
    torch.testing.assert_close(guided(x, t), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.VESDE()], ids=["vp", "ve"])
def test_guidance_with_the_exact_likelihood_is_the_exact_conditional_score(sde):
    law = make_law("mixture16d")
    g = torch.Generator().manual_seed(1)
    x = law.marginal(sde, 0.3).sample(6, generator=g)
    A = torch.randn(3, 16, generator=g, dtype=torch.float64)
    y = A @ law.sample(1, generator=g)[0]
    linear = sf.classifier_guided_score(law.score(sde), observation_log_likelihood(law, sde, A=A, y=y, noise_std=0.2))
    torch.testing.assert_close(linear(x, 0.3), law.condition_linear(A, y, 0.2).score(sde)(x, 0.3), rtol=1e-7, atol=1e-7)
    mask, values = torch.arange(16) < 8, law.sample(6, generator=g)
    masked = sf.classifier_guided_score(law.score(sde), observation_log_likelihood(law, sde, mask=mask, values=values))
    torch.testing.assert_close(masked(x, 0.3), inpainting_score(law, sde, mask, values)(x, 0.3), rtol=1e-7, atol=1e-7)


def test_sampling_with_exact_guidance_reaches_the_posterior():
    law, sde = make_law("ring2d"), sf.VPSDE()
    A, y = torch.tensor([[0.6, 0.8]], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    score = sf.classifier_guided_score(law.score(sde), observation_log_likelihood(law, sde, A=A, y=y, noise_std=0.3))
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sample((2000, 2), generator=g, dtype=torch.float64)
    res = sf.sample_ode(score, sde, x_T, method="dpmpp_3m_pc", steps=40)
    assert res.nfe == 40
    assert_samples_follow(res.samples, law.condition_linear(A, y, 0.3).marginal(sde, sde.t_min), generator=g)


def test_dps_score_on_a_gaussian_is_its_closed_form():
    # for N(mu, C): x0_hat = mu + alpha C (alpha^2 C + sigma^2 I)^{-1} (x - alpha mu) =: mu + K (x - alpha mu), so
    # grad log N(y; A x0_hat, s^2) = K^T A^T (y - A x0_hat) / s^2
    law, sde = make_law("gaussian16d"), sf.VPSDE()
    g = torch.Generator().manual_seed(2)
    A = torch.randn(5, 16, generator=g, dtype=torch.float64)
    y, s, w = torch.randn(5, generator=g, dtype=torch.float64), 0.4, 1.7
    x = law.marginal(sde, 0.35).sample(4, generator=g)
    alpha, sigma = (float(c) for c in sde.marginal(torch.tensor(0.35, dtype=torch.float64)))
    mu, cov = law.means[0], law.covs[0]
    gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * torch.eye(16, dtype=torch.float64))
    x0 = mu + (x - alpha * mu) @ gain.T
    expected = law.score(sde)(x, 0.35) + w * ((y - x0 @ A.T) / s**2) @ A @ gain
    dps = sf.dps_score(law.score(sde), sde, lambda z: z @ A.T, y, noise_std=s, scale=w)
    torch.testing.assert_close(dps(x, torch.full((4,), 0.35, dtype=torch.float64)), expected, rtol=1e-9, atol=1e-9)


def test_dps_with_one_measurement_per_sample():
    law, sde = make_law("mixture16d"), sf.VPSDE()
    g = torch.Generator().manual_seed(6)
    A = torch.randn(3, 16, generator=g, dtype=torch.float64)
    x, y = law.marginal(sde, 0.4).sample(4, generator=g), torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.full((4,), 0.4, dtype=torch.float64)
    batched = sf.dps_score(law.score(sde), sde, lambda z: z @ A.T, y, noise_std=0.3)(x, t)
    for i in range(4):
        single = sf.dps_score(law.score(sde), sde, lambda z: z @ A.T, y[i], noise_std=0.3)(x[i : i + 1], t[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single)


def test_dps_on_a_nonlinear_operator_against_finite_differences():
    law, sde = make_law("ring2d"), sf.VESDE()
    g = torch.Generator().manual_seed(3)
    x = law.marginal(sde, 0.2).sample(5, generator=g)
    t = torch.full((5,), 0.2, dtype=torch.float64)
    operator = lambda z: torch.stack([z.norm(dim=1), torch.sin(z[:, 0])], dim=1)  # noqa: E731
    y = torch.tensor([2.0, 0.3], dtype=torch.float64)
    alpha, sigma = sde.marginal(t[0])

    def log_likelihood(z):
        x0 = (z + sigma**2 * law.score(sde)(z, t)) / alpha
        return -0.5 * ((y - operator(x0)) / 0.25).pow(2).sum(1)

    dps = sf.dps_score(law.score(sde), sde, operator, y, noise_std=0.25)
    torch.testing.assert_close(dps(x, t), law.score(sde)(x, t) + _central_difference(log_likelihood, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("front_end", ["ode", "sde", "pc", "inpaint"])
def test_guided_scores_run_in_every_sampler_and_count_one_nfe_per_call(front_end):
    law, sde = make_law("ring2d"), sf.VPSDE()
    g = torch.Generator().manual_seed(4)
    x_T = sde.prior_sample((32, 2), generator=g, dtype=torch.float32)
    counter = RecordingScore(law.to(torch.float32).score(sde))
    score = sf.dps_score(counter, sde, lambda z: z[:, :1], torch.tensor([1.0]), noise_std=0.2)
    if front_end == "ode":
        res = sf.sample_ode(score, sde, x_T, method="dpmpp_2m", steps=10)
    elif front_end == "sde":
        res = sf.sample_sde(score, sde, x_T, steps=10, generator=g)
    elif front_end == "pc":
        res = sf.sample_pc(score, sde, x_T, steps=10, corrector=None, generator=g)
    else:
        res = sf.inpaint(score, sde, x_T, known=torch.tensor([0.0, 1.0]), mask=torch.tensor([False, True]), steps=10, generator=g)
    assert res.nfe == counter.calls and res.nfe in (10, 11)  # torchsde checks the drift once more
    assert res.samples.dtype == torch.float32 and torch.isfinite(res.samples).all() and not res.samples.requires_grad


def test_guidance_is_differentiable_when_the_sampler_keeps_the_graph():
    # d/dtheta of the guided score, with theta inside the likelihood, against a finite difference in theta
    law, sde = make_law("ring2d"), sf.VPSDE()
    x = law.marginal(sde, 0.5).sample(3, generator=torch.Generator().manual_seed(5))
    t = torch.full((3,), 0.5, dtype=torch.float64)

    def guided_sum(theta):
        ll = lambda z, t: -((z - theta) ** 2).sum(1) * theta  # noqa: E731
        return sf.classifier_guided_score(law.score(sde), ll)(x, t).sum()

    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(guided_sum(theta), theta)
    with torch.no_grad():
        fd = (guided_sum(torch.tensor(0.7 + 1e-6, dtype=torch.float64)) - guided_sum(torch.tensor(0.7 - 1e-6, dtype=torch.float64))) / 2e-6
    assert abs(float(grad) - float(fd)) < 1e-6


def test_guided_score_errors_name_the_argument():
    law, sde = make_law("ring2d"), sf.VPSDE()
    with pytest.raises(TypeError, match=r"classifier_guided_score: argument 'log_likelihood' expected a callable log_likelihood\(x, t\) -> \(B,\)"):
        sf.classifier_guided_score(law.score(sde), None)
    with pytest.raises(ValueError, match=r"classifier_guided_score: argument 'scale' expected a finite number, got nan"):
        sf.classifier_guided_score(law.score(sde), lambda x, t: x.sum(1), scale=math.nan)
    bad = sf.classifier_guided_score(law.score(sde), lambda x, t: x)
    with pytest.raises(ValueError, match=r"classifier_guided_score: the log-likelihood must return one value per sample, shape \(4,\), got shape \(4, 2\)"):
        bad(torch.zeros(4, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dps_score: argument 'noise_std' expected a finite number > 0, got 0.0"):
        sf.dps_score(law.score(sde), sde, lambda x: x, torch.zeros(2), noise_std=0.0)
    with pytest.raises(TypeError, match=r"dps_score: argument 'y' expected a floating-point tensor \(the measurement\), got list"):
        sf.dps_score(law.score(sde), sde, lambda x: x, [0.0, 1.0], noise_std=0.1)
    with pytest.raises(TypeError, match=r"dps_score: argument 'operator' expected a callable operator\(x\) -> \(B, \*M\)"):
        sf.dps_score(law.score(sde), sde, "A", torch.zeros(2), noise_std=0.1)
    with pytest.raises(TypeError, match=r"dps_score: argument 'sde' expected a ForwardSDE"):
        sf.dps_score(law.score(sde), None, lambda x: x, torch.zeros(2), noise_std=0.1)
    with pytest.raises(TypeError, match=r"dps_score: argument 'y' expected a floating-point tensor \(the measurement\), got dtype torch.int64"):
        sf.dps_score(law.score(sde), sde, lambda x: x, torch.zeros(2, dtype=torch.int64), noise_std=0.1)
    x, t = torch.zeros(4, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"dps_score: argument 'operator' expected operator\(x0\) -> tensor \(B, \*M\), got float"):
        sf.dps_score(law.score(sde), sde, lambda x: 1.0, torch.zeros(2), noise_std=0.1)(x, t)



def test_dps_refuses_an_operator_that_does_not_keep_the_batch():
    # an operator written for one sample (z[0] of a (2, 16) batch is sample 0) silently guided sample 0 alone, its
    # 16 values reshaped into 8 per sample; a per-sample mask applied as z[mask] stopped in a bare reshape error
    law, sde = make_law("gaussian16d"), sf.VPSDE()
    x, t = torch.zeros(2, 16, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :3], mask[1, :2] = True, True
    for operator, y, got in ((lambda z: z[0], torch.zeros(16), 16), (lambda z: z[mask], torch.zeros(5), 5)):
        dps = sf.dps_score(law.score(sde), sde, operator, y.double(), noise_std=0.1)
        with pytest.raises(ValueError, match=rf"dps_score: argument 'operator' expected operator\(x0\) of shape \(B, \*M\) with "
                                             rf"B=2 \(one measurement per sample\), got shape \({got},\)"):
            dps(x, t)

WEIGHT = torch.ones(2, dtype=torch.float64, requires_grad=True)  # a classifier parameter


@pytest.mark.parametrize(
    "log_likelihood",
    [lambda x, t: x.detach().sum(1), lambda x, t: torch.zeros(x.shape[0]), lambda x, t: (x.detach() * WEIGHT).sum(1)],
    ids=["detached", "constant", "detached-with-parameters"],
)
def test_guidance_by_a_log_likelihood_without_a_graph_from_x_is_an_error(log_likelihood):
    # Its gradient in x does not exist: guiding by zero would sample the unconditional law without a word.
    law, sde = make_law("ring2d"), sf.VPSDE()
    guided = sf.classifier_guided_score(law.score(sde), log_likelihood)
    with pytest.raises(ValueError, match=r"classifier_guided_score: the log-likelihood has no autograd graph from x, so it cannot guide"):
        guided(torch.zeros(4, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64))


def test_guidance_under_inference_mode_says_so():
    # inference mode records no graph whatever the log-likelihood: the message must not blame it
    law, sde = make_law("ring2d"), sf.VPSDE()
    guided = sf.classifier_guided_score(law.score(sde), lambda x, t: -(x**2).sum(1))
    x_T = sde.prior_sample((4, 2), dtype=torch.float64)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"classifier_guided_score: guidance differentiates .* torch.inference_mode\(\) forbids"):
        sf.sample_ode(guided, sde, x_T, method="euler", steps=3)
    with torch.no_grad():
        assert sf.sample_ode(guided, sde, x_T, method="euler", steps=3).nfe == 3



def test_the_conditional_methods_are_registered_with_their_front_ends():
    records = {m.name: m for m in sf.list_methods("conditional")}
    assert set(records) == {"replacement", "repaint", "classifier_guidance", "dps", "clipping", "dynamic_thresholding"}
    assert records["repaint"].front_end.startswith("inpaint(") and set(records["repaint"].options) == {"jump"}
    assert records["dps"].solver is sf.dps_score and records["classifier_guidance"].solver is sf.classifier_guided_score
    assert all(records[name].front_end.startswith("callback=x0_correction(") for name in ("clipping", "dynamic_thresholding"))
    assert set(records["dynamic_thresholding"].options) == {"quantile"} and not records["clipping"].options
