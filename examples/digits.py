r"""Real data end to end: a score model on scikit-learn's handwritten digits against a Gaussian and a flow.

    python examples/digits.py --quick --out runs/digits-quick     # ~70 s of CPU (1 500 training steps)
    python examples/digits.py --out runs/digits                   # the full run, ~260 s of CPU (8 000 steps)

The training budget is a fixed number of steps; the flow gets the score model's measured training wall time.

Data: ``load_digits()`` (1 797 images of 8 x 8 pixels, 17 grey levels 0..16), split by
``train_test_split(X, test_size=0.2, random_state=0)``; 10 % of the training split is held out as
validation (it picks the flow's checkpoint and the score model's weight average; the training
recipe was chosen on it too, by examples/digits_validation.py).  Every model sees uniformly dequantized data scaled to
``[-1, 1]``: :math:`y = -1 + 2(k + u)/17`, :math:`u \sim U[0, 1)^{64}`, so one bin has width 2/17 and the
test-set bits per dimension of the discrete 17-level data are bounded by
:math:`-\log p(y)/(64\ln 2) + \log_2 17 - \log_2 2` (``sf.bits_per_dim``); the test set is dequantized
once, with one seed, for all models.

Models, all fitted on the same training points:

- **Gaussian**: the full-covariance Gaussian of maximum likelihood for the dequantized training
  data, in closed form (mean of k + 1/2, covariance of k plus 1/12 per pixel, scaled).
- **score model**: a VP-SDE score :math:`s = s_G - \hat r/\sigma`, the Gaussian's exact score
  :math:`s_G` (``sf.analytic.Gaussian(...).score(sde)``) plus a residual noise prediction
  :math:`\hat r = c\tanh(\mathrm{MLP}(x, t)/c)` trained with ``sf.losses.sde_dsm_loss`` (likelihood
  weighting, t importance-sampled in the log-SNR, dropout, an EMA of the weights: ``train_score``).  The
  Gaussian part starts the model at the Gaussian baseline and keeps the probability-flow ODE
  stable where the data never went; the bound c keeps the MLP's linear growth far from the data
  from making trajectories blow up (without it a few test points were sent to :math:`|x_T| > 10^5`).
  Test NLL by ``sf.log_likelihood`` with the exact trace (dopri5) and with Hutchinson's estimator
  (Rademacher probes, their standard error).
- **flow**: a zuko masked autoregressive flow trained by maximum likelihood for the same wall time
  as the score model; the checkpoint with the best validation NLL is kept (it overfits after ~1 000
  steps otherwise).

Samples: the score model with ``dpmpp_3m_pc`` (20 steps), Euler-Maruyama on the reverse SDE and
dopri5; the baselines by their own samplers.  A logistic-regression digit classifier trained on the
real training split reports each sample set's class histogram and mean confidence (max probability).

``--out DIR`` writes ``DIR/results.json``, ``DIR/results.md`` and ``DIR/digits.png``.  Needs the
``digits`` extra (scikit-learn), matplotlib, and ``pip install --no-deps zuko``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import scoreflow as sf

N_BINS, DATA_RANGE, DIM = 17, (-1.0, 1.0), 64


@dataclass(frozen=True)
class Budget:
    """How much work a run does; ``--quick`` is the CI-sized one."""

    train_steps: int
    tol: float  # rtol = atol of the likelihood and dopri5 solves
    n_probes: int  # Hutchinson probes per test point
    n_samples: int  # samples per sampler for the classifier
    sde_steps: int
    checks: int  # validation scorings of the score model's weight average (the best is kept)


QUICK = Budget(train_steps=1500, tol=1e-4, n_probes=4, n_samples=200, sde_steps=200, checks=1)
FULL = Budget(train_steps=8000, tol=1e-5, n_probes=16, n_samples=1000, sde_steps=500, checks=4)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, status 2
        print(f"digits.py: {message}", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI-sized run (at most ~2 minutes on two cores)")
    parser.add_argument("--out", type=Path, default=Path("runs/digits"), help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds training, dequantization, probes and samples")
    parser.add_argument("--threads", type=_positive_int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--train-steps", type=_positive_int, default=None, help="override the score model's steps")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"argument --out: expected a folder, got the file {str(args.out)!r}")
    return args


# ----------------------------------------------------------------------------------- data
def load_split(seed: int):
    """Integer levels ``(train, validation, test)`` and the classifier's full training split (numpy)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.2, random_state=0)
    fit, val = train_test_split(x_train, test_size=0.1, random_state=seed)
    as_levels = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_levels(fit), as_levels(val), as_levels(x_test), (x_train, y_train, x_test, y_test)


def dequantized(levels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return sf.dequantize(levels, N_BINS, data_range=DATA_RANGE, generator=generator)


def to_levels(y: torch.Tensor) -> torch.Tensor:
    """Back to grey levels 0..16: the bin each dequantized value falls in."""
    lo, hi = DATA_RANGE
    return ((y - lo) / (hi - lo) * N_BINS).floor().clamp(0, N_BINS - 1)


def bpd(log_prob: torch.Tensor) -> torch.Tensor:
    """Bits per dimension of the discrete 17-level data from log-densities of the dequantized points."""
    return sf.bits_per_dim(log_prob, DIM, n_bins=N_BINS, data_range=DATA_RANGE)


# ----------------------------------------------------------------------------------- models
def fit_gaussian(levels: torch.Tensor) -> sf.analytic.Gaussian:
    """Maximum-likelihood Gaussian of the uniformly dequantized data, in closed form."""
    lo, hi = DATA_RANGE
    width = (hi - lo) / N_BINS
    k = levels.double()
    mean = lo + width * (k.mean(0) + 0.5)
    cov = width**2 * (torch.cov(k.T, correction=0) + torch.eye(DIM, dtype=torch.float64) / 12)
    return sf.analytic.Gaussian(mean.float(), cov.float())


class ResidualEps(torch.nn.Module):
    r"""Noise prediction :math:`\hat\varepsilon_G(x, t) + c\tanh(\mathrm{MLP}(x, t)/c)`: a Gaussian's plus a bounded residual."""

    def __init__(self, gaussian: sf.analytic.Gaussian, sde: sf.ForwardSDE, width: int = 256, depth: int = 3,
                 bound: float = 1.0, n_freq: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.sde, self.bound = sde, bound
        self.gaussian_eps = sf.eps_from_score(gaussian.score(sde), sde)
        self.register_buffer("freq", torch.randn(n_freq, generator=torch.Generator().manual_seed(1)))
        self.inp = torch.nn.Linear(DIM + 2 * n_freq, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Dropout(dropout), torch.nn.Linear(width, width)) for _ in range(depth)
        )
        self.out = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(width, DIM))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = self.sde.log_snr(t)[:, None] / 4 * self.freq  # time enters through the log-SNR
        h = self.inp(torch.cat([x, phase.sin(), phase.cos()], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.gaussian_eps(x, t) + self.bound * torch.tanh(self.out(h) / self.bound)


def train_score(fit: torch.Tensor, val_y: torch.Tensor, gaussian, sde, steps: int, seed: int, *, checks: int = 4,
                dropout: float = 0.1, weighting: str = "likelihood", time_sampling: str = "log_snr",
                ema: float | None = None) -> tuple[torch.nn.Module, float, dict]:
    r"""Train the residual network with ``sde_dsm_loss``; returns the score, the wall time and a summary.

    The defaults are the recipe chosen on the validation split (examples/digits_validation.py): likelihood
    weighting :math:`\lambda = g^2` with t importance-sampled uniformly in the log-SNR, dropout 0.1 and an
    exponential moving average of the weights (decay ``ema``, by default 1 - 8/steps: it averages about the
    last eighth of training, 0.999 for 8 000 steps; 0 keeps the last weights).  The average is scored on the validation digits ``checks``
    times, evenly over the second half of training (exact trace, ``rtol = atol = 1e-3``), and the best is
    kept, as the flow keeps its best checkpoint; that time counts as training time.
    """
    torch.manual_seed(seed)
    eps_net = ResidualEps(gaussian, sde, dropout=dropout)
    score = sf.score_from_eps(eps_net, sde)
    decay = max(0.0, 1 - 8 / steps) if ema is None else ema
    average = torch.optim.swa_utils.AveragedModel(eps_net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))
    average.eval()  # only evaluated: its dropout stays off
    opt = torch.optim.Adam(eps_net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    check_at = {steps - i * (steps // 2) // checks for i in range(checks)}
    g = torch.Generator().manual_seed(seed + 1)
    best, best_bpd, best_step, trail = None, math.inf, 0, {}
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = dequantized(fit[torch.randint(len(fit), (256,), generator=g)], g)
        loss = sf.losses.sde_dsm_loss(score, sde, batch, weighting=weighting, time_sampling=time_sampling, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        average.update_parameters(eps_net)
        if step in check_at:
            with torch.no_grad():
                val = sf.log_likelihood(sf.score_from_eps(average.module, sde), sde, val_y, rtol=1e-3, atol=1e-3)
            trail[step] = float(bpd(val.log_prob).mean())
            if trail[step] < best_bpd:
                best, best_bpd, best_step = copy.deepcopy(average.module.state_dict()), trail[step], step
    average.module.load_state_dict(best)
    summary = {"last_loss": loss.item(), "best_step": best_step, "validation_bpd": trail}
    return sf.score_from_eps(average.module, sde).eval(), time.perf_counter() - start, summary


def train_flow(fit: torch.Tensor, val_y: torch.Tensor, seconds: float, seed: int):
    """A zuko MAF trained for ``seconds`` of wall time; the checkpoint with the best validation NLL and its step."""
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.MAF(features=DIM, transforms=5, hidden_features=(256, 256))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 2)
    best, best_bpd, best_step, steps = copy.deepcopy(flow.state_dict()), math.inf, 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = dequantized(fit[torch.randint(len(fit), (256,), generator=g)], g)
        loss = -flow().log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 50 == 0:
            with torch.no_grad():
                val = float(bpd(flow().log_prob(val_y)).mean())
            if val < best_bpd:
                best, best_bpd, best_step = copy.deepcopy(flow.state_dict()), val, steps
    flow.load_state_dict(best)
    return flow.eval(), steps, best_bpd, best_step


# ----------------------------------------------------------------------------------- evaluation
def score_likelihoods(score, sde, test_y: torch.Tensor, budget: Budget, seed: int) -> dict:
    """Exact-trace and Hutchinson test bits/dim of the score model, with standard errors."""
    with torch.no_grad():
        start = time.perf_counter()
        exact = sf.log_likelihood(score, sde, test_y, trace="exact", rtol=budget.tol, atol=budget.tol)
        exact_s = time.perf_counter() - start
        start = time.perf_counter()
        hutch = sf.log_likelihood(score, sde, test_y, trace="hutchinson", n_probes=budget.n_probes, rtol=budget.tol,
                                  atol=budget.tol, generator=torch.Generator().manual_seed(seed + 3))
        hutch_s = time.perf_counter() - start
    probe_se = float(hutch.std_error.pow(2).sum().sqrt()) / (len(test_y) * DIM * math.log(2))
    return {"exact": bpd(exact.log_prob), "hutchinson": bpd(hutch.log_prob), "probe_se": probe_se,
            "nfe": {"exact": exact.nfe, "exact_vjp": exact.nfe_vjp, "hutchinson": hutch.nfe, "hutchinson_vjp": hutch.nfe_vjp},
            "seconds": {"exact": exact_s, "hutchinson": hutch_s}}


def draw_samples(score, sde, gaussian, flow, budget: Budget, seed: int) -> dict[str, tuple[torch.Tensor, int]]:
    """Samples (dequantized scale) and their NFE from each sampler of the score model and from the baselines."""
    g = torch.Generator().manual_seed(seed + 4)
    x_T = sde.prior_sample((budget.n_samples, DIM), generator=g)
    with torch.no_grad():
        runs = {
            "score, dpmpp_3m_pc (20 steps)": sf.sample_ode(score, sde, x_T, method="dpmpp_3m_pc", steps=20),
            f"score, reverse SDE Euler-Maruyama ({budget.sde_steps} steps)": sf.sample_sde(
                score, sde, x_T, method="euler", steps=budget.sde_steps, generator=g),
            "score, dopri5": sf.sample_ode(score, sde, x_T, method="dopri5", rtol=budget.tol, atol=budget.tol),
        }
        out = {name: (res.samples, res.nfe) for name, res in runs.items()}
        out["Gaussian"] = (gaussian.sample(budget.n_samples, generator=g), 0)
        out["flow (MAF)"] = (flow().sample((budget.n_samples,)), 0)
    return out


def classify(samples: dict, sklearn_split) -> tuple[dict, float]:
    """Class histogram and mean confidence of each sample set under a classifier of the real training split."""
    from sklearn.linear_model import LogisticRegression

    x_train, y_train, x_test, y_test = sklearn_split
    clf = LogisticRegression(max_iter=5000).fit(x_train / 16, y_train)
    report = {"real test digits": _class_stats(clf, x_test)}
    for name, (y, _) in samples.items():
        report[name] = _class_stats(clf, to_levels(y).numpy())
    return report, float(clf.score(x_test / 16, y_test))


def _class_stats(clf, levels) -> dict:
    proba = clf.predict_proba(levels / 16)
    histogram = [int((proba.argmax(1) == c).sum()) for c in range(10)]
    return {"histogram": histogram, "confidence": float(proba.max(1).mean())}


# ----------------------------------------------------------------------------------- outputs
def plot_grid(real_levels, samples: dict, path: Path, per_row: int = 12) -> None:
    """One row of digits per sample set, real test digits first; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scoreflow._files import atomic_write

    rows = [("real test digits", torch.as_tensor(real_levels[:per_row], dtype=torch.float32))]
    rows += [(name, to_levels(y[:per_row])) for name, (y, _) in samples.items()]
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 0.8, len(rows) * 1.05), layout="constrained")
    for (name, images), row in zip(rows, axes):
        for ax, image in zip(row, images):
            ax.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=N_BINS - 1)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def markdown_table(results: dict) -> str:
    b, se, sec = results["bpd"], results["bpd_se"], results["seconds"]
    lines = [
        "| model | test bits/dim (17 levels) | ± SE | fit wall time (s) |",
        "| --- | --- | --- | --- |",
        f"| score model, exact trace | {b['score_exact']:.3f} | {se['score_exact']:.3f} (test points) | {sec['train_score']:.0f} |",
        f"| score model, Hutchinson ({results['config']['n_probes']} probes) | {b['score_hutchinson']:.3f} | "
        f"{results['hutchinson_probe_se']:.3f} (probes) | – |",
        f"| Gaussian, full covariance (closed form) | {b['gaussian']:.3f} | {se['gaussian']:.3f} (test points) | 0 |",
        f"| flow (zuko MAF, best validation checkpoint) | {b['flow']:.3f} | {se['flow']:.3f} (test points) | {sec['train_flow']:.0f} |",
        "",
        f"Paired differences over the same test points: score - Gaussian {results['paired']['score_minus_gaussian'][0]:+.3f} "
        f"± {results['paired']['score_minus_gaussian'][1]:.3f}, score - flow {results['paired']['score_minus_flow'][0]:+.3f} "
        f"± {results['paired']['score_minus_flow'][1]:.3f} bits/dim.",
        "",
        "| samples | NFE | class histogram 0-9 | mean confidence |",
        "| --- | --- | --- | --- |",
    ]
    for name, stats in results["classifier"].items():
        nfe = results["sample_nfe"].get(name, "–")
        lines.append(f"| {name} | {nfe} | {' '.join(map(str, stats['histogram']))} | {stats['confidence']:.3f} |")
    lines += ["", f"Classifier (logistic regression on the real training split): test accuracy {results['classifier_accuracy']:.3f}."]
    return "\n".join(lines)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def run(args: argparse.Namespace) -> dict:
    budget = QUICK if args.quick else FULL
    if args.train_steps:
        budget = replace(budget, train_steps=args.train_steps)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    fit, val, test, sklearn_split = load_split(args.seed)
    test_y = dequantized(test, torch.Generator().manual_seed(args.seed + 5))
    val_y = dequantized(val, torch.Generator().manual_seed(args.seed + 6))
    sde = sf.VPSDE()
    gaussian = fit_gaussian(fit)
    print(f"data: {len(fit)} training, {len(val)} validation, {len(test)} test digits; training the score model "
          f"({budget.train_steps} steps) ...", flush=True)
    score, train_s, score_fit = train_score(fit, val_y, gaussian, sde, budget.train_steps, args.seed, checks=budget.checks)
    print(f"score model trained in {train_s:.0f} s (validation bits/dim of the weight average by step: "
          f"{', '.join(f'{k}: {v:.3f}' for k, v in sorted(score_fit['validation_bpd'].items()))}); "
          "the flow gets the same time ...", flush=True)
    flow, flow_steps, flow_val, flow_best_step = train_flow(fit, val_y, train_s, args.seed)
    flow_s = train_s
    print(f"flow trained for {flow_steps} steps (best validation at step {flow_best_step}); likelihoods of the "
          f"{len(test)} test digits ...", flush=True)
    lik = score_likelihoods(score, sde, test_y, budget, args.seed)
    with torch.no_grad():
        per_point = {
            "score_exact": lik["exact"],
            "score_hutchinson": lik["hutchinson"],
            "gaussian": bpd(torch.distributions.MultivariateNormal(gaussian.mean, gaussian.covariance).log_prob(test_y)),
            "flow": bpd(flow().log_prob(test_y)),
        }
    print("sampling and classifying ...", flush=True)
    samples = draw_samples(score, sde, gaussian, flow, budget, args.seed)
    classes, accuracy = classify(samples, sklearn_split)
    results = {
        "bpd": {k: float(v.mean()) for k, v in per_point.items()},
        "bpd_se": {k: _mean_se(v)[1] for k, v in per_point.items()},
        "hutchinson_probe_se": lik["probe_se"],
        "paired": {
            "score_minus_gaussian": _mean_se(per_point["score_exact"] - per_point["gaussian"]),
            "score_minus_flow": _mean_se(per_point["score_exact"] - per_point["flow"]),
        },
        "likelihood_nfe": lik["nfe"],
        "sample_nfe": {name: nfe for name, (_, nfe) in samples.items() if nfe},
        "classifier": classes,
        "classifier_accuracy": accuracy,
        "seconds": {"train_score": train_s, "train_flow": flow_s, "likelihood_exact": lik["seconds"]["exact"],
                    "likelihood_hutchinson": lik["seconds"]["hutchinson"], "total": None},
        "config": {"quick": args.quick, "seed": args.seed, "threads": args.threads, "train_steps": budget.train_steps,
                   "tol": budget.tol, "n_probes": budget.n_probes, "n_samples": budget.n_samples,
                   "sde_steps": budget.sde_steps, "checks": budget.checks, "score_best_step": score_fit["best_step"],
                   "score_validation_bpd": score_fit["validation_bpd"], "score_last_loss": score_fit["last_loss"],
                   "flow_steps": flow_steps, "flow_best_step": flow_best_step,
                   "flow_validation_bpd": flow_val,
                   "data_range": DATA_RANGE, "sde": "VPSDE(beta_min=0.1, beta_max=20, t_min=1e-3)"},
        "command": "python examples/digits.py " + " ".join(sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot_grid(sklearn_split[2], samples, args.out / "digits.png")
    results["seconds"]["total"] = time.perf_counter() - start
    return results


def main(argv: list[str] | None = None) -> int:
    missing = [m for m in ("sklearn", "zuko", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"digits.py: needs {', '.join(missing)}: pip install -e '.[digits]' and pip install --no-deps zuko",
              file=sys.stderr)
        return 2
    args = parse_args(argv)
    from scoreflow._files import atomic_write

    results = run(args)
    table = markdown_table(results)
    for name, text in (("results.json", json.dumps(results, indent=1)), ("results.md", table + "\n")):
        with atomic_write(args.out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    print(table)
    print(f"\n{results['seconds']['total']:.0f} s in all; wrote results.json, results.md and digits.png to {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
