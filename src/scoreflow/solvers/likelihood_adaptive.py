r"""The error-controlled native likelihood solver: :mod:`~scoreflow.solvers.likelihood`'s steps, each sized from the
last one's error estimate.

The predictor and the corrector differ by about the predictor's local error (Milne's device), in the state and in the
log-density change alike (the predictor's quadrature takes its own four points), so the estimate costs no evaluation:

.. math:: e = \max\Big(\big\|\tfrac{x_t - \tilde x_t}{\mathrm{atol} + \mathrm{rtol}\max(|x_s|, |x_t|)}\big\|_{rms},\;
          \big\|\tfrac{\Delta_t - \tilde\Delta_t}{\mathrm{atol} + \mathrm{rtol}|\Delta_t|}\big\|_{rms}\Big)

over the whole batch (as torchdiffeq's norm of the augmented state).

Per step the loop does the least work around the model: a node's coefficients (its time, :math:`\alpha`,
:math:`\sigma` and the affine maps from the native prediction to :math:`\hat x_0`, :math:`\hat\varepsilon`) are
computed in float64 on the host from the log-SNR the controller chose (one read of a CPU tensor, no device
synchronisation), the weights are Python floats, only the prediction of the side the step is taken on is formed,
and the affine part of the divergence (:math:`\nabla\cdot\hat x_0 = aD + b\,\nabla\cdot p`) is folded into the
quadrature's weights and a running constant.  The one read of the state's device per step is the error norm, which
also stops the solve at the first non-finite value (a NaN or inf anywhere makes the norm NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..dynamics.counting import CountedScore
from ..errors import NonFiniteError
from ..methods import Tolerances
from ..parameterizations import affine_map_values
from ..sde import ForwardSDE
from .adaptive import step_control_options
from .base import combine
from .likelihood import POINTS, LikelihoodPC, _check_ends, _Evaluator, register_likelihood, step_weights

__all__ = ["AdaptiveLikelihoodPC"]


def _node(sde: ForwardSDE, prediction: str, *, t: torch.Tensor | None = None, lam: float | None = None) -> list[float]:
    r"""``[t, alpha, sigma, lambda, a_x0, b_x0, a_eps, b_eps]`` of the node at time ``t`` or log-SNR ``lam``, as floats
    computed in float64 on the CPU (one read of a host tensor; the affine maps in plain arithmetic)."""
    if t is None:
        t = sde.t_from_log_snr(torch.tensor(lam, dtype=torch.float64))
    else:
        t = t.detach().to(device="cpu", dtype=torch.float64)
    columns = [t, *sde.marginal(t)]
    if prediction == "flow_velocity":
        columns += sde.marginal_derivatives(t)
    t, alpha, sigma, *derivatives = torch.stack(columns).tolist()
    if lam is None:  # +inf at the data end (sigma = 0), -inf at pure noise (alpha = 0)
        lam = math.inf if sigma == 0 else -math.inf if alpha == 0 else math.log(alpha) - math.log(sigma)
    if prediction == "score":  # the classic forms x0 = (x + sigma^2 s) / alpha, eps = -sigma s (as Nodes.affine)
        return [t, alpha, sigma, lam, 1.0 / alpha, sigma * sigma / alpha, 0.0, -sigma]
    return [t, alpha, sigma, lam, *affine_map_values(prediction, alpha, sigma, *derivatives)]


class _Point:
    """An evaluation: node index, the state it was taken at, the native prediction and its divergence ``(P, B)``;
    the predictions formed from them, by side, on first use."""

    __slots__ = ("k", "x", "p", "div", "_pred")

    def __init__(self, k: int, x: torch.Tensor, p: torch.Tensor, div: torch.Tensor) -> None:
        self.k, self.x, self.p, self.div, self._pred = k, x, p, div, {}

    def prediction(self, noise: bool, coefs: Sequence[float]) -> torch.Tensor:
        r""":math:`\hat\varepsilon` (``noise``) or :math:`\hat x_0`, :math:`a x + b p` with the node's maps ``coefs``."""
        pred = self._pred.get(noise)
        if pred is None:
            a, b = coefs[6:8] if noise else coefs[4:6]
            pred = self.p * b if a == 0.0 else torch.add(self.x * a, self.p, alpha=b)
            self._pred[noise] = pred
        return pred


def _rms_ratio(diff: torch.Tensor, magnitude: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """``||diff / (atol + rtol * magnitude)||_2`` (0-dim; the caller divides by sqrt(numel)); ``magnitude`` is consumed."""
    return torch.linalg.vector_norm(diff / magnitude.mul_(rtol).add_(atol))


class AdaptiveLikelihoodPC:
    r"""The error-controlled solver (see the module docstring).

    A step with :math:`e \le` ``reject_above`` is accepted; either way the next step is the step times
    :math:`\mathrm{clip}(\mathrm{safety}\,e^{-1/(p+1)}, \tfrac15, \mathrm{max\_factor})` for a predictor through p points.
    Steps are measured in the variable they are taken in (:math:`\bar\sigma` or r), so the last one lands on
    pure noise (r = 0) where a flow path reaches it.

    Args (checked by the method's record): ``h_init`` (first step in log-SNR), ``safety``, ``max_factor``,
    ``reject_above``, ``max_steps``, ``switch`` (see :class:`~scoreflow.solvers.likelihood.LikelihoodPC`).
    """

    options = {**step_control_options(h_init=0.5), **LikelihoodPC.options}
    min_factor = 0.2

    def __init__(self, *, h_init: float = 0.5, safety: float = 0.8, max_factor: float = 2.0, reject_above: float = 2.0,
                 max_steps: int = 10_000, switch: float = 0.0) -> None:
        self.h_init, self.safety, self.max_factor, self.reject_above = h_init, safety, max_factor, reject_above
        self.max_steps, self.switch = max_steps, switch

    def likelihood(self, score: CountedScore, sde: ForwardSDE, x: torch.Tensor, probes: torch.Tensor | None,
                   stepping: Tolerances, *, chunk_size: int | None = None,
                   difference: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Integrate from ``x`` at ``stepping.times[0]`` (``t_min``) to ``stepping.times[-1]`` (T) to the tolerances.

        Returns:
            as :meth:`~scoreflow.solvers.likelihood.LikelihoodPC.likelihood`.

        Raises:
            ValueError: for a solve from t = 0.
            NonFiniteError: at the first step whose error norm is not finite, naming the time of the first
                non-finite value.
            RuntimeError: after ``max_steps`` accepted and rejected steps.
        """
        rtol, atol, dim = stepping.rtol, stepping.atol, x[0].numel()
        first, end = (_node(sde, score.prediction, t=stepping.times[i]) for i in (0, -1))
        _check_ends("expint_pc_adaptive", [first[3], end[3]])
        nodes = [first]  # per node: t, alpha, sigma, lambda and the affine maps (see _node)
        lam, alpha, sigma = [first[3]], [first[1]], [first[2]]
        t_end = stepping.times[-1]
        evaluate = _Evaluator(score, probes, chunk_size, x, difference=difference)
        history = [_Point(0, x, *evaluate(x, stepping.times[0], first[2]))]  # newest first
        # the log-density change is delta + offset: the divergence's affine part D * a_x0 is summed in floats
        delta, offset = torch.zeros_like(history[0].div), 0.0
        size_x, size_d = math.sqrt(x.numel()), math.sqrt(delta.numel())
        x_abs = None
        step = None  # the next step's length in the variable of the last step (None: h_init in log-SNR)
        for _ in range(self.max_steps):
            s = history[0].k
            lam_t, land = self._next_log_snr(lam[s], end[3], step)
            node = end if land else _node(sde, score.prediction, lam=lam_t)
            nodes.append(node)
            lam.append(node[3])
            alpha.append(node[1])
            sigma.append(node[2])
            k = len(nodes) - 1
            predictor = history[:POINTS]
            noise, ratio, wp, qp, cp = step_weights(lam, alpha, sigma, [h.k for h in predictor], k, self.switch)
            x_pred = combine(x, ratio, [(h.prediction(noise, nodes[h.k]), w) for h, w in zip(predictor, wp)])
            t_dev = t_end if land else torch.tensor(node[0], dtype=x.dtype, device=x.device)
            new = _Point(k, x_pred, *evaluate(x_pred, t_dev, node[2]))
            corrector = [history[0], new, *history[1:POINTS]]
            _, _, wc, q, c = step_weights(lam, alpha, sigma, [h.k for h in corrector], k, self.switch)
            x_new = combine(x, ratio, [(h.prediction(noise, nodes[h.k]), w) for h, w in zip(corrector, wc)])
            # sum_j q_j div x0_j = D sum_j q_j a_j + sum_j q_j b_j div p_j (a_j, b_j: node j's maps to x0)
            d_new = delta
            for h, w in zip(corrector, q):
                d_new = d_new.add(h.div, alpha=w * nodes[h.k][5])
            offset_new = offset + dim * (c + sum(w * nodes[h.k][4] for h, w in zip(corrector, q)))
            # predictor minus corrector: the predictor's weights on its own points, the corrector's on its five
            gap = {h.k: -w for h, w in zip(predictor, qp)}
            for h, w in zip(corrector, q):
                gap[h.k] = gap.get(h.k, 0.0) + w
            with torch.no_grad():  # the step control is not differentiated
                d_gap = None
                for h in corrector:
                    w = gap[h.k] * nodes[h.k][5]
                    d_gap = h.div * w if d_gap is None else d_gap.add(h.div, alpha=w)
                d_gap = d_gap.add(dim * (c - cp + sum(gap[h.k] * nodes[h.k][4] for h in corrector)))
                new_abs = x_new.abs()
                x_abs = x.abs() if x_abs is None else x_abs
                err_x = _rms_ratio(x_new - x_pred, torch.maximum(x_abs, new_abs), rtol, atol)
                err_d = _rms_ratio(d_gap, (d_new + offset_new).abs(), rtol, atol)
                norms = torch.stack([err_x, err_d]).tolist()
            err = max(norms[0] / size_x, norms[1] / size_d)
            if not math.isfinite(err):
                self._stop(score, node[0])
            factor = min(self.max_factor, max(self.min_factor, self.safety * max(err, 1e-10) ** (-1.0 / (len(predictor) + 1))))
            done = _variable(lam[s], noise) - _variable(lam[k], noise)
            step = (noise, abs(done) * factor)
            if err > self.reject_above:
                for column in (nodes, lam, alpha, sigma):
                    column.pop()
                continue
            history.insert(0, new)
            del history[POINTS:]
            x, delta, offset, x_abs = x_new, d_new, offset_new, new_abs
            if land:
                return x, delta + offset, evaluate.nfe_vjp
        reached = float(sde.t_from_log_snr(torch.tensor(lam[history[0].k], dtype=torch.float64)))
        raise RuntimeError(
            f"log_likelihood: expint_pc_adaptive took max_steps={self.max_steps} steps (accepted and rejected) and "
            f"reached t={reached:.6g} of T={float(t_end):.6g}; raise options={{'max_steps': ...}} or loosen rtol/atol."
        )

    @staticmethod
    def _stop(score: CountedScore, t: float) -> None:
        """Raise at a non-finite error norm: the recorded first non-finite value if any (it names its time), else here."""
        score.finite.check()
        raise NonFiniteError(f"the likelihood's state or log-density change became non-finite (NaN or inf) at t={t:.6g}.")

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


register_likelihood("expint_pc_adaptive", AdaptiveLikelihoodPC,
                    "expint_pc on steps chosen by its predictor-corrector difference", adaptive=True)
