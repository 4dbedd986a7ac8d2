r"""Empirical convergence order of a fixed-step sampler: the log-log slope of error against step size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._checks import check_callable, check_generator, check_int, check_output, check_positive
from ..analytic import GaussianMixture
from ..metrics import fit_order, rms_error
from ..sde import ForwardSDE
from .assertions import check_law_sde
from .reference import describe_reference, reference_flow_map
from .._tensor import ScoreFn

__all__ = ["OrderFit", "empirical_order", "assert_order"]

StepSampler = Callable[[ScoreFn, ForwardSDE, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class OrderFit:
    """A convergence study: ``errors[i]`` at ``steps[i]`` uniform steps of size ``step_sizes[i]``.

    Attributes:
        order: least-squares slope of log(error) against log(step size) (:func:`~scoreflow.metrics.fit_order`).
        steps, step_sizes, errors: the ladder and the RMS error at each rung.
        reference: how the reference solution was computed.
    """

    order: float
    steps: tuple[int, ...]
    step_sizes: tuple[float, ...]
    errors: tuple[float, ...]
    reference: str

    def table(self) -> str:
        """The study as text: one line per rung with the local slope between neighbours."""
        lines = [f"    {'steps':>6} {'h':>10} {'RMS error':>11} {'local slope':>12}"]
        for i, (k, h, e) in enumerate(zip(self.steps, self.step_sizes, self.errors)):
            slope = "" if i == 0 else f"{fit_order(self.step_sizes[i - 1 : i + 1], self.errors[i - 1 : i + 1]):12.2f}"
            lines.append(f"    {k:>6} {h:>10.3e} {e:>11.3e} {slope}")
        return "\n".join(lines)


def empirical_order(
    sampler: StepSampler,
    law: GaussianMixture,
    sde: ForwardSDE,
    *,
    steps: Sequence[int] = (16, 32, 64, 128),
    n: int = 16,
    generator: torch.Generator | None = None,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> OrderFit:
    r"""Measure the order p in :math:`\text{error} \approx C h^p` of ``sampler(score, sde, x_T, steps) -> x``.

    Each rung runs the sampler from the same prior draws ``x_T`` with ``steps`` uniform steps
    (:math:`h = (T - t_{min})/\text{steps}`) and measures the RMS distance to the exact
    probability-flow map (:func:`reference_flow_map`) or to ``reference(x_T)`` if given (e.g. the
    same SDE sampler at many steps on the same Brownian path, for a strong order).

    Args:
        sampler: ``sampler(score, sde, x_T, steps) -> x`` at ``sde.t_min``.
        law, sde: the data law (its dtype sets ``x_T``'s) and forward SDE.
        steps: increasing step counts (at least 2).
        n: number of prior draws.
        generator: seeds ``x_T``.
        reference: optional ``reference(x_T) -> x`` replacing the exact flow map.

    Returns:
        An :class:`OrderFit`.

    Raises:
        ValueError: for a ladder that is not increasing or has fewer than 2 rungs, or zero errors.
        AssertionError: if the sampler returns NaN/inf.
    """
    fn = "empirical_order"
    check_callable(fn, "sampler", sampler, "sampler(score, sde, x_T, steps) -> x")
    law, sde = check_law_sde(fn, law, sde)
    if not isinstance(steps, Sequence) or isinstance(steps, str):
        raise TypeError(f"{fn}: argument 'steps' expected a sequence of increasing step counts such as (16, 32, 64), got {type(steps).__name__} {steps!r}.")
    steps = tuple(check_int(fn, "steps", k) for k in steps)
    if len(steps) < 2 or any(a >= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"{fn}: argument 'steps' expected at least 2 increasing step counts, got {list(steps)}.")
    check_int(fn, "n", n)
    check_generator(fn, generator)
    x_T = sde.prior_sample((n, *law.event_shape), generator=generator, dtype=law.means.dtype)
    if reference is None:
        ref, how = reference_flow_map(law, sde, x_T, sde.T, sde.t_min), describe_reference(law)
    else:
        ref = check_output(fn, "reference", check_callable(fn, "reference", reference, "reference(x_T) -> x")(x_T.clone()), tuple(x_T.shape))
        how = "the user's reference(x_T)"
    score = law.score(sde)
    errors = []
    for k in steps:
        x = check_output(fn, f"the sampler at steps={k}", sampler(score, sde, x_T.clone(), k), tuple(x_T.shape))
        errors.append(rms_error(x.detach(), ref))
    if min(errors) == 0.0:
        raise ValueError(f"{fn}: the sampler matches the reference exactly at some rung (errors {errors}); no order can be fitted.")
    sizes = tuple((sde.T - sde.t_min) / k for k in steps)
    return OrderFit(fit_order(sizes, errors), steps, sizes, tuple(errors), how)


def assert_order(
    sampler: StepSampler,
    law: GaussianMixture,
    sde: ForwardSDE,
    order: float,
    *,
    steps: Sequence[int] = (16, 32, 64, 128),
    tol: float | tuple[float, float] = 0.25,
    n: int = 16,
    generator: torch.Generator | None = None,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> OrderFit:
    """Assert that :func:`empirical_order` lies within ``tol`` of the declared ``order``.

    ``tol`` is a number (``|slope - order| <= tol``) or a pair ``(below, above)`` for
    ``order - below <= slope <= order + above``, e.g. when the declared order is a floor that some
    methods exceed on linear (Gaussian) problems.

    The smallest error must also lie above the round-off floor ``1e3 * eps * max(1, sqrt(tr C))`` of the
    law's dtype (C the law's covariance), else the slope measures round-off and a ``ValueError`` asks for fewer steps.

    Returns:
        The :class:`OrderFit`.

    Raises:
        AssertionError: if ``|fitted order - order| > tol``; the message shows the error table.
        ValueError: for bad arguments or a ladder that reaches round-off.
    """
    fn = "assert_order"
    order = check_positive(fn, "order", order)
    if isinstance(tol, (tuple, list)) and len(tol) != 2:
        raise ValueError(f"{fn}: argument 'tol' expected a number or a pair (below, above), got {tol!r}.")
    below, above = (tol, tol) if not isinstance(tol, (tuple, list)) else tuple(tol)
    below, above = check_positive(fn, "tol", below, allow_zero=True), check_positive(fn, "tol", above, allow_zero=True)
    fit = empirical_order(sampler, law, sde, steps=steps, n=n, generator=generator, reference=reference)
    floor = 1e3 * torch.finfo(law.means.dtype).eps * max(1.0, float(law.covariance.diagonal().sum().sqrt()))
    if fit.errors[-1] < floor:
        raise ValueError(
            f"{fn}: the error at {fit.steps[-1]} steps ({fit.errors[-1]:.2e}) is below the round-off floor {floor:.1e} of "
            f"{law.means.dtype}, so the slope would measure round-off; use fewer steps (or float64).\n{fit.table()}"
        )
    if not order - below <= fit.order <= order + above:
        raise AssertionError(
            f"{fn}: the sampler converges with order {fit.order:.3f}, declared {order:g}.\n"
            f"  measured: least-squares slope of log(RMS error) on log(h) over {len(fit.steps)} step counts = {fit.order:.3f}\n"
            f"  bound:    {order - below:g} <= slope <= {order + above:g} (declared order {order:g}, tol -{below:g}/+{above:g})\n"
            f"  error:    RMS distance over n={n} prior draws to {fit.reference}\n{fit.table()}"
        )
    return fit
