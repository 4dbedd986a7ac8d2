r"""Native likelihood solvers: the probability-flow ODE by exponential Adams predictor-correctors, its divergence
integral by a quadrature on the same nodes.

With :math:`x_t = \alpha x_0 + \sigma\varepsilon`, :math:`\lambda = \log(\alpha/\sigma)`, the data and noise predictions
:math:`\hat x_0`, :math:`\hat\varepsilon` (:math:`x = \alpha\hat x_0 + \sigma\hat\varepsilon`) and
:math:`r = e^\lambda = \alpha/\sigma`, :math:`\bar\sigma = 1/r`, the probability-flow ODE is linear up to a prediction:

.. math:: \frac{d(x/\sigma)}{dr} = \hat x_0, \qquad \frac{d(x/\alpha)}{d\bar\sigma} = \hat\varepsilon,

and its divergence is :math:`\nabla\cdot F = D\,\tfrac{d\log\sigma}{dt} + \tfrac{d\lambda}{dt}\,\alpha\nabla\cdot\hat x_0
= D\,\tfrac{d\log\alpha}{dt} - \tfrac{d\lambda}{dt}\,\sigma\nabla\cdot\hat\varepsilon`, so over a step from s to t

.. math:: \Delta_{s\to t} = \int_s^t \nabla\cdot F\,dt' = D\log\frac{\sigma_t}{\sigma_s} + \int_{r_s}^{r_t}\sigma\,\nabla\cdot\hat x_0\,dr
          = D\log\frac{\alpha_t}{\alpha_s} + \int_{\bar\sigma_s}^{\bar\sigma_t}\alpha\,\nabla\cdot\hat\varepsilon\,d\bar\sigma,

with :math:`\alpha\nabla\cdot\hat\varepsilon = r\,(D - \alpha\nabla\cdot\hat x_0)`.  Each step replaces the prediction and
the divergence integrand by their polynomial through the nodes of the step (Lagrange, integrated exactly), as the
samplers' exponential integrators do: the linear part is exact, one model evaluation (a forward pass and the
vector-Jacobian products of the trace) per step, and the divergence quadrature costs nothing beyond the
evaluations the state needs.  Where the data is sharp (:math:`\lambda > 0`) the step is taken in
:math:`\bar\sigma` with the noise prediction, smooth there (:math:`\hat\varepsilon \to 0` linearly in
:math:`\bar\sigma` at the data); towards noise (:math:`\lambda \le 0`) in r with the data prediction, smooth
down to pure noise (:math:`r = 0`, where :math:`\hat x_0` is the data mean), which a flow path reaches at T.
Polynomials in :math:`\lambda` itself (DPM-Solver++'s weights) fit neither end: in the likelihood direction their
weights grow like :math:`e^{|h|}` and, measured on the 16-D mixture, they needed about 20 % more evaluations.

The predictor interpolates the predictions at the step's start and the three nodes before it (four points), the
corrector adds the prediction at the predicted end point, which the next step needs anyway; the divergence integral
takes the corrector's five points.  Both are fifth order once the history is full.  The last step is corrected too
(its evaluation gives the divergence at the end), so N steps cost N + 1 evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..dynamics.counting import CountedScore
from ..dynamics.divergence import value_and_exact_divergence, value_and_hutchinson_divergence
from ..methods import Method, Stepping, Tolerances, interval_option, register
from ..sde import ForwardSDE
from .adaptive import step_control_options
from .base import Nodes, combine, on_device
from .multistep import adams_weights

__all__ = ["LikelihoodPC", "AdaptiveLikelihoodPC", "step_weights"]

#: Interpolation points of the predictor; the corrector and the divergence quadrature take one more.
POINTS = 4


def step_weights(lam: Sequence[float], alpha: Sequence[float], sigma: Sequence[float], points: Sequence[int],
                 end: int, switch: float) -> tuple[bool, float, list[float], list[float], float]:
    r"""The coefficients of one step from node ``points[0]`` to node ``end`` through the predictions at ``points``.

    ``x_end = ratio * x_start + sum_j w_j pred_j`` and
    :math:`\Delta_{s\to t} = D\,c + \sum_j q_j\,\nabla\!\cdot\hat x_0^{(j)}`, where pred is :math:`\hat\varepsilon`
    (``noise`` True: the step is taken in :math:`\bar\sigma`, when :math:`\lambda_s >` ``switch`` and the end is not
    pure noise) or :math:`\hat x_0` (in r).

    Args:
        lam, alpha, sigma: the nodes' log-SNRs and coefficients (Python floats; :math:`\lambda = -\infty` at pure noise).
        points: node indices of the predictions, the step's start first.
        end: the node the step ends at.
        switch: the log-SNR above which steps are taken in :math:`\bar\sigma`.

    Returns:
        ``(noise, ratio, w, q, c)``.
    """
    s = points[0]
    noise = lam[s] > switch and math.isfinite(lam[end])
    sign = -1.0 if noise else 1.0
    v = [math.exp(sign * lam[j]) if math.isfinite(lam[j]) else 0.0 for j in (*points, end)]
    span = v[-1] - v[0]
    quad = adams_weights(1.0, [(vj - v[0]) / span for vj in v[:-1]])  # int_0^1 of each Lagrange polynomial
    if noise:
        r = [math.exp(lam[j]) for j in points]
        ratio = alpha[end] / alpha[s]
        w = [alpha[end] * span * qj for qj in quad]
        q = [-span * qj * rj * alpha[j] for qj, rj, j in zip(quad, r, points)]
        c = math.log(ratio) + span * sum(qj * rj for qj, rj in zip(quad, r))
    else:
        ratio = sigma[end] / sigma[s]
        w = [sigma[end] * span * qj for qj in quad]
        q = [span * qj * sigma[j] for qj, j in zip(quad, points)]
        c = math.log(ratio)
    return noise, ratio, w, q, c


class _Evaluator:
    r"""One model evaluation at a node: :math:`\hat x_0`, :math:`\hat\varepsilon` and :math:`\nabla\cdot\hat x_0`
    (exact, or per Hutchinson probe, shape ``(P, B)``), from the native prediction p and its divergence:
    :math:`\hat x_0 = a x + b p`, :math:`\nabla\cdot\hat x_0 = a D + b\,\nabla\cdot p`."""

    def __init__(self, score: CountedScore, probes: torch.Tensor | None, chunk_size: int | None, like: torch.Tensor) -> None:
        self.score, self.probes, self.chunk_size = score, probes, chunk_size
        self.dim = like[0].numel()
        self.nfe_vjp = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, coefs: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a0, b0, ae, be = coefs

        def native(y: torch.Tensor) -> torch.Tensor:
            return self.score.predict(y, t)

        if self.probes is None:
            p, div = value_and_exact_divergence(native, x, chunk_size=self.chunk_size)
            div = div[None]
            self.nfe_vjp += self.dim
        else:
            p, div = value_and_hutchinson_divergence(native, x, self.probes)
            self.nfe_vjp += self.probes.shape[0]
        d = div * b0 + a0 * self.dim
        self.score.finite.record("divergence", d, t)
        return torch.addcmul(x * a0, p, b0), torch.addcmul(x * ae, p, be), d


def _affine(nodes: Nodes) -> list[list[float]]:
    """Per node ``[a_x0, b_x0, a_eps, b_eps]``."""
    (a0, b0), (ae, be) = nodes.affine("x0"), nodes.affine("eps")
    return [list(row) for row in zip(a0, b0, ae, be)]


def _check_ends(name: str, lam: Sequence[float]) -> None:
    if lam[0] == math.inf:
        raise ValueError(
            f"log_likelihood: the native method {name!r} steps in the log-SNR, which is +inf at t_min=0. Fix: t_min > 0, "
            "or torchdiffeq's methods in t (method='dopri5') to start at t = 0."
        )


class LikelihoodPC:
    """The fixed-grid solver (see the module docstring): steps on the grid's nodes, weights planned before the loop.

    Args (checked by the method's record):
        switch: the log-SNR above which steps are taken in sigma/alpha with the noise prediction (below: in alpha/sigma
            with the data prediction).
    """

    options = {"switch": interval_option(0.0, "log-SNR above which steps use the noise prediction in sigma/alpha", low=-20.0, high=20.0)}

    def __init__(self, *, switch: float = 0.0) -> None:
        self.switch = switch

    def plan(self, nodes: Nodes, dim: int) -> dict[str, Any]:
        """Per step: the side (noise or data prediction), ratio, predictor and corrector weights, the divergence
        weights, and the constant part of the log-density change (summed: :math:`D\\sum_i c_i`)."""
        lam, alpha, sigma = nodes.lam, nodes.alpha, nodes.sigma
        plan: dict[str, Any] = {"noise": [], "ratio": [], "wp": [], "wc": [], "q": [], "terms": []}
        total = 0.0
        for i in range(len(lam) - 1):
            history = list(range(i, max(i - POINTS, -1), -1))
            noise, ratio, wp, _, _ = step_weights(lam, alpha, sigma, history, i + 1, self.switch)
            corrector = [i, i + 1, *history[1:]]
            _, _, wc, q, c = step_weights(lam, alpha, sigma, corrector, i + 1, self.switch)  # same side: same ends
            pad = [0.0] * (POINTS - len(history))
            plan["noise"].append(noise)
            plan["ratio"].append(ratio)
            plan["wp"].append(wp + pad)
            plan["wc"].append(wc + pad)
            plan["q"].append(q + pad)
            plan["terms"].append(len(history))
            total += c
        plan["constant"] = dim * total
        return plan

    def likelihood(self, score: CountedScore, sde: ForwardSDE, x: torch.Tensor, probes: torch.Tensor | None,
                   stepping: Stepping, *, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Integrate from ``x`` at ``stepping.times[0]`` (``t_min``) through the grid to T.

        Returns:
            the end state :math:`x_T`, the log-density change :math:`\\Delta` of shape ``(P, B)`` (P = 1 for the exact
            trace), and the number of vector-Jacobian products taken.

        Raises:
            ValueError: for a grid that starts at t = 0 (log-SNR +inf).
        """
        grid = stepping.times
        nodes = Nodes(sde, grid, score.prediction)
        _check_ends("expint_pc", nodes.lam)
        plan = self.plan(nodes, x[0].numel())
        coefs = on_device(_affine(nodes), x)
        ratio, wp, wc, q = (on_device(plan[k], x) for k in ("ratio", "wp", "wc", "q"))
        evaluate = _Evaluator(score, probes, chunk_size, x)
        times = grid.unbind()
        x0, eps, d = evaluate(x, times[0], coefs[0])
        history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        delta = torch.full_like(d, plan["constant"])
        for i, (noise, terms) in enumerate(zip(plan["noise"], plan["terms"])):
            history.insert(0, (x0, eps, d))
            del history[POINTS:]
            pick = 1 if noise else 0
            x_pred = combine(x, ratio[i], [(h[pick], w) for h, w in zip(history[:terms], wp[i])])
            new = evaluate(x_pred, times[i + 1], coefs[i + 1])
            points = [history[0], new, *history[1:terms]]
            x = combine(x, ratio[i], [(h[pick], w) for h, w in zip(points, wc[i])])
            delta = combine(delta, 1.0, [(h[2], w) for h, w in zip(points, q[i])])
            x0, eps, d = new
        return x, delta, evaluate.nfe_vjp


class AdaptiveLikelihoodPC:
    r"""The error-controlled solver: the steps of :class:`LikelihoodPC`, each sized from the last one's error estimate.

    The predictor and the corrector differ by about the predictor's local error (Milne's device), in the state and
    in the log-density change alike (the predictor's quadrature takes its own four points), so the estimate costs no
    evaluation:

    .. math:: e = \max\Big(\big\|\tfrac{x_t - \tilde x_t}{\mathrm{atol} + \mathrm{rtol}\max(|x_s|, |x_t|)}\big\|_{rms},\;
              \big\|\tfrac{\Delta_t - \tilde\Delta_t}{\mathrm{atol} + \mathrm{rtol}|\Delta_t|}\big\|_{rms}\Big)

    over the whole batch (as torchdiffeq's norm of the augmented state).  A step with :math:`e \le` ``reject_above``
    is accepted; either way the next step is the step times
    :math:`\mathrm{clip}(\mathrm{safety}\,e^{-1/(p+1)}, \tfrac15, \mathrm{max\_factor})` for a predictor through p points.
    Steps are measured in the variable they are taken in (:math:`\bar\sigma` or r), so the last one lands on
    pure noise (r = 0) where a flow path reaches it.  The step control reads its error norm on the host every step.

    Args (checked by the method's record): ``h_init`` (first step in log-SNR), ``safety``, ``max_factor``,
    ``reject_above``, ``max_steps``, ``switch`` (see :class:`LikelihoodPC`).
    """

    options = {**step_control_options(h_init=0.5), **LikelihoodPC.options}
    min_factor = 0.2

    def __init__(self, *, h_init: float = 0.5, safety: float = 0.8, max_factor: float = 2.0, reject_above: float = 2.0,
                 max_steps: int = 10_000, switch: float = 0.0) -> None:
        self.h_init, self.safety, self.max_factor, self.reject_above = h_init, safety, max_factor, reject_above
        self.max_steps, self.switch = max_steps, switch

    def likelihood(self, score: CountedScore, sde: ForwardSDE, x: torch.Tensor, probes: torch.Tensor | None,
                   stepping: Tolerances, *, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Integrate from ``x`` at ``stepping.times[0]`` (``t_min``) to ``stepping.times[-1]`` (T) to the tolerances.

        Returns:
            as :meth:`LikelihoodPC.likelihood`.

        Raises:
            ValueError: for a solve from t = 0.
            RuntimeError: after ``max_steps`` accepted and rejected steps.
        """
        rtol, atol, dim = stepping.rtol, stepping.atol, x[0].numel()
        ends = Nodes(sde, stepping.times[[0, -1]], score.prediction)
        _check_ends("expint_pc_adaptive", ends.lam)
        lam, alpha, sigma, coefs = [ends.lam[0]], [ends.alpha[0]], [ends.sigma[0]], [on_device(_affine(ends)[0], x)]
        lam_end, t_end = ends.lam[1], stepping.times[-1]
        evaluate = _Evaluator(score, probes, chunk_size, x)
        new = evaluate(x, stepping.times[0], coefs[0])
        history = [(0, *new)]  # (node index, x0, eps, div x0), newest first
        delta = torch.zeros_like(new[2])
        step = None  # the next step's length in the variable of the last step (None: h_init in log-SNR)
        accepted = rejected = 0
        for _ in range(self.max_steps):
            s = history[0][0]
            lam_t, land = self._next_log_snr(lam[s], lam_end, step)
            t = t_end if land else sde.t_from_log_snr(torch.tensor([lam_t], dtype=torch.float64))
            node = Nodes(sde, t.reshape(1), score.prediction)
            lam.append(lam_end if land else lam_t)
            alpha.append(node.alpha[0])
            sigma.append(node.sigma[0])
            coefs.append(on_device(_affine(node)[0], x))
            k = len(lam) - 1
            points = [h[0] for h in history[:POINTS]]
            noise, ratio, wp, qp, cp = step_weights(lam, alpha, sigma, points, k, self.switch)
            pick = 2 if noise else 1
            x_pred = combine(x, ratio, [(h[pick], w) for h, w in zip(history, wp)])
            t_dev = t_end if land else t[0].to(dtype=x.dtype, device=x.device)
            value = evaluate(x_pred, t_dev, coefs[k])
            corrector = [history[0], (k, *value), *history[1:POINTS]]
            _, _, wc, q, c = step_weights(lam, alpha, sigma, [h[0] for h in corrector], k, self.switch)
            x_new = combine(x, ratio, [(h[pick], w) for h, w in zip(corrector, wc)])
            d_pred = combine(delta, 1.0, [(h[3], w) for h, w in zip(history, qp)]) + dim * cp
            d_new = combine(delta, 1.0, [(h[3], w) for h, w in zip(corrector, q)]) + dim * c
            scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
            err_x = ((x_new - x_pred) / scale).square().mean()
            err_d = ((d_new - d_pred) / (atol + rtol * d_new.abs())).square().mean()
            err = math.sqrt(float(torch.maximum(err_x, err_d).detach()))  # the step control is not differentiated
            factor = min(self.max_factor, max(self.min_factor, self.safety * max(err, 1e-10) ** (-1.0 / (len(points) + 1))))
            done = _variable(lam[s], noise) - _variable(lam[k], noise)
            step = (noise, abs(done) * factor)
            if err > self.reject_above:
                rejected += 1
                for column in (lam, alpha, sigma, coefs):
                    column.pop()
                continue
            accepted += 1
            history.insert(0, (k, *value))
            del history[POINTS:]
            x, delta = x_new, d_new
            if land:
                return x, delta, evaluate.nfe_vjp
        reached = float(sde.t_from_log_snr(torch.tensor(lam[history[0][0]], dtype=torch.float64)))
        raise RuntimeError(
            f"log_likelihood: expint_pc_adaptive took max_steps={self.max_steps} steps (accepted and rejected) and "
            f"reached t={reached:.6g} of T={float(t_end):.6g}; raise options={{'max_steps': ...}} or loosen rtol/atol."
        )

    def _next_log_snr(self, lam_s: float, lam_end: float, step: tuple[bool, float] | None) -> tuple[float, bool]:
        """The log-SNR the next step ends at (and whether it lands on the end), from the last step's length."""
        noise = lam_s > self.switch  # (sigma_bar is infinite at pure noise: such an end is reached in r)
        if step is None:
            length = abs(_variable(lam_s, noise) - _variable(lam_s - self.h_init, noise))
        else:
            # |dr| = r^2 |d sigma_bar| where the side changes
            length = step[1] if step[0] == noise else step[1] * math.exp(2 * lam_s * (-1 if noise else 1))
        v_s, v_end = _variable(lam_s, noise), _variable(lam_end, noise)
        remaining = abs(v_end - v_s)
        if length >= 0.999 * remaining:
            return lam_end, True
        if length > 0.7 * remaining:
            length = 0.5 * remaining  # two similar steps rather than a sliver before the end
        v_t = v_s + length if noise else v_s - length
        return (-math.log(v_t) if noise else math.log(v_t)), False


def _variable(lam: float, noise: bool) -> float:
    r""":math:`\bar\sigma = e^{-\lambda}` (noise side) or :math:`r = e^{\lambda}` (0 at pure noise)."""
    if noise:
        return math.exp(-lam)
    return math.exp(lam) if math.isfinite(lam) else 0.0


def _register(name: str, solver: Callable[..., Any], summary: str, *, adaptive: bool) -> None:
    register(
        Method(
            name=name,
            kinds=("likelihood",),
            backend="native",
            solver=solver,
            summary=summary,
            order=5,
            nfe_per_step=1,
            adaptive=adaptive,
            default_schedule=None if adaptive else "log_snr",
            options=solver.options,
        )
    )


_register("expint_pc", LikelihoodPC, "exponential Adams predictor-corrector with the divergence quadrature on its nodes",
          adaptive=False)
_register("expint_pc_adaptive", AdaptiveLikelihoodPC, "expint_pc on steps chosen by its predictor-corrector difference",
          adaptive=True)
