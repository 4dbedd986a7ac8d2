r"""The error-controlled native likelihood solver: :mod:`~scoreflow.solvers.likelihood`'s steps, each sized from the
last one's error estimate.

The predictor and the corrector differ by about the predictor's local error (Milne's device), in the state and in the
log-density change alike (the predictor's quadrature takes its own four points), so the estimate costs no evaluation:

.. math:: e = \max\Big(\frac{\|x_t - \tilde x_t\|_{rms}}{\mathrm{atol} + \mathrm{rtol}\,\|x_t\|_{rms}},\;
          \frac{\|\Delta_t - \tilde\Delta_t\|_{rms}}{\mathrm{atol} + \mathrm{rtol}\,\|\Delta_t\|_{rms}}\Big)

over the whole batch: the relative tolerance is taken of each part's size as a whole, not element by element as
torchdiffeq's norm does, so a step costs four reductions and no elementwise scale.  With it, and the second step's
growth bounded by the first's error alone, the evaluations to reach a solver error (interpolated over a tolerance
sweep; 1e-2, 1e-3, 1e-4 nats on thirteen 16-D mixtures under VP, 3e-2 to 1e-3 on ``mixture16d`` under rectified
flow) were 1 % fewer in total than with the elementwise norm, per problem and error from 12 % fewer to 4 % more.

Per step the loop does the least work around the model: a node's coefficients (its time, :math:`\alpha`,
:math:`\sigma` and the affine maps from the native prediction to :math:`\hat x_0`, :math:`\hat\varepsilon`) are
computed in float64 on the host from the log-SNR the controller chose (one read of a CPU tensor, no device
synchronisation); the predictor's and the corrector's weights are Python floats computed in one pass
(:func:`~scoreflow.solvers.likelihood.step_weights`), laid out over a ring (:class:`_Ring`: the state and
log-density change the step starts from and the last five evaluations' states, native predictions and divergences,
as rows of two matrices) and written with the node's time into one table (:class:`_Table`: in place, through a
NumPy view of a host tensor, while no graph is recorded) sent to the device in one copy, so that the predictor is one
matrix product, the corrector with its difference from the predictor a second, the log-density change (with and
without its constant part) with its difference a third; the affine parts (:math:`\hat x_0 = a x + b p`,
:math:`\nabla\cdot\hat x_0 = aD + b\,\nabla\cdot p`) are folded into those weights and a running constant, and so are
the factors :math:`1/(2P)` and :math:`1/(2\delta)` of central differences, whose sums are written into the ring's rows
as they are reduced.  The four sizes are then two row norms, written into one vector.  The one read of the state's
device per step is the error norm, which also stops the solve at the first non-finite value (a NaN or inf anywhere
makes the norm NaN; the model's outputs are therefore not recorded one by one, see
:meth:`~scoreflow.dynamics.counting.FiniteWatch.paused`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..dynamics.augmented import DifferenceSteps
from ..dynamics.counting import CountedScore, FiniteWatch
from ..errors import NonFiniteError
from ..methods import Tolerances
from ..parameterizations import affine_map_values
from ..sde import ForwardSDE
from .adaptive import step_control_options, step_factor
from .likelihood import POINTS, LikelihoodPC, _Evaluator, register_likelihood, step_weights

__all__ = ["AdaptiveLikelihoodPC"]


def _node(sde: ForwardSDE, prediction: str, factors: Callable[[float, float], tuple[float, float]], *,
          t: torch.Tensor | None = None, lam: float | None = None) -> list[float]:
    r"""``[t, alpha, sigma, lambda, a_x0, b_x0 f, a_eps, b_eps f, b_x0 g]`` of the node at time ``t`` or log-SNR ``lam``:
    the affine maps :math:`\hat x_0 = a_{x_0} x + b_{x_0} p`, :math:`\hat\varepsilon = a_\varepsilon x + b_\varepsilon p`,
    with the factors ``f, g = factors(alpha, sigma)`` of the evaluator's rows (:meth:`_Evaluator.factors`) folded into
    the coefficients of p and :math:`\nabla\cdot p`; computed in float64 on the CPU (one read of a host tensor; the
    affine maps in plain arithmetic)."""
    if t is None:
        t = sde.t_from_log_snr(torch.scalar_tensor(lam, dtype=torch.float64))
    else:
        t = t.detach().to(device="cpu", dtype=torch.float64)
    columns = [t, *sde.marginal(t)]
    if prediction == "flow_velocity":
        columns += sde.marginal_derivatives(t)
    t, alpha, sigma, *derivatives = torch.stack(columns).tolist()
    if lam is None:  # +inf at the data end (sigma = 0), -inf at pure noise (alpha = 0)
        lam = math.inf if sigma == 0 else -math.inf if alpha == 0 else math.log(alpha) - math.log(sigma)
    if prediction == "score":  # the classic forms x0 = (x + sigma^2 s) / alpha, eps = -sigma s (as Nodes.affine)
        a_x0, b_x0, a_eps, b_eps = 1.0 / alpha, sigma * sigma / alpha, 0.0, -sigma
    else:
        a_x0, b_x0, a_eps, b_eps = affine_map_values(prediction, alpha, sigma, *derivatives)
    f, g = factors(alpha, sigma)
    return [t, alpha, sigma, lam, a_x0, b_x0 * f, a_eps, b_eps * f, b_x0 * g]


class _Ring:
    r"""The solver's state and its last ``size`` evaluations as the rows of two matrices: ``z`` (``(1 + 2 size, N)``)
    holds the state :math:`x_s` the next step starts from, then in fixed slots the states :math:`x_j` the model was
    evaluated at, then its native predictions :math:`p_j`; ``d`` (``(2 + size, PB)``) holds the log-density change
    :math:`\Delta_s` (without its constant part, see the solver), a row of ones, then the divergences
    :math:`\nabla\cdot p_j` (both as the evaluator gives them: divided by its factors, see :func:`_node`).  A step's
    combinations :math:`r x_s + \sum_j w_j(a_j x_j + b_j p_j)` and :math:`\Delta_s + \kappa + \sum_j q_j\,\nabla\cdot
    p_j` are then one matrix product each with rows of weights (zero at the slots not used), however many points a
    step takes, and as many rows of them as wanted.

    :meth:`slot` gives a slot's rows of :math:`(p_j, \nabla\cdot p_j)` shaped as the evaluations, for the evaluator to
    write into (central differences); :meth:`store` copies the values not already there.  The rows are written
    in place unless a value carries a graph (a log-likelihood being differentiated): then each write copies the
    matrices, so that the products recorded for the backward pass keep their operands.
    """

    __slots__ = ("size", "z", "d", "_rows")

    def __init__(self, size: int, x: torch.Tensor, div_shape: tuple[int, int]) -> None:
        self.size = size
        self.z = x.new_zeros(1 + 2 * size, x.numel())
        self.d = x.new_zeros(2 + size, math.prod(div_shape))
        self.d[1] = 1.0
        self._views(x.shape, div_shape)
        self._rows[0].copy_(x.reshape(1, -1))

    def _views(self, shape: torch.Size, div_shape: torch.Size) -> None:
        """Each row of the matrices as a view: the states' ``(1, N)``, the predictions' and divergences' shaped as
        the evaluations."""
        z, d, n = self.z, self.d, self.size
        p, div = z[1 + n:].view(n, *shape), d[2:].view(n, *div_shape)
        self._rows = (z[:1], d[:1], [z[j:j + 1] for j in range(1, 1 + n)], [p[j] for j in range(n)],
                      [div[j] for j in range(n)])

    def slot(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot ``slot``'s rows of the prediction and the divergence, to be written into."""
        return self._rows[3][slot], self._rows[4][slot]

    def store(self, slot: int, x: torch.Tensor, p: torch.Tensor, div: torch.Tensor) -> None:
        """Write the evaluation ``(x, p, div)`` (a ``(1, N)`` row, and values shaped as the evaluations, or the
        ``slot``'s own rows) into ``slot``."""
        self._writable(x, p, div)
        _, _, xs, ps, divs = self._rows
        xs[slot].copy_(x)
        if p is not ps[slot]:
            ps[slot].copy_(p)
        if div is not divs[slot]:
            divs[slot].copy_(div)

    def accept(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        r"""Write the state :math:`x_s` and log-density change :math:`\Delta_s` (``(1, N)`` and ``(1, PB)`` rows) the
        next step starts from."""
        self._writable(x, delta)
        self._rows[0].copy_(x)
        self._rows[1].copy_(delta)

    def _writable(self, *values: torch.Tensor) -> None:
        if self.z.requires_grad or self.d.requires_grad or any(v.requires_grad for v in values):
            self.z, self.d = self.z.clone(), self.d.clone()
            self._views(self._rows[3][0].shape, self._rows[4][0].shape)


class _Table:
    r"""A step's rows of weights over the ring (:meth:`AdaptiveLikelihoodPC._rows`) and its node's time, laid out
    as one tensor on the state's device and read through views made once: ``predictor`` (``(1, W_z)``),
    ``corrector`` (``(2, W_z)``: the corrector and its difference from the predictor), ``quadrature``
    (``(3, W_d)``) and ``t``.  :meth:`write` fills it from Python floats through a NumPy view of a host tensor (on
    the CPU the table itself): about 1 µs, where a tensor made from the list and its four slices and views took
    about 12 µs (54 floats, float32, one CPU thread).  It also holds the vector the error norm's sizes are written
    into (:meth:`norms`).

    Written in place only while no product with it can be recorded for a backward pass: once the ring carries a
    graph (a log-likelihood being differentiated), each write makes a new table, so that the products recorded
    keep their operands (the table of the step at which the graph began may be recorded; it is not written again).
    """

    __slots__ = ("_host", "_values", "_device", "predictor", "corrector", "quadrature", "t", "_norms", "_norm_views")

    def __init__(self, width_z: int, width_d: int, like: torch.Tensor) -> None:
        self._device = like.new_empty(3 * width_z + 3 * width_d + 1)
        self._norms = like.new_empty(5)
        self._norm_views = (self._norms[:2], self._norms[2:])
        self._host = self._device if self._device.device.type == "cpu" else self._device.cpu()
        self._values = self._host.numpy()
        self._views(self._device, width_z, width_d)

    def _views(self, table: torch.Tensor, width_z: int, width_d: int) -> None:
        self.predictor = table[:width_z].view(1, width_z)
        self.corrector = table[width_z:3 * width_z].view(2, width_z)
        self.quadrature = table[3 * width_z:-1].view(3, width_d)
        self.t = table[-1]

    def write(self, rows: Sequence[float], t: float, graph: bool) -> None:
        """Fill the table with ``rows`` and the time ``t`` (a new table if ``graph``: the ring carries a graph)."""
        width_z, width_d = self.predictor.shape[1], self.quadrature.shape[1]
        if graph:
            self._views(torch.tensor([*rows, t], dtype=self._device.dtype, device=self._device.device), width_z, width_d)
            return
        values = self._values
        values[:-1] = rows
        values[-1] = t
        if self._host is not self._device:
            self._device.copy_(self._host)

    def norms(self, x_new: torch.Tensor, d_new: torch.Tensor) -> list[float]:
        """The 2-norms of the rows of the products by :attr:`corrector` and :attr:`quadrature` (two and three), read
        in one copy to the host (without a graph: the step control is not differentiated).  All three rows of the
        latter: one reduction of a row more, where a slice and a concatenation cost more than it."""
        if x_new.requires_grad or d_new.requires_grad:
            return self.norms(x_new.detach(), d_new.detach())
        of_x, of_d = self._norm_views
        torch.linalg.vector_norm(x_new, dim=1, out=of_x)
        torch.linalg.vector_norm(d_new, dim=1, out=of_d)
        return self._norms.tolist()


class AdaptiveLikelihoodPC:
    r"""The error-controlled solver (see the module docstring).

    A step with :math:`e \le` ``reject_above`` is accepted; either way the next step is the step times
    :math:`\mathrm{clip}(\mathrm{safety}\,e^{-1/(p+1)}, \tfrac15, \mathrm{max\_factor})` for a predictor through p points
    (``first_max_factor`` = 100 in place of ``max_factor`` after the first step, whose length ``h_init`` is a guess),
    at most :data:`~scoreflow.solvers.adaptive.MAX_RETRY_FACTOR` after a rejection.
    Steps are measured in the variable they are taken in (:math:`\bar\sigma` or r), so the last one lands on
    pure noise (r = 0) where a flow path reaches it.

    Args (checked by the method's record): ``h_init`` (first step in log-SNR), ``safety``, ``max_factor`` (5: over
    fourteen 16-D mixtures, thirteen under VP and one under rectified flow, it needed 5 % fewer evaluations than 2
    to reach 1e-3 and 1e-4 nats in total, per problem from 14 % more to 19 % fewer), ``reject_above``,
    ``max_steps``, ``switch`` (see :class:`~scoreflow.solvers.likelihood.LikelihoodPC`).
    """

    options = {**step_control_options(h_init=0.5, max_factor=5.0), **LikelihoodPC.options}
    min_factor = 0.2
    first_max_factor = 100.0

    def __init__(self, *, h_init: float = 0.5, safety: float = 0.8, max_factor: float = 5.0, reject_above: float = 2.0,
                 max_steps: int = 10_000, switch: float = 0.0) -> None:
        self.h_init, self.safety, self.max_factor, self.reject_above = h_init, safety, max_factor, reject_above
        self.max_steps, self.switch = max_steps, switch

    def likelihood(self, score: CountedScore, sde: ForwardSDE, x: torch.Tensor, probes: torch.Tensor | None,
                   stepping: Tolerances, *, chunk_size: int | None = None,
                   difference: DifferenceSteps | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Integrate from ``x`` at ``stepping.times[0]`` (``t_min``) to ``stepping.times[-1]`` (T) to the tolerances.
        A solve from t = 0 (log-SNR +inf) is refused by the front-end.

        Returns:
            as :meth:`~scoreflow.solvers.likelihood.LikelihoodPC.likelihood`.

        Raises:
            NonFiniteError: at the first step whose error norm is not finite, naming the time of the first
                non-finite value.
            RuntimeError: after ``max_steps`` accepted and rejected steps.
        """
        evaluate = _Evaluator(score, probes, chunk_size, x, difference=difference)
        first, end = (_node(sde, score.prediction, evaluate.factors, t=stepping.times[i]) for i in (0, -1))
        ring = _Ring(POINTS + 1, x, evaluate.divergence_shape)
        # recorded: a non-finite value here is named at t_min
        p, div = evaluate(x, stepping.times[0], first[1], first[2], sums=ring.slot(0))
        ring.store(0, x.reshape(1, -1), p, div)
        with score.finite.paused():  # every later value enters the error norm read at each step
            return self._solve(score, sde, x, evaluate, ring, stepping, first, end)

    def _solve(self, score: CountedScore, sde: ForwardSDE, x: torch.Tensor, evaluate: _Evaluator, ring: _Ring,
               stepping: Tolerances, first: list[float], end: list[float]) -> tuple[torch.Tensor, torch.Tensor, int]:
        rtol, atol, dim = stepping.rtol, stepping.atol, x[0].numel()
        nodes = [first]  # per node: t, alpha, sigma, lambda and the coefficients of its rows (see _node)
        lam, alpha, sigma = [first[3]], [first[1]], [first[2]]
        slots = ring.size
        history = [(0, 0)]  # (node, slot) of the last POINTS evaluations, newest first
        # the log-density change is ring.d[0] + offset: the divergence's affine part D * a_x0 is summed in floats
        offset = 0.0
        div_shape = evaluate.divergence_shape
        floor_x, floor_d = atol * math.sqrt(x.numel()), atol * math.sqrt(math.prod(div_shape))  # atol in the 2-norm
        t_end, shape = stepping.times[-1], x.shape
        width_z, width_d = ring.z.shape[0], ring.d.shape[0]
        table = _Table(width_z, width_d, x)
        step = None  # the next step's length in the variable of the last step (None: h_init in log-SNR)
        for _ in range(self.max_steps):
            s = history[0][0]
            lam_t, land = self._next_log_snr(lam[s], end[3], step)
            node = end if land else _node(sde, score.prediction, evaluate.factors, lam=lam_t)
            nodes.append(node)
            lam.append(node[3])
            alpha.append(node[1])
            sigma.append(node[2])
            k = len(nodes) - 1
            new = (k, (history[0][1] + 1) % slots)  # the slots in use are the POINTS before it: the one after is free
            predictor, corrector = history[:POINTS], [history[0], new, *history[1:POINTS]]
            noise, ratio, (wp, qp, cp), (wc, q, c) = step_weights(lam, alpha, sigma, [j for j, _ in predictor], k,
                                                                   self.switch)
            # one host-to-device copy per step: the rows of weights over the ring's rows, and the node's time
            rows, increment = self._rows(nodes, predictor, corrector, noise, ratio, wp, qp, cp, wc, q, c, slots, dim)
            offset_new = offset + increment
            rows[3 * width_z + width_d + 1] = offset_new  # the log-density change's norm row takes the constant
            table.write(rows, node[0], ring.z.requires_grad or ring.d.requires_grad)
            x_pred = torch.mm(table.predictor, ring.z)
            # (the time a copy: the model may keep it, the table is written again)
            p, div = evaluate(x_pred.view(shape), t_end if land else table.t.clone(), node[1], node[2],
                              sums=ring.slot(new[1]))
            ring.store(new[1], x_pred, p, div)
            # rows: the corrector's x_t and the corrector minus the predictor; Delta_t, Delta_t + offset and the gap
            x_new = torch.mm(table.corrector, ring.z)
            d_new = torch.mm(table.quadrature, ring.d)
            size_x, gap_x, _, size_d, gap_d = table.norms(x_new, d_new)
            err = max(gap_x / (floor_x + rtol * size_x), gap_d / (floor_d + rtol * size_d))
            if not math.isfinite(err + size_x + size_d):  # (an infinite size would make its ratio 0)
                self._stop(score, node[0], p, div)
            # the first step's length is a guess: only its error bounds how much the second may grow (as CVODE does)
            growth = self.first_max_factor if len(history) == 1 else self.max_factor
            factor = step_factor(err, len(predictor) + 1, safety=self.safety, min_factor=self.min_factor,
                                 max_factor=growth, reject_above=self.reject_above)
            done = _variable(lam[s], noise) - _variable(lam[k], noise)
            step = (noise, abs(done) * factor)
            if err > self.reject_above:
                for column in (nodes, lam, alpha, sigma):
                    column.pop()
                continue
            history.insert(0, new)
            del history[POINTS:]
            offset = offset_new
            if land:
                return x_new[0].view(shape), (d_new[0] + offset).view(div_shape), evaluate.nfe_vjp
            ring.accept(x_new[0:1], d_new[0:1])
        reached = float(sde.t_from_log_snr(torch.tensor(lam[history[0][0]], dtype=torch.float64)))
        raise RuntimeError(
            f"log_likelihood: expint_pc_adaptive took max_steps={self.max_steps} steps (accepted and rejected) and "
            f"reached t={reached:.6g} of T={float(t_end):.6g}; raise options={{'max_steps': ...}} or loosen rtol/atol."
        )

    @staticmethod
    def _rows(nodes: Sequence[Sequence[float]], predictor: Sequence[tuple[int, int]],
              corrector: Sequence[tuple[int, int]], noise: bool, ratio: float, wp: Sequence[float],
              qp: Sequence[float], cp: float, wc: Sequence[float], q: Sequence[float], c: float, slots: int,
              dim: int) -> tuple[list[float], float]:
        r"""A step's weights over the ring's rows (:class:`_Ring`), flat: over ``z``, the predictor's
        :math:`r x_s + \sum_j w_j(a_j x_j + b_j p_j)`, the corrector's, and the corrector's minus the predictor's;
        over ``d``, the divergence quadrature :math:`\Delta_s + \sum_j q_j b_j \nabla\cdot p_j` (its part
        :math:`D\sum_j q_j a_j` and D c are constants), the same row for the norm (the caller writes the constant
        into its ones column), and the corrector's minus the predictor's with its constant; with the constant
        increment :math:`D(c + \sum_j q_j a_j)` of the log-density change.  (a, b: node j's affine maps, b with the
        evaluator's factors, as :func:`_node` gives them.)
        """
        width_z, width_d = 1 + 2 * slots, 2 + slots
        pred, corr = [0.0] * width_z, [0.0] * width_z
        pred[0] = corr[0] = ratio
        side = 6 if noise else 4  # a node's maps to the side's prediction: coefs[side], coefs[side + 1]
        for row, points, weights in ((pred, predictor, wp), (corr, corrector, wc)):
            for (j, slot), w in zip(points, weights):
                row[1 + slot], row[1 + slots + slot] = w * nodes[j][side], w * nodes[j][side + 1]
        quad, gap_quad = [0.0] * width_d, [0.0] * width_d
        quad[0] = 1.0
        gap = {j: -w for (j, _), w in zip(predictor, qp)}  # the predictor's quadrature on its own points
        affine = gap_affine = 0.0
        for (j, slot), w in zip(corrector, q):
            g = gap.get(j, 0.0) + w
            quad[2 + slot], gap_quad[2 + slot] = w * nodes[j][8], g * nodes[j][8]
            affine += w * nodes[j][4]
            gap_affine += g * nodes[j][4]
        gap_quad[1] = dim * (c - cp + gap_affine)
        rows = [*pred, *corr, *(b - a for a, b in zip(pred, corr)), *quad, *quad, *gap_quad]
        return rows, dim * (c + affine)

    @staticmethod
    def _stop(score: CountedScore, t: float, p: torch.Tensor, div: torch.Tensor) -> None:
        """Raise at a non-finite error norm: the first evaluation's record if it was non-finite (at t_min), else what
        was non-finite at the step's new node ``t`` (the norm is read every step, so that node is the first): the
        model's output ``p``, its divergence ``div``, else the state."""
        score.finite.check()
        watch = FiniteWatch()
        watch.record("score", p, t)
        watch.record("divergence", div, t)
        watch.check()
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
