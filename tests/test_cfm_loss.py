"""Conditional flow matching: minimised by the exact velocity, optimal-transport pairing, argument errors."""

from __future__ import annotations

import itertools

import pytest
import torch

import scoreflow as sf
from scoreflow.losses.flow import ot_pairing
from scoreflow.testing import make_law

RF = sf.RectifiedFlow()


def per_sample_slope(velocity, direction, x0, theta: float) -> torch.Tensor:
    """d/dtheta of each sample's loss at u + theta * direction (exact: the loss is quadratic in theta)."""
    eps = 1e-3
    losses = [
        sf.losses.cfm_loss(lambda x, t, th=th: velocity.predict(x, t) + th * direction(x, t), RF, x0,
                           generator=torch.Generator().manual_seed(1), reduction="none")
        for th in (theta - eps, theta + eps)
    ]
    return (losses[1] - losses[0]) / (2 * eps)


def test_cfm_loss_gradient_vanishes_at_the_exact_velocity():
    law = make_law("ring2d")
    x0 = law.sample(20_000, generator=torch.Generator().manual_seed(0))
    direction = lambda x, t: torch.sin(x) * t[:, None] + 0.3  # noqa: E731 - any smooth perturbation
    at_exact = per_sample_slope(law.velocity(RF), direction, x0, 0.0)
    se = float(at_exact.std() / len(at_exact) ** 0.5)
    assert abs(float(at_exact.mean())) < 4 * se
    away = per_sample_slope(law.velocity(RF), direction, x0, 0.2)  # slope 2 theta E|h|^2 > 0 away from it
    assert float(away.mean()) > 10 * se


def test_cfm_loss_accepts_a_model_carrying_its_own_prediction():
    law = make_law("ring2d")
    x0 = law.sample(64, generator=torch.Generator().manual_seed(0))
    exact = law.velocity(RF)
    kw = dict(t_min=1e-3)  # sigma(t_min) > 0: a data prediction converts to a finite velocity on the whole range
    plain = sf.losses.cfm_loss(exact.predict, RF, x0, generator=torch.Generator().manual_seed(3), **kw)
    wrapped = sf.losses.cfm_loss(sf.score_from_flow_velocity(exact.predict, RF), RF, x0, generator=torch.Generator().manual_seed(3), **kw)
    as_model = sf.losses.cfm_loss(exact, RF, x0, generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(plain, wrapped)
    torch.testing.assert_close(plain, as_model)
    # a data-prediction model is converted to the velocity
    denoiser = sf.score_from_denoiser(lambda x, t: law.posterior(RF, x, t)[0], RF)
    torch.testing.assert_close(sf.losses.cfm_loss(denoiser, RF, x0, generator=torch.Generator().manual_seed(3), **kw), plain)


def test_cfm_loss_refuses_a_prediction_whose_velocity_is_infinite_at_an_end_of_the_time_range():
    # u = a x + b p for a prediction p; the loss weights p's error by b(t)^2.  On rectified flow b = 1/(1 - t) for a
    # noise prediction (alpha = 0 at T) and -1/t for a data prediction (sigma = 0 at t = 0): not integrable, the
    # expected loss is infinite.  Measured on gaussian2d with models 1 % off the exact ones, batch means at 1e3, 1e4,
    # 1e5, 1e6 samples: noise 2.6, 17, 700, 198; data 2.2, 7.9, 17, 15000 (a velocity model: 1.92, 2.05, 2.06, 2.07).
    law = make_law("ring2d")
    x0 = law.sample(64, generator=torch.Generator().manual_seed(0))
    eps = sf.score_from_eps(lambda x, t: -t[:, None] * law.posterior(RF, x, t)[1], RF)
    denoiser = sf.score_from_denoiser(lambda x, t: law.posterior(RF, x, t)[0], RF)
    with pytest.raises(ValueError, match=r"cfm_loss: argument 'velocity' predicts 'eps', whose conversion to the flow "
                                         r"velocity is infinite at t=1 on RectifiedFlow\(T=1"):
        sf.losses.cfm_loss(eps, RF, x0)
    with pytest.raises(ValueError, match=r"cfm_loss: argument 'velocity' predicts 'x0', .* infinite at t=0 on RectifiedFlow"):
        sf.losses.cfm_loss(denoiser, RF, x0)
    # away from those ends the factor is finite (1/(1 - 0.999), 1/1e-3) and both models train to the exact velocity
    short = RF.truncated(0.999)
    for model, path, t_min in ((eps, short, None), (denoiser, RF, 1e-3)):
        want = sf.losses.cfm_loss(law.velocity(path).predict, path, x0, t_min=t_min, generator=torch.Generator().manual_seed(3))
        got = sf.losses.cfm_loss(model, path, x0, t_min=t_min, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(got, want)


class DeclaredScore:
    """A model that says it returns a score (``prediction == "score"``), as scoreflow's model wrappers do."""

    prediction = "score"

    def __init__(self, score):
        self.score = score

    def __call__(self, x, t):
        return self.score(x, t)

    def predict(self, x, t):
        return self.score(x, t)


def test_cfm_loss_converts_a_model_that_declares_a_score():
    # it was taken for the velocity; converted (u = f x - g^2 s / 2) the exact score gives the exact velocity's loss
    law, vp = make_law("ring2d"), sf.VPSDE()
    x0 = law.sample(64, generator=torch.Generator().manual_seed(0))
    want = sf.losses.cfm_loss(law.velocity(vp).predict, vp, x0, generator=torch.Generator().manual_seed(3))
    got = sf.losses.cfm_loss(DeclaredScore(law.score(vp)), vp, x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want)
    # where the score says nothing of the flow (pure noise at T) the model is refused, as a noise prediction is
    with pytest.raises(ValueError, match=r"cfm_loss: argument 'velocity' predicts 'score', .* infinite at t=1"):
        sf.losses.cfm_loss(DeclaredScore(law.score(vp)), RF, x0)


def test_ot_pairing_is_the_optimal_permutation():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    perm = ot_pairing(x0, noise)
    cost = lambda p: float((x0 - noise[list(p)]).square().sum())  # noqa: E731
    assert cost(perm.tolist()) == pytest.approx(min(cost(p) for p in itertools.permutations(range(6))))
    law = make_law("ring2d")
    x = law.sample(256, generator=g)
    ot = sf.losses.cfm_loss(law.velocity(RF), RF, x, coupling="ot", generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(ot) and ot.ndim == 0


def test_cfm_loss_argument_errors():
    x0 = torch.randn(4, 2)
    net = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="cfm_loss: argument 'coupling' expected one of 'independent', 'ot'"):
        sf.losses.cfm_loss(net, RF, x0, coupling="sinkhorn")
    with pytest.raises(ValueError, match=r"cfm_loss: the velocity expected shape \(4, 2\)"):
        sf.losses.cfm_loss(lambda x, t: x[:, :1], RF, x0)
    with pytest.raises(TypeError, match="cfm_loss: argument 'velocity' expected a callable"):
        sf.losses.cfm_loss(None, RF, x0)
    with pytest.raises(TypeError, match="cfm_loss: argument 'path' expected a ForwardSDE"):
        sf.losses.cfm_loss(net, "rf", x0)
    with pytest.raises(ValueError, match=r"cfm_loss: argument 't_min' expected a time in \[0, T=1\)"):
        sf.losses.cfm_loss(net, RF, x0, t_min=1.0)


def test_the_library_s_own_scores_declare_themselves_so_cfm_loss_converts_them():
    """The exact score of an analytic law and an energy's score are scores: without a declared prediction cfm_loss
    took them for velocities (on VP a loss of 10.9 against the exact velocity's 7.07, lossaudit's measurement)."""
    law, vp = make_law("gaussian2d"), sf.VPSDE()
    x0 = law.sample(256, generator=torch.Generator().manual_seed(0))
    want = sf.losses.cfm_loss(law.velocity(vp).predict, vp, x0, generator=torch.Generator().manual_seed(3))
    analytic = sf.losses.cfm_loss(law.score(vp), vp, x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(analytic, want)
    # log p of the Gaussian law diffused: its gradient is the same exact score
    energy = sf.score_from_energy(lambda x, t: -law.marginal(vp, t).log_prob(x))  # a law batched over t
    from_energy = sf.losses.cfm_loss(energy, vp, x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(from_energy, want)
