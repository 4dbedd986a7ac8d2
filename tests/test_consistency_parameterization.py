"""parameterize: the boundary condition holds exactly, EDM's coefficients under EDM, any SDE, any shape, errors."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoreflow as sf

SDES = [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE(), sf.EDMSDE(), sf.VPSDE(t_min=0.05)]


def wild_net(x, t):
    """A network whose output is large and time-dependent: only c_out = 0 can hide it."""
    return 1e3 * torch.cos(x + t.reshape(-1, *[1] * (x.ndim - 1)))


@given(st.sampled_from(SDES), st.sampled_from([torch.float32, torch.float64]), st.floats(0.1, 3.0), st.integers(0, 1000))
def test_f_at_t_min_is_x_exactly(sde, dtype, sigma_data, seed):
    f = sf.consistency.parameterize(wild_net, sde, sigma_data)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    assert torch.equal(f(x, sde.t_min), x)
    assert torch.equal(f(x, torch.full((5,), sde.t_min, dtype=dtype)), x)


def test_edm_coefficients_are_song_et_al():
    sde, sd = sf.EDMSDE(), 0.5
    f = sf.consistency.parameterize(wild_net, sde, sd)
    t = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out = f.coefficients(t)
    eps = sde.t_min
    assert torch.allclose(c_skip, sd**2 / ((t - eps) ** 2 + sd**2), rtol=1e-14)
    assert torch.allclose(c_out, sd * (t - eps) / torch.sqrt(sd**2 + t**2), rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("sde", [sf.VPSDE(), sf.SubVPSDE(), sf.VESDE()], ids=["vp", "subvp", "ve"])
def test_any_sde_is_edm_in_the_scaled_variables(sde):
    # f(x, t) = alpha(t_min) * EDM's f(x / alpha(t), sigma/alpha) with EDM's sigma_min = sigma(t_min)/alpha(t_min).
    sd = 0.7
    f = sf.consistency.parameterize(wild_net, sde, sd)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    a_min, s_min = (float(v) for v in sde.marginal(torch.tensor(sde.t_min, dtype=torch.float64)))
    s_bar, s_bar_min = sigma / alpha, s_min / a_min
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x / alpha[:, None]
    edm = (sd**2 / ((s_bar - s_bar_min) ** 2 + sd**2))[:, None] * y + (
        sd * (s_bar - s_bar_min) / torch.sqrt(s_bar**2 + sd**2)
    )[:, None] * wild_net(x, t)
    assert torch.allclose(f(x, t), a_min * edm, rtol=1e-12)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) * t[:, None, None, None]


def test_the_network_is_a_submodule_and_images_work():
    f = sf.consistency.parameterize(ConvNet(), sf.EDMSDE(), 0.5)
    assert len(list(f.parameters())) == 2 and "sigma_data=0.5, t_min=0.002" in repr(f)
    x = torch.randn(2, 3, 8, 8)
    out = f(x, torch.tensor([1.0, 2.0]))
    assert out.shape == x.shape
    out.sum().backward()
    assert f.net.conv.weight.grad is not None


def test_errors_name_the_argument():
    sde = sf.VPSDE()
    with pytest.raises(TypeError, match=r"parameterize: argument 'net' expected a callable net\(x, t\)"):
        sf.consistency.parameterize(3, sde)
    with pytest.raises(ValueError, match=r"parameterize: argument 'sigma_data' expected a finite number > 0, got 0\.0"):
        sf.consistency.parameterize(wild_net, sde, 0.0)
    with pytest.raises(ValueError, match=r"parameterize: argument 't_min' expected a time in \(0, T=1\)"):
        sf.consistency.parameterize(wild_net, sde, t_min=2.0)
    with pytest.raises(TypeError, match=r"parameterize: argument 'sde' expected a ForwardSDE"):
        sf.consistency.parameterize(wild_net, None)
    f = sf.consistency.parameterize(lambda x, t: x[:, :1], sde)
    with pytest.raises(ValueError, match=r"ConsistencyModel: the network expected shape \(4, 2\)"):
        f(torch.zeros(4, 2), 0.5)
    # an integer x was blamed on the network ("the network expected dtype torch.int64 (the dtype of x)")
    g = sf.consistency.parameterize(lambda x, t: torch.zeros_like(x, dtype=torch.float32), sde)
    with pytest.raises(TypeError, match=r"ConsistencyModel: argument 'x' expected a floating-point tensor of shape \(B, \*D\), got dtype torch\.int64"):
        g(torch.zeros(4, 2, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match=r"ConsistencyModel: argument 'x' expected a floating-point tensor of shape \(B, \*D\), got list"):
        g([[0.0, 1.0]], 0.5)
