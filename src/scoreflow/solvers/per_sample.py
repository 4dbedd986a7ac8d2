r"""``dpmpp_4m_pc_adaptive`` with every sample on its own log-SNR steps (as torchode does for Runge-Kutta methods).

The step from :math:`\lambda_s` to :math:`\lambda_t = \lambda_s + h` is the exponential predictor-corrector of
:mod:`.adaptive`: with :math:`\psi_0 = 1 - e^{-h}`, :math:`\psi_j = h^j/j! - \psi_{j-1}` and the Lagrange polynomial
through the data predictions :math:`\hat x_0(\lambda_j)` at nodes :math:`r_j = (\lambda_j - \lambda_s)/h`,

.. math:: x_t = \frac{\sigma_t}{\sigma_s} x_s + \alpha_t \sum_j w_j \hat x_0(\lambda_j),\qquad
          V^\top w = g,\ V_{ji} = r_j^i,\ g_i = i!\,h^{-i}\psi_i(h),

a predictor through the step's start and up to three earlier nodes, one NFE at its end, and a corrector through
that new node too (two nodes take DPM-Solver++'s second-order form, as in :mod:`.adaptive`, so a batch of one
sample takes the batch-wide solver's steps).  Here every quantity is per sample: its step :math:`h`, its nodes, its error
:math:`e = \mathrm{RMS}\big((x_t - \tilde x_t)/(\mathrm{atol} + \mathrm{rtol}\max(|x_s|, |x_t|))\big)` over its own
entries, its accept/reject decision and its next step :math:`h\,\mathrm{clip}(\mathrm{safety}\,e^{-1/(p+1)}, 1/5,
\mathrm{max\_factor})`.  Nothing couples two samples, so a sample's result does not depend on the batch it is in
(up to the round-off of the score model's batched arithmetic).  Each score call evaluates the samples still running,
at their own times; a sample's NFE is the number of calls that evaluated it, and the solve's ``nfe`` (calls) is the
largest of them.
"""

from __future__ import annotations

import math

import torch

from ..dynamics.counting import CountedScore
from ..methods import Method, Solution, StepMonitor, Tolerances, register
from ..parameterizations import convert
from ..sde import ForwardSDE
from .adaptive import MAX_RETRY_FACTOR, AdaptiveExponentialPC
from .base import check_native_ends

__all__ = ["PerSampleExponentialPC"]

_HISTORY = 3  # earlier nodes kept beside the step's start: a 4-point predictor, a 5-point corrector


def _lagrange_weights(nodes: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    r"""Weights :math:`w` of :math:`\alpha_t\sum_j w_j\hat x_0(\lambda_j)` for nodes ``(B, k)`` (scaled by ``h``) and steps ``h`` ``(B,)``."""
    k = nodes.shape[1]
    if k == 2:  # DPM-Solver++'s second-order form, as the batch-wide solver uses (it differs at third order)
        half = 0.5 / nodes[:, 1]
        return -torch.expm1(-h)[:, None] * torch.stack([1.0 - half, half], 1)
    psi, g = -torch.expm1(-h), []
    for j in range(k):
        if j > 0:
            psi = h**j / math.factorial(j) - psi
        g.append(psi * math.factorial(j) / h**j)
    vander = nodes[:, :, None] ** torch.arange(k, dtype=nodes.dtype, device=nodes.device)
    return torch.linalg.solve(vander.transpose(1, 2), torch.stack(g, 1))


def _combine(nodes: torch.Tensor, valid: torch.Tensor, h: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """:math:`\\sum_j w_j \\hat x_0(\\lambda_j)` with each row using its first ``valid`` nodes: nodes ``(B, K)``, preds ``(B, K, D)``."""
    out = torch.zeros_like(preds[:, 0])
    for k in range(1, nodes.shape[1] + 1):
        rows = valid == k
        w = _lagrange_weights(nodes[:, :k], h).to(preds.dtype)
        out = torch.where(rows[:, None], torch.einsum("bk,bkd->bd", w, preds[:, :k]), out)
    return out


class _Predictions:
    r"""The data prediction of a counted model and :math:`(\alpha, \sigma, \lambda)` at per-sample times (tensors)."""

    def __init__(self, score: CountedScore, sde: ForwardSDE) -> None:
        self.score, self.sde = score, sde

    def coefs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, sigma = self.sde.marginal(t)
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def data(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return convert(self.score.predict(x, t), self.score.prediction, "x0", x, t, self.sde)

    def time_at(self, lam: torch.Tensor) -> torch.Tensor:
        return self.sde.t_from_log_snr(lam)


class PerSampleExponentialPC(AdaptiveExponentialPC):
    """``dpmpp_4m_pc_adaptive`` with per-sample steps and decisions; same options (see the module docstring).

    ``Solution.stats`` holds ``nfe_per_sample`` (a ``(B,)`` tensor), ``nfe_mean``, ``nfe_max``, and the per-sample
    accepted and rejected steps (``steps``, ``rejected_steps``, ``(B,)`` tensors).  The samples' times differ, so the
    monitor sees one step, the whole solve (a callback is called once, at ``t_min``; the trajectory holds the two
    ends), and no times between the ends can be asked for.
    """

    def sample(
        self, score: CountedScore, sde: ForwardSDE, x_T: torch.Tensor, stepping: Tolerances, *, monitor: StepMonitor
    ) -> Solution:
        """Integrate the probability-flow ODE from ``x_T`` between the ends ``stepping.times``, each sample to the tolerances.

        Raises:
            ValueError: on a process at pure noise at T (log-SNR -inf), a solve to t = 0, or times between the ends
                (``save_at``).
        """
        if len(stepping.times) > 2:
            raise ValueError(
                f"{score.caller}: the method 'dpmpp_4m_pc_adaptive_per_sample' steps every sample at its own times, so it "
                "cannot return the state at 'save_at' times. Fix: method='dpmpp_4m_pc_adaptive'."
            )
        start, end = stepping.times
        if sde.pure_noise_at_T and float(start) >= sde.T:  # a solve from below T (a teacher step) is fine
            raise ValueError(
                f"{score.caller}: the method 'dpmpp_4m_pc_adaptive_per_sample' cannot start at pure noise (log-SNR -inf "
                f"at T) on {sde!r}. Fix: method='dpmpp_4m_pc_adaptive', whose first step starts there, or a path that "
                "ends before pure noise."
            )
        check_native_ends(type(self).__name__, sde, float(end), True, caller=score.caller)
        x, stats = self.solve_rows(_Predictions(score, sde), start, end, x_T, stepping.rtol, stepping.atol)
        x = monitor.step(0, end, x)
        return Solution(x, torch.stack([x_T, x]), stats)

    def solve_rows(
        self, model: _Predictions, t_start: torch.Tensor, t_end: torch.Tensor, x0: torch.Tensor, rtol: float, atol: float
    ) -> tuple[torch.Tensor, dict]:
        """Integrate every row of ``x0`` from ``t_start`` down to ``t_end`` on its own steps; returns the states and the stats."""
        shape, b = x0.shape, x0.shape[0]
        f64 = dict(dtype=torch.float64, device=x0.device)
        lam_end = model.coefs(t_end)[2].to(**f64)
        x = x0.reshape(b, -1).clone()
        d = x.shape[1]
        m = model.data(x0, t_start).reshape(b, -1)
        lam = model.coefs(t_start)[2].to(**f64).expand(b).clone()
        sigma = model.coefs(t_start)[1].expand(b).clone()
        h = torch.full((b,), self.h_init, **f64)
        # Unused history nodes sit before the start, apart from each other, so every Vandermonde system is regular.
        hist_lam = lam[:, None] - torch.arange(1, _HISTORY + 1, **f64)
        hist_m = x.new_zeros(b, _HISTORY, d)
        n_hist = torch.zeros(b, dtype=torch.long, device=x.device)
        nfe = torch.ones(b, dtype=torch.long, device=x.device)
        accepted, rejected = torch.zeros_like(nfe), torch.zeros_like(nfe)
        running = torch.arange(b, device=x.device)
        for _ in range(self.max_steps):
            i = running
            xi, mi, lam_s, sig_s, hi = x[i], m[i], lam[i], sigma[i], h[i]
            remaining = lam_end - lam_s
            last = hi >= 0.999 * remaining
            hi = torch.where(last, remaining, torch.where(hi > 0.7 * remaining, 0.5 * remaining, hi))
            t = torch.where(last, t_end.to(**f64), model.time_at(lam_s + hi).to(**f64)).to(x.dtype)
            alpha_t, sig_t, lam_t = model.coefs(t)
            step = lam_t.to(**f64) - lam_s
            nodes = torch.cat([torch.zeros_like(lam_s)[:, None], (hist_lam[i] - lam_s[:, None]) / step[:, None]], 1)
            preds = torch.cat([mi[:, None], hist_m[i]], 1)
            ratio, a = (sig_t / sig_s)[:, None], alpha_t[:, None]
            k = 1 + n_hist[i]
            x_pred = ratio * xi + a * _combine(nodes, k, step, preds)
            m_t = model.data(x_pred.reshape(-1, *shape[1:]), t).reshape(len(i), d)
            nodes_c = torch.cat([nodes[:, :1], torch.ones_like(step)[:, None], nodes[:, 1:]], 1)
            preds_c = torch.cat([preds[:, :1], m_t[:, None], preds[:, 1:]], 1)
            x_t = ratio * xi + a * _combine(nodes_c, k + 1, step, preds_c)
            scale = atol + rtol * torch.maximum(xi.abs(), x_t.abs())
            err = ((x_t - x_pred) / scale).square().mean(1).sqrt().to(torch.float64)
            factor = self.safety * err.clamp_min(1e-10) ** (-1.0 / (k + 1))
            ok = err <= self.reject_above
            # a rejected step is retried shorter, whatever the options (see MAX_RETRY_FACTOR)
            h[i] = step * torch.where(ok, factor.clamp(self.min_factor, self.max_factor),
                                      factor.clamp(self.min_factor, MAX_RETRY_FACTOR))
            nfe[i] += 1
            accepted[i] += ok.long()
            rejected[i] += (~ok).long()
            x[i] = torch.where(ok[:, None], x_t, xi)
            m[i] = torch.where(ok[:, None], m_t, mi)
            hist_lam[i] = torch.where(ok[:, None], torch.cat([lam_s[:, None], hist_lam[i, :-1]], 1), hist_lam[i])
            hist_m[i] = torch.where(ok[:, None, None], torch.cat([mi[:, None], hist_m[i, :-1]], 1), hist_m[i])
            n_hist[i] = torch.where(ok, (n_hist[i] + 1).clamp(max=_HISTORY), n_hist[i])
            lam[i] = torch.where(ok, lam_t.to(**f64), lam_s)
            sigma[i] = torch.where(ok, sig_t, sig_s)
            running = i[~(ok & last)]
            if len(running) == 0:  # the one host read per step: which samples still run
                stats = {"nfe_per_sample": nfe, "nfe_mean": float(nfe.double().mean()), "nfe_max": int(nfe.max()),
                         "steps": accepted, "rejected_steps": rejected}
                return x.reshape(shape), stats
        raise RuntimeError(
            f"dpmpp_4m_pc_adaptive_per_sample took max_steps={self.max_steps} steps (accepted and rejected) with "
            f"{len(running)} of {b} samples short of t_min; raise options={{'max_steps': ...}} or loosen rtol/atol."
        )


register(
    Method(
        name="dpmpp_4m_pc_adaptive_per_sample",
        kinds=("ode",),
        backend="native",
        solver=PerSampleExponentialPC,
        summary="dpmpp_4m_pc_adaptive with every sample on its own log-SNR steps (batch-invariant)",
        nfe_per_step=1,
        adaptive=True,
        options=AdaptiveExponentialPC.options,
    )
)
