r"""An error-controlled exponential predictor-corrector in the log-SNR: ``dpmpp_4m_pc`` with its steps chosen on the fly.

A step from :math:`\lambda_s` to :math:`\lambda_t = \lambda_s + h` is the one of ``dpmpp_4m_pc``
(see :mod:`.multistep`): a predictor :math:`\tilde x_t` through the data predictions at up to four earlier
log-SNRs, one NFE for :math:`\hat x_0(\tilde x_t, t)`, and a corrector :math:`x_t` through that prediction as
well.  The two differ by about the predictor's local error (Milne's device), which costs nothing:

.. math:: e = \Big(\frac{1}{n}\sum_i \Big(\frac{x_{t,i} - \tilde x_{t,i}}{\mathrm{atol} + \mathrm{rtol}\,
          \max(|x_{s,i}|, |x_{t,i}|)}\Big)^2\Big)^{1/2}

over every entry of the batch (one grid for the whole batch, as torchdiffeq's and k-diffusion's adaptive
solvers use).  A step with :math:`e \le` ``reject_above`` is accepted (keeping the corrected state);
either way the next step is :math:`h \cdot \mathrm{clip}(\mathrm{safety}\, e^{-1/(p+1)}, \tfrac15, \mathrm{max\_factor})`
for a predictor through :math:`p` points (local error :math:`O(h^{p+1})`).  A rejected step costs its NFE.
The last step, which lands exactly on :math:`\lambda(t_{min})`, is corrected too (its prediction is not
needed afterwards, but an uncorrected long final step was the largest error on the mixtures of the
few-NFE benchmark).  Steps concentrate where the data prediction changes fast in :math:`\lambda`, e.g.
where trajectories choose between the modes of a mixture.  From pure noise (a flow path at T,
:math:`\lambda = -\infty`) the first step is taken in :math:`r = e^\lambda` (see :func:`._update_from_pure_noise`) and
its end point moves by :math:`\log` of the same factor.
"""

from __future__ import annotations

import math

import torch

from ..dynamics.counting import CountedScore
from ..methods import Method, Path, Tolerances, int_option, positive_option, register
from ..sde import ForwardSDE
from .base import ScorePredictions, check_native_ends
from .multistep import _polynomial_update, _update_from_pure_noise

__all__ = ["AdaptiveExponentialPC"]


class AdaptiveExponentialPC:
    """``dpmpp_4m_pc`` on a log-SNR grid chosen by an embedded error estimate (see the module docstring).

    Args (checked by the method's record, see ``options``):
        h_init: first step in log-SNR (the data prediction of unit-scale data changes slowly at high noise).
        safety: factor on the optimal next step.
        max_factor: largest growth of the step from one step to the next (the smallest is 1/5).
        reject_above: steps with a scaled error estimate above this are redone with a shorter step.
        max_steps: accepted plus rejected steps before giving up with a ``RuntimeError``.
    """

    options = {
        "h_init": positive_option(1.0, "first step in log-SNR"),
        "safety": positive_option(0.8, "factor on the optimal next step"),
        "max_factor": positive_option(2.0, "largest growth of the step from one step to the next", above=1.0),
        "reject_above": positive_option(2.0, "steps whose scaled error estimate exceeds this are redone"),
        "max_steps": int_option(10_000, "accepted plus rejected steps before giving up with a RuntimeError"),
    }
    points = 4
    min_factor = 0.2

    def __init__(
        self,
        *,
        h_init: float = 1.0,
        safety: float = 0.8,
        max_factor: float = 2.0,
        reject_above: float = 2.0,
        max_steps: int = 10_000,
    ) -> None:
        self.h_init, self.safety, self.max_factor, self.reject_above = h_init, safety, max_factor, reject_above
        self.max_steps = max_steps

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Tolerances, *, trajectory: bool = False
    ) -> Path:
        """Integrate the probability-flow ODE from ``x_T`` between the ends ``stepping.times`` to its tolerances."""
        start, end = stepping.times
        check_native_ends("AdaptiveExponentialPC", sde, stepping.times, True)
        times, states, rejected = self.solve(ScorePredictions(score, sde), start, end, x_T, stepping.rtol, stepping.atol)
        return Path(torch.stack(times), states, {"steps": len(times) - 1, "rejected_steps": rejected})

    def solve(
        self, model: ScorePredictions, t_start: torch.Tensor, t_end: torch.Tensor, x: torch.Tensor, rtol: float, atol: float
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """Integrate from ``x`` at ``t_start`` down to ``t_end`` (0-dim tensors in ``x``'s dtype).

        Returns:
            ``(times, states, rejected)``: the accepted times (from ``t_start`` to exactly ``t_end``), the
            states there, and the number of rejected steps.
        """
        _, sigma_s, lam_s = model.coefs(t_start)
        lam_end = model.coefs(t_end)[2]
        m = model.data(x, t_start)
        times, states, history = [t_start], [x], []
        h, rejected = self.h_init, 0  # a first step beyond t_end becomes the last step below
        # From pure noise (lambda = -inf) the first step is sized in r = e^lambda: it ends at lambda = lam_first,
        # which a rejection moves by log(factor) (the step's error scales as r_t^(p+1), as an ordinary step's does as h^(p+1)).
        lam_first, from_noise = -self.h_init, model.from_pure_noise(t_start)
        for _ in range(self.max_steps):
            if from_noise:
                last = lam_first >= float(lam_end)
                t = t_end if last else model.time_at(lam_s.new_tensor(lam_first))
            else:
                remaining = float(lam_end - lam_s)
                last = h >= 0.999 * remaining
                if last:
                    h = remaining
                elif h > 0.7 * remaining:
                    h = 0.5 * remaining  # two similar steps rather than a sliver at the end
                t = t_end if last else model.time_at(lam_s + h)
            alpha_t, sigma_t, lam_t = model.coefs(t)
            step, ratio, base = lam_t - lam_s, sigma_t / sigma_s, (lam_s, m)
            others = history[: self.points - 1]

            def update(points):
                if from_noise:
                    return _update_from_pure_noise(x, ratio, alpha_t, m, points)
                return _polynomial_update(x, ratio, alpha_t, step, base, points)

            x_pred = update(others)
            m_t = model.data(x_pred, t)
            x_t = update([(lam_t, m_t)] + others)
            scale = atol + rtol * torch.maximum(x.abs(), x_t.abs())
            err = float(((x_t - x_pred) / scale).square().mean().sqrt())
            factor = min(self.max_factor, max(self.min_factor, self.safety * max(err, 1e-10) ** (-1.0 / (len(others) + 2))))
            if from_noise:
                lam_first = float(lam_t) + math.log(factor)
                h = self.h_init * factor
            else:
                h = float(step) * factor
            if err > self.reject_above:
                rejected += 1
                continue
            if not from_noise:  # a prediction at lambda = -inf drops out of later polynomials (see multistep)
                history.insert(0, base)
            from_noise = False
            x, m, lam_s, sigma_s = x_t, m_t, lam_t, sigma_t
            times.append(t)
            states.append(x)
            if last:
                return times, states, rejected
        raise RuntimeError(
            f"dpmpp_4m_pc_adaptive took max_steps={self.max_steps} steps (accepted and rejected) "
            f"and reached t={float(times[-1]):.6g} of t_min={float(t_end):.6g}; raise options={{'max_steps': ...}} or loosen rtol/atol."
        )


register(
    Method(
        name="dpmpp_4m_pc_adaptive",
        kinds=("ode",),
        backend="native",
        solver=AdaptiveExponentialPC,
        summary="dpmpp_4m_pc on log-SNR steps chosen by its predictor-corrector difference",
        nfe_per_step=1,
        adaptive=True,
        options=AdaptiveExponentialPC.options,
    )
)
