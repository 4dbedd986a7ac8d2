r"""Predictor steps of predictor-corrector sampling, as coefficient tables over a time grid.

Every predictor moves a state from :math:`t` down to :math:`t' < t` by one score call,

.. math:: x' = c_x\,x + c_s\,s(x, t) + c_z\,z,\qquad z \sim N(0, I),

so a predictor is a rule for :math:`(c_x, c_s, c_z)` per step (computed once, in float64, before
sampling).  With :math:`a = \alpha(t)/\alpha(t')` and :math:`G^2 = \sigma(t)^2 - a^2\sigma(t')^2`
the exact forward transition is :math:`x_t = a\,x_{t'} + G\,z`:

- ``euler_maruyama``: :math:`x' = x - h[f x - g^2 s] + g\sqrt h\,z` with :math:`h = t - t'`, all at t.
- ``reverse_diffusion``: reverse the forward discretization (Song et al. 2021),
  :math:`x' = x - (a - 1)x + G^2 s + G z`; DDPM's chain for VP, SMLD's for VE.
- ``ancestral``: DDPM for VP, :math:`x' = (x + \beta s)/\sqrt{1-\beta} + \sqrt\beta z` with
  :math:`\beta = 1 - a^2`; SMLD for variance-exploding SDEs,
  :math:`x' = x + (\sigma^2 - \sigma'^2)s + \sqrt{\sigma'^2(\sigma^2 - \sigma'^2)/\sigma^2}\,z`.
  The VP step's mean is that of DDPM's posterior :math:`q(x_{t'} | x_t, \hat x_0)`, its variance DDPM's
  :math:`\sigma_t^2 = \beta_t` (diffusers' ``variance_type="fixed_large"``, score_sde's ancestral predictor).  On a
  :class:`~scoreflow.adapters.DiscreteVPSDE` over its knots (``steps = n_steps - 1`` from T to the default
  ``t_min``) :math:`a^2 = \bar\alpha_i/\bar\alpha_{i-1}`, so :math:`\beta` is the schedule's own
  :math:`\beta_i`: the step is DDPM's on the discrete schedule.
"""

from __future__ import annotations

import torch

from ..methods import Method, get_method, register
from ..sde import ForwardSDE

__all__ = ["predictor_coefficients", "corrector_alphas", "check_ancestral", "forward_transition"]

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def forward_transition(sde: ForwardSDE, t_hi: torch.Tensor, t_lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, G^2)`` of the exact forward transition :math:`x_{t_{hi}} = a\\,x_{t_{lo}} + G z`."""
    alpha_hi, sigma_hi = sde.marginal(t_hi)
    alpha_lo, sigma_lo = sde.marginal(t_lo)
    a = alpha_hi / alpha_lo
    return a, (sigma_hi**2 - a**2 * sigma_lo**2).clamp(min=0.0)


def _euler_maruyama(sde: ForwardSDE, t_hi: torch.Tensor, t_lo: torch.Tensor) -> Coefficients:
    h = t_hi - t_lo
    g = sde.diffusion(t_hi)
    return 1.0 - h * sde.drift_coef(t_hi), h * g**2, g * h.sqrt()


def _reverse_diffusion(sde: ForwardSDE, t_hi: torch.Tensor, t_lo: torch.Tensor) -> Coefficients:
    a, g2 = forward_transition(sde, t_hi, t_lo)
    return 2.0 - a, g2, g2.sqrt()


def check_ancestral(fn: str, sde: ForwardSDE) -> None:
    """Refuse ``predictor="ancestral"`` on a process that declares no ancestral step (its ``ancestral`` is None):
    the step is defined for VP, continuous or discrete (DDPM's, which needs alpha^2 + sigma^2 = 1), and for
    variance-exploding processes (SMLD's, which needs alpha = 1).

    Raises:
        ValueError: naming ``fn``, the process and the predictors that run on it.
    """
    if sde.ancestral is None:
        raise ValueError(
            f"{fn}: predictor='ancestral' is defined for VP processes (VPSDE, DiscreteVPSDE: DDPM) and variance-exploding "
            f"ones (VESDE, EDMSDE: SMLD), got {type(sde).__name__}; use predictor='reverse_diffusion' or 'euler_maruyama'."
        )


def _ancestral(sde: ForwardSDE, t_hi: torch.Tensor, t_lo: torch.Tensor) -> Coefficients:
    if sde.ancestral == "vp":
        a, _ = forward_transition(sde, t_hi, t_lo)
        beta = -torch.expm1(2 * torch.log(a))
        return 1.0 / a, beta / a, beta.sqrt()
    _, sigma_hi = sde.marginal(t_hi)
    _, sigma_lo = sde.marginal(t_lo)
    gap = sigma_hi**2 - sigma_lo**2
    return torch.ones_like(gap), gap, (sigma_lo**2 * gap / sigma_hi**2).sqrt()


# Each predictor's record holds its rule ``(sde, t_hi, t_lo) -> (c_x, c_s, c_z)`` over the grid's steps.
for _name, _rule, _summary in (
    ("reverse_diffusion", _reverse_diffusion, "reverse of the forward discretization (DDPM's chain for VP, SMLD's for VE)"),
    ("euler_maruyama", _euler_maruyama, "Euler-Maruyama step of the reverse SDE"),
    ("ancestral", _ancestral, "ancestral sampling: DDPM for VP, SMLD for variance-exploding SDEs"),
):
    register(Method(_name, ("predictor",), "native", _rule, _summary))


def predictor_coefficients(name: str, sde: ForwardSDE, ts: torch.Tensor) -> Coefficients:
    """Coefficients ``(c_x, c_s, c_z)``, each ``(N,)``, of predictor ``name`` on the decreasing grid ``ts`` (N+1)."""
    return get_method("predictor", name, caller="predictor_coefficients").solver(sde, ts[:-1], ts[1:])


def corrector_alphas(sde: ForwardSDE, ts: torch.Tensor) -> torch.Tensor:
    r"""score_sde's factor :math:`\alpha_i = a_i^2 = 1 - \beta_i` of the Langevin step at ``ts[i+1]``, shape ``(N,)``,
    on any decreasing grid ``ts``.

    :math:`\beta_i` is the variance of the forward step between adjacent grid times that the predictor has just
    reversed, :math:`x_{t_i} = \sqrt{1 - \beta_i}\,x_{t_{i+1}} + \sqrt{\beta_i}\,z` for VP:
    :math:`1 - \beta_i = a_i^2 = \alpha(t_i)^2/\alpha(t_{i+1})^2 = \exp(-\int_{t_{i+1}}^{t_i}\beta(s)\,ds)`, the
    same for sub-VP (whose :math:`\alpha` is VP's) and 1 for VE and EDM (:math:`\alpha = 1`).  It follows the local
    step length, as score_sde's :math:`1 - \beta(t)/N = 1 - \beta(t)\,\Delta t` does on its uniform grid, from which
    it differs by :math:`O(\Delta t^2)` (score_sde reads its ``discrete_betas`` at the correction time; not the same
    to the bit).
    """
    a, _ = forward_transition(sde, ts[:-1], ts[1:])
    return a**2
