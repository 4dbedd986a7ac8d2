"""Reference problems with exact answers: analytic data laws under each forward SDE.

Every problem pairs a law (whose perturbed marginals, scores and, for Gaussians, the
probability-flow map are known in closed form) with a forward SDE.  They are built in
float64 by default; use ``problem.law.to(torch.float32)`` for float32 studies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_float_dtype
from ..analytic import Gaussian, GaussianMixture
from ..paths import RectifiedFlow
from ..sde import VESDE, VPSDE, ForwardSDE, SubVPSDE

__all__ = ["Problem", "make_sde", "make_law", "make_problem", "LAWS", "SDES"]

SDES = ("vp", "subvp", "ve", "rf")
LAWS = ("gaussian2d", "gaussian16d", "ring2d", "ring2d_sharp", "mixture16d")


@dataclass(frozen=True)
class Problem:
    """A data law and a forward SDE; ``score`` is the exact score of the diffused law (on a flow path it also
    carries the exact flow velocity, see :meth:`~scoreflow.analytic.GaussianMixture.score`)."""

    name: str
    law: GaussianMixture
    sde: ForwardSDE

    @property
    def score(self):
        return self.law.score(self.sde)

    @property
    def dim(self) -> int:
        return self.law.dim


def make_sde(name: str) -> ForwardSDE:
    """The default process of each family: ``"vp"``, ``"subvp"`` (beta 0.1..20), ``"ve"`` (sigma 0.01..50) or ``"rf"``
    (:class:`~scoreflow.RectifiedFlow`, pure noise at T = 1)."""
    check_choice("make_sde", "name", name, SDES)
    return {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "rf": RectifiedFlow}[name]()


def _anisotropic_cov(d: int, condition: float, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """A rotated diagonal covariance with eigenvalues log-spaced over ``[1/condition, 1]``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    eig = torch.logspace(-math.log10(condition), 0, d, dtype=dtype)
    return (q * eig) @ q.T


def make_law(name: str, dtype: torch.dtype = torch.float64) -> GaussianMixture:
    """One of the reference laws.

    - ``gaussian2d``: N(m, C) in 2-D, eigenvalues 0.1 and 1, rotated.
    - ``gaussian16d``: N(m, C) in 16-D, eigenvalues log-spaced over [0.01, 1].
    - ``ring2d``: 8 equal components at radius 2 on a circle, isotropic std 0.2.
    - ``ring2d_sharp``: the same ring with component std 0.05 (a hard case for few-step samplers).
    - ``mixture16d``: 4 unequal components in 16-D at distance ~3 from the origin, anisotropic covariances.
    """
    check_choice("make_law", "name", name, LAWS)
    check_float_dtype("make_law", "dtype", dtype)
    if name == "gaussian2d":
        return Gaussian(torch.tensor([0.5, -0.3], dtype=dtype), _anisotropic_cov(2, 10.0, 0, dtype))
    if name == "gaussian16d":
        mean = torch.linspace(-0.5, 0.5, 16, dtype=dtype)
        return Gaussian(mean, _anisotropic_cov(16, 100.0, 1, dtype))
    if name in ("ring2d", "ring2d_sharp"):
        std = 0.2 if name == "ring2d" else 0.05
        angle = torch.arange(8, dtype=dtype) * (2 * math.pi / 8)
        means = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
        covs = (std**2) * torch.eye(2, dtype=dtype).expand(8, 2, 2)
        return GaussianMixture(torch.ones(8, dtype=dtype), means, covs)
    g = torch.Generator().manual_seed(2)
    means = torch.randn(4, 16, generator=g, dtype=dtype)
    means = 3.0 * means / means.norm(dim=1, keepdim=True)
    covs = torch.stack([0.25 * _anisotropic_cov(16, 10.0, 10 + k, dtype) for k in range(4)])
    return GaussianMixture(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=dtype), means, covs)


def make_problem(law: str = "ring2d", sde: str = "vp", dtype: torch.dtype = torch.float64) -> Problem:
    """A reference problem, e.g. ``make_problem("ring2d", "ve")``."""
    check_choice("make_problem", "law", law, LAWS)
    check_choice("make_problem", "sde", sde, SDES)
    check_float_dtype("make_problem", "dtype", dtype)
    return Problem(name=f"{law}-{sde}", law=make_law(law, dtype), sde=make_sde(sde))
