r"""Time grids for fixed-step solvers: uniform in t, in log-SNR (plain or with the noise level capped), Karras et al.'s,
SD3's time shift, or uniform in a power of the noise fraction :math:`\sigma/(\alpha + \sigma)`.

Each grid decreases from :math:`T` to :math:`t_{min}` and its first and last entries are exactly
``T`` and ``t_min`` (the last step lands on ``t_min``; nothing is evaluated beyond it).  Grids in
log-SNR :math:`\lambda = \log(\alpha/\sigma)` and in the scaled noise level
:math:`\bar\sigma = \sigma/\alpha = e^{-\lambda}` are mapped back to t with ``sde.t_from_log_snr``; they need a
finite log-SNR at both ends, except ``"log_snr_capped"``, which is finite where a flow path reaches pure noise
(:math:`\lambda(T) = -\infty`), and ``"noise_fraction"``, which is finite at both ends of every process.
"""

from __future__ import annotations

import math

import torch

from ._cache import LRU, parameters_key
from ._checks import check_choice, check_float_dtype, check_int, check_positive, check_real, first_unordered_step, resolve_t_min
from .sde import ForwardSDE, check_sde

__all__ = [
    "SCHEDULES", "TIME_VARIABLES", "time_grid", "to_time_variable",
    "from_time_variable", "step_size_grid", "t_grid_is_coarse", "FINE_NOISE_LEVEL", "DATA_NOISE_LEVEL",
]

#: Step schedules: uniform in t, uniform in log-SNR, Karras et al. (2022) with exponent rho, uniform in the
#: log of the capped noise level, uniform in t after SD3's time shift, and uniform in a power of the noise fraction.
SCHEDULES = ("t", "log_snr", "karras", "log_snr_capped", "shift", "noise_fraction")
#: Independent variables of the probability-flow ODE: time t, scaled noise level sigma/alpha, log-SNR.
TIME_VARIABLES = ("t", "sigma", "log_snr")
#: The scaled noise level sigma/alpha of the fine structure of data of unit scale (a tenth of that scale: the unit
#: scale "log_snr_capped"'s default cap of 10 assumes): the default level of :func:`t_grid_is_coarse`.
FINE_NOISE_LEVEL = 0.1
#: The scaled noise level sigma/alpha of the data's own (unit) scale, below which all of a sample's structure forms:
#: the level of :func:`t_grid_is_coarse` for torchdiffeq's fixed-step methods.
DATA_NOISE_LEVEL = 1.0
# The least share of [0, T] below a noise level for which a grid uniform in t is not coarse there (one step in 20).
_MIN_FINE_SHARE = 1 / 20
# t_grid_is_coarse by process parameters (see scoreflow._cache).
_COARSE = LRU(64)


def to_time_variable(sde: ForwardSDE, time: str, t: torch.Tensor) -> torch.Tensor:
    r"""Map times t to the variable ``time``: t itself, :math:`\bar\sigma = \sigma/\alpha` or :math:`\lambda = \log(\alpha/\sigma)`.

    Raises ``ValueError`` for a ``time`` not in :data:`TIME_VARIABLES` (any other name was read as ``"log_snr"``)."""
    check_choice("to_time_variable", "time", time, TIME_VARIABLES)  # a string: no read of a device
    if time == "t":
        return t
    lam = sde.log_snr(t)
    return torch.exp(-lam) if time == "sigma" else lam


def from_time_variable(sde: ForwardSDE, time: str, u: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_time_variable` (through ``sde.t_from_log_snr``); the same ``ValueError`` for ``time``."""
    check_choice("from_time_variable", "time", time, TIME_VARIABLES)
    if time == "t":
        return u
    return sde.t_from_log_snr(-torch.log(u) if time == "sigma" else u)


def step_size_grid(sde: ForwardSDE, start: float, end: float, step_size: float, time: str = "t") -> torch.Tensor:
    """The float64 times in t of steps of length ``step_size`` in the variable ``time`` from ``start`` towards ``end``,
    the last step shortened to land on ``end`` (torchdiffeq's grid for a step size, without a sliver of a last step
    from round-off).

    Raises:
        TypeError, ValueError: for an ``sde`` that is not a forward process, ``start`` or ``end`` that is not a time
            in [0, T], a ``step_size`` that is not finite and > 0, or a ``time`` not in :data:`TIME_VARIABLES`.
    """
    fn = "step_size_grid"
    check_sde(fn, sde)
    start, end = check_real(fn, "start", start), check_real(fn, "end", end)
    for name, value in (("start", start), ("end", end)):
        if not 0.0 <= value <= sde.T:
            raise ValueError(f"{fn}: argument '{name}' expected a time in [0, T={sde.T:g}], got {value!r}.")
    step_size = check_positive(fn, "step_size", step_size)
    check_choice(fn, "time", time, TIME_VARIABLES)
    ends = to_time_variable(sde, time, torch.tensor([start, end], dtype=torch.float64))
    span = abs(float(ends[1] - ends[0]))
    steps = max(1, math.ceil(span / step_size * (1 - 1e-12)))
    u = ends[0] + torch.sign(ends[1] - ends[0]) * step_size * torch.arange(steps + 1, dtype=torch.float64)
    u[-1] = ends[1]
    ts = from_time_variable(sde, time, u)
    ts[0], ts[-1] = start, end
    return ts


def t_grid_is_coarse(sde: ForwardSDE, noise_level: float = FINE_NOISE_LEVEL) -> bool:
    r"""Whether a grid uniform in t on ``sde`` gives the noise levels below ``noise_level`` fewer than one step in 20:
    whether :math:`\sigma/\alpha` is still above ``noise_level`` at :math:`t = T/20`.

    The clock decides it.  At the default level 0.1 (the fine structure of unit-scale data, a tenth of its scale)
    :math:`\sigma/\alpha = 0.1` at :math:`t/T = 1/11` on rectified flow (:math:`\sigma/\alpha = t/(1 - t)`), 0.095 on
    sub-VP (:math:`\sigma = 1 - \alpha^2`) and 0.27 on VE (:math:`\log\sigma` about linear in t), but at 0.027 on VP
    (:math:`\sigma = \sqrt{1 - \alpha^2}`, the square root of sub-VP's) and 0.1/80 on EDM (:math:`t = \sigma`): coarse
    on VP and EDM.  At :data:`DATA_NOISE_LEVEL` 1 (the data's own scale, below which all of a sample's structure
    forms) :math:`\sigma/\alpha = 1` at :math:`t/T` = 1/2 on rectified flow, 0.26 on VP, 0.31 on sub-VP and 0.54 on VE,
    but at 1/80 on EDM: only EDM's clock leaves the whole of the denoising to the last twentieth of a uniform t grid.

    Args:
        sde: the forward process.
        noise_level: the scaled noise level :math:`\sigma/\alpha > 0` (:data:`FINE_NOISE_LEVEL` by default).

    Raises:
        TypeError: if ``sde`` is not a forward process.
        ValueError: if ``noise_level`` is not a finite number > 0.
    """
    check_sde("t_grid_is_coarse", sde)
    noise_level = check_positive("t_grid_is_coarse", "noise_level", noise_level)

    def coarse() -> bool:
        t = torch.tensor(_MIN_FINE_SHARE * sde.T, dtype=torch.float64)
        return bool(sde.log_snr(t) < -math.log(noise_level))

    # asked by the front-ends at every call of a method that defaults to "t": once per process parameters and level
    key = parameters_key(sde)
    return coarse() if key is None else _COARSE.get((key, noise_level), coarse)


#: The schedules uniform in a function of the log-SNR, which need it finite at t_min and, but for
#: ``"log_snr_capped"``, at T.
LOG_SNR_SCHEDULES = ("log_snr", "karras", "log_snr_capped")


def check_log_snr_ends(fn: str, sde: ForwardSDE, schedule: str, t_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The float64 log-SNRs :math:`(\lambda(T), \lambda(t_{min}))` of a schedule of :data:`LOG_SNR_SCHEDULES`, checked
    finite where it needs them; the check of :func:`time_grid`, for a caller ``fn`` that makes a grid to check first.

    Raises:
        ValueError: for :math:`\lambda(T) = -\infty` (pure noise at T) with ``"log_snr"`` or ``"karras"``, naming
            the schedule, or :math:`\lambda(t_{min}) = +\infty` (``t_min = 0`` on a flow path), naming ``t_min``; the
            remedy is one that works for the schedule and both ends.
    """
    lam_max, lam_min = sde.log_snr(torch.tensor([sde.T, t_min], dtype=torch.float64)).unbind()
    at_T = schedule != "log_snr_capped" and not bool(torch.isfinite(lam_max))
    at_t_min = not bool(torch.isfinite(lam_min))
    if at_T:
        fix = ("schedule='shift', 't' or 'noise_fraction' (finite at both ends), or 'log_snr_capped' (finite at pure "
               f"noise) with t_min > 0 (sde.t_min={sde.t_min:g})" if at_t_min else
               "schedule='log_snr_capped' (finite at pure noise), 'shift', 't' or 'noise_fraction'")
        raise ValueError(
            f"{fn}: schedule {schedule!r} needs a finite log-SNR at its ends, but {type(sde).__name__} has log-SNR "
            f"{float(lam_max):g} at T={sde.T:g} and {float(lam_min):g} at t_min={t_min:g}. Fix: {fix}."
        )
    if at_t_min:
        raise ValueError(
            f"{fn}: argument 't_min' expected a time > 0 for schedule {schedule!r}, which needs a finite log-SNR at "
            f"t_min ({type(sde).__name__} has log-SNR {float(lam_min):g} at t = 0), got {t_min!r}. Fix: t_min > 0 "
            f"(sde.t_min={sde.t_min:g}), or schedule='shift', 't' or 'noise_fraction' (finite at t = 0)."
        )
    return lam_max, lam_min


#: The schedule each option of :func:`time_grid` belongs to.
_OPTION_OF = {"rho": "karras", "sigma_cap": "log_snr_capped", "sigma_floor": "log_snr_capped", "shift": "shift",
              "power": "noise_fraction"}
#: The default exponent p of ``"noise_fraction"``: the first step from the data end is then about N^(-5/3) of the
#: range, so that a fifth-order multistep method, whose first step has a two-point corrector (local error
#: O(h^3)), keeps its order there (``expint_pc`` likelihoods; benchmarks/bench_likelihood_grids.py).
NOISE_FRACTION_POWER = 5.0 / 3.0


def time_grid(
    sde: ForwardSDE,
    steps: int,
    schedule: str = "t",
    *,
    t_min: float | None = None,
    rho: float | None = None,
    sigma_cap: float | None = None,
    sigma_floor: float | None = None,
    shift: float | None = None,
    power: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The ``steps + 1`` times :math:`T = t_0 > t_1 > \dots > t_N = t_{min}` of a step schedule.

    - ``"t"``: :math:`t_i = T + \tfrac iN (t_{min} - T)`.
    - ``"log_snr"``: :math:`\lambda(t_i)` uniform between :math:`\lambda(T)` and :math:`\lambda(t_{min})`.
    - ``"karras"``: :math:`\bar\sigma_i^{1/\rho}` uniform between :math:`\bar\sigma_{max}^{1/\rho}` and
      :math:`\bar\sigma_{min}^{1/\rho}`, with :math:`\bar\sigma = \sigma/\alpha` (EDM's schedule, rho = 7).
    - ``"log_snr_capped"``: uniform in :math:`\log\big(\bar\sigma / (1 + \bar\sigma/\bar\sigma_{cap})\big)
      = -\log(e^{\lambda} + 1/\bar\sigma_{cap})`: log-SNR steps while :math:`\bar\sigma \ll \bar\sigma_{cap}`,
      geometrically longer ones above it, where the data prediction of data of scale
      :math:`\ll \bar\sigma_{cap}` hardly changes.  The default cap 10 suits data scaled to unit variance.
    - ``"shift"``: Stable Diffusion 3's time shift of a uniform grid, :math:`t_i/T = m(u_i)` with
      :math:`m(u) = su/(1 + (s - 1)u)` and :math:`u_i` uniform between :math:`m^{-1}(1) = 1` and
      :math:`m^{-1}(t_{min}/T)`: steps concentrate at high noise for ``shift`` s > 1 (3 in SD3; diffusers'
      ``FlowMatchEulerDiscreteScheduler(shift=s)`` places its sigmas so).
    - ``"noise_fraction"``: :math:`\nu^{1/p}` uniform between its values at T and :math:`t_{min}`, where
      :math:`\nu = \sigma/(\alpha + \sigma) = 1/(1 + e^{\lambda})` is the time of rectified flow
      (:math:`\alpha = 1 - t`, :math:`\sigma = t`) at the same log-SNR: 0 at the data, 1 at pure noise, finite at
      both ends of every process (with ``power`` p = 1 it is ``"t"`` on rectified flow).  It spends few steps where
      :math:`|\lambda|` is large (:math:`d\nu/d\lambda = -\nu(1 - \nu)`), where the predictions are nearly
      linear in :math:`\bar\sigma` (near the data) or in :math:`e^{\lambda}` (near noise), and p > 1 shortens
      the steps towards the data as Karras et al.'s exponent does.  The default of the native likelihood solver
      ``expint_pc``.

    Args:
        sde: the forward SDE (gives :math:`\alpha, \sigma` and the inverse of the log-SNR).
        steps: number of steps N >= 1.
        schedule: one of ``SCHEDULES``.
        t_min: final time (default ``sde.t_min``).
        rho: exponent of the Karras schedule (default 7).
        sigma_cap: the noise level :math:`\bar\sigma_{cap} = \sigma/\alpha` of ``"log_snr_capped"``, about ten
            times the data's standard deviation (default 10).
        sigma_floor: the lower noise level :math:`\bar\sigma_f \ge 0` of ``"log_snr_capped"`` (default 0: none).
        shift: the time shift s > 0 of ``"shift"`` (default 3).
        power: the exponent p > 0 of ``"noise_fraction"`` (default 5/3, :data:`NOISE_FRACTION_POWER`).  Each of
            these five is refused with a schedule that does not use it (it would be ignored).
        dtype, device: of the returned tensor (computed in float64, then cast).

    Returns:
        A decreasing tensor of shape ``(steps + 1,)``.

    Raises:
        ValueError: for an unknown schedule, an option of another schedule, ``steps < 1``, ``rho <= 0``, ``sigma_cap <= 0``, ``sigma_floor < 0`` (or, for
            ``"log_snr_capped"``, not below ``sigma_cap``),
            ``shift <= 0``, ``power <= 0``, ``t_min`` outside ``[0, T)`` (0 only for processes that allow it), or a log-SNR schedule
            with an infinite log-SNR at an end it needs; naming ``dtype`` if two times tie in it (bfloat16 from 100
            steps, float16 from 1000; float32 holds 100000), or the schedule's option if its extreme value makes
            even the float64 grid degenerate (``shift=1e16``, ``rho=1e-3``).
        TypeError: if ``sde`` is not a forward process or ``dtype`` is not a floating-point dtype.
    """
    fn = "time_grid"
    check_sde(fn, sde)
    check_float_dtype(fn, "dtype", dtype)
    check_choice(fn, "schedule", schedule, SCHEDULES)
    check_int(fn, "steps", steps)
    for name, value in (("rho", rho), ("sigma_cap", sigma_cap), ("sigma_floor", sigma_floor), ("shift", shift),
                        ("power", power)):
        if value is not None and _OPTION_OF[name] != schedule:
            raise ValueError(
                f"{fn}: argument '{name}' applies to schedule {_OPTION_OF[name]!r}, got {name}={value!r} with "
                f"schedule={schedule!r}, which does not use it. Fix: omit '{name}', or schedule={_OPTION_OF[name]!r}."
            )
    rho = 7.0 if rho is None else rho
    sigma_cap = 10.0 if sigma_cap is None else sigma_cap
    sigma_floor = 0.0 if sigma_floor is None else sigma_floor
    shift = 3.0 if shift is None else shift
    power = NOISE_FRACTION_POWER if power is None else power
    check_positive(fn, "rho", rho)
    check_positive(fn, "sigma_cap", sigma_cap)
    check_positive(fn, "sigma_floor", sigma_floor, allow_zero=True)
    if schedule == "log_snr_capped" and not sigma_floor < sigma_cap:
        # u(s) = log((s + floor)/(1 + s/cap)) is constant in s when floor = cap: the grid was NaN
        raise ValueError(
            f"{fn}: argument 'sigma_floor' expected a noise level below sigma_cap={sigma_cap:g} (the floor is the lower of "
            f"the two levels of 'log_snr_capped'), got {sigma_floor!r}."
        )
    check_positive(fn, "shift", shift)
    check_positive(fn, "power", power)
    t_min = resolve_t_min(fn, sde, t_min)
    ends = torch.tensor([sde.T, t_min], dtype=torch.float64)
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if schedule == "t":
        ts = ends[0] + ramp * (ends[1] - ends[0])
    elif schedule == "noise_fraction":
        # nu = 1 / (1 + e^lambda) = sigmoid(-lambda), so lambda = log((1 - nu) / nu) (+-inf at nu = 0, 1)
        root_T, root_t_min = torch.sigmoid(-sde.log_snr(ends)) ** (1 / power)
        nu = (root_T + ramp * (root_t_min - root_T)) ** power
        ts = sde.t_from_log_snr(torch.log1p(-nu) - torch.log(nu))
    elif schedule == "shift":
        # m(u) = s u / (1 + (s - 1) u) and its inverse m^-1(v) = v / (s - (s - 1) v).
        v_min = t_min / sde.T
        u = 1.0 + ramp * (v_min / (shift - (shift - 1) * v_min) - 1.0)
        ts = sde.T * shift * u / (1 + (shift - 1) * u)
    else:
        lam_max, lam_min = check_log_snr_ends(fn, sde, schedule, t_min)
        if schedule == "log_snr":
            lam = lam_max + ramp * (lam_min - lam_max)
        elif schedule == "log_snr_capped" and sigma_floor > 0:
            # u = log((s + floor) / (1 + s/cap)) = log1p(floor e^lambda) - log(e^lambda + 1/cap) with s = e^-lambda
            # (finite at pure noise, lambda = -inf) is uniform; s = (e^u - floor) / (1 - e^u / cap).
            e_ends = torch.exp(torch.stack([lam_max, lam_min]))
            u_ends = torch.log1p(sigma_floor * e_ends) - torch.log(e_ends + 1 / sigma_cap)
            e = torch.exp(u_ends[0] + ramp * (u_ends[1] - u_ends[0]))
            lam = -torch.log((e - sigma_floor) / (1 - e / sigma_cap))
        elif schedule == "log_snr_capped":
            # v = log(e^lambda + kappa), kappa = 1/sigma_cap, is uniform; invert stably as v + log(1 - kappa e^-v).
            log_kappa = torch.tensor(-math.log(sigma_cap), dtype=torch.float64)
            v_max, v_min = torch.logaddexp(lam_max, log_kappa), torch.logaddexp(lam_min, log_kappa)
            v = v_max + ramp * (v_min - v_max)
            lam = v + torch.log(-torch.expm1(log_kappa - v))
        else:
            # sigma-bar = exp(-lambda); interpolate sigma-bar^(1/rho) linearly.
            lo, hi = torch.exp(-lam_max / rho), torch.exp(-lam_min / rho)
            lam = -rho * torch.log(lo + ramp * (hi - lo))
        ts = sde.t_from_log_snr(lam)
    ts[0], ts[-1] = ends[0], ends[1]
    given = {"rho": rho, "sigma_cap": sigma_cap, "shift": shift, "power": power}
    option = next(((name, v) for name, v in given.items() if _OPTION_OF[name] == schedule), ("steps", steps))
    return _checked_distinct(fn, ts, ts.to(dtype=dtype), schedule, steps, option).to(device=device)


def _checked_distinct(
    fn: str, exact: torch.Tensor, cast: torch.Tensor, schedule: str, steps: int, option: tuple[str, float]
) -> torch.Tensor:
    """``cast``, the float64 grid ``exact`` in the asked dtype, checked finite and strictly decreasing.

    Raises:
        ValueError: naming ``dtype`` if two times round to one in it (bfloat16 ties a shift grid of 100 steps,
            float16 one of 1000), else the schedule's ``option`` (or ``steps``) whose extreme value made even the
            float64 grid degenerate (``shift=1e16``: 1 - 1e-16 rounds to 1; ``sigma_cap=1e-17``: NaN); ``option`` is
            that argument's name and value.
    """
    for grid, dtype in ((exact, None), (cast, cast.dtype)):
        i = first_unordered_step(grid)
        if i is None:
            continue
        got = f"entries {i} and {i + 1} (counted from T) {float(grid[i])!r} and {float(grid[i + 1])!r}"
        if dtype is not None:
            raise ValueError(
                f"{fn}: argument 'dtype' expected a dtype in which the {steps + 1} times of schedule {schedule!r} are "
                f"distinct, got {dtype}, in which {got} (from {float(exact[i])!r} and {float(exact[i + 1])!r}) tie. "
                f"Fix: dtype=torch.float32 or torch.float64, or fewer 'steps'."
            )
        name, value = option
        raise ValueError(
            f"{fn}: argument {name!r} expected a value for which the {steps + 1} times of schedule {schedule!r} are "
            f"finite and distinct in float64, got {name}={value!r}, which gives {got}. Fix: a moderate {name!r}."
        )
    return cast
