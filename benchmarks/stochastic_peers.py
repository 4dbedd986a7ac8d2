"""The samplers of bench_stochastic.py: scoreflow's, k-diffusion's and diffusers' stochastic samplers, each with the
reverse SDE it converges to, and the drivers that run the peers on scoreflow's Brownian path.

Every sampler is a :class:`Sampler` with a *limit*: the SDE its solutions converge to, pathwise, as its steps shrink
(the reverse SDEs of one process differ only in their noise, see ``scoreflow.solvers.extended_sde``).  The
benchmark pairs each sampler with a fine solve of *its own* limit on the same path: ``("eta", v)`` is the SDE whose
noise variance rate is the fraction v of the reverse SDE's (k-diffusion's ancestral ``eta`` is the standard deviation
fraction, so v = eta^2; ``dpmpp_2m_sde``'s and ``dpmpp_3m_sde``'s ``eta`` is v itself), ``("er_sde", name)`` an
ER-SDE noise scale function, ``("sa", tau, t0, t1)`` SA-Solver's window.

A sampler's *setting* says which noise it was given: ``"eta=1"`` (the reverse SDE), ``"eta=v"`` (the reduced
variance fraction v, the same for every library) or ``"own"`` (a method's own noise schedule, which peers lack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import scoreflow as sf
from peers import Counted, discrete_vp_betas, vp_denoiser

__all__ = ["Sampler", "PathNoise", "scoreflow_samplers", "kd_samplers", "diffusers_samplers", "reference_sampler",
           "run_k_diffusion", "run_diffusers"]


@dataclass(frozen=True)
class Sampler:
    """One configured sampler: library, label, its method or function, NFE per step, options, limit SDE and setting."""

    library: str
    label: str
    method: str
    per_step: int
    options: dict = field(default_factory=dict, hash=False)
    limit: tuple = ("eta", 1.0)
    setting: str = "eta=1"


def _eta_label(v):
    return f"eta={v:g}"


def scoreflow_samplers(reduced: list[float]) -> list[Sampler]:
    """scoreflow's native stochastic methods on the reverse SDE, at each reduced variance fraction, and the new methods
    on their own noise.  (``er_sde`` with ``noise_scale="sde"`` is ``dpmpp_3m_sde``: not repeated.)"""
    out = []
    for v in [1.0, *reduced]:
        for name in ("ddim", "dpmpp_sde"):  # (their eta is the standard deviation fraction)
            out.append(Sampler("scoreflow", f"{name} eta={math.sqrt(v):.3g}", name, sf.get_method("sde", name).nfe_per_step,
                               {"eta": math.sqrt(v)}, ("eta", v), _eta_label(v)))
        names = ("dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2m_sde_pc", "dpmpp_3m_sde_pc") if v == 1.0 else ("dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_3m_sde_pc")
        for name in names:
            out.append(Sampler("scoreflow", f"{name} eta={v:g}", name, 1, {"eta": v}, ("eta", v), _eta_label(v)))
    # SA-Solver with the reverse SDE's noise throughout, then ER-SDE and SA-Solver with their own (reduced) noise
    out.append(Sampler("scoreflow", "sa_solver tau=1 on [0, 1]", "sa_solver", 1, {"tau_tmin": 0.0, "tau_tmax": 1.0}))
    out.append(Sampler("scoreflow", "er_sde (er5)", "er_sde", 1, {}, ("er_sde", "er5"), "own"))
    out.append(Sampler("scoreflow", "sa_solver (tau=1 on [0.2, 0.8] T)", "sa_solver", 1, {}, ("sa", 1.0, 0.2, 0.8), "own"))
    return out


#: k-diffusion's stochastic samplers: function, NFE per step, whether its ``eta`` is the ancestral (standard deviation) one.
KD = {
    "euler_ancestral": ("sample_euler_ancestral", 1, True),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", 2, True),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", 2, True),
    "dpmpp_sde": ("sample_dpmpp_sde", 2, True),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", 1, False),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", 1, False),
}


def kd_samplers(reduced: list[float]) -> list[Sampler]:
    """The six k-diffusion samplers at eta = 1 and at each reduced variance fraction (their eta converted)."""
    out = []
    for v in [1.0, *reduced]:
        for label, (fn, per, ancestral) in KD.items():
            eta = math.sqrt(v) if ancestral else v
            out.append(Sampler("k-diffusion", f"{label} eta={eta:.3g}", fn, per, {"eta": eta}, ("eta", v), _eta_label(v)))
    return out


#: diffusers' stochastic schedulers on the discrete VP schedule (peers.discrete_vp_betas): DDIM with eta = 1 on its
#: "trailing" timesteps, SDE-DPM-Solver++(2M), SA-Solver (its default window tau = 1 on training steps 200-800, and tau = 1
#: throughout).  DPMSolverSDEScheduler is k-diffusion's sample_dpmpp_sde, run above from k-diffusion itself.
def diffusers_samplers(sde) -> list[Sampler]:
    dt = (sde.T - sde.t_min) / 999
    window = ("sa", 1.0, (sde.t_min + 200 * dt) / sde.T, (sde.t_min + 800 * dt) / sde.T)
    return [
        Sampler("diffusers", "DDIMScheduler eta=1", "DDIMScheduler", 1, {"eta": 1.0}),
        Sampler("diffusers", "DPMSolverMultistep sde-dpmsolver++ 2", "DPMSolverMultistepScheduler", 1,
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "final_sigmas_type": "sigma_min"}),
        Sampler("diffusers", "SASolver p2c2 tau=1 on [0, 1]", "SASolverScheduler", 1,
                {"predictor_order": 2, "corrector_order": 2, "tau_func": lambda t: 1.0}),
        Sampler("diffusers", "SASolver p3c4 tau=1 on [0, 1]", "SASolverScheduler", 1,
                {"predictor_order": 3, "corrector_order": 4, "tau_func": lambda t: 1.0}),
        Sampler("diffusers", "SASolver p2c2 (tau=1 on steps 200-800)", "SASolverScheduler", 1,
                {"predictor_order": 2, "corrector_order": 2, "tau_func": lambda t: 1.0 if 200 <= t <= 800 else 0.0}, window, "own"),
    ]


def reference_sampler(limit: tuple) -> tuple[str, dict]:
    """The scoreflow method and options of a fine solve of ``limit``: third-order multistep predictor-correctors."""
    kind = limit[0]
    if kind == "eta":
        return "dpmpp_3m_sde_pc", {"eta": limit[1]}
    if kind == "er_sde":
        return "er_sde", {"noise_scale": limit[1]}
    return "sa_solver", {"tau": limit[1], "tau_tmin": limit[2], "tau_tmax": limit[3]}


class PathNoise:
    """``noise(a, b)``: the standard normal (W(b) - W(a)) / sqrt(b - a) of scoreflow's Brownian path between two times t,
    for the peers (k-diffusion's ``noise_sampler(sigma, sigma_next)`` through :meth:`sigmas`)."""

    def __init__(self, bm, sde):
        self.bm, self.sde = bm, sde

    def solver_time(self, t) -> float:
        return min(max(self.sde.T - float(t), 0.0), self.bm.duration)

    def __call__(self, t_a, t_b):
        a, b = self.solver_time(t_a), self.solver_time(t_b)
        return self.bm(a, b) / math.sqrt(b - a)

    def sigmas(self, sigma, sigma_next):
        """k-diffusion's noise sampler: noise levels sigma/alpha to times (exactly the grid's times where they are)."""
        to_t = lambda s: self.sde.t_from_log_snr(-torch.log(torch.as_tensor(s, dtype=torch.float64)))  # noqa: E731
        return self(to_t(sigma), to_t(sigma_next))


def run_k_diffusion(kd, sampler: Sampler, law, sde, x_T, grid, noise: PathNoise):
    """k-diffusion's ``sampler`` on the exact denoiser in its variables, on the times ``grid``; returns (x_{t_min}, NFE)."""
    alpha, sigma = sde.marginal(grid)
    model = Counted(vp_denoiser(law, sde))
    y = getattr(kd, sampler.method)(model, x_T / alpha[0], sigma / alpha, disable=True, noise_sampler=noise.sigmas,
                                    **sampler.options)
    return alpha[-1] * y, model.calls


def _scheduler(sampler: Sampler, sde, steps: int):
    import diffusers

    # DDIM: the last step to t_min (not to alpha = 1), no clipping of the data prediction to [-1, 1]
    extra = {"timestep_spacing": "trailing", "set_alpha_to_one": False, "clip_sample": False} if sampler.method == "DDIMScheduler" else {}
    options = {k: v for k, v in sampler.options.items() if k != "eta"}
    scheduler = getattr(diffusers, sampler.method)(num_train_timesteps=1000, trained_betas=discrete_vp_betas(sde).numpy(),
                                                   prediction_type="epsilon", **options, **extra)
    scheduler.set_timesteps(steps)
    return scheduler


def run_diffusers(sampler: Sampler, law, sde, x_T, steps: int, schedule: str, noise: PathNoise):
    """A diffusers scheduler for ``steps`` steps from ``x_T`` (VP), its noise read from the path; returns (x, NFE, grid name).

    Schedulers with noise levels (``sigmas``) take scoreflow's ``schedule`` written into them (as peers.diffusers_sample);
    DDIM keeps its own "trailing" training indices.  Step i's noise is the path's increment between the times of its
    two noise levels: DDIM and DPMSolverMultistep take it as ``variance_noise``, SASolver draws it from
    ``randn_tensor``, which is replaced here by the path for the run.
    """
    import diffusers.schedulers.scheduling_sasolver as sasolver

    scheduler = _scheduler(sampler, sde, steps)
    dt = (sde.T - sde.t_min) / 999
    if sampler.method == "DDIMScheduler":
        ts = [sde.t_min + float(k) * dt for k in scheduler.timesteps] + [sde.t_min]
        schedule = "trailing"
    else:
        grid = sf.time_grid(sde, steps, schedule)
        alpha, sigma = sde.marginal(grid)
        scheduler.sigmas = sigma / alpha
        scheduler.timesteps = (grid[:-1] - sde.t_min) / dt
        ts = grid.tolist()
    scheduler.set_begin_index(0) if hasattr(scheduler, "set_begin_index") else None
    score = law.score(sde)

    def eps(x, i):
        t = torch.tensor(ts[i], dtype=torch.float64).expand(x.shape[0])
        return -sde.marginal(t)[1][:, None] * score(x, t)

    model, x = Counted(eps), x_T.clone()
    draw = sasolver.randn_tensor
    try:
        sasolver.randn_tensor = lambda shape, **kw: noise(ts[scheduler.step_index], ts[scheduler.step_index + 1]).reshape(shape)
        for i, timestep in enumerate(scheduler.timesteps):
            kwargs = {"variance_noise": noise(ts[i], ts[i + 1])} if sampler.method != "SASolverScheduler" else {}
            if "eta" in sampler.options:
                kwargs["eta"] = sampler.options["eta"]
            x = scheduler.step(model(x, i), timestep, x, **kwargs).prev_sample
    finally:
        sasolver.randn_tensor = draw
    return x, model.calls, schedule
