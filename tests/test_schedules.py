"""Step schedules: exact end points, monotonicity, and the defining spacing of each grid."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoreflow as sf
from scoreflow.sampling import SCHEDULES, time_grid
from scoreflow.schedules import DATA_NOISE_LEVEL, from_time_variable, step_size_grid, t_grid_is_coarse, to_time_variable

SDES = {"vp": sf.VPSDE(), "subvp": sf.SubVPSDE(), "ve": sf.VESDE(), "edm": sf.EDMSDE()}


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_grid_starts_at_T_ends_exactly_at_t_min_and_decreases(sde_name, schedule):
    sde = SDES[sde_name]
    ts = time_grid(sde, 12, schedule)
    assert ts.shape == (13,) and ts.dtype == torch.float64
    assert ts[0].item() == sde.T and ts[-1].item() == sde.t_min
    assert (ts[1:] < ts[:-1]).all()


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_log_snr_grid_has_equal_log_snr_steps(sde_name):
    sde = SDES[sde_name]
    lam = sde.log_snr(time_grid(sde, 20, "log_snr"))
    steps = lam[1:] - lam[:-1]
    expected = (sde.log_snr(torch.tensor(sde.t_min, dtype=torch.float64)) - sde.log_snr(torch.tensor(sde.T, dtype=torch.float64))) / 20
    torch.testing.assert_close(steps, expected.expand(20), rtol=1e-8, atol=0)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "edm"])
def test_capped_grid_is_uniform_in_the_log_of_the_capped_noise_level(sde_name):
    # log(sigma_bar / (1 + sigma_bar / cap)) with sigma_bar = sigma / alpha, computed from the grid's times.
    sde, cap = SDES[sde_name], 3.0
    alpha, sigma = sde.marginal(time_grid(sde, 16, "log_snr_capped", sigma_cap=cap))
    sigma_bar = sigma / alpha
    v = torch.log(sigma_bar / (1 + sigma_bar / cap))
    diffs = v[1:] - v[:-1]
    torch.testing.assert_close(diffs, diffs.mean().expand(16), rtol=1e-8, atol=0)


def test_capped_grid_is_the_log_snr_grid_below_the_cap_and_sparser_above():
    sde = sf.VPSDE()
    torch.testing.assert_close(time_grid(sde, 12, "log_snr_capped", sigma_cap=1e12), time_grid(sde, 12, "log_snr"), rtol=1e-9, atol=0)
    lam_capped, lam_uniform = (sde.log_snr(time_grid(sde, 12, s)) for s in ("log_snr_capped", "log_snr"))
    # The first step (sigma_bar from ~150 down) is longer, so the same steps are shorter at low noise.
    assert lam_capped[1] - lam_capped[0] > 2 * (lam_uniform[1] - lam_uniform[0])
    assert lam_capped[-1] - lam_capped[-2] < lam_uniform[-1] - lam_uniform[-2]


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "edm", "rf"])
@pytest.mark.parametrize("power", [None, 1.0, 2.5])
def test_noise_fraction_grid_is_uniform_in_a_power_of_sigma_over_alpha_plus_sigma(sde_name, power):
    # nu = sigma / (alpha + sigma) from the grid's times; nu^(1/p) has equal steps (p = 5/3 by default)
    sde = SDES.get(sde_name) or sf.RectifiedFlow()
    alpha, sigma = sde.marginal(time_grid(sde, 16, "noise_fraction", power=power))
    diffs = (sigma / (alpha + sigma)) ** (1 / (power or 5 / 3))
    diffs = diffs[1:] - diffs[:-1]
    torch.testing.assert_close(diffs, diffs.mean().expand(16), rtol=1e-8, atol=0)


def test_noise_fraction_grid_with_power_one_is_the_uniform_grid_of_rectified_flow():
    rf = sf.RectifiedFlow()
    for t_min in (1e-3, 0.0):
        torch.testing.assert_close(time_grid(rf, 10, "noise_fraction", power=1.0, t_min=t_min),
                                   time_grid(rf, 10, "t", t_min=t_min), rtol=1e-12, atol=1e-15)


def test_karras_grid_matches_the_edm_formula_where_sigma_is_time():
    # Under EDMSDE sigma-bar = t, so the grid must be Karras et al.'s eq. (5) itself.
    sde, n, rho = sf.EDMSDE(sigma_min=0.002, sigma_max=80.0), 18, 7.0
    i = torch.arange(n + 1, dtype=torch.float64)
    edm = (80.0 ** (1 / rho) + i / n * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    torch.testing.assert_close(time_grid(sde, n, "karras", rho=rho), edm, rtol=1e-10, atol=0)


def test_karras_grid_under_vp_is_uniform_in_sigma_bar_to_the_one_over_rho():
    sde, rho = sf.VPSDE(), 5.0
    alpha, sigma = sde.marginal(time_grid(sde, 15, "karras", rho=rho))
    root = (sigma / alpha) ** (1 / rho)
    diffs = root[1:] - root[:-1]
    torch.testing.assert_close(diffs, diffs.mean().expand(15), rtol=1e-8, atol=0)


def _vp_time(log_alpha: float) -> float:
    """The time of the default VP/sub-VP alpha (beta 0.1..20): -log alpha = t^2 (20 - 0.1)/4 + t 0.1/2."""
    a, b = (20 - 0.1) / 4, 0.1 / 2
    return (-b + math.sqrt(b * b - 4 * a * log_alpha)) / (2 * a)


# The time t_f at which sigma/alpha = 0.1, in closed form: (process, t_f / T).
FINE_TIMES = {
    "rf": (sf.RectifiedFlow(), 1 / 11),  # t / (1 - t) = 0.1
    "cosine": (sf.AffinePath(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t)),
               2 * math.atan(0.1) / math.pi),  # tan(pi t / 2) = 0.1
    "sqrt": (sf.AffinePath(lambda t: 1 - t, torch.sqrt), ((math.sqrt(1.04) - 1) / 0.2) ** 2),  # sqrt(t) = 0.1 (1 - t)
    "vp": (sf.VPSDE(), _vp_time(-0.5 * math.log(1.01))),  # (1 - alpha^2) / alpha^2 = 0.01
    "subvp": (sf.SubVPSDE(), _vp_time(math.log((math.sqrt(4.01) - 0.1) / 2))),  # (1 - alpha^2) / alpha = 0.1
    "ve": (sf.VESDE(), math.log1p(0.01 / 0.01**2) / (2 * math.log(50 / 0.01))),  # sigma_min^2 (r^2t - 1) = 0.01
    "edm": (sf.EDMSDE(), 0.1 / 80),  # t = sigma
}


@pytest.mark.parametrize("name", FINE_TIMES)
def test_a_t_grid_is_coarse_where_sigma_over_alpha_reaches_a_tenth_only_in_the_last_twentieth_of_T(name):
    sde, share = FINE_TIMES[name]
    assert t_grid_is_coarse(sde) == (share < 1 / 20)
    assert t_grid_is_coarse(sde) == (name in ("vp", "edm", "sqrt"))  # the shares: 0.027, 0.00125, 0.0096


# The time t_d at which sigma/alpha = 1, the data's own scale, in closed form: (process, t_d / T).
DATA_TIMES = {
    "rf": (sf.RectifiedFlow(), 1 / 2),  # t = 1 - t
    "cosine": (FINE_TIMES["cosine"][0], 1 / 2),  # tan(pi t / 2) = 1
    "sqrt": (FINE_TIMES["sqrt"][0], (3 - math.sqrt(5)) / 2),  # sqrt(t) = 1 - t
    "vp": (sf.VPSDE(), _vp_time(-0.5 * math.log(2))),  # (1 - alpha^2) / alpha^2 = 1
    "subvp": (sf.SubVPSDE(), _vp_time(math.log((math.sqrt(5) - 1) / 2))),  # 1 - alpha^2 = alpha
    "ve": (sf.VESDE(), math.log1p(1 / 0.01**2) / (2 * math.log(50 / 0.01))),  # sigma_min^2 (r^2t - 1) = 1
    "edm": (sf.EDMSDE(), 1 / 80),  # t = sigma
}


@pytest.mark.parametrize("name", DATA_TIMES)
def test_at_the_data_scale_a_t_grid_is_coarse_only_on_edm(name):
    sde, share = DATA_TIMES[name]
    assert t_grid_is_coarse(sde, DATA_NOISE_LEVEL) == (share < 1 / 20)
    assert t_grid_is_coarse(sde, DATA_NOISE_LEVEL) == (name == "edm")  # the shares: 1/80 against 0.26 (VP) and more


@pytest.mark.parametrize("level", [0, -1.0, math.inf, math.nan])
def test_t_grid_is_coarse_refuses_a_noise_level_that_is_not_positive(level):
    with pytest.raises(ValueError, match=r"t_grid_is_coarse: argument 'noise_level' expected a finite number > 0"):
        t_grid_is_coarse(sf.VPSDE(), level)


def test_t_grid_is_coarse_refuses_what_is_not_a_process():
    with pytest.raises(TypeError, match=r"t_grid_is_coarse: argument 'sde' expected a ForwardSDE .*, got str 'vp'"):
        t_grid_is_coarse("vp")


def test_uniform_t_grid_and_custom_t_min_dtype_device():
    sde = sf.VPSDE()
    ts = time_grid(sde, 4, "t", t_min=0.2, dtype=torch.float32)
    assert ts.dtype == torch.float32
    torch.testing.assert_close(ts, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2]))


def test_a_grid_whose_times_tie_in_its_dtype_or_in_float64_is_refused_naming_the_argument():
    sde, rf = sf.VPSDE(), sf.RectifiedFlow()
    # float32 holds every grid of 1000 steps; bfloat16 ties two times of a shift grid of 100 steps (near T, where
    # its spacing is 1/256), float16 of 1000: the grids were returned with ties, not decreasing as documented
    for schedule in SCHEDULES[:1] + SCHEDULES[2:]:
        ts = time_grid(rf if schedule != "karras" else sde, 1000, schedule, dtype=torch.float32)
        assert bool((ts.diff() < 0).all())
    exact = time_grid(sde, 100, "shift")
    assert not bool((exact.to(torch.bfloat16).diff() < 0).all())
    for steps, dtype in ((100, torch.bfloat16), (1000, torch.float16)):
        with pytest.raises(ValueError, match=rf"time_grid: argument 'dtype' expected a dtype in which the {steps + 1} "
                                             rf"times of schedule 'shift' are distinct, got {dtype}, in which .* tie\. Fix"):
            time_grid(sde, steps, "shift", dtype=dtype)
    assert bool((time_grid(sde, 10, "shift", dtype=torch.bfloat16).diff() < 0).all())
    # extreme options made the float64 grid itself flat (shift 1e16: 1 - 1e-17 is 1), infinite or NaN
    for schedule, name, value in (("shift", "shift", 1e16), ("shift", "shift", 1e-300),
                                  ("log_snr_capped", "sigma_cap", 1e-17), ("karras", "rho", 1e-3)):
        with pytest.raises(ValueError, match=rf"time_grid: argument '{name}' expected a value for which the 11 times "
                                             rf"of schedule '{schedule}' are finite and distinct in float64, got {name}="):
            time_grid(sf.EDMSDE(), 10, schedule, **{name: value})


@given(
    steps=st.integers(1, 60),
    schedule=st.sampled_from(SCHEDULES),
    sde_name=st.sampled_from(sorted(SDES)),
    frac=st.floats(1e-4, 0.9),
    rho=st.floats(1.0, 10.0),
)
def test_every_grid_is_monotone_with_exact_ends(steps, schedule, sde_name, frac, rho):
    sde = SDES[sde_name]
    t_min = frac * sde.T
    ts = time_grid(sde, steps, schedule, t_min=t_min, **({'rho': rho} if schedule == 'karras' else {}))
    assert ts.shape == (steps + 1,)
    assert ts[0].item() == sde.T and ts[-1].item() == t_min
    assert (ts[1:] < ts[:-1]).all() and torch.isfinite(ts).all()


def test_bad_arguments_are_rejected_with_the_fix():
    sde = sf.VPSDE()
    with pytest.raises(ValueError, match="time_grid: argument 'schedule' expected one of 't', 'log_snr', 'karras'"):
        time_grid(sde, 10, "cosine")
    with pytest.raises(ValueError, match="'steps' expected an int >= 1, got 0"):
        time_grid(sde, 0)
    with pytest.raises(TypeError, match="'steps' expected an int"):
        time_grid(sde, 2.5)
    with pytest.raises(ValueError, match="'rho' expected a finite number > 0"):
        time_grid(sde, 10, "karras", rho=-1.0)
    with pytest.raises(ValueError, match=r"'t_min' expected a time in \(0, T=1\)"):
        time_grid(sde, 10, t_min=1.5)
    with pytest.raises(ValueError, match="'sigma_cap' expected a finite number > 0"):
        time_grid(sde, 10, "log_snr_capped", sigma_cap=0.0)
    with pytest.raises(ValueError, match="'power' expected a finite number > 0, got 0.0"):
        time_grid(sde, 10, "noise_fraction", power=0.0)
    # an option of another schedule was silently ignored (shift=2 gave the uniform grid): refused, naming its schedule
    for schedule, option in [("t", {"shift": 2.0}), ("log_snr", {"rho": 5.0}), ("karras", {"sigma_cap": 3.0}),
                             ("shift", {"sigma_floor": 0.1}), ("karras", {"power": 2.0}), ("noise_fraction", {"rho": 7.0})]:
        (name, value), = option.items()
        with pytest.raises(ValueError, match=rf"argument '{name}' applies to schedule '\w+', got {name}={value} with "
                                             rf"schedule='{schedule}', which does not use it"):
            time_grid(sde, 10, schedule, **option)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: to_time_variable(sf.VPSDE(), "lambda", torch.tensor([0.5])), ValueError,
         r"^to_time_variable: argument 'time' expected one of 't', 'sigma', 'log_snr', got 'lambda'\.$"),
        (lambda: from_time_variable(sf.VPSDE(), "logsnr", torch.tensor([0.5])), ValueError,
         r"^from_time_variable: argument 'time' expected one of 't', 'sigma', 'log_snr', got 'logsnr'\.$"),
        (lambda: step_size_grid(sf.VPSDE(), 1.0, 1e-3, 0.1, time="lambda"), ValueError,
         r"^step_size_grid: argument 'time' expected one of"),
        (lambda: step_size_grid("vp", 1.0, 1e-3, 0.1), TypeError, r"^step_size_grid: argument 'sde' expected a ForwardSDE"),
        (lambda: step_size_grid(sf.VPSDE(), 1.0, 1e-3, 0.0), ValueError,
         r"^step_size_grid: argument 'step_size' expected a finite number > 0, got 0.0\.$"),
        (lambda: step_size_grid(sf.VPSDE(), 1.0, 1e-3, -0.1), ValueError,
         r"^step_size_grid: argument 'step_size' expected a finite number > 0, got -0.1\.$"),
        (lambda: step_size_grid(sf.VPSDE(), math.nan, 1e-3, 0.1), ValueError,
         r"^step_size_grid: argument 'start' expected a finite number, got nan\.$"),
        (lambda: step_size_grid(sf.VPSDE(), 1.0, -0.5, 0.1), ValueError,
         r"^step_size_grid: argument 'end' expected a time in \[0, T=1\], got -0.5\.$"),
    ],
    ids=["to lambda", "from logsnr", "grid time", "grid sde", "grid step 0", "grid step < 0", "grid start nan", "grid end < 0"],
)
def test_time_variables_and_step_size_grids_refuse_bad_input_naming_it(call, error, match):
    # before: an unknown time variable was read as "log_snr" and a string sde as a process, silently; step_size=0
    # divided by zero, -0.1 gave a one-step grid, NaN "cannot convert float NaN to integer", t < 0 a grid beyond t = 0
    with pytest.raises(error, match=match):
        call()
