"""Command line for sharded sampling and likelihood, to be started by ``torchrun``.

::

    torchrun --nproc-per-node 2 -m scoreflow dist sample --problem ring2d-vp --num-samples 10000 \\
        --method rk4 --steps 100 --out runs/samples.pt
    torchrun --nproc-per-node 2 -m scoreflow dist likelihood --problem mixture16d-vp \\
        --num-samples 1000 --trace hutchinson --out runs/ll.npz

Every rank writes its shard (``samples.rank0-of-2.pt`` ...) and rank 0 writes the merged file.
Run without ``torchrun`` it is one process (world size 1) and gives the same merged file.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from . import distributed as D

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _load_model(spec: str, device: torch.device) -> tuple[Callable, Any]:
    """``package.module:factory`` -> ``factory(device)``, which must return ``(score, sde)``."""
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--model expected 'package.module:factory', got {spec!r}.")
    return getattr(importlib.import_module(module), name)(device)


def _problem(spec: str):
    from .testing import make_problem

    law, _, sde = spec.rpartition("-")
    return make_problem(law, sde)


def _setup(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    rank, world_size = D.init_distributed(args.backend)
    if args.device == "auto":
        use_cuda = torch.cuda.is_available() and args.backend != "gloo"
        device = torch.device(f"cuda:{torch.cuda.current_device()}" if use_cuda else "cpu")
    else:
        device = torch.device(args.device)
    return rank, world_size, device


def _finish(args: argparse.Namespace, local: D.ShardResult, rank: int, world_size: int, meta: dict) -> D.ShardResult | None:
    D.save_result(local, D.shard_path(args.out, rank, world_size), rank=rank, world_size=world_size, **meta)
    merged = D.gather(local)
    if merged is not None:
        D.save_result(merged, args.out, world_size=world_size, **meta)
    return merged


def _sample(args: argparse.Namespace) -> int:
    rank, world_size, device = _setup(args)
    dtype = _DTYPES[args.dtype]
    if args.problem:
        problem = _problem(args.problem)
        score, sde, shape = problem.law.to(dtype).score(problem.sde), problem.sde, (problem.dim,)
    else:
        score, sde = _load_model(args.model, device)
        shape = tuple(int(s) for s in args.data_shape.split(","))
    options: dict[str, Any] = {"method": args.method}
    if args.steps is not None:
        options["steps"] = args.steps
    elif args.sampler == "ode":
        options.update(rtol=args.rtol, atol=args.atol)
    else:
        raise SystemExit("sample --sampler sde needs --steps.")
    if args.t_min is not None:
        options["t_min"] = args.t_min
    if args.sampler == "sde":
        options["per_item_brownian"] = args.brownian == "per-item"
    start = time.perf_counter()
    local = D.sample_sharded(
        score, sde, args.num_samples, shape, sampler=args.sampler, seed=args.seed, batch_size=args.batch_size,
        dtype=dtype, device=device, **options,
    )
    seconds = time.perf_counter() - start
    merged = _finish(args, local, rank, world_size, {"seed": args.seed, "batch_size": args.batch_size})
    if merged is not None:
        print(f"sample: {args.num_samples} samples of shape {shape} on {world_size} rank(s), NFE {merged.nfe}, "
              f"{seconds:.2f} s on rank 0 -> {args.out}")
    return 0


def _likelihood(args: argparse.Namespace) -> int:
    rank, world_size, device = _setup(args)
    dtype = _DTYPES[args.dtype]
    law = None
    if args.problem:
        problem = _problem(args.problem)
        law, sde = problem.law.to(dtype), problem.sde
        score = law.score(sde)
    else:
        score, sde = _load_model(args.model, device)
    if args.data:
        data = torch.load(args.data, weights_only=True) if args.data.endswith(".pt") else torch.from_numpy(np.load(args.data))
        data = data.to(dtype)
    elif law is not None:
        data = law.sample(args.num_samples, generator=torch.Generator().manual_seed(args.seed))
    else:
        raise SystemExit("likelihood --model needs --data FILE (a .pt tensor or .npy array of shape (N, *D)).")
    options: dict[str, Any] = {"trace": args.trace, "method": args.method, "rtol": args.rtol, "atol": args.atol}
    if args.trace == "hutchinson":
        options.update(probe=args.probe, n_probes=args.n_probes)
    if args.t_min is not None:
        options["t_min"] = args.t_min
    if args.exact_prior:
        if law is None:
            raise SystemExit("likelihood --exact-prior needs --problem (an analytic law with a known p_T).")
        options["prior_log_prob"] = law.marginal(sde, sde.T).log_prob
    start = time.perf_counter()
    local = D.log_likelihood_sharded(score, sde, data, seed=args.seed, batch_size=args.batch_size, device=device, **options)
    seconds = time.perf_counter() - start
    merged = _finish(args, local, rank, world_size, {"seed": args.seed, "batch_size": args.batch_size, "trace": args.trace})
    if merged is not None:
        line = (f"likelihood: {data.shape[0]} points on {world_size} rank(s), mean log p = {merged.values.mean():.6f} nats, "
                f"NFE {merged.nfe}, {seconds:.2f} s on rank 0")
        if law is not None:
            t_min = sde.t_min if args.t_min is None else args.t_min
            # Without --exact-prior the solve ends in the N(0, prior_std^2) prior, so this error includes its mismatch with p_T.
            exact = law.marginal(sde, t_min).log_prob(data)
            line += f", mean |log p - exact log p_t_min| = {(merged.values - exact).abs().mean():.2e}"
        print(line + f" -> {args.out}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--problem", help="an analytic reference problem LAW-SDE, e.g. ring2d-vp, mixture16d-ve")
    src.add_argument("--model", help="'package.module:factory' with factory(device) -> (score, sde)")
    p.add_argument("--out", required=True, help="merged output file (.pt or .npz); shards are written beside it")
    p.add_argument("--num-samples", type=int, default=1000, help="number of samples / points drawn from --problem (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seeds every item's noise as (seed, item index) (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="items per global batch (default 256)")
    p.add_argument("--method", default="dopri5", help="torchdiffeq / torchsde method (default dopri5)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--t-min", type=float, default=None, help="truncation time (default the SDE's t_min)")
    p.add_argument("--dtype", choices=tuple(_DTYPES), default="float32")
    p.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="default nccl with CUDA, else gloo")
    p.add_argument("--device", default="auto", help="'auto' (cuda:LOCAL_RANK with nccl, else cpu) or a device")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m scoreflow dist",
        description="Sharded sampling and likelihood; each rank solves its own batches, rank 0 merges.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("sample", help="draw --num-samples samples by probability-flow ODE or reverse SDE")
    _common(sample)
    sample.add_argument("--sampler", choices=("ode", "sde"), default="ode")
    sample.add_argument("--steps", type=int, default=None, help="fixed steps (needed by --sampler sde and fixed-grid ODE methods)")
    sample.add_argument("--brownian", choices=("per-item", "per-batch"), default="per-item",
                        help="--sampler sde: a Brownian path per item (independent of --batch-size) or per global "
                             "batch (independent of the world size only, much faster per step)")
    sample.add_argument("--data-shape", default=None, help="shape of one sample for --model, e.g. 3,32,32")
    sample.set_defaults(run=_sample)
    ll = sub.add_parser("likelihood", help="log-likelihood of every point of --data (or of --num-samples points of --problem)")
    _common(ll)
    ll.add_argument("--data", default=None, help="a .pt tensor or .npy array of shape (N, *D)")
    ll.add_argument("--trace", choices=("exact", "hutchinson"), default="exact")
    ll.add_argument("--probe", choices=("rademacher", "gaussian"), default="rademacher")
    ll.add_argument("--n-probes", type=int, default=1)
    ll.add_argument("--exact-prior", action="store_true",
                    help="with --problem: end in the exact p_T instead of the SDE's prior, leaving only solver error")
    ll.set_defaults(run=_likelihood)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sample" and args.model and not args.data_shape:
        raise SystemExit("sample --model needs --data-shape, e.g. --data-shape 3,32,32.")
    joined_here = not torch.distributed.is_initialized()
    try:
        return args.run(args)
    finally:
        # Leave a group the caller created (several commands may share one launch).
        if joined_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
