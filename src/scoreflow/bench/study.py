"""What every study returns: its rows, the fitted orders, and how orders are fitted and judged."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .._checks import check_bool, check_distinct, check_instance, check_int
from ..metrics import fit_order
from ..testing import Problem

__all__ = ["Study", "measured_order", "order_agrees", "slack", "progress_bar"]


@dataclass
class Study:
    """The result of one convergence study.

    Attributes:
        name: ``"ode"``, ``"sde"`` or ``"likelihood"``.
        problem: the reference problem, e.g. ``"gaussian2d-vp"``.
        metrics: the error columns of ``rows`` plotted against NFE; the first one's orders are headline.
        rows: one dict per method x setting (``method``, ``setting``, ``value``, ``nfe``, errors, ``seconds``).
        orders: one dict per method (and metric): declared and measured order and whether they agree.
        config: the study's parameters, for the report.
        notes: sentences the report prints under the study's table (e.g. methods that coincide).
    """

    name: str
    problem: str
    metrics: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)
    orders: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def order_of(self, method: str, metric: str | None = None) -> float | None:
        """The measured order of ``method`` for ``metric`` (default: the headline metric)."""
        metric = metric or self.metrics[0]
        for o in self.orders:
            if o["method"] == method and o["metric"] == metric:
                return o["measured"]
        raise KeyError(f"Study {self.name!r} has no order for method {method!r} and metric {metric!r}.")


def check_names(fn: str, name: str, value: object, what: str) -> list[str]:
    """Check that argument ``name`` is a non-empty sequence of distinct ``what`` names (not one string); return a list."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{fn}: argument '{name}' expected a list of {what} names, got {type(value).__name__} {value!r}.")
    if not value:
        raise ValueError(f"{fn}: argument '{name}' expected at least one {what} name, got {value!r}.")
    check_distinct(fn, name, value, what)
    return list(value)


def check_study_arguments(
    fn: str, problem: object, methods: object, *, n: object, max_nfe: object, min_steps: object, dtype: object,
    seed: object, progress: object, min_n: int = 1
) -> list[str]:
    """Check the arguments every ``run_*_study`` takes; return ``methods`` as a list (names checked by the caller).

    ``methods`` must be a non-empty sequence of distinct names (a repeated method would be solved twice and fitted
    on doubled rows), ``n >= min_n``, ``max_nfe``, ``min_steps >= 1``, ``seed >= 0``, ``dtype`` float32 or float64.
    """
    check_instance(fn, "problem", problem, Problem, 'scoreflow.testing.make_problem("gaussian2d", "vp")')
    check_names(fn, "methods", methods, "method")
    check_int(fn, "n", n, minimum=min_n)
    check_int(fn, "max_nfe", max_nfe)
    check_int(fn, "min_steps", min_steps)
    check_int(fn, "seed", seed, minimum=0)
    check_bool(fn, "progress", progress)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{fn}: argument 'dtype' expected torch.float32 or torch.float64, got {dtype!r}.")
    return list(methods)


def measured_order(nfe, errors, *, floor: float = 0.0, n_points: int = 4) -> float | None:
    r"""Empirical order :math:`-d\log(\text{error})/d\log(\text{NFE})` on the ``n_points`` largest NFE.

    Errors at or below ``floor`` (round-off or the reference's own error) or non-finite are
    dropped first; fewer than 3 usable points give ``None``.  For fixed steps NFE is
    proportional to 1/h, so this is the usual order in the step size.
    """
    pts = sorted((n, e) for n, e in zip(nfe, errors) if e is not None and math.isfinite(e) and e > floor)
    pts = pts[-n_points:]
    if len(pts) < 3 or len({n for n, _ in pts}) < 3:
        return None
    n, e = np.array(pts, dtype=float).T
    return -fit_order(n, e)


def slack(order: float) -> float:
    """The tolerance ``0.2 + 0.1 * order`` on a measured order."""
    return 0.2 + 0.1 * order


def order_agrees(
    declared: float | None, measured: float | None, *, kind: str = "fixed", upper: float | None = None
) -> bool | None:
    """Whether a measured order lies in the range the declared one allows, by the kind of method.

    With ``slack(p) = 0.2 + 0.1 p``:

    - ``"fixed"`` (fixed-step ODE methods): within ``slack(declared)`` of it;
    - ``"pathwise"`` (strong orders of SDE methods): from ``declared - slack(declared)`` up to
      ``upper + slack(upper)``, where ``upper`` (default ``declared``) is the largest order among the
      method's error terms: a strong order is a lower bound, and the drift's error term (of the
      method's deterministic order) may dominate at practical step counts, but nothing converges
      faster than all its terms;
    - ``"adaptive"``: at least ``declared - 1``, since the error-vs-NFE slope of an adaptive
      method mixes its order with its step-size control.
    """
    if declared is None or measured is None:
        return None
    if kind == "adaptive":
        return measured >= declared - 1
    if kind == "pathwise":
        top = max(declared, declared if upper is None else upper)
        return declared - slack(declared) <= measured <= top + slack(top)
    return abs(measured - declared) <= slack(declared)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


class _LineBar(_NoBar):
    """Without tqdm: one line on stderr when the work starts and the count when it ends."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit, self.count = desc, unit, 0
        print(f"{desc} ...", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.count += n

    def close(self) -> None:
        print(f"{self.desc}: done ({self.count} {self.unit})", file=sys.stderr, flush=True)


def progress_bar(total: int | None, desc: str, enabled: bool, *, unit: str = "solve", leave: bool = True):
    """A tqdm progress bar on stderr (``total=None``: a counter), a plain line on stderr when tqdm is not
    installed, or a silent stand-in when ``enabled`` is false."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _LineBar(desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
