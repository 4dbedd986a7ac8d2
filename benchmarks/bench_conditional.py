"""Conditional sampling against exact posteriors: every conditional method at equal NFE, beside the
exact-conditional-score samplers and the exact-sample floor.

Problems are drawn at random per seed (VP SDE, float64):

- ``ring2d``: 6-10 equal components on a circle of radius 2 at a random rotation, component std 0.15-0.3;
- ``mixture8d``: 3-6 components with Dirichlet(2) weights, means at distance 2.4-3.6 from the origin and
  rotated covariances with eigenvalues log-uniform in [0.05, 0.5] (correlated coordinates).

Two observations of one exact draw x* of the law per problem:

- ``inpaint``: a random half of the coordinates observed exactly; the target is the posterior of the other
  half, ``law.condition(mask, x*)``;
- ``linear``: y = A x* + n with A of shape (D/2, D) (Gaussian entries over sqrt(D)), noise std 0.1-0.4; the
  target is ``law.condition_linear(A, y, s)``.

Every method starts from the same prior draws and the target is the posterior diffused to t_min (what an exact
sampler stopped at t_min returns).  Metrics on the unobserved block (inpainting) or the whole state (linear):
sliced W2 to a 20000-point exact sample of the target, the error of the sample mean (Euclidean), and the total
variation between the shares of samples nearest each component of the target and the exact shares.  The floor
is an exact sample of the same size (5 replicates per problem).  A run whose samples leave the ball of
radius 1e3 (or turn non-finite) is counted as diverged.  DPS's likelihood width for exact observations is set a priori to 5 % of
the data's coordinate standard deviation (the DPS paper's 0.05 on [-1, 1] images).

    python benchmarks/bench_conditional.py                                  # seeds 0-5: JSON, markdown, plot
    python benchmarks/bench_conditional.py --seeds 0 --n 1000 --budgets 20 100   # quick look
    python benchmarks/bench_conditional.py --from-json                      # tables and plot from the saved run
    python benchmarks/bench_conditional.py --only "dps + x̂0 clipping, ancestral"   # rerun one method into the saved run
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import scoreflow as sf
from scoreflow.analytic import GaussianMixture, inpainting_score, observation_log_likelihood
from scoreflow.metrics import mode_weights, sliced_wasserstein2

from peers import read_json, save_figure, write_json, write_text

BUDGETS = (10, 20, 50, 100, 200, 500, 1000)
DTYPE = torch.float64
FLOOR_REPLICATES = 5  # exact samples per problem: SW2 of bimodal posteriors is dominated by mode-share noise
DIVERGED = 1e3  # a sample this far out (the data lie within ~5 of the origin), or non-finite, counts as diverged


def draw_ring(seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(1000 + seed)
    k = int(torch.randint(6, 11, (), generator=g))
    angle = torch.rand((), generator=g, dtype=DTYPE) * 2 * math.pi + torch.arange(k, dtype=DTYPE) * (2 * math.pi / k)
    std = 0.15 + 0.15 * torch.rand((), generator=g, dtype=DTYPE)
    means = 2.0 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(torch.ones(k, dtype=DTYPE), means, std**2 * torch.eye(2, dtype=DTYPE).expand(k, 2, 2))


def draw_mixture8d(seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(2000 + seed)
    k, d = int(torch.randint(3, 7, (), generator=g)), 8
    weights = -torch.log(torch.rand(2, k, generator=g, dtype=DTYPE)).sum(0)  # Gamma(2) draws: Dirichlet(2) once normalized
    direction = torch.randn(k, d, generator=g, dtype=DTYPE)
    means = direction / direction.norm(dim=1, keepdim=True) * (2.4 + 1.2 * torch.rand(k, 1, generator=g, dtype=DTYPE))
    q = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=DTYPE))[0]
    eig = torch.exp(math.log(0.05) + math.log(10.0) * torch.rand(k, d, generator=g, dtype=DTYPE))
    return GaussianMixture(weights, means, (q * eig.unsqueeze(-2)) @ q.transpose(-1, -2))


LAWS: dict[str, Callable[[int], GaussianMixture]] = {"ring2d": draw_ring, "mixture8d": draw_mixture8d}


@dataclass
class Task:
    """One observation of one problem: the target, the exact score, and what each method needs."""

    law: GaussianMixture
    sde: sf.VPSDE
    kind: str  # "inpaint" or "linear"
    target: GaussianMixture  # the posterior diffused to t_min, on the compared coordinates
    exact_score: Callable
    log_likelihood: Callable  # exact log p_t(observation | x_t)
    keep: torch.Tensor  # the compared coordinates (unobserved ones, or all)
    operator: Callable  # the measurement, for DPS
    y: torch.Tensor
    noise_std: float  # of the observation (DPS's likelihood width for exact observations)
    mask: torch.Tensor | None = None
    known: torch.Tensor | None = None


def draw_task(law: GaussianMixture, kind: str, seed: int) -> Task:
    g = torch.Generator().manual_seed(3000 + seed)
    sde, d = sf.VPSDE(), law.dim
    x_star = law.sample(1, generator=g)[0]
    if kind == "inpaint":
        mask = torch.zeros(d, dtype=torch.bool)
        mask[torch.randperm(d, generator=g)[: d // 2]] = True
        post = law.condition(mask, x_star)
        width = 0.05 * float(law.covariance.diagonal().mean().sqrt())
        return Task(law, sde, kind, post.marginal(sde, sde.t_min), inpainting_score(law, sde, mask, x_star),
                    observation_log_likelihood(law, sde, mask=mask, values=x_star), ~mask,
                    lambda x: x[:, mask], x_star[mask], width, mask, x_star)
    A = torch.randn(d // 2, d, generator=g, dtype=DTYPE) / math.sqrt(d)
    noise_std = float(0.1 + 0.3 * torch.rand((), generator=g, dtype=DTYPE))
    y = A @ x_star + noise_std * torch.randn(d // 2, generator=g, dtype=DTYPE)
    post = law.condition_linear(A, y, noise_std)
    return Task(law, sde, kind, post.marginal(sde, sde.t_min), post.score(sde),
                observation_log_likelihood(law, sde, A=A, y=y, noise_std=noise_std), torch.ones(d, dtype=torch.bool),
                lambda x: x @ A.T, y, noise_std)


# ---------------------------------------------------------------------------------------------- methods
# Each runner takes (task, budget, x_T, generator) and returns (samples, nfe), or None where the budget is
# too small for the method.


def _ancestral(score, task, budget, x_T, g):
    res = sf.sample_pc(score, task.sde, x_T, steps=budget, predictor="ancestral", corrector=None, generator=g)
    return res.samples, res.nfe


def _ode(score, task, budget, x_T, method="dpmpp_3m_pc"):
    res = sf.sample_ode(score, task.sde, x_T, method=method, steps=budget)
    return res.samples, res.nfe


def _repaint_nfe(steps: int, resample: int, jump: int) -> int:
    visited = sf.conditional.repaint_schedule(steps, resample, jump)
    return sum(b > a for a, b in zip(visited, visited[1:]))


def _repaint_steps(budget: int, resample: int, jump: int) -> int | None:
    """The most grid steps whose RePaint schedule costs at most ``budget`` score evaluations (None if none fits)."""
    fits = [steps for steps in range(jump + 1, budget + 1) if _repaint_nfe(steps, resample, jump) <= budget]
    return max(fits, default=None)


def _inpaint(method, resample=None, jump=1):
    def run(task, budget, x_T, g):
        steps = budget if method == "replacement" else _repaint_steps(budget, resample, jump)
        if steps is None:
            return None
        kw = {} if method == "replacement" else {"resample": resample, "options": {"jump": jump}}
        res = sf.inpaint(task.law.score(task.sde), task.sde, x_T, known=task.known, mask=task.mask, method=method,
                         steps=steps, predictor="ancestral", generator=g, **kw)
        return res.samples, res.nfe
    return run


def _dps(task):
    return sf.dps_score(task.law.score(task.sde), task.sde, task.operator, task.y, noise_std=task.noise_std)


def _dps_clipped(task):
    """DPS with x̂0 clipped inside the score (DPM-Solver's correcting_x0_fn) at a bound set a priori from the data
    law: the largest |mean| + 3 std over the coordinates."""
    bound = float((task.law.mean.abs() + 3 * task.law.covariance.diagonal().sqrt()).max())
    return sf.x0_correction(task.sde, "clipping", max_value=bound).wrap(_dps(task))


def _guided(task, scale):
    return sf.classifier_guided_score(task.law.score(task.sde), task.log_likelihood, scale=scale)


METHODS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "exact score, ancestral": (("inpaint", "linear"), lambda t, b, x, g: _ancestral(t.exact_score, t, b, x, g)),
    "exact score, dpmpp_3m_pc": (("inpaint", "linear"), lambda t, b, x, g: _ode(t.exact_score, t, b, x)),
    "replacement, ancestral": (("inpaint",), _inpaint("replacement")),
    "repaint R=4, ancestral": (("inpaint",), _inpaint("repaint", 4, 1)),
    "repaint R=10 jump=10, ancestral": (("inpaint",), _inpaint("repaint", 10, 10)),
    "dps, ancestral": (("inpaint", "linear"), lambda t, b, x, g: _ancestral(_dps(t), t, b, x, g)),
    "dps, dpmpp_2m": (("inpaint", "linear"), lambda t, b, x, g: _ode(_dps(t), t, b, x, "dpmpp_2m")),
    "dps + x̂0 clipping, ancestral": (("inpaint", "linear"), lambda t, b, x, g: _ancestral(_dps_clipped(t), t, b, x, g)),
    "guidance w=2, dpmpp_3m_pc": (("inpaint", "linear"), lambda t, b, x, g: _ode(_guided(t, 2.0), t, b, x)),
}


# ---------------------------------------------------------------------------------------------- metrics
def metrics(task: Task, x: torch.Tensor, reference: torch.Tensor, exact_shares: torch.Tensor, seed: int) -> dict:
    x = x[:, task.keep]
    sw2 = sliced_wasserstein2(x, reference, n_projections=256, generator=torch.Generator().manual_seed(seed))
    shares = mode_weights(task.target, x)
    return {
        "sw2": sw2,
        "mean_error": float((x.mean(0) - task.target.mean).norm()),
        "mode_tv": float(0.5 * (shares - exact_shares).abs().sum()),
    }


def run(seeds, budgets, n: int, n_reference: int, methods=tuple(METHODS), floor: bool = True, log=print) -> list[dict]:
    rows = []
    for law_name, draw in LAWS.items():
        for seed in seeds:
            law = draw(seed)
            for kind in ("inpaint", "linear"):
                task = draw_task(law, kind, seed)
                g_ref = torch.Generator().manual_seed(4000 + seed)
                reference = task.target.sample(n_reference, generator=g_ref)
                exact_shares = mode_weights(task.target, reference)
                base = {"law": law_name, "seed": seed, "task": kind, "components": law.n_components,
                        "noise_std": task.noise_std, "posterior_weights": task.target.weights.tolist()}
                for replicate in range(FLOOR_REPLICATES if floor else 0):
                    floor = metrics(task, _embed(task, task.target.sample(n, generator=g_ref)), reference, exact_shares, seed)
                    rows.append({**base, "method": "exact samples (floor)", "replicate": replicate, "nfe": 0, **floor})
                x_T = task.sde.prior_sample((n, law.dim), generator=torch.Generator().manual_seed(5000 + seed), dtype=DTYPE)
                for name, (kinds, runner) in METHODS.items():
                    if kind not in kinds or name not in methods:
                        continue
                    for budget in budgets:
                        start = time.perf_counter()
                        try:
                            out = runner(task, budget, x_T, torch.Generator().manual_seed(6000 + seed))
                        except sf.NonFiniteError:
                            out = (torch.full_like(x_T, math.nan), budget)
                        if out is None:
                            continue
                        samples, nfe = out
                        row = {**base, "method": name, "budget": budget, "nfe": nfe, "seconds": time.perf_counter() - start}
                        if not bool(samples.abs().max() < DIVERGED):
                            rows.append({**row, "diverged": True, "sw2": math.inf, "mean_error": math.inf, "mode_tv": 1.0})
                        else:
                            rows.append({**row, **metrics(task, samples, reference, exact_shares, seed)})
                    log(f"{law_name} seed {seed} {kind}: {name} done")
    return rows


def _embed(task: Task, x_keep: torch.Tensor) -> torch.Tensor:
    """A full state whose compared coordinates are ``x_keep`` (for the floor, which samples the target directly)."""
    x = torch.zeros(x_keep.shape[0], task.law.dim, dtype=x_keep.dtype)
    x[:, task.keep] = x_keep
    return x


# ---------------------------------------------------------------------------------------------- report
def _quantiles(values: list[float]) -> tuple[float, float, float]:
    v = torch.tensor(values, dtype=DTYPE)
    return float(v.median()), float(v.min()), float(v.max())


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    med, lo, hi = _quantiles(values)
    diverged = sum(math.isinf(v) for v in values)
    if math.isinf(med):
        return f"diverged ({diverged}/{len(values)})"
    return f"{med:.3g} [{lo:.2g}, {hi:.2g}]" + (f" ({diverged}/{len(values)} diverged)" if diverged else "")


def tables(rows: list[dict], budgets) -> str:
    out = []
    for law_name in LAWS:
        for kind in ("inpaint", "linear"):
            sub = [r for r in rows if r["law"] == law_name and r["task"] == kind]
            if not sub:
                continue
            for metric, title in (("sw2", "sliced W2"), ("mean_error", "posterior-mean error"), ("mode_tv", "mode-weight TV")):
                out += [f"### {law_name}, {kind}: {title} (median [min, max] over {len({r['seed'] for r in sub})} problems)", ""]
                out += ["| method | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|" + " --- |" * (len(budgets) + 1)]
                floor = [r[metric] for r in sub if r["method"] == "exact samples (floor)"]
                out.append("| exact samples (floor) | " + " | ".join(_cell(floor) for _ in budgets) + " |")
                for name in METHODS:
                    if not any(r["method"] == name for r in sub):
                        continue
                    cells = [_cell([r[metric] for r in sub if r["method"] == name and r["budget"] == b]) for b in budgets]
                    out.append(f"| {name} | " + " | ".join(cells) + " |")
                out.append("")
    return "\n".join(out)


def bias_table(rows: list[dict], budget: int) -> str:
    """Each method at ``budget`` NFE on the four problem sets: SW2, posterior-mean error and mode-weight TV (medians)."""
    sets = [(a, b) for a in LAWS for b in ("inpaint", "linear")]
    head = "| method | " + " | ".join(f"{a}, {b}: SW2 / mean error / mode TV" for a, b in sets) + " |"
    out = [head, "|" + " --- |" * (len(sets) + 1)]
    for name in ["exact samples (floor)", *METHODS]:
        cells = []
        for law_name, kind in sets:
            mine = [r for r in rows if r["law"] == law_name and r["task"] == kind and r["method"] == name
                    and (name.startswith("exact samples") or r["budget"] == budget)]
            cells.append(" / ".join(_cell([r[m] for r in mine]).split(" [")[0] for m in ("sw2", "mean_error", "mode_tv")) if mine else "–")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for ax, (law_name, kind) in zip(axes.flat, [(a, b) for a in LAWS for b in ("inpaint", "linear")]):
        sub = [r for r in rows if r["law"] == law_name and r["task"] == kind]
        floor = [r["sw2"] for r in sub if r["method"] == "exact samples (floor)"]
        if floor:
            med, lo, hi = _quantiles(floor)
            ax.axhspan(lo, hi, color="0.85")
            ax.axhline(med, color="k", lw=1, label="exact samples (floor)")
        for name in METHODS:
            mine = [r for r in sub if r["method"] == name]
            # a budget is drawn where the median run did not diverge; the band spans the runs that did not
            points = []
            for b in sorted({r["budget"] for r in mine}):
                runs = [r for r in mine if r["budget"] == b]
                med, _, _ = _quantiles([r["sw2"] for r in runs])
                finite = [r["sw2"] for r in runs if not r.get("diverged")]
                if math.isfinite(med):
                    points.append((min(r["nfe"] for r in runs), med, min(finite), max(finite)))
            if points:
                nfe, med, lo, hi = zip(*points)
                ax.plot(nfe, med, marker="o", ms=3, color=colors[name], label=name)
                ax.fill_between(nfe, lo, hi, color=colors[name], alpha=0.12)
        ax.set(xscale="log", yscale="log", title=f"{law_name}, {kind}", xlabel="NFE", ylabel="sliced W2 to the exact posterior")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle("median and range over the random problems; grey: exact samples of the same size", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--n", type=int, default=4000, help="samples per run")
    parser.add_argument("--n-reference", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conditional"))
    parser.add_argument("--from-json", action="store_true", help="only rebuild the tables and the plot from OUT/conditional.json")
    parser.add_argument("--only", nargs="+", choices=list(METHODS), metavar="METHOD",
                        help="run only these methods and replace their rows in OUT/conditional.json (same seeds and budgets)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        rows = read_json(args.out / "conditional.json")["rows"]
        args.budgets = sorted({r["budget"] for r in rows if "budget" in r})
    else:
        log = lambda msg: print(msg, flush=True)  # noqa: E731
        runs = {k: str(v) for k, v in vars(args).items()}
        if args.only:  # the saved run's arguments stay; each rerun of some methods is listed after them
            saved = read_json(args.out / "conditional.json")
            rows = [r for r in saved["rows"] if r["method"] not in args.only]
            rows += run(args.seeds, args.budgets, args.n, args.n_reference, methods=args.only, floor=False, log=log)
            runs = {**saved["args"], "reruns": [*saved["args"].get("reruns", []), runs]}
        else:
            rows = run(args.seeds, args.budgets, args.n, args.n_reference, log=log)
        write_json(args.out / "conditional.json", {"args": runs, "rows": rows})
    text = f"### Every method at {max(args.budgets)} NFE (medians over the problems)\n\n{bias_table(rows, max(args.budgets))}\n\n"
    text += tables(rows, args.budgets)
    write_text(args.out / "conditional.md", text)
    plot(rows, args.out / "conditional.png")
    print(text)


if __name__ == "__main__":
    main()
