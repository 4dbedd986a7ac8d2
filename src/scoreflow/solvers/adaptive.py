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
(at most :data:`MAX_RETRY_FACTOR` after a rejection)
for a predictor through :math:`p` points (local error :math:`O(h^{p+1})`).  A rejected step costs its NFE.
The last step, which lands exactly on :math:`\lambda(t_{min})`, is corrected too (its prediction is not
needed afterwards, but an uncorrected long final step was the largest error on the mixtures of the
few-NFE benchmark).  Steps concentrate where the data prediction changes fast in :math:`\lambda`, e.g.
where trajectories choose between the modes of a mixture.  From pure noise (a flow path at T,
:math:`\lambda = -\infty`) the first step is taken in :math:`r = e^\lambda` (see :func:`.pure_noise_weights`) and
its end point moves by :math:`\log` of the same factor.  Times asked for between the ends (dense output)
are landed on exactly, like the last one.  The step control reads its error norm on the host every step
(as torchdiffeq's does); the coefficients of a step are computed on the CPU in float64 from the log-SNRs.
"""

from __future__ import annotations

import math

import torch

from ..dynamics.counting import CountedScore
from ..methods import Method, Option, Solution, StepMonitor, Tolerances, int_option, positive_option, register
from ..sde import ForwardSDE
from .base import Nodes, check_native_ends, combine
from .multistep import polynomial_weights, pure_noise_weights

__all__ = ["AdaptiveExponentialPC", "MAX_RETRY_FACTOR", "step_control_options", "step_factor"]

#: The longest retry of a rejected step, as a fraction of it, whatever the options: with ``reject_above`` below
#: safety^(p+1) or ``safety`` > 1 the factor safety e^(-1/(p+1)) of a rejected step exceeds 1, and the longer retry
#: fails again until ``max_steps``.  It never binds with the default options (e > 2 gives at most 0.70).
MAX_RETRY_FACTOR = 0.8


def step_factor(err: float, order: int, *, safety: float, min_factor: float, max_factor: float,
                reject_above: float) -> float:
    r"""The next step's length over this one's, from its scaled error estimate ``err`` and the order of that estimate
    (``order`` = p + 1 for a predictor through p points): :math:`\mathrm{clip}(\mathrm{safety}\,e^{-1/(p+1)},
    \mathrm{min\_factor}, \mathrm{max\_factor})`, at most :data:`MAX_RETRY_FACTOR` when the step is rejected
    (``err > reject_above``)."""
    factor = min(max_factor, max(min_factor, safety * max(err, 1e-10) ** (-1.0 / order)))
    return min(factor, MAX_RETRY_FACTOR) if err > reject_above else factor


def step_control_options(*, h_init: float, max_factor: float = 2.0) -> dict[str, Option]:
    """The options of an error-controlled predictor-corrector in the log-SNR (the first step ``h_init`` and the
    largest growth ``max_factor`` by default)."""
    return {
        "h_init": positive_option(h_init, "first step in log-SNR"),
        "safety": positive_option(0.8, "factor on the optimal next step"),
        "max_factor": positive_option(max_factor, "largest growth of the step from one step to the next", above=1.0),
        "reject_above": positive_option(2.0, "steps whose scaled error estimate exceeds this are redone"),
        "max_steps": int_option(10_000, "accepted plus rejected steps before giving up with a RuntimeError"),
    }


class AdaptiveExponentialPC:
    """``dpmpp_4m_pc`` on a log-SNR grid chosen by an embedded error estimate (see the module docstring).

    Args (checked by the method's record, see ``options``):
        h_init: first step in log-SNR (the data prediction of unit-scale data changes slowly at high noise).
        safety: factor on the optimal next step.
        max_factor: largest growth of the step from one step to the next (the smallest is 1/5).
        reject_above: steps with a scaled error estimate above this are redone with a shorter step.
        max_steps: accepted plus rejected steps before giving up with a ``RuntimeError``.
    """

    options = step_control_options(h_init=1.0)
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
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Tolerances, *, monitor: StepMonitor
    ) -> Solution:
        """Integrate the probability-flow ODE from ``x_T`` through the times ``stepping.times`` to its tolerances.

        Returns the final state, the states at every time of ``stepping.times`` (``saved``) and the counts of
        accepted and rejected steps.

        Raises:
            ValueError: for a solve to t = 0 (log-SNR +inf).
        """
        return _AdaptiveSolve(self, score, sde, stepping, monitor).run(x_T)


class _AdaptiveSolve:
    """One solve of :class:`AdaptiveExponentialPC`: the log-SNR bookkeeping (Python floats) and the step loop."""

    def __init__(self, method: AdaptiveExponentialPC, score: CountedScore, sde: ForwardSDE, stepping: Tolerances,
                 monitor: StepMonitor) -> None:
        self.method, self.score, self.sde, self.monitor = method, score, sde, monitor
        self.rtol, self.atol = stepping.rtol, stepping.atol
        self.targets = stepping.times.unbind()
        self.targets_lam = Nodes(sde, stepping.times, score.prediction).lam
        check_native_ends(type(method).__name__, sde, float(stepping.times[-1]), True, caller=score.caller)

    def coefs(self, lam: float, t: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, float, float, float, float]:
        r"""The time (in ``like``'s dtype and device), ``(alpha, sigma)`` and the data prediction's affine map ``(a, b)``
        (:math:`\hat x_0 = a x + b p`) at log-SNR ``lam`` (at the given ``t`` if any)."""
        t64 = self.sde.t_from_log_snr(torch.tensor([lam], dtype=torch.float64)) if t is None else t.reshape(1)
        node = Nodes(self.sde, t64, self.score.prediction)
        (a,), (b,) = node.affine("x0")
        if t is None:
            t = t64[0].to(dtype=like.dtype, device=like.device)
        return t, node.alpha[0], node.sigma[0], a, b

    def data(self, x: torch.Tensor, t: torch.Tensor, a: float, b: float) -> torch.Tensor:
        return (x * a).add(self.score.predict(x, t), alpha=b)

    def weights(self, alpha_t: float, h: float, points: list[float], *, from_noise: bool) -> list[float]:
        r"""``alpha_t`` times the weights of the predictions at ``points`` (log-SNR offsets / h, or from pure noise the
        nodes in :math:`\rho = r/r_t`) in a step :math:`x_t = \tfrac{\sigma_t}{\sigma_s}x_s + \sum_j w_j \hat x_0^{(j)}`."""
        weights = pure_noise_weights(points) if from_noise else polynomial_weights(h, points)
        return [alpha_t * w for w in weights]

    def run(self, x: torch.Tensor) -> Solution:
        method, monitor = self.method, self.monitor
        t_s, _, sigma_s, a, b = self.coefs(self.targets_lam[0], self.targets[0], x)
        lam_s = self.targets_lam[0]
        m = self.data(x, t_s, a, b)
        saved, history, target = [x], [], 1  # history: (lambda, prediction), newest first
        h, accepted, rejected = method.h_init, 0, 0  # a first step beyond the target becomes the last step below
        # From pure noise (lambda = -inf) the first step is sized in r = e^lambda: it ends at lambda = lam_first,
        # which a rejection moves by log(factor) (the step's error scales as r_t^(p+1), as an ordinary step's as h^(p+1)).
        from_noise, lam_first = not math.isfinite(lam_s), -method.h_init
        for _ in range(method.max_steps):
            if from_noise:
                land = lam_first >= self.targets_lam[target]
                lam_t = self.targets_lam[target] if land else lam_first
            else:
                remaining = self.targets_lam[target] - lam_s
                land = h >= 0.999 * remaining
                if land:
                    h = remaining
                elif h > 0.7 * remaining:
                    h = 0.5 * remaining  # two similar steps rather than a sliver before the target
                lam_t = self.targets_lam[target] if land else lam_s + h
            t, alpha_t, sigma_t, a, b = self.coefs(lam_t, self.targets[target] if land else None, x)
            step, ratio = lam_t - lam_s, sigma_t / sigma_s
            others = history[: method.points - 1]
            # from pure noise the start is at r = 0 and the end at rho = 1, with no history yet
            offsets = [] if from_noise else [(lam - lam_s) / step for lam, _ in others]
            earlier = [] if from_noise else [p for _, p in others]
            wp = self.weights(alpha_t, step, [0.0, *offsets], from_noise=from_noise)
            wc = self.weights(alpha_t, step, [0.0, 1.0, *offsets], from_noise=from_noise)
            x_pred = combine(x, ratio, zip([m, *earlier], wp))
            m_t = self.data(x_pred, t, a, b)
            # The corrector's change to the predictor from the difference of their weights (as a Runge-Kutta pair
            # estimates its error): x_t - x_pred taken apart would carry the round-off of x itself, which in float32
            # kept the estimate above tolerances near its resolution until the step underflowed.
            delta = combine(m, wc[0] - wp[0], zip([m_t, *earlier], [wc[1], *(c - p for c, p in zip(wc[2:], wp[1:]))]))
            x_t = x_pred + delta
            scale = self.atol + self.rtol * torch.maximum(x.abs(), x_t.abs())
            err = float((delta / scale).square().mean().sqrt())
            factor = step_factor(err, len(others) + 2, safety=method.safety, min_factor=method.min_factor,
                                 max_factor=method.max_factor, reject_above=method.reject_above)
            if from_noise:
                lam_first, h = lam_t + math.log(factor), method.h_init * factor
            else:
                h = step * factor
            if err > method.reject_above:
                rejected += 1
                continue
            if not from_noise:  # a prediction at lambda = -inf drops out of later polynomials (see multistep)
                history.insert(0, (lam_s, m))
            from_noise = False
            reported = monitor.step(accepted, t, x_t)
            m = m_t if reported is x_t else self.data(reported, t, a, b)
            x, lam_s, sigma_s, accepted = reported, lam_t, sigma_t, accepted + 1
            if land:
                saved.append(x)
                target += 1
                if target == len(self.targets):
                    return Solution(x, torch.stack(saved), {"steps": accepted, "rejected_steps": rejected})
        reached = float(self.sde.t_from_log_snr(torch.tensor(lam_s, dtype=torch.float64)))
        raise RuntimeError(
            f"dpmpp_4m_pc_adaptive took max_steps={method.max_steps} steps (accepted and rejected) "
            f"and reached t={reached:.6g} of t_min={float(self.targets[-1]):.6g}; raise options={{'max_steps': ...}} "
            "or loosen rtol/atol."
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
