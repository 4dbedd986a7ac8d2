r"""Whether a measured order of convergence confirms the declared one, and why not.

A fitted slope is a measurement of the order only in the asymptotic range, where
:math:`e \approx C\,\mathrm{NFE}^{-p}`: above it the error terms of higher order or an instability
still dominate, below it the errors level off at round-off.  So the verdict on a method checks,
besides the slope itself, that

- the local slopes :math:`-\Delta\log e/\Delta\log \mathrm{NFE}` of the fitted points agree with
  each other (within twice the slack of the order), and
- trailing points where the error stopped falling within :math:`10^3\,\epsilon` of the solution's
  scale (:math:`\epsilon` the dtype's machine epsilon) are left out as a round-off plateau;

and when the answer is "no" it says which of these failed.
"""

from __future__ import annotations

import math

from .study import measured_order, order_agrees, slack

__all__ = ["judge_order", "order_record", "local_slopes", "round_off_plateau"]

#: Errors below ``ROUND_OFF * eps * max(1, scale)`` that stop falling are taken as round-off.
ROUND_OFF = 1e3


def _points(nfe, errors) -> list[tuple[float, float]]:
    return sorted((n, e) for n, e in zip(nfe, errors) if e is not None and math.isfinite(e) and e > 0)


def local_slopes(points: list[tuple[float, float]]) -> list[float]:
    """``-d log(error) / d log(NFE)`` between consecutive ``(nfe, error)`` points (equal NFE skipped)."""
    return [
        -math.log(e1 / e0) / math.log(n1 / n0) for (n0, e0), (n1, e1) in zip(points, points[1:]) if n1 != n0
    ]


def round_off_plateau(points: list[tuple[float, float]], ceiling: float) -> float:
    """The error level of a trailing round-off plateau, or 0.0 if there is none.

    Walking back from the largest NFE, a point belongs to the plateau while its error is below
    ``ceiling`` and fell by less than a local slope of 1/2 from the point before it.
    """
    level = 0.0
    for (n0, e0), (n1, e1) in reversed(list(zip(points, points[1:]))):
        if e1 > ceiling or n1 == n0 or -math.log(e1 / e0) / math.log(n1 / n0) >= 0.5:
            break
        level = max(level, e1)
    return level


def _why_not(declared, measured, kind, upper, usable, slopes, floor, points, scale) -> str:
    """Why a fit does not confirm the declared order, from the shape of the error curve."""
    (n_first, e_first), (n_last, e_last) = usable[0], usable[-1]
    errors = f"errors {e_first:.1e} at NFE {n_first:g} to {e_last:.1e} at NFE {n_last:g}"
    s = slack(declared)
    rising = slopes[-1] == max(slopes) and slopes[-1] - slopes[0] > s
    top = max(declared, upper or declared) if kind == "pathwise" else declared
    if kind != "adaptive" and measured > top + slack(top):
        if kind == "fixed" and e_first <= scale:
            return f"faster than order {declared:g}: superconvergence on this problem, or pre-asymptotic ({errors})"
        cause = "decay of an instability" if e_first > scale else "decay"
        return f"faster than any of its error terms (order <= {top:g}): pre-asymptotic {cause} ({errors})"
    if rising:
        return f"slope still rising ({slopes[0]:.2f} to {slopes[-1]:.2f}): pre-asymptotic at this NFE budget"
    if max(slopes) - min(slopes) > 2 * s:
        return (
            f"local slopes {', '.join(f'{v:.2f}' for v in slopes)} differ by more than {2 * s:.1f}: "
            "not yet asymptotic, so the fit measures no order"
        )
    if floor > 0:
        n_floor = min(n for n, e in points if e <= floor)
        return f"round-off floor reached ({floor:.1e} from NFE {n_floor:g}) before the asymptotic range"
    if e_last > 1e-2 * scale:
        return (
            f"errors still large ({e_last:.1e} at NFE {n_last:g}, {100 * e_last / scale:.0f} % of the solution's "
            "scale): pre-asymptotic at this NFE budget"
        )
    return f"slower than order {declared:g} at small errors ({errors})"


def judge_order(
    nfe,
    errors,
    declared: float | None,
    *,
    kind: str,
    scale: float,
    eps: float,
    upper: float | None = None,
    n_points: int = 4,
) -> dict:
    """Fit the order of ``errors`` against ``nfe`` and judge it against ``declared``.

    Args:
        nfe, errors: one value per solve.
        declared: the declared order, or ``None`` (then only the order is measured).
        kind: ``"fixed"``, ``"pathwise"`` or ``"adaptive"`` (see :func:`~scoreflow.bench.order_agrees`).
        scale: the size of the solution (RMS of the exact answer), for round-off and "still large" errors.
        eps: machine epsilon of the dtype the solves ran in.
        upper: for ``"pathwise"``, the largest order among the method's error terms (its drift order).
        n_points: the fit uses this many of the largest NFE above the round-off plateau.

    Returns:
        ``{"measured", "agrees", "reason", "round_off"}``: the fitted order (``None`` with fewer than 3
        usable points), the verdict (``None`` without a declared or measured order), why it is not
        "yes" (``None`` when it is) and the error level of the round-off plateau (0.0 if none).
    """
    points = _points(nfe, errors)
    floor = round_off_plateau(points, ROUND_OFF * eps * max(1.0, scale))
    measured = measured_order(nfe, errors, floor=floor, n_points=n_points)
    verdict = {"measured": measured, "agrees": None, "reason": None, "round_off": floor}
    if measured is None:
        verdict["reason"] = "fewer than 3 step counts with errors above the round-off floor"
        return verdict
    if declared is None:
        return verdict
    usable = [p for p in points if p[1] > floor][-n_points:]
    slopes = local_slopes(usable)
    s = slack(declared)
    in_range = order_agrees(declared, measured, kind=kind, upper=upper)
    steady = kind == "adaptive" or max(slopes) - min(slopes) <= 2 * s
    verdict["agrees"] = bool(in_range and steady)
    if verdict["agrees"]:
        return verdict
    verdict["reason"] = _why_not(declared, measured, kind, upper, usable, slopes, floor, points, scale)
    return verdict


def order_record(
    method: str,
    metric: str,
    kind: str,
    declared: float | None,
    rows: list[dict],
    *,
    scale: float,
    eps: float,
    upper: float | None = None,
) -> dict:
    """One entry of :attr:`Study.orders`: ``metric`` of ``rows`` against their NFE, fitted and judged by :func:`judge_order`."""
    nfe, errors = [r["nfe"] for r in rows], [r[metric] for r in rows]
    verdict = judge_order(nfe, errors, declared, kind=kind, scale=scale, eps=eps, upper=upper)
    return {
        "method": method,
        "metric": metric,
        "kind": kind,
        "declared": declared,
        "measured": verdict["measured"],
        "agrees": verdict["agrees"],
        "reason": verdict["reason"],
        "round_off": verdict["round_off"],
        "min_error": min(e for e in errors if e is not None),
        "max_nfe": max(nfe),
    }
