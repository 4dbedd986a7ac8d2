"""Input validation of the score-matching losses: every message names the function, argument and fix."""

import pytest
import torch

import scoreflow as sf

L = sf.losses


def score(x, t):
    return -x


@pytest.fixture
def x():
    return torch.randn(6, 2, dtype=torch.float64)


def test_empty_batch_is_rejected(x):
    empty = x[:0]
    for call in (
        lambda: L.esm_loss(score, empty, empty),
        lambda: L.ism_loss(score, empty),
        lambda: L.ssm_loss(score, empty),
        lambda: L.ssm_vr_loss(score, empty),
        lambda: L.dsm_loss(score, empty, 0.1),
        lambda: L.multiscale_dsm_loss(score, empty, [0.1]),
        lambda: L.sde_dsm_loss(score, sf.VPSDE(), empty),
    ):
        with pytest.raises(ValueError, match=r"argument 'x' expected a non-empty batch"):
            call()


def test_missing_batch_dimension_names_the_fix():
    with pytest.raises(ValueError, match=r"ism_loss: argument 'x' .* add a batch dimension"):
        L.ism_loss(score, torch.randn(3))


def test_target_score_shape_mismatch(x):
    with pytest.raises(ValueError, match=r"esm_loss: argument 'target_score' expected shape \(6, 2\).*got shape \(6, 3\)"):
        L.esm_loss(score, x, torch.zeros(6, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"esm_loss: argument 'target_score' expected dtype torch.float64"):
        L.esm_loss(score, x, torch.zeros(6, 2, dtype=torch.float32))


def test_score_output_shape_and_dtype_are_checked(x):
    bad_shape = lambda y, t: y[:, :1]  # noqa: E731
    bad_dtype = lambda y, t: y.float()  # noqa: E731
    for name, call in [
        ("esm_loss", lambda s: L.esm_loss(s, x, x)),
        ("dsm_loss", lambda s: L.dsm_loss(s, x, 0.5)),
        ("sde_dsm_loss", lambda s: L.sde_dsm_loss(s, sf.VESDE(), x)),
        ("ssm_loss", lambda s: L.ssm_loss(s, x)),
        ("ism_loss", lambda s: L.ism_loss(s, x)),
    ]:
        with pytest.raises(ValueError, match=rf"{name}: .*shape"):
            call(bad_shape)
        with pytest.raises(TypeError, match=rf"{name}: the score expected dtype torch.float64"):
            call(bad_dtype)


def test_non_callable_score(x):
    with pytest.raises(TypeError, match=r"dsm_loss: argument 'score' expected a callable score\(x, t\)"):
        L.dsm_loss("not a model", x, 0.1)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_sigma(x, sigma):
    with pytest.raises(ValueError, match=r"dsm_loss: argument 'sigma' expected a finite number > 0"):
        L.dsm_loss(score, x, sigma)


@pytest.mark.parametrize("sigmas", [[], [0.1, 0.0], [[0.1, 0.2]], [0.1, float("nan")]])
def test_bad_noise_levels(x, sigmas):
    with pytest.raises(ValueError, match=r"multiscale_dsm_loss: argument 'sigmas' expected"):
        L.multiscale_dsm_loss(score, x, sigmas)


def test_unknown_choices_list_the_valid_ones(x):
    with pytest.raises(ValueError, match=r"argument 'probe' expected one of 'rademacher', 'gaussian', got 'uniform'"):
        L.ssm_loss(score, x, probe="uniform")
    with pytest.raises(ValueError, match=r"argument 'weighting' expected one of 'sigma2', 'likelihood'"):
        L.sde_dsm_loss(score, sf.VPSDE(), x, weighting="sigma")
    with pytest.raises(ValueError, match=r"argument 'weighting' expected one of 'sigma2', 'none'"):
        L.multiscale_dsm_loss(score, x, [0.1], weighting="likelihood")
    with pytest.raises(ValueError, match=r"argument 'reduction' expected one of 'mean', 'none', got 'sum'"):
        L.ism_loss(score, x, reduction="sum")


def test_bad_weighting_function_output(x):
    with pytest.raises(ValueError, match=r"sde_dsm_loss: the weighting function returned shape \(6, 1\); expected \(6,\)"):
        L.sde_dsm_loss(score, sf.VPSDE(), x, weighting=lambda t: t[:, None])
    with pytest.raises(ValueError, match=r"negative or non-finite weights"):
        L.multiscale_dsm_loss(score, x, [0.1], weighting=lambda s: -s)
    with pytest.raises(TypeError, match=r"the weighting function returned float"):
        L.sde_dsm_loss(score, sf.VPSDE(), x, weighting=lambda t: 1.0)


def test_a_weighting_function_that_cannot_take_its_arguments_is_named(x):
    # it was Python's bare "<lambda>() missing 1 required positional argument", naming neither loss nor argument
    with pytest.raises(TypeError, match=r"sde_dsm_loss: argument 'weighting' expected a callable weighting\(t\), called with 1"):
        L.sde_dsm_loss(score, sf.VPSDE(), x, weighting=lambda t, s: t)
    with pytest.raises(TypeError, match=r"multiscale_dsm_loss: argument 'weighting' expected a callable weighting\(sigma\)"):
        L.multiscale_dsm_loss(score, x, [0.1], weighting=lambda: 1.0)
    f = sf.consistency.parameterize(lambda y, t: y, sf.VPSDE())
    with pytest.raises(TypeError, match=r"consistency_training_loss: argument 'weighting' expected a callable "
                                        r"weighting\(t_i, t_\{i\+1\}\), called with 2"):
        L.consistency_training_loss(f, f, sf.VPSDE(), x, weighting=lambda t: t)


def test_bad_t_min_sde_projections_and_generator(x):
    with pytest.raises(ValueError, match=r"sde_dsm_loss: argument 't_min' expected a time in"):
        L.sde_dsm_loss(score, sf.VPSDE(), x, t_min=0.0)
    with pytest.raises(TypeError, match=r"sde_dsm_loss: argument 'sde' expected a ForwardSDE"):
        L.sde_dsm_loss(score, "vp", x)
    with pytest.raises(ValueError, match=r"ssm_vr_loss: argument 'n_projections' expected an int >= 1, got 0"):
        L.ssm_vr_loss(score, x, n_projections=0)
    with pytest.raises(TypeError, match=r"dsm_loss: argument 'generator' expected a torch.Generator"):
        L.dsm_loss(score, x, 0.1, generator=0)


def test_sde_dsm_loss_keeps_t_min_above_zero_on_a_flow_path(x):
    # The documented range is (0, T); a flow path (reaches_data) let t_min = 0 through. There sigma = 0: the target
    # -eps/sigma is infinite and the likelihood weight g^2/sigma^2 = 2/(t (1 - t)) is not integrable, so even the exact
    # score's loss has an infinite expectation (gaussian2d under RectifiedFlow, batch means at 1e3, 1e4, 1e5, 1e6
    # samples: 12.0, 22.0, 19.1, 22.4, growing like log n; at the default t_min = 1e-3: 12.6 +- 0.09).
    for weighting in ("likelihood", "sigma2"):
        with pytest.raises(ValueError, match=r"sde_dsm_loss: argument 't_min' expected a time in \(0, T=1\), got 0\.0"):
            L.sde_dsm_loss(score, sf.RectifiedFlow(), x, weighting=weighting, t_min=0.0)
    assert torch.isfinite(L.sde_dsm_loss(score, sf.RectifiedFlow(), x, weighting="likelihood", t_min=1e-3))


def test_ism_chunk_size_errors_name_ism_loss(x):
    with pytest.raises(ValueError, match=r"^ism_loss: argument 'chunk_size' expected an int >= 1, got 0"):
        L.ism_loss(score, x, chunk_size=0)
    with pytest.raises(TypeError, match=r"^ism_loss: argument 'chunk_size' expected an int, got float 1.5"):
        L.ism_loss(score, x, chunk_size=1.5)
