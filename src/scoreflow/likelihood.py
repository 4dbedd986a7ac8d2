r"""Exact likelihoods by the instantaneous change of variables along the probability-flow ODE.

.. math:: \log p_{t_{min}}(x) = \log p_T(x_T) + \int_{t_{min}}^{T} \nabla\cdot F(x_t, t)\,dt,
          \qquad F = f(t)x - \tfrac12 g(t)^2 s(x, t),

solved for the augmented state :math:`(x_t, \int \nabla\cdot F)` with torchdiffeq.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import (
    check_batch,
    check_bool,
    check_choice,
    check_generator,
    check_int,
    check_per_sample,
    resolve_t_min,
)
from .bits import bits_per_dim
from .dynamics.augmented import AugmentedProbabilityFlowODE, DifferenceSteps
from .dynamics.counting import CountedScore, ScoreFn
from .dynamics.divergence import PROBES, draw_probes
from .errors import NonFiniteError
from .methods import get_method, resolve_stepping
from .parameterizations import check_native_at_pure_noise
from .sde import ForwardSDE, check_sde

__all__ = ["log_likelihood", "LikelihoodResult", "TRACES"]

#: Ways to compute the divergence: exactly (D VJPs per evaluation), by Hutchinson's estimator (P VJPs), or by
#: Hutchinson's estimator with :math:`v^\top J v` from central differences (2P forward passes, no VJP).
TRACES = ("exact", "hutchinson", "hutchinson_fd")


@dataclass
class LikelihoodResult:
    r"""Per-sample log-likelihoods and the statistics of the solve.

    Attributes:
        log_prob: :math:`\log p_{t_{min}}(x)` in nats, shape ``(B,)`` (the mean over probes for Hutchinson).
        prior_log_prob: :math:`\log p_T(x_T)` at the end of the flow, shape ``(B,)``.
        delta_log_prob: :math:`\int_{t_{min}}^T \nabla\cdot F\,dt`, shape ``(B,)``; ``log_prob = prior_log_prob + delta_log_prob``.
        nfe: score evaluations of the forward solve (the one validation call included; the
            evaluations of a later backward pass, through the solver or the adjoint, are not).
        nfe_vjp: vector-Jacobian products through the score taken for the trace (D or P per evaluation; 0 with
            ``trace="hutchinson_fd"``, whose differences are counted in ``nfe``).
        std_error: for Hutchinson with ``n_probes > 1``, the per-sample standard error of ``log_prob``
            across probes (sample std / sqrt(P)), else ``None``.
        latent: the end state :math:`x_T`, shape ``(B, *D)``.
    """

    log_prob: torch.Tensor
    prior_log_prob: torch.Tensor
    delta_log_prob: torch.Tensor
    nfe: int
    nfe_vjp: int
    std_error: torch.Tensor | None
    latent: torch.Tensor

    @property
    def bpd(self) -> torch.Tensor:
        r"""Continuous bits per dimension :math:`-\log p(x)/(D \ln 2)` in the units of x (no discretization offset)."""
        return bits_per_dim(self.log_prob, self.latent.shape[1:], n_bins=None)

    def bits_per_dim(self, n_bins: int = 256, data_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Bits per dimension of dequantized data with ``n_bins`` levels scaled to ``data_range`` (see :func:`bits_per_dim`)."""
        return bits_per_dim(self.log_prob, self.latent.shape[1:], n_bins=n_bins, data_range=data_range)


def log_likelihood(
    score: ScoreFn,
    sde: ForwardSDE,
    x: torch.Tensor,
    *,
    trace: str = "exact",
    probe: str | None = None,
    n_probes: int = 1,
    method: str = "dopri5",
    rtol: float | None = None,
    atol: float | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    schedule: str | torch.Tensor | None = None,
    t_min: float | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    adjoint: bool = False,
    chunk_size: int | None = None,
    options: dict[str, Any] | None = None,
) -> LikelihoodResult:
    r"""Log-likelihood :math:`\log p_{t_{min}}(x)` by integrating the probability-flow ODE from ``t_min`` to T.

    The augmented state :math:`(x_t, \Delta_t)`, :math:`\dot\Delta = \nabla\cdot F`, is solved with
    torchdiffeq and :math:`\log p_{t_{min}}(x) = \log p_T(x_T) + \Delta_T`.  The result is differentiable
    in the score model's parameters (and in x): by backpropagating through the solver, or with
    ``adjoint=True`` by torchdiffeq's adjoint method (the score must then be an ``nn.Module`` for its
    parameters to receive gradients).  Run under ``torch.no_grad()`` when only values are needed.

    Args:
        score: score model ``score(x, t)``, x of shape ``(B, *D)``, t of shape ``(B,)``; must act on
            each sample independently (the trace uses one VJP per cotangent for the whole batch).
        sde: the forward SDE the score belongs to.
        x: data at ``t_min``, shape ``(B, *D)``.
        trace: ``"exact"`` (D VJPs per evaluation, chunked), ``"hutchinson"`` (``n_probes`` VJPs) or
            ``"hutchinson_fd"``: Hutchinson's :math:`v^\top J v` by central differences of the model at
            :math:`x \pm \delta v`, :math:`\delta = \epsilon^{1/3}\sigma(t)` (:math:`\epsilon`: the dtype's machine epsilon),
            ``2 n_probes`` forward passes per evaluation (counted in ``nfe``), no backward pass and no graph; bias
            :math:`O(\epsilon^{2/3})` relative (about 4e-11 in float64, 2e-5 in float32), not differentiable in the
            model's parameters, and ``t_min`` must have :math:`\sigma > 0`.
        probe: Hutchinson probe distribution, ``"rademacher"`` (the default) or ``"gaussian"``; one set of probes
            is drawn per solve and held fixed through it.
        n_probes: Hutchinson probes per sample (both Hutchinson traces); with more than one, ``std_error`` is reported.
        method: a ``"likelihood"`` method (``scoreflow.list_methods("likelihood")``): torchdiffeq's adaptive
            methods (``rtol``/``atol``) or fixed-grid ones (``steps`` or ``step_size``), or the native
            ``"expint_pc_adaptive"`` (``rtol``/``atol``) and ``"expint_pc"`` (``steps``).
        rtol, atol: tolerances of adaptive methods, for the state and the log-density integral alike (default 1e-5).
        steps: number of steps of a fixed-grid method (uniform in t; for ``"expint_pc"``
            ``"noise_fraction"``, uniform in :math:`(\sigma/(\alpha + \sigma))^{3/5}`; unless ``schedule`` says
            otherwise).
        step_size: instead of ``steps``, the step length of a fixed-grid method.
        schedule: where the ``steps`` go (a name from ``scoreflow.SCHEDULES``: ``"t"``, ``"log_snr"``, ``"karras"``,
            ``"log_snr_capped"``, ``"shift"``, ``"noise_fraction"``), or the grid
            itself, an increasing 1-D tensor of times from ``t_min`` to T.
        t_min: the start time (default ``sde.t_min``; it may be 0 on a flow path with a velocity model).
        prior_log_prob: ``x_T -> (B,)`` log-density at T; default ``sde.prior_log_prob``.  Pass the
            exact :math:`\log p_T` of an analytic law to separate solver error from prior mismatch.
        generator: seeds the Hutchinson probes.
        adjoint: use ``torchdiffeq.odeint_adjoint`` (memory constant in the number of steps); the score must be an
            ``nn.Module``.
        chunk_size: basis vectors per vmapped VJP of the exact trace (default bounds memory; see
            :func:`scoreflow.exact_divergence`).
        options: the method's own options (e.g. ``{"max_num_steps": 10_000}`` for torchdiffeq's adaptive methods).

    Returns:
        A :class:`LikelihoodResult`.

    Raises:
        ValueError: for a score or noise model on a process that reaches pure noise at T (see
            :func:`scoreflow.sample_ode`), an unknown trace, probe or method (the message lists the valid ones; raised before
            any score evaluation), a malformed ``x``, ``t_min`` outside ``(0, T)``, missing/superfluous
            ``steps``/``step_size``/``rtol``/``atol``, ``probe`` or ``n_probes`` with the exact trace, ``chunk_size`` with a
            Hutchinson trace, ``trace="hutchinson_fd"``
            with ``adjoint=True`` or an ``x`` that requires grad (outside ``torch.no_grad()``), or a
            ``prior_log_prob`` that does not return shape ``(B,)``.
        TypeError: ``adjoint=True`` with a score that is not an ``nn.Module``; if the score returns the wrong dtype,
            or an argument has the wrong type.
        NonFiniteError: if the score or the divergence becomes NaN/inf in the solve; the message names the time
            (found when the solve ends; an adjoint's backward pass is not watched); or if the prior's log-density at
            the end state is (named so, at T, with the prior or the end state to blame).
        RuntimeError: if an adaptive method exceeds its ``max_num_steps``.
    """
    fn = "log_likelihood"
    check_sde(fn, sde)
    check_native_at_pure_noise(fn, score, sde)
    check_choice(fn, "trace", trace, TRACES)
    if probe is not None:
        check_choice(fn, "probe", probe, PROBES)
    spec = get_method("likelihood", method, caller=fn)
    solver = spec.build(fn, options)
    check_int(fn, "n_probes", n_probes)
    if trace == "exact" and n_probes != 1:
        raise ValueError(f"{fn}: argument 'n_probes' applies to the Hutchinson traces, got n_probes={n_probes} with trace='exact'.")
    if trace == "exact" and probe is not None:  # as n_probes: a probe asked for must not be silently dropped
        raise ValueError(f"{fn}: argument 'probe' applies to the Hutchinson traces, got probe={probe!r} with trace='exact' "
                         "(which takes no probes). Fix: omit probe, or trace='hutchinson'.")
    check_generator(fn, generator, x)
    check_bool(fn, "adjoint", adjoint)  # adjoint="no" would read as true
    if chunk_size is not None:
        check_int(fn, "chunk_size", chunk_size)
        if trace != "exact":  # the Hutchinson traces take one VJP or one difference per probe: nothing to chunk
            raise ValueError(f"{fn}: argument 'chunk_size' applies to the exact trace, got chunk_size={chunk_size} "
                             f"with trace={trace!r}. Fix: omit chunk_size, or trace='exact'.")
    if prior_log_prob is not None and not callable(prior_log_prob):
        raise TypeError(f"{fn}: argument 'prior_log_prob' expected a callable x_T -> (B,) log-densities or None, got {type(prior_log_prob).__name__}.")
    t_min = resolve_t_min(fn, sde, t_min)
    check_batch(fn, "x", x, state=True)
    difference = _difference_steps(fn, sde, t_min, adjoint, x) if trace == "hutchinson_fd" else None
    native = spec.backend == "native"
    if native:  # before the grid: a log-SNR grid cannot start at +inf either
        _check_native_start(method, sde, t_min)
    stepping = resolve_stepping(
        fn, spec, sde, x, start=t_min, end=sde.T, steps=steps, step_size=step_size, schedule=schedule, rtol=rtol, atol=atol
    )

    if native and adjoint:
        raise ValueError(
            f"{fn}: argument 'adjoint' applies to torchdiffeq's methods, got adjoint=True with the native method "
            f"{method!r}. Fix: adjoint=False (gradients flow through its steps), or method='dopri5'."
        )

    if adjoint and not isinstance(score, torch.nn.Module):  # its gradients would be silently missing
        raise TypeError(
            f"{fn}: adjoint=True needs the score as a torch.nn.Module, got {type(score).__name__}: the adjoint "
            "differentiates the Module's parameters, and tensors a plain function uses get no gradient. Fix: make the "
            "score an nn.Module holding its parameters, or adjoint=False (backpropagation through the solver)."
        )
    probes = None if trace == "exact" else draw_probes(x, n_probes, probe or "rademacher", generator)
    counted = CountedScore(score, caller=fn, sde=sde)
    with counted.guard():
        if native:
            latent, delta, nfe_vjp = solver.likelihood(counted, sde, x, probes, stepping, chunk_size=chunk_size,
                                                       difference=difference)
        else:
            func = AugmentedProbabilityFlowODE(counted, sde, probes=probes, chunk_size=chunk_size, difference=difference)
            delta0 = x.new_zeros(1 if probes is None else n_probes, x.shape[0])
            xs, deltas = solver.integrate(func, (x, delta0), stepping.times, stepping, adjoint=adjoint)
            latent, delta, nfe_vjp = xs[-1], deltas[-1], func.nfe_vjp
    prior = (sde.prior_log_prob if prior_log_prob is None else prior_log_prob)(latent)
    check_per_sample(fn, "prior_log_prob", prior, x)
    _check_prior_finite(fn, sde, prior, latent, given=prior_log_prob is not None)
    std_error = delta.std(dim=0) / n_probes**0.5 if n_probes > 1 else None
    delta_mean = delta.mean(dim=0)
    return LikelihoodResult(
        log_prob=prior + delta_mean,
        prior_log_prob=prior,
        delta_log_prob=delta_mean,
        nfe=counted.nfe,
        nfe_vjp=nfe_vjp,
        std_error=std_error,
        latent=latent,
    )


def _check_prior_finite(fn: str, sde: ForwardSDE, prior: torch.Tensor, latent: torch.Tensor, *, given: bool) -> None:
    """After a solve whose model outputs were all finite, a non-finite prior (which would make every log-likelihood
    NaN) is the prior's fault or the end state's: named as such, at t = T (one host read)."""
    if bool(torch.isfinite(prior).all()):
        return
    bad = int((~torch.isfinite(prior)).nonzero()[0, 0])
    where = f"at t=T={sde.T:g} (sample {bad} of {prior.shape[0]})"
    if not bool(torch.isfinite(latent[bad]).all()):
        raise NonFiniteError(
            f"{fn}: the end state x_T became non-finite (NaN or inf) {where}, though the model's outputs were finite; "
            "the flow overflowed: check the model's scale at large noise, or use float64.", t=sde.T)
    whose = "the prior_log_prob passed" if given else f"{type(sde).__name__}.prior_log_prob"
    raise NonFiniteError(
        f"{fn}: prior_log_prob became non-finite (NaN or inf) {where} at a finite end state x_T; the solve itself was "
        f"finite. Fix: check {whose} (it must be finite wherever the flow ends).", t=sde.T)


def _check_native_start(method: str, sde: ForwardSDE, t_min: float) -> None:
    """The native methods step in the log-SNR, which must be finite at the start ``t_min``."""
    if float(sde.log_snr(torch.tensor(t_min, dtype=torch.float64))) == math.inf:
        raise ValueError(
            f"log_likelihood: the native method {method!r} steps in the log-SNR, which is +inf at t_min=0. Fix: t_min > 0, "
            "or torchdiffeq's methods in t (method='dopri5') to start at t = 0."
        )


def _difference_steps(fn: str, sde: ForwardSDE, t_min: float, adjoint: bool, x: torch.Tensor) -> DifferenceSteps:
    """The steps of ``trace="hutchinson_fd"``'s differences, from x at ``t_min``; it needs a noise level there (its
    steps vanish with it), no adjoint and no gradient in x (its differences carry no graph: one in x would come from
    the steps' identity part only)."""
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{fn}: argument 'x' requires grad, but trace='hutchinson_fd' is not differentiable (its central differences "
            "carry no graph). Fix: trace='hutchinson' to differentiate, or run under torch.no_grad() for values."
        )
    if adjoint:
        raise ValueError(
            f"{fn}: argument 'adjoint' applies to the differentiable traces, got adjoint=True with trace='hutchinson_fd' "
            "(its central differences are not differentiated). Fix: trace='hutchinson' to train."
        )
    alpha, sigma = (float(c) for c in sde.marginal(torch.tensor(t_min, dtype=torch.float64)))
    if sigma <= 0.0:
        raise ValueError(
            f"{fn}: trace='hutchinson_fd' takes steps that vanish with sigma(t), which is 0 at t_min={t_min:g}. "
            "Fix: t_min > 0, or trace='hutchinson'."
        )
    return DifferenceSteps(x, alpha, sigma)
