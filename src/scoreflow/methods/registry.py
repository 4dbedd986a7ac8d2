"""The method registry: one record per method, the single source of what scoreflow knows about it.

A record says which front-ends accept the method (its *kinds*), which library runs it, its
declared orders, its cost per step, whether it chooses its own steps, and the options it takes.
The front-ends resolve a method name through :func:`get_method` once, validate the options
through :meth:`Method.build` and hand the built solver the work; the benchmarks, both command
lines, the documentation tables and the tests read the same records through :func:`list_methods`.

Records are registered beside their implementation (``scoreflow.dynamics`` for torchdiffeq's and
torchsde's methods, ``scoreflow.solvers`` for scoreflow's own), so adding a method is one record
plus its solver.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .._checks import check_callable, check_choice, check_instance, check_int, check_positive
from ..schedules import FINE_NOISE_LEVEL, SCHEDULES, TIME_VARIABLES, t_grid_is_coarse
from ..sde import ForwardSDE

__all__ = [
    "KINDS", "BACKENDS", "Option", "Method", "register", "list_methods", "get_method",
    "positive_option", "int_option", "bool_option", "interval_option",
]

#: What a method is for: the front-end that accepts it by name.
#:
#: - ``"ode"``: :func:`scoreflow.sample_ode` (probability-flow ODE sampling);
#: - ``"sde"``: :func:`scoreflow.sample_sde` (reverse-time SDE sampling);
#: - ``"likelihood"``: :func:`scoreflow.log_likelihood` (the probability-flow ODE with its divergence);
#: - ``"predictor"``, ``"corrector"``: the two halves of :func:`scoreflow.sample_pc`;
#: - ``"conditional"``: conditional sampling, by :func:`scoreflow.inpaint` (``method=``) or by a conditional
#:   score that turns any sampler into a posterior sampler (the record's ``front_end`` names which).
KINDS = ("ode", "sde", "likelihood", "predictor", "corrector", "conditional")
#: Who integrates: torchdiffeq, torchsde, or scoreflow's own solvers.
BACKENDS = ("torchdiffeq", "torchsde", "native")
# The kinds whose front-ends build a grid of steps from the record (``steps=`` and a schedule).
_STEPPED_KINDS = ("ode", "sde", "likelihood")
# What those front-ends call on the built solver, by kind and backend (see docs/architecture.md).
_ENTRY_POINTS = {"ode": "sample", "sde": "sample", "likelihood": "integrate"}
# The schedule of a fixed grid when none is given, by integration variable: uniform in t, Karras' in sigma/alpha,
# uniform in log-SNR.
_DEFAULT_SCHEDULE = {"t": "t", "sigma": "karras", "log_snr": "log_snr"}
# Schedules undefined where a flow path reaches pure noise (log-SNR -inf at T); "log_snr_capped" is finite there.
_INFINITE_AT_PURE_NOISE = ("log_snr", "karras")

OptionCheck = Callable[[str, str, Any], Any]


@dataclass(frozen=True)
class Option:
    """A keyword option a method's solver accepts through a front-end's ``options=`` dict.

    Attributes:
        default: the value used when the option is not given.
        check: ``check(fn, name, value) -> value``; raises ``TypeError``/``ValueError`` naming ``fn`` and ``name``.
        doc: one line for the documentation.
    """

    default: Any
    check: OptionCheck
    doc: str


def positive_option(default: float, doc: str, *, above: float = 0.0) -> Option:
    """A real option > ``above`` (> 0 by default)."""

    def check(fn: str, name: str, value: Any) -> float:
        v = check_positive(fn, name, value, kind="option")
        if not v > above:
            raise ValueError(f"{fn}: option '{name}' expected a number > {above:g}, got {value!r}.")
        return v

    return Option(default, check, doc)


def int_option(default: int, doc: str, *, minimum: int = 1, maximum: int | None = None) -> Option:
    """An integer option >= ``minimum`` (and <= ``maximum`` if given)."""

    def check(fn: str, name: str, value: Any) -> int:
        v = check_int(fn, name, value, minimum=minimum, kind="option")
        if maximum is not None and v > maximum:
            raise ValueError(f"{fn}: option '{name}' expected an integer in [{minimum}, {maximum}], got {value!r}.")
        return v

    return Option(default, check, doc)


def choice_option(default: str, valid: Sequence[str], doc: str) -> Option:
    """An option that is one of the strings ``valid``."""
    return Option(default, lambda fn, name, value: check_choice(fn, name, value, valid, kind="option"), doc)


def bool_option(default: bool, doc: str) -> Option:
    """A ``True``/``False`` option."""

    def check(fn: str, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{fn}: option '{name}' expected True or False, got {type(value).__name__} {value!r}.")
        return value

    return Option(default, check, doc)


def interval_option(default: float, doc: str, *, low: float = 0.0, high: float = math.inf) -> Option:
    """A real option in the closed interval ``[low, high]``; with ``high = inf`` infinity itself is accepted."""

    def check(fn: str, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{fn}: option '{name}' expected a real number, got {type(value).__name__} {value!r}.")
        v = float(value)
        if not low <= v <= high:
            raise ValueError(f"{fn}: option '{name}' expected a number in [{low:g}, {high:g}], got {value!r}.")
        return v

    return Option(default, check, doc)


@dataclass(frozen=True)
class Method:
    """Everything scoreflow declares about one method.

    Attributes:
        name: the name the front-ends accept (``method="dopri5"``).
        kinds: the front-ends that accept it (see :data:`KINDS`).
        backend: ``"torchdiffeq"``, ``"torchsde"`` or ``"native"`` (see :data:`BACKENDS`).
        solver: ``solver(**options) -> object`` that does the work (the interface depends on the kind).
        summary: one line for tables and ``--help``.
        order: declared global order of accuracy of a deterministic method (``None`` if none is declared).
        strong_order, weak_order: declared orders of a stochastic method, for the reverse SDE's additive noise.
        drift_order: a stochastic method's order when the noise vanishes (the order of its drift's error
            term), which its measured strong and weak orders may reach at practical step counts but not pass.
        nfe_per_step: score evaluations per (accepted) step; adaptive methods: per attempted step.
        adaptive: chooses its own steps from ``rtol``/``atol`` (otherwise it runs on a grid of ``steps``).
        tolerance: a fixed-grid method that can also be run with error control (torchsde's ``adaptive=True``).
        step_size: accepts a step length ``step_size`` in place of a step count.
        time_variables: the variables a probability-flow ODE method can integrate in (``"t"``, ``"sigma"``,
            ``"log_snr"``); empty for solvers that integrate in variables of their own.
        default_schedule: the step schedule of a fixed-grid method that integrates in its own variables
            (required for such an ``"ode"``, ``"sde"`` or ``"likelihood"`` method).
        coarse_t_schedule: for a default uniform t grid (a ``default_schedule`` of ``"t"``, or ``time="t"`` of a method
            with ``time_variables``), the schedule in its place on a process where a grid uniform in t is coarse at
            the data end: :func:`scoreflow.schedules.t_grid_is_coarse` at ``coarse_t_noise_level``.
        coarse_t_noise_level: the scaled noise level sigma/alpha that a uniform t grid must reach before
            its last twentieth to stay the default: 0.1 (the data's fine structure: coarse on VP and EDM) unless
            the method's measurements say otherwise (torchdiffeq's fixed-step methods: 1, coarse on EDM only).
        levy_area: the Brownian path must provide Lévy area (a stochastic method of strong order > 1).
        options: option name -> :class:`Option`, the keyword options of ``options=``.
        front_end: how the method is called, where its kind has more than one front-end (``"conditional"``).

    Raises:
        TypeError, ValueError: when made, for a field of the wrong type or value (the message names it), a missing
            ``default_schedule`` (above), or an option that is not an :class:`Option`, whose default its own check
            refuses or differs from the solver's own default for that keyword (:meth:`build` passes only the
            options given), or that the solver does not take.
    """

    name: str
    kinds: tuple[str, ...]
    backend: str
    solver: Callable[..., Any]
    summary: str
    order: float | None = None
    strong_order: float | None = None
    weak_order: float | None = None
    drift_order: float | None = None
    nfe_per_step: int = 1
    adaptive: bool = False
    tolerance: bool = False
    step_size: bool = False
    time_variables: tuple[str, ...] = ()
    default_schedule: str | None = None
    coarse_t_schedule: str | None = None
    coarse_t_noise_level: float = FINE_NOISE_LEVEL
    levy_area: bool = False
    options: Mapping[str, Option] = field(default_factory=dict)
    front_end: str | None = None

    def __post_init__(self) -> None:
        fn = f"Method({self.name!r})"
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Method: argument 'name' expected a non-empty str, got {self.name!r}.")
        if isinstance(self.kinds, str) or not isinstance(self.kinds, (tuple, list)) or not self.kinds:
            raise TypeError(
                f"{fn}: argument 'kinds' expected a non-empty tuple of kinds, e.g. ('ode',), got {self.kinds!r}."
            )
        for kind in self.kinds:
            check_choice(fn, "kinds", kind, KINDS)
        object.__setattr__(self, "kinds", tuple(self.kinds))
        check_choice(fn, "backend", self.backend, BACKENDS)
        check_callable(fn, "solver", self.solver, "solver(**options)")
        for name in ("order", "strong_order", "weak_order", "drift_order"):
            if getattr(self, name) is not None:
                check_positive(fn, name, getattr(self, name))
        check_int(fn, "nfe_per_step", self.nfe_per_step)
        for variable in self.time_variables:
            check_choice(fn, "time_variables", variable, TIME_VARIABLES)
        if self.default_schedule is not None:
            check_choice(fn, "default_schedule", self.default_schedule, SCHEDULES)
        elif set(self.kinds) & set(_STEPPED_KINDS) and not (self.adaptive or self.time_variables):
            raise ValueError(
                f"{fn}: a fixed-grid method that integrates in its own variables (time_variables=()) needs "
                f"'default_schedule', the schedule of its steps when the caller names none: one of "
                f"{', '.join(map(repr, SCHEDULES))}."
            )
        if self.coarse_t_schedule is not None:
            check_choice(fn, "coarse_t_schedule", self.coarse_t_schedule, SCHEDULES)
            if not self._uniform_t_default():
                raise ValueError(
                    f"{fn}: 'coarse_t_schedule' replaces a default uniform t grid, but default_schedule="
                    f"{self.default_schedule!r}. Fix: default_schedule='t', or omit 'coarse_t_schedule'."
                )
        check_positive(fn, "coarse_t_noise_level", self.coarse_t_noise_level)
        if "conditional" in self.kinds and not isinstance(self.front_end, str):
            # inpaint picks its methods by this string: a record without one would break it for every method
            raise TypeError(
                f"{fn}: a 'conditional' method needs 'front_end', how it is called (e.g. 'inpaint(method=...)' or "
                f"'my_guided_score(score, ...)'), got {self.front_end!r}."
            )
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        self._check_options(fn)

    def _uniform_t_default(self) -> bool:
        """Whether the method's default grid is uniform in t: its ``default_schedule``, or in ``time="t"``."""
        return self.default_schedule == "t" or self.default_schedule is None and "t" in self.time_variables

    def _check_options(self, fn: str) -> None:
        """Each option is an :class:`Option` whose default passes its own check (``None``: the solver decides) and
        is the default the solver itself uses: :meth:`build` passes only the options given, so a record's default
        that differs from the solver's would be documented but never used."""
        try:
            parameters = inspect.signature(self.solver).parameters
        except (TypeError, ValueError):
            parameters = None
        takes_any = parameters is None or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        for name, spec in self.options.items():
            check_instance(fn, f"options[{name!r}]", spec, Option, "scoreflow.methods.positive_option(1.0, 'doc')")
            if spec.default is not None:
                try:
                    spec.check(fn, name, spec.default)
                except (TypeError, ValueError) as err:
                    raise type(err)(f"{fn}: option {name!r} declares a default its own check refuses: {err}") from None
            own = parameters.get(name) if parameters is not None else None
            if own is None and not takes_any:
                raise ValueError(f"{fn}: option {name!r} is not a keyword argument of the solver {self.solver!r}.")
            if own is not None and own.default is not inspect.Parameter.empty and own.default != spec.default:
                raise ValueError(
                    f"{fn}: option {name!r} declares default {spec.default!r}, but the solver's own default is "
                    f"{own.default!r} (the one used when the option is not given). Fix: make them equal."
                )

    def schedule_for(self, sde: ForwardSDE, time: str = "t") -> str | None:
        """The schedule of a fixed grid of this method on ``sde`` when the caller names none (``None`` if adaptive).

        Uniform in the integration variable ``time`` (Karras' in ``"sigma"``) for a method that has one, else the
        record's ``default_schedule``; its ``coarse_t_schedule`` in place of ``"t"`` where a uniform t grid is coarse at
        the data end (:func:`~scoreflow.schedules.t_grid_is_coarse` at ``coarse_t_noise_level``);
        ``"log_snr_capped"`` in place of a log-SNR or Karras grid on a path that reaches pure noise, where those are
        infinite.
        """
        if self.adaptive:
            return None
        name = _DEFAULT_SCHEDULE[time] if self.time_variables else self.default_schedule
        if name == "t" and self.coarse_t_schedule is not None and t_grid_is_coarse(sde, self.coarse_t_noise_level):
            name = self.coarse_t_schedule
        return "log_snr_capped" if name in _INFINITE_AT_PURE_NOISE and sde.pure_noise_at_T else name

    def build(self, fn: str, options: Any) -> Any:
        """Check ``options`` (``None`` or a dict of this method's options) and construct the solver.

        Raises:
            TypeError: if ``options`` is not a dict, names an option this method does not take (the
                message lists the ones it takes), or an option has the wrong type; if the solver built lacks the
                entry point a front-end of one of its kinds calls (``sample``, ``integrate``, ``likelihood``).
            ValueError: for an option value out of range.
        """
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise TypeError(f"{fn}: argument 'options' expected a dict or None, got {type(options).__name__} {options!r}.")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(repr(name) for name in self.options) or "none"
            raise TypeError(
                f"{fn}: method {self.name!r} takes no option {', '.join(map(repr, unknown))}; its options: {accepted}."
            )
        values = {name: spec.check(fn, name, options[name]) for name, spec in self.options.items() if name in options}
        solver = self.solver(**values)
        for kind in self.kinds:
            entry = "likelihood" if kind == "likelihood" and self.backend == "native" else _ENTRY_POINTS.get(kind)
            if entry is not None and not callable(getattr(solver, entry, None)):
                raise TypeError(
                    f"{fn}: the {kind!r} method {self.name!r} built a solver ({type(solver).__name__}) without the "
                    f"{entry}(...) method the {kind!r} front-end calls (see the solver interface, docs/architecture.md)."
                )
        return solver


_REGISTRY: dict[str, dict[str, Method]] = {kind: {} for kind in KINDS}


def register(method: Method) -> Method:
    """Add a method to the registry under each of its kinds; returns it.

    Raises:
        TypeError: if ``method`` is not a :class:`Method`.
        ValueError: if a method of the same name is already registered for one of its kinds.
    """
    check_instance("register", "method", method, Method, "Method('my_euler', ('ode',), 'native', MySolver, 'summary')")
    for kind in method.kinds:
        if method.name in _REGISTRY[kind]:
            raise ValueError(f"register: a {kind!r} method named {method.name!r} is already registered.")
    for kind in method.kinds:
        _REGISTRY[kind][method.name] = method
    return method


def list_methods(kind: str | None = None) -> list[Method]:
    """The registered methods of one kind (``"ode"``, ``"sde"``, ``"likelihood"``, ...), or of every kind.

    Each :class:`Method` record carries its name, kinds, backend, declared orders, score evaluations per
    step, whether it is adaptive and the options it accepts; a record of several kinds appears once (two
    kinds may have different methods of the same name, e.g. a deterministic and a stochastic ``"ddim"``).

    Raises:
        ValueError: for an unknown kind (the message lists the valid ones).
    """
    if kind is not None:
        return list(_REGISTRY[check_choice("list_methods", "kind", kind, KINDS)].values())
    seen: dict[int, Method] = {}
    for methods in _REGISTRY.values():
        for method in methods.values():
            seen.setdefault(id(method), method)
    return list(seen.values())


def get_method(kind: str, name: Any, *, caller: str = "get_method", argument: str = "method") -> Method:
    """The record of method ``name`` of ``kind`` (e.g. ``get_method("ode", "dpmpp_2m").order``).

    Args:
        kind: one of :data:`KINDS`.
        name: the method's name.
        caller: the public function named in the error message (a front-end resolving its ``method``).
        argument: the argument named in the error message.

    Raises:
        ValueError: for an unknown kind, or if ``name`` is not a registered method of ``kind`` (the message
            lists those that are).
    """
    methods = _REGISTRY[check_choice(caller, "kind", kind, KINDS)]
    return methods[check_choice(caller, argument, name, methods)]
