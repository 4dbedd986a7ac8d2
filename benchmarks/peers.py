"""Shared pieces of the few-NFE benchmarks: random test problems, the float64 reference, and the peers' drivers.

- :func:`random_mixture`: a Gaussian mixture drawn from a seed (dimension, components, weights, covariances and
  separation all random), for claims that must hold on problems nobody tuned on.
- :func:`reference_solve`: ``x_{t_min}`` of the probability-flow ODE by scipy's DOP853 in float64.
- :func:`run_k_diffusion`: k-diffusion's samplers on the exact denoiser in its variables (and :func:`run_ipndm`,
  iPNDM written here in the same variables, as neither k-diffusion nor diffusers runs it on a given grid).
- :func:`write_json`: a benchmark's result file, complete or absent.
- :func:`run_diffusers`: diffusers' multistep schedulers on a discrete 1000-step schedule that coincides with the
  continuous VP SDE (:func:`discrete_vp_betas`), the model evaluated at the noise level of the scheduler's state.

Every driver takes the same prior draws ``x_T`` and returns rows ``dict(library, method, schedule, steps, nfe, x)``.
Optional dependencies: ``pip install --no-deps k-diffusion diffusers`` (diffusers also needs its light
pure-Python requirements, e.g. ``huggingface_hub``, ``safetensors``, ``regex``, ``importlib_metadata``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
from scipy.integrate import solve_ivp

from scoreflow._files import atomic_write
from scoreflow.analytic import GaussianMixture
from scoreflow.metrics import rms_error
from scoreflow.sampling import sample_ode, time_grid
from scoreflow.testing import make_law, reference_flow_map

__all__ = [
    "random_mixture", "reference_solve", "Counted", "load_k_diffusion_sampling", "vp_denoiser", "run_k_diffusion",
    "discrete_vp_betas", "DIFFUSERS_CONFIGS", "DIFFUSERS_SCHEDULES", "make_scheduler", "diffusers_sample", "run_diffusers", "KD_COST", "KD_SCHEDULES", "sample_ipndm", "run_ipndm",
    "write_json", "write_text", "save_figure",
]


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (its folder created), complete or absent: written beside, then moved."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_json(path: str | Path):
    """The JSON a benchmark wrote at ``path``, for its report or plot; a file that is missing or not JSON ends the
    script with one line on stderr and exit status 2 (run the benchmark itself first), not a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        print(f"{Path(sys.argv[0]).name}: error: cannot read the results {path}: {reason}; run the benchmark without "
              "the reporting option first", file=sys.stderr)
        raise SystemExit(2) from None


def write_json(path: str | Path, payload, **dumps) -> Path:
    """Write ``payload`` as JSON to ``path`` with :func:`write_text`; prints and returns the path.

    ``dumps`` goes to :func:`json.dumps` (``indent`` defaults to 1).
    """
    path = write_text(path, json.dumps(payload, **{"indent": 1, **dumps}))
    print(f"wrote {path}", flush=True)
    return path


def save_figure(fig, path: str | Path, **savefig) -> Path:
    """Save a matplotlib figure to ``path`` (its folder created), complete or absent; ``savefig`` goes to ``Figure.savefig``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, **savefig)
    return path


def random_mixture(seed: int, *, dims=(2, 32), components=(2, 16), dtype=torch.float64) -> tuple[GaussianMixture, dict]:
    """A Gaussian mixture drawn from ``seed``; returns the law and what was drawn.

    Dimension and component count uniform in the given ranges; weights Dirichlet(1) (unequal), floored at
    1 % of uniform so no component is empty; each covariance ``Q diag(v) Q^T`` with a random rotation ``Q`` and
    variances log-uniform over two decades ``[v_max/100, v_max]``, ``v_max`` log-uniform in ``[0.05, 1]`` per
    problem; means ``r u_k`` with ``u_k`` uniform on the unit sphere and a radius ``r`` uniform in ``[0.5, 3]`` per
    problem (the separation of the modes, relative to their widths, is therefore drawn too).
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    d = int(torch.randint(dims[0], dims[1] + 1, (), generator=g))
    k = int(torch.randint(components[0], components[1] + 1, (), generator=g))
    w = -torch.log(torch.rand(k, generator=g, dtype=torch.float64))
    w = w / w.sum()
    w = torch.clamp(w, min=0.01 / k)
    v_max = math.exp(uniform(math.log(0.05), 0.0))
    radius = uniform(0.5, 3.0)
    u = torch.randn(k, d, generator=g, dtype=torch.float64)
    means = radius * u / u.norm(dim=1, keepdim=True)
    log_v = torch.log(torch.tensor(v_max, dtype=torch.float64)) - math.log(100.0) * torch.rand(k, d, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    covs = q @ torch.diag_embed(log_v.exp()) @ q.transpose(-1, -2)
    law = GaussianMixture(w / w.sum(), means, 0.5 * (covs + covs.transpose(-1, -2))).to(dtype)
    info = {"seed": seed, "dim": d, "components": k, "v_max": v_max, "radius": radius, "min_weight": float(w.min() / w.sum())}
    return law, info


def reference_solve(law, sde, x_T: torch.Tensor, tol: float = 1e-10) -> tuple[torch.Tensor, int]:
    """x_{t_min} of the probability-flow ODE from x_T by scipy's DOP853 in float64 (rtol = atol = ``tol``); and its NFE."""
    score = law.score(sde)
    shape = x_T.shape

    def rhs(t, x):
        xt = torch.from_numpy(x).reshape(shape)
        tt = torch.tensor(t, dtype=torch.float64)
        v = sde.drift(xt, tt) - 0.5 * sde.diffusion(tt) ** 2 * score(xt, tt)
        return v.reshape(-1).numpy()

    sol = solve_ivp(rhs, (sde.T, sde.t_min), x_T.reshape(-1).numpy(), method="DOP853", rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape), int(sol.nfev)


class Counted:
    """Counts calls of a function (the NFE of a peer's sampler)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- k-diffusion

KD_SCHEDULES = ("log_snr_capped", "log_snr", "karras", "t")
# Score evaluations per step of each fixed-step k-diffusion sampler (dpmpp_3m is dpmpp_3m_sde with eta = 0).
KD_COST = {"euler": 1, "heun": 2, "dpm_2": 2, "lms": 1, "dpmpp_2m": 1, "dpmpp_3m": 1}


def load_k_diffusion_sampling():
    """Import ``k_diffusion.sampling`` without the package ``__init__`` (which pulls in a training stack).

    ``sampling.py`` needs only ``utils.append_dims`` from its package; if ``k_diffusion.utils`` cannot be
    imported (PIL, safetensors, torchvision missing), a stand-in module provides that one function.
    """
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("k-diffusion is not installed: pip install --no-deps k-diffusion")
    root = Path(list(spec.submodule_search_locations)[0])
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    sys.modules["k_diffusion"] = pkg
    try:
        import k_diffusion.utils  # noqa: F401
    except ImportError:
        utils = types.ModuleType("k_diffusion.utils")
        utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
        sys.modules["k_diffusion.utils"] = pkg.utils = utils
    mod_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
    sampling = importlib.util.module_from_spec(mod_spec)
    sys.modules["k_diffusion.sampling"] = sampling
    mod_spec.loader.exec_module(sampling)
    return sampling


def vp_denoiser(law, sde):
    """k-diffusion's denoiser D(y, sigma_k) = E[x_0 | x_t = alpha(t) y] at the VP time t with sigma(t)/alpha(t) = sigma_k."""
    score = law.score(sde)

    def denoise(y, sigma_k):
        t = sde.t_from_log_snr(-torch.log(sigma_k))
        alpha, sigma = sde.marginal(t)
        a, s = alpha[:, None], sigma[:, None]
        x = a * y
        return (x + s**2 * score(x, t)) / a

    return denoise


def run_k_diffusion(kd, law, sde, x_T, budgets, *, schedules=KD_SCHEDULES, methods=tuple(KD_COST), tolerances=()):
    """k-diffusion's fixed-step samplers on each grid and budget (and ``dpm_adaptive`` over ``tolerances``).

    The grids are scoreflow's, converted to ``sigma/alpha`` and ending at ``t_min`` (no appended zero), the state
    is ``y = x / alpha``.
    """
    denoise = vp_denoiser(law, sde)
    ends = torch.tensor([sde.T, sde.t_min], dtype=torch.float64)
    a_end = sde.marginal(ends)[0]
    y_T = x_T / a_end[0]
    samplers = {
        "euler": kd.sample_euler, "heun": kd.sample_heun, "dpm_2": kd.sample_dpm_2, "lms": kd.sample_lms,
        "dpmpp_2m": kd.sample_dpmpp_2m,
        "dpmpp_3m": lambda m, y, s, disable: kd.sample_dpmpp_3m_sde(m, y, s, eta=0.0, disable=disable),
    }
    rows = []
    for method in methods:
        per_step = KD_COST[method]
        for schedule in schedules:
            for budget in budgets:
                steps = max(1, budget // per_step)
                alpha, sigma = sde.marginal(time_grid(sde, steps, schedule))
                model = Counted(denoise)
                y = samplers[method](model, y_T.clone(), sigma / alpha, disable=True)
                rows.append(dict(library="k-diffusion", method=method, schedule=schedule, steps=steps, nfe=model.calls, x=a_end[1] * y))
    s_min, s_max = (torch.exp(-sde.log_snr(ends))).tolist()[::-1]
    for tol in tolerances:
        model = Counted(denoise)
        y = kd.sample_dpm_adaptive(model, y_T.clone(), s_min, s_max, rtol=tol, atol=tol, disable=True)
        rows.append(dict(library="k-diffusion", method="dpm_adaptive", schedule="adaptive", tol=tol, nfe=model.calls, x=a_end[1] * y))
    return rows


# Adams-Bashforth coefficients of iPNDM (Zhang & Chen 2023), newest noise prediction first.
_IPNDM = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def sample_ipndm(model, y, sigmas):
    """iPNDM in k-diffusion's variables: Euler in ``sigma`` on ``d = (y - D(y, sigma)) / sigma`` with the fixed-step
    Adams-Bashforth combinations of the last (up to four) ``d`` (lower order while the history fills); one NFE per step.
    """
    history = []
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        sigma = s * y.new_ones(y.shape[0])
        history.insert(0, (y - model(y, sigma)) / s)
        del history[4:]
        y = y + (s_next - s) * sum(c * d for c, d in zip(_IPNDM[len(history) - 1], history))
    return y


def run_ipndm(law, sde, x_T, budgets, *, schedules=KD_SCHEDULES):
    """iPNDM (:func:`sample_ipndm`) on each grid and budget, on the exact denoiser of :func:`vp_denoiser`."""
    denoise = vp_denoiser(law, sde)
    a_end = sde.marginal(torch.tensor([sde.T, sde.t_min], dtype=torch.float64))[0]
    rows = []
    for schedule in schedules:
        for budget in budgets:
            alpha, sigma = sde.marginal(time_grid(sde, budget, schedule))
            model = Counted(denoise)
            y = sample_ipndm(model, x_T / a_end[0], sigma / alpha)
            rows.append(dict(library="ipndm", method="ipndm", schedule=schedule, steps=budget, nfe=model.calls, x=a_end[1] * y))
    return rows


# ---------------------------------------------------------------------------------------------- diffusers

TRAIN_STEPS = 1000

#: name -> (scheduler class name, constructor options).
DIFFUSERS_CONFIGS = {
    "unipc_bh1_2": ("UniPCMultistepScheduler", dict(solver_type="bh1", solver_order=2)),
    "unipc_bh1_3": ("UniPCMultistepScheduler", dict(solver_type="bh1", solver_order=3)),
    "unipc_bh2_2": ("UniPCMultistepScheduler", dict(solver_type="bh2", solver_order=2)),
    "unipc_bh2_3": ("UniPCMultistepScheduler", dict(solver_type="bh2", solver_order=3)),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=3)),
    "deis_2": ("DEISMultistepScheduler", dict(solver_order=2)),
    "deis_3": ("DEISMultistepScheduler", dict(solver_order=3)),
    "sa_p2c2": ("SASolverScheduler", dict(predictor_order=2, corrector_order=2, tau_func=lambda t: 0.0)),
    "sa_p3c4": ("SASolverScheduler", dict(predictor_order=3, corrector_order=4, tau_func=lambda t: 0.0)),
}
#: The grids the peers run on: diffusers' own default (``"linspace"``: training indices evenly spaced, as usually
#: run) and, written into the scheduler after ``set_timesteps``, Karras' (rho = 7, N real steps from the largest to
#: the smallest training noise level) and scoreflow's log-SNR, capped log-SNR and uniform-t grids.
DIFFUSERS_SCHEDULES = ("linspace", "karras", "log_snr", "log_snr_capped", "t")
# Schedulers that otherwise step to sigma = 0 (t = 0, past t_min) are told to end at the smallest training sigma.
_ENDS_AT_SIGMA_MIN = {"UniPCMultistepScheduler", "DPMSolverMultistepScheduler"}


def discrete_vp_betas(sde, n: int = TRAIN_STEPS) -> torch.Tensor:
    r"""DDPM betas whose cumulative products are the continuous VP SDE's :math:`\alpha(t_k)^2` at :math:`t_k = t_{min} + k\,\tfrac{T - t_{min}}{n-1}`.

    Training index 0 is then exactly ``t_min`` and index ``n - 1`` exactly ``T``; between the indices diffusers
    interpolates its noise levels, and the model below is evaluated at the level the scheduler assigns its state,
    so the discrete and the continuous process agree wherever a scheduler steps.
    """
    ts = torch.linspace(sde.t_min, sde.T, n, dtype=torch.float64)
    abar = sde.marginal(ts)[0] ** 2
    return 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])


def make_scheduler(name: str, sde):
    """The diffusers scheduler ``name`` of :data:`DIFFUSERS_CONFIGS` on the discrete VP schedule, ending at ``t_min``."""
    import diffusers

    cls_name, options = DIFFUSERS_CONFIGS[name]
    extra = {"final_sigmas_type": "sigma_min"} if cls_name in _ENDS_AT_SIGMA_MIN else {}
    return getattr(diffusers, cls_name)(
        num_train_timesteps=TRAIN_STEPS, trained_betas=discrete_vp_betas(sde).numpy(), prediction_type="epsilon",
        timestep_spacing="linspace", **options, **extra,
    )


def diffusers_sample(scheduler, law, sde, x_T, steps: int, schedule: str = "linspace"):
    """Drive ``scheduler`` for ``steps`` inference steps from ``x_T``; returns (x at the final noise level, NFE).

    With ``schedule="linspace"`` the scheduler keeps its own timesteps and (float32) noise levels; otherwise its
    ``sigmas`` (:math:`\sigma/\alpha`, N + 1 of them, the last ``t_min``'s) are replaced by the grid
    ``time_grid(sde, steps, schedule)`` in float64 and its ``timesteps`` by their (fractional) training
    indices.  The model is the exact noise prediction :math:`\hat\varepsilon = -\sigma s(x, t)` at the continuous
    time t whose :math:`\sigma/\alpha` is ``sigmas[i]``, the noise level the scheduler integrates with.
    """
    score = law.score(sde)
    scheduler.set_timesteps(steps)
    if schedule != "linspace":
        grid = time_grid(sde, steps, schedule)
        alpha, sigma = sde.marginal(grid)
        scheduler.sigmas = sigma / alpha
        scheduler.timesteps = (grid[:-1] - sde.t_min) / (sde.T - sde.t_min) * (TRAIN_STEPS - 1)
    sigmas = scheduler.sigmas.to(torch.float64)
    scheduler.set_begin_index(0)

    def eps(x, i):
        t = sde.t_from_log_snr(-torch.log(sigmas[i])).expand(x.shape[0])
        return -sde.marginal(t)[1][:, None] * score(x, t)

    model = Counted(eps)
    x = x_T.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(model(x, i), timestep, x).prev_sample
    return x, model.calls


def run_diffusers(law, sde, x_T, budgets, *, configs=tuple(DIFFUSERS_CONFIGS), schedules=DIFFUSERS_SCHEDULES):
    """Every diffusers configuration on each grid at each budget (NFE = inference steps)."""
    rows = []
    for name in configs:
        for schedule in schedules:
            for budget in budgets:
                x, nfe = diffusers_sample(make_scheduler(name, sde), law, sde, x_T, budget, schedule)
                rows.append(dict(library="diffusers", method=name, schedule=schedule, steps=budget, nfe=nfe, x=x))
    return rows


def problem_set(seeds, named) -> list[tuple[str, GaussianMixture, int]]:
    """(label, law, seed of the prior draws) of the random mixtures ``random_mixture(seed)`` and the named laws
    (``scoreflow.testing.make_law``, drawn with seed 0): the problem sets of the grid benchmarks."""
    out = [(f"random{seed}", random_mixture(seed)[0], seed) for seed in seeds]
    return out + [(law, make_law(law), 0) for law in named]


def grid_or_none(sde, steps: int, schedule: str, **options) -> torch.Tensor | None:
    """``time_grid(sde, steps, schedule, **options)``, or ``None`` where the process does not define it (a log-SNR
    or Karras grid on a path that reaches pure noise)."""
    try:
        return time_grid(sde, steps, schedule, **options)
    except ValueError:
        return None


def grid_path_errors(law, sde, x_T: torch.Tensor, methods, grids: dict, budgets) -> dict:
    """RMS path error against ``scoreflow.testing.reference_flow_map`` of each ``sample_ode`` method on each grid
    (label -> (schedule, options of ``time_grid``)) and budget: ``{method: {label: {str(steps): error}}}``, inf where
    not finite, grids the process does not define left out."""
    reference = reference_flow_map(law, sde, x_T, sde.T, sde.t_min)
    model = law.score(sde)  # on a path to pure noise this model also carries the exact velocity
    out = {}
    for method in methods:
        out[method] = {}
        for label, (schedule, options) in grids.items():
            row = {}
            for steps in budgets:
                times = grid_or_none(sde, steps, schedule, **options)
                if times is not None:
                    error = rms_error(sample_ode(model, sde, x_T, method=method, schedule=times).samples, reference)
                    row[str(steps)] = error if math.isfinite(error) else math.inf  # keys as in the JSON
            if row:
                out[method][label] = row
    return out


def grid_ratios(results: list[dict], process: str, label: str, base: str, steps: int) -> list[float]:
    """Error on grid ``label`` / error on grid ``base`` at ``steps``, over the problems and methods of a grid study's
    ``results`` (rows with ``process`` and ``errors`` as :func:`grid_path_errors` gives them) under ``process``."""
    out = []
    for r in results:
        if r["process"] != process:
            continue
        for errors in r["errors"].values():
            if isinstance(errors, dict) and label in errors:
                mine, reference = errors[label][str(steps)], errors[base][str(steps)]
                out.append(mine / reference if reference > 0 else math.inf)
    return out
