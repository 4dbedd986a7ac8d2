"""Distil a consistency model of the 2-D ring mixture on CPU, then sample it in 1, 2 and 4 steps.

    python examples/consistency_ring.py                      # about six minutes on one CPU core
    python examples/consistency_ring.py --iters 1000 --dsm-iters 500    # a quick look

Two teachers: the exact score of the ring (``law.score(sde)``) and a score network trained here with
``scoreflow.losses.sde_dsm_loss``.  From each, a small MLP consistency model
(``scoreflow.consistency.parameterize``) is distilled with ``scoreflow.losses.consistency_distillation_loss``
(one RK4 step of the teacher between neighbouring times of an 8-step Karras grid, every grid step in every batch,
an EMA target).  The samples of ``scoreflow.sample_consistency`` in 1, 2 and 4 steps are compared by sliced W2 with exact samples of the ring, beside the teacher's own DPM-Solver++(2M) at the same NFE and the distance between two exact samples
(the floor).  Saves a scatter plot (by default to ``runs/``, which git ignores).  Needs the ``bench`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import scoreflow as sf
from scoreflow._files import atomic_write
from scoreflow.metrics import sliced_wasserstein2
from scoreflow.testing import make_law
from train_mixture import EpsMLP  # the noise-prediction MLP of examples/train_mixture.py


class ConsistencyMLP(torch.nn.Module):
    r"""The network F of :math:`f = c_{skip}x + c_{out}F`: a SiLU MLP fed :math:`x/\sqrt{\alpha^2\sigma_d^2 + \sigma^2}` and :math:`\log(\sigma/\alpha)/4`."""

    def __init__(self, sde: sf.ForwardSDE, dim: int, sigma_data: float, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.sde, self.sigma_data = sde, sigma_data
        layers: list[torch.nn.Module] = [torch.nn.Linear(dim + 1, width), torch.nn.SiLU()]
        for _ in range(depth - 1):
            layers += [torch.nn.Linear(width, width), torch.nn.SiLU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.sde.marginal(t)
        scale = torch.sqrt(alpha**2 * self.sigma_data**2 + sigma**2)
        return self.net(torch.cat([x / scale[:, None], (torch.log(sigma / alpha) / 4)[:, None]], dim=1))


def fresh_model(law, sde, *, iters: int, lr: float, seed: int):
    """A seeded :class:`ConsistencyMLP` consistency model with ``sigma_d`` from the law, its EMA target, Adam with a
    cosine decay over ``iters``, and the generator of the training draws: ``(f, f_target, opt, decay, generator)``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    sigma_data = float(law.covariance.diagonal().mean().sqrt())
    f = sf.consistency.parameterize(ConsistencyMLP(sde, law.dim, sigma_data), sde, sigma_data)
    f_target = copy.deepcopy(f).requires_grad_(False)
    opt = torch.optim.Adam(f.parameters(), lr=lr)
    return f, f_target, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters), g


def distil(score, law, sde, *, iters: int, batch: int = 512, steps: int = 8, solver: str = "rk4", ema: float = 0.95,
           lr: float = 1e-3, shared_step: bool = False, seed: int = 0, log_every: int = 0) -> sf.consistency.ConsistencyModel:
    """Consistency distillation of ``score`` into a fresh :class:`ConsistencyMLP` consistency model; returns it.

    Every batch covers every step of the grid (``shared_step=False``: one teacher call per step), and the grid is
    short (8 Karras steps: fewer links for the target to propagate through): the changes that cut the error most on
    the ring (``benchmarks/consistency_ablation.py``).  The teacher step is RK4 (4 score calls), whose solve through
    the 8 steps is 5 times closer to the exact consistency function than Heun's.
    """
    f, f_target, opt, decay, g = fresh_model(law, sde, iters=iters, lr=lr, seed=seed)
    for k in range(iters):
        loss = sf.losses.consistency_distillation_loss(
            f, f_target, score, sde, law.sample(batch, generator=g), solver=solver, steps=steps, shared_step=shared_step, generator=g
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
        sf.consistency.ema_update(f_target, f, ema)
        if log_every and k % log_every == 0:
            print(f"  iteration {k:6d}  CD loss {loss.item():.2e}", flush=True)
    return f.eval().requires_grad_(False)


def train_dsm(law, sde, *, iters: int, batch: int = 512, seed: int = 0) -> torch.nn.Module:
    """A score network ``score_from_eps(EpsMLP)`` trained by continuous-time DSM."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 2)
    net = EpsMLP(sde, law.dim, 128, 3)
    score = sf.score_from_eps(net, sde)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for _ in range(iters):
        loss = sf.losses.sde_dsm_loss(score, sde, law.sample(batch, generator=g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return score.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=6000, help="distillation iterations per teacher")
    parser.add_argument("--dsm-iters", type=int, default=3000, help="DSM iterations of the score network")
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/consistency_ring.png", help="where to save the scatter plot ('' for none; default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    sde, law = sf.VPSDE(), make_law("ring2d", torch.float32)
    start = time.perf_counter()
    dsm_score = train_dsm(law, sde, iters=args.dsm_iters, seed=args.seed)
    print(f"DSM score network: {args.dsm_iters} iterations in {time.perf_counter() - start:.0f} s")
    teachers = {"exact score": law.score(sde), "DSM network": dsm_score}
    models = {}
    for name, score in teachers.items():
        t0 = time.perf_counter()
        models[name] = distil(score, law, sde, iters=args.iters, seed=args.seed, log_every=max(args.iters // 5, 1))
        print(f"distilled from the {name}: {args.iters} iterations in {time.perf_counter() - t0:.0f} s")

    g = torch.Generator().manual_seed(args.seed + 10)
    x_T = sde.prior_sample((args.samples, 2), generator=g)
    exact = law.marginal(sde, sde.t_min)
    reference = exact.sample(4 * args.samples, generator=g)

    def sw2(x: torch.Tensor) -> float:
        return sliced_wasserstein2(x, reference, n_projections=256, generator=torch.Generator().manual_seed(7))

    print(f"\nsliced W2 to the exact ring ({args.samples} samples; two exact samples differ by {sw2(exact.sample(args.samples, generator=g)):.4f})")
    print(f"{'sampler':<44} {'NFE':>4} {'SW2':>8}")
    shown = {}
    for name, f in models.items():
        for steps in (1, 2, 4):
            res = sf.sample_consistency(f, sde, x_T, steps=steps, generator=torch.Generator().manual_seed(args.seed + 11))
            shown[(name, steps)] = res.samples
            print(f"{'consistency model from the ' + name:<44} {res.nfe:>4} {sw2(res.samples):>8.4f}")
    for name, score in teachers.items():
        for nfe in (1, 2, 4):
            res = sf.sample_ode(score, sde, x_T, method="dpmpp_2m", steps=nfe, schedule="log_snr_capped")
            print(f"{'dpmpp_2m on the ' + name:<44} {res.nfe:>4} {sw2(res.samples):>8.4f}")
    print(f"total {time.perf_counter() - start:.0f} s")

    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 4, figsize=(14, 7), sharex=True, sharey=True)
        for row, name in enumerate(models):
            panels = [("exact samples", reference[: args.samples])] + [(f"{k} step{'s' * (k > 1)}", shown[(name, k)]) for k in (1, 2, 4)]
            for ax, (title, pts) in zip(axes[row], panels):
                ax.scatter(pts[:4000, 0], pts[:4000, 1], s=1, alpha=0.4)
                ax.set_title(title if row == 0 or title != "exact samples" else "", fontsize=10)
                ax.set_aspect("equal")
            axes[row][0].set_ylabel(f"from the {name}")
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out) as tmp:
            fig.savefig(tmp, dpi=100)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
