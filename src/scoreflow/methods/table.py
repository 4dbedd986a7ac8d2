"""The registry as markdown tables: the page ``docs/methods.md`` is this module's output.

Regenerate it with ``python -m scoreflow.methods > docs/methods.md`` (a test checks that it is current).
"""

from __future__ import annotations

from collections.abc import Callable

from ..paths import RectifiedFlow
from ..schedules import t_grid_is_coarse
from ..sde import EDMSDE, SubVPSDE, VESDE, VPSDE
from .registry import KINDS, Method, list_methods

__all__ = ["methods_page", "methods_table"]

_TITLES = {
    "ode": "Probability-flow ODE: `sample_ode(..., method=...)`",
    "sde": "Reverse-time SDE: `sample_sde(..., method=...)`",
    "likelihood": "Likelihood: `log_likelihood(..., method=...)`",
    "predictor": "Predictors of `sample_pc(..., predictor=...)`",
    "corrector": "Correctors of `sample_pc(..., corrector=...)`",
    "conditional": "Conditional sampling: `inpaint(..., method=...)` and the conditional scores",
}


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _stepping(method: Method) -> str:
    if method.adaptive:
        return "`rtol`, `atol`"
    ways = "`steps`" + (", `step_size`" if method.step_size else "")
    return ways + (", or `adaptive=True`" if method.tolerance else "")


def _options(method: Method) -> str:
    return ", ".join(f"`{name}`" for name in method.options) or "–"


def _time_variables(method: Method) -> str:
    return ", ".join(f"`{v}`" for v in method.time_variables) or "its own"


# The processes named where a method's uniform t grid gives way to its coarse_t_schedule.
_PROCESSES = {"VP": VPSDE, "sub-VP": SubVPSDE, "VE": VESDE, "EDM": EDMSDE, "rectified flow": RectifiedFlow}


def _coarse_on(method: Method) -> str:
    """The processes of :data:`_PROCESSES` on which ``method`` replaces its uniform t grid (``t_grid_is_coarse``)."""
    return ", ".join(name for name, make in _PROCESSES.items() if t_grid_is_coarse(make(), method.coarse_t_noise_level))


def _schedule(method: Method) -> str:
    if method.adaptive:
        return "–"
    coarse = method.coarse_t_schedule
    if not method.default_schedule:
        where = f"; `{coarse}` in `t` where a `t` grid is coarse ({_coarse_on(method)})" if coarse else ""
        return "uniform in `time` (`karras` in `sigma`)" + where
    where = f"; `{coarse}` where a `t` grid is coarse ({_coarse_on(method)})" if coarse else ""
    return f"`{method.default_schedule}`" + where


Column = tuple[str, Callable[[Method], str]]
_NAME: Column = ("method", lambda m: f"`{m.name}`")
_BACKEND: Column = ("backend", lambda m: m.backend)
_NFE: Column = ("NFE per step", lambda m: str(m.nfe_per_step))
_STEPPING: Column = ("stepping", _stepping)
_OPTIONS: Column = ("options", _options)
_SUMMARY: Column = ("what it is", lambda m: m.summary)
_COLUMNS: dict[str, list[Column]] = {
    "ode": [_NAME, _BACKEND, ("order", lambda m: _number(m.order)), _NFE, _STEPPING,
            ("time variables", _time_variables), ("default schedule", _schedule), _OPTIONS, _SUMMARY],
    "sde": [_NAME, _BACKEND, ("strong order", lambda m: _number(m.strong_order)),
            ("weak order", lambda m: _number(m.weak_order)), _NFE, _STEPPING,
            ("needs Lévy area", lambda m: "yes" if m.levy_area else "no"), ("default schedule", _schedule), _OPTIONS,
            _SUMMARY],
    "likelihood": [_NAME, _BACKEND, ("order", lambda m: _number(m.order)), _NFE, _STEPPING, _OPTIONS, _SUMMARY],
    "predictor": [("name", _NAME[1]), _SUMMARY],
    "corrector": [("name", _NAME[1]), _SUMMARY],
    "conditional": [_NAME, ("used as", lambda m: f"`{m.front_end}`"), _NFE, _OPTIONS, _SUMMARY],
}


def methods_table(kind: str) -> str:
    """A markdown table of the methods of ``kind``, with what their records declare."""
    columns = _COLUMNS[kind]
    methods = sorted(list_methods(kind), key=lambda m: (m.backend, m.adaptive, m.name))
    rows = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + " --- |" * len(columns)]
    rows += ["| " + " | ".join(cell(m) for _, cell in columns) + " |" for m in methods]
    return "\n".join(rows)


def methods_page() -> str:
    """The whole ``docs/methods.md`` page: one table per kind of :data:`~scoreflow.methods.KINDS`."""
    parts = [
        "# Methods",
        "",
        "Every method scoreflow offers, as its record in the method registry declares it "
        "(`scoreflow.list_methods(kind)` returns these records; the front-ends accept exactly these names). "
        "Orders are global orders of accuracy in the step size, checked by log-log slope against closed forms "
        "in the test suite; SDE orders are for the reverse SDE's additive noise. NFE per step counts score "
        "evaluations (adaptive methods: per attempted step). Options go in `options={...}`.",
        "",
        "This page is generated: `python -m scoreflow.methods > docs/methods.md`.",
    ]
    for kind in KINDS:
        parts += ["", f"## {_TITLES[kind]}", "", methods_table(kind)]
    return "\n".join(parts) + "\n"
