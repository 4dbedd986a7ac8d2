"""``scoreflow dist sample|likelihood``: sharded solves over the processes ``torchrun`` starts.

::

    torchrun --nproc-per-node 2 -m scoreflow dist sample --problem ring2d --sde vp --num-samples 10000 \\
        --method rk4 --steps 100 --out runs/samples.pt

Every rank writes its shard (``samples.rank0-of-2.pt`` ...) and rank 0 writes the merged file.  Run
without ``torchrun`` it is one process (world size 1) and gives the same merged file.  Every rank
checks the options, the model, the data and ``--out`` before any solve, and all ranks stop together
if one of them finds a problem or fails, in any phase, with the status one process would have.  With
``--overwrite`` the files of an earlier run at ``--out`` are removed once the solve has ended or failed on
every rank, before any new file is written; a refused or interrupted run leaves them as they were.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from .. import distributed as D
from ..sde import ForwardSDE
from .failures import one_line
from .options import (
    CLIError,
    add_dtype,
    add_num_samples,
    add_problem,
    add_progress,
    add_run_options,
    add_solver_options,
    add_trace_options,
    int_at_least,
    resolve_dtype,
    resolve_t_min,
    solver_options,
    trace_options,
)
from .outputs import add_out_file, check_out_file, write_errors
from .sources import data_file, data_shape, load_data, load_model, model_spec

__all__ = ["add_parser"]

#: ``--num-samples`` unless given: samples drawn, or points of ``--problem`` whose likelihood is computed.
DEFAULT_NUM_SAMPLES = 1000


def _device(text: str) -> str:
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(
                f"expected 'auto' or a torch device such as cpu, cuda, cuda:1, got {text!r}"
            ) from None
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``dist`` command with its ``sample`` and ``likelihood`` commands."""
    dist = sub.add_parser(
        "dist",
        help="sharded sampling or likelihood over torchrun processes (see docs/adapters.md)",
        description="Run under torchrun: torchrun --nproc-per-node N -m scoreflow dist sample|likelihood ... "
        "Each rank solves its global batches; rank 0 writes the merged file. "
        "'scoreflow dist sample --help' lists the options.",
    )
    commands = dist.add_subparsers(dest="dist_command", required=True, metavar="COMMAND")
    sample = commands.add_parser("sample", help="draw --num-samples samples by probability-flow ODE or reverse SDE")
    _add_common(sample, "samples")
    sample.add_argument(
        "--data-shape", type=data_shape, default=None, help="with --model: the shape of one sample, e.g. 3,32,32"
    )
    sample.add_argument(
        "--sampler", choices=("ode", "sde"), default="ode", help="probability-flow ODE or reverse SDE (default: ode)"
    )
    add_solver_options(sample, {"ode": "with --sampler ode", "sde": "with --sampler sde"}, schedule=True)
    sample.add_argument(
        "--brownian",
        choices=("per-item", "per-batch"),
        default=None,
        help="--sampler sde: a Brownian path per item (independent of --batch-size) or per global "
        "batch (independent of the world size only, much faster per step) (default: per-item)",
    )
    sample.set_defaults(run=_sample)

    lik = commands.add_parser(
        "likelihood", help="log-likelihood of every point of --data (or of --num-samples points of --problem)"
    )
    _add_common(lik, "points drawn from --problem without --data")
    lik.set_defaults(num_samples=None)  # DEFAULT_NUM_SAMPLES unless given, so that a --num-samples beside --data is seen
    lik.add_argument("--data", type=data_file, default=None, help="a .pt tensor or .npy array of shape (N, *D)")
    add_trace_options(lik)
    add_solver_options(lik, {"likelihood": "one of"})
    lik.add_argument(
        "--exact-prior",
        action="store_true",
        help="with --problem: end in the exact p_T instead of the SDE's prior, leaving only solver error",
    )
    lik.set_defaults(run=_likelihood)


def _add_common(p: argparse.ArgumentParser, what: str) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    add_problem(p, None, group=source)
    source.add_argument(
        "--model",
        type=model_spec,
        metavar="MODULE:FACTORY",
        help="'package.module:factory' with factory(device) -> (score, sde)",
    )
    add_out_file(p, required=True, help="merged output file (.pt or .npz); the shards are written beside it")
    add_num_samples(p, DEFAULT_NUM_SAMPLES, what)
    p.add_argument("--batch-size", type=int_at_least(1), default=256, help="items per global batch (default: 256)")
    add_dtype(p, "float64 with --problem, float32 with --model")
    p.add_argument(
        "--backend",
        choices=("gloo", "nccl"),
        default=None,
        help="process group backend (default: nccl with CUDA, else gloo)",
    )
    p.add_argument(
        "--device", type=_device, default="auto", help="'auto' (cuda:LOCAL_RANK with nccl, else cpu) or a torch device"
    )
    add_progress(p)
    add_run_options(p, threads=None)


@dataclass
class _Job:
    """What every rank checked before solving: the model, the data, where to solve, and where to write."""

    score: Callable
    sde: ForwardSDE
    law: Any  # the analytic law of --problem, or None for --model
    data: torch.Tensor | None  # the points of a likelihood
    device: torch.device
    dtype: torch.dtype
    out: Path
    earlier: list[Path]  # with --overwrite: the merged file and the shards (of any world size) of an earlier run


#: ``solve(job, options, progress) -> this rank's result``.
Solve = Callable[[_Job, dict[str, Any], bool], D.ShardResult]
#: ``describe(job, merged) -> (what was computed, what it gave)``, the two halves of the summary line.
Describe = Callable[[_Job, D.ShardResult], tuple[str, str]]


def _check_options(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Combinations of options that every rank checks the same way, before joining the process group."""
    if args.model and args.sde:
        raise CLIError("argument --sde: applies to --problem; a --model factory returns its own SDE")
    cuda = torch.cuda.is_available()
    if args.backend == "nccl" and not cuda:
        raise CLIError("argument --backend: nccl needs CUDA, which this machine does not have; use --backend gloo")
    if args.device != "auto":
        device = torch.device(args.device)
        if device.type == "cuda" and not (cuda and (device.index or 0) < torch.cuda.device_count()):
            found = f"{torch.cuda.device_count()} CUDA device(s)" if cuda else "no CUDA"
            raise CLIError(
                f"argument --device: {args.device} is not available ({found} on this machine); use --device cpu or auto"
            )
        if device.type == "meta":
            raise CLIError("argument --device: meta holds no data to solve on; use --device cpu, cuda or auto")
        if device.type not in ("cpu", "cuda"):
            _check_available(device)
        if args.backend == "nccl" and device.type != "cuda":
            raise CLIError(
                f"argument --device: --backend nccl needs a CUDA device, got {args.device}; "
                "use --device auto or --backend gloo"
            )
    return solver_options(args, kind)


def _check_available(device: torch.device) -> None:
    """Refuse a device of another type (mps, xpu ...) that this machine's torch cannot allocate on."""
    try:
        torch.zeros(1, device=device)
    except Exception as e:  # torch raises RuntimeError, NotImplementedError, AssertionError ... by device type
        why = " ".join(f"{type(e).__name__}: {e}".split()).split(". ")[0][:160]  # the first sentence
        raise CLIError(f"argument --device: {device} is not available on this machine ({why}); use --device cpu or auto") from None


def _prepare(args: argparse.Namespace) -> _Job:
    """Check ``--out`` and its shards, resolve the device, load the model or problem and the data: this rank's part."""
    out = check_out_file(args.out, overwrite=args.overwrite, suffixes=D.files.SUFFIXES)
    shards = D.shard_files(out)
    if shards and not args.overwrite:
        more = f" and {len(shards) - 1} more" if len(shards) > 1 else ""
        raise CLIError(
            f"argument --out: shard {shards[0].name}{more} of {out.name} exists from an earlier run; "
            "pass --overwrite to replace them, or choose another name"
        )
    if args.device == "auto":
        cuda = torch.cuda.is_available() and args.backend != "gloo"
        device = torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    else:
        device = torch.device(args.device)
    dtype = resolve_dtype(args, analytic=args.problem is not None)
    law = None
    if args.problem:
        from ..testing import make_problem

        problem = make_problem(args.problem, args.sde or "vp")
        law, sde = problem.law.to(dtype), problem.sde
        score = law.score(sde)
    else:
        score, sde = load_model(args.model, device)
    data = None
    if getattr(args, "data", None):
        data = load_data(args.data, dtype)
        if law is not None and data.ndim >= 2 and tuple(data.shape[1:]) != tuple(law.event_shape):
            raise CLIError(
                f"argument --data: {args.data!r} holds points of shape {tuple(data.shape[1:])}; --problem {args.problem} "
                f"has points of shape {tuple(law.event_shape)}"
            )
    elif args.dist_command == "likelihood":
        n = DEFAULT_NUM_SAMPLES if args.num_samples is None else args.num_samples
        data = law.sample(n, generator=torch.Generator().manual_seed(args.seed))
    return _Job(score, sde, law, data, device, dtype, out, ([out] if out.exists() else []) + shards)


def _agree(error: CLIError | None, rank: int, world_size: int) -> CLIError | None:
    """The first rank's error, on every rank (one collective), so that all ranks stop together or none does."""
    if world_size == 1:
        return error
    errors: list[tuple[str, int] | None] = [None] * world_size
    torch_dist.all_gather_object(errors, None if error is None else (str(error), error.status))
    first = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
    if first is None:
        return None
    (r, (message, status)) = first
    return CLIError(message if r == rank else f"on rank {r}: {message}", status=status)


def _as_cli_error(e: BaseException, rank: int) -> CLIError:
    """The one line and status ``main`` gives ``e`` on one process, for the other ranks to stop with.

    An exception ``main`` shows with its traceback (status 1) is named by its type and message.
    """
    line = one_line(e)
    if line is None:
        what = " ".join(traceback.format_exception_only(e)).strip()
        line = (f"{what} (rank {rank} shows the traceback)" if isinstance(e, Exception) else what), 1
    return CLIError(line[0], status=line[1])


Value = TypeVar("Value")


def _step(
    do: Callable[[], Value], rank: int, world_size: int
) -> tuple[Value | None, BaseException | None, CLIError | None]:
    """Run ``do`` on this rank, then agree with the others (a barrier): ``(value, this rank's failure, first error)``.

    Only this rank may fail (its batches alone met the problem, a bug of the model, its disk is full, Ctrl-C):
    the others hear of it before they go on, and rank 0, which speaks for all, says what it was.  Any
    exception is held until the agreement, else the others would wait in it for the process group's timeout.
    """
    try:
        value, failure = do(), None
    except BaseException as e:  # noqa: BLE001 - re-raised by _stop once the others know
        value, failure = None, e
    return value, failure, _agree(None if failure is None else _as_cli_error(failure, rank), rank, world_size)


def _stop(failure: BaseException | None, error: CLIError | None) -> None:
    """Raise this rank's failure (with its traceback, for ``main`` to judge), else another rank's error, if any."""
    if failure is not None:
        raise failure
    if error is not None:
        raise error


def _remove(earlier: list[Path]) -> None:
    """Remove the files an earlier run left at ``--out``, the merged file first (another rank may have removed some)."""
    for path in earlier:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise CLIError(
                f"removing {str(path)!r}, left at --out by an earlier run, failed ({e.strerror or e}); remove it and "
                "run again", status=1,
            ) from e


def _run(args: argparse.Namespace, kind: str, solve: Solve, describe: Describe, meta: dict[str, Any]) -> int:
    """Check, join the process group, check on every rank, solve this rank's batches, write shard and merged file.

    Every phase ends in an agreement (:func:`_step`), so that the ranks go on together or stop together, with the
    status one process would have.  The files of an earlier run at ``--out`` (``--overwrite``) stay as they were
    if this run is refused, before its solve or by the solver's own checks (status 2), or interrupted (130, as if
    killed); once every rank has solved, or the solve failed (status 1: non-finite, or an exception shown with its
    traceback), every rank removes them before any rank writes, so ``--out`` never holds the files of two runs.
    """
    options = _check_options(args, kind)
    joined_here = not torch_dist.is_initialized()
    rank, world_size = D.init_distributed(args.backend)
    try:

        def prepare() -> _Job:
            job = _prepare(args)
            options["t_min"] = resolve_t_min(args, job.sde)
            return job

        job, failure, error = _step(prepare, rank, world_size)
        _stop(failure, error)
        meta = {"seed": args.seed, "batch_size": args.batch_size, **meta}

        def solve_mine() -> tuple[D.ShardResult, float]:
            start = time.perf_counter()
            return solve(job, options, rank == 0 and not args.no_progress), time.perf_counter() - start

        solved, failure, error = _step(solve_mine, rank, world_size)
        if error is None or error.status == 1:
            # Solved or failed, neither refused nor interrupted: whatever follows, the earlier files of --out are not
            # this run's result.  Every rank removes those it found (the ranks need not share a disk), and none
            # writes before all have (the agreement).
            _, removal, removed = _step(lambda: _remove(job.earlier), rank, world_size)
            failure, error = failure or removal, error or removed
        _stop(failure, error)
        local, seconds = solved
        shard = D.shard_path(job.out, rank, world_size)

        def write_shard() -> None:
            with write_errors(shard):
                D.save_result(local, shard, rank=rank, world_size=world_size, **meta)

        _stop(*_step(write_shard, rank, world_size)[1:])
        merged = D.gather(local)

        def write_merged() -> str | None:
            """Rank 0: write the merged file and return the summary line; the others wait to hear how it went."""
            if merged is None:
                return None
            with write_errors(job.out):
                D.save_result(merged, job.out, world_size=world_size, **meta)
            what, result = describe(job, merged)
            return (
                f"{args.dist_command}: {what} on {world_size} rank(s), NFE {merged.nfe}, {seconds:.2f} s on rank 0"
                f"{result} -> {job.out}"
            )

        summary, failure, error = _step(write_merged, rank, world_size)
        _stop(failure, error)
        if summary is not None:
            print(summary)
        return 0
    finally:
        # Leave a group the caller created (several commands may share one launch).
        if joined_here and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _sample(args: argparse.Namespace) -> int:
    if args.model and args.data_shape is None:
        raise CLIError("argument --data-shape: required with --model (the shape of one sample, e.g. 3,32,32)")
    if args.problem and args.data_shape is not None:
        raise CLIError("argument --data-shape: applies to --model; a --problem has its own shape")
    if args.brownian is not None and args.sampler != "sde":
        raise CLIError("argument --brownian: applies to --sampler sde; the probability-flow ODE draws no Brownian path")

    def shape(job: _Job) -> tuple[int, ...]:
        return args.data_shape or tuple(job.law.event_shape)

    def solve(job: _Job, options: dict[str, Any], progress: bool) -> D.ShardResult:
        if args.sampler == "sde":
            options["per_item_brownian"] = args.brownian != "per-batch"
        return D.sample_sharded(
            job.score, job.sde, args.num_samples, shape(job), sampler=args.sampler, seed=args.seed,
            batch_size=args.batch_size, dtype=job.dtype, device=job.device, progress=progress, **options,
        )

    def describe(job: _Job, merged: D.ShardResult) -> tuple[str, str]:
        return f"{args.num_samples} samples of shape {shape(job)}", ""

    return _run(args, args.sampler, solve, describe, {})


def _likelihood(args: argparse.Namespace) -> int:
    if args.model and args.data is None:
        raise CLIError("argument --data: required with --model (a .pt tensor or .npy array of shape (N, *D))")
    if args.exact_prior and args.model:
        raise CLIError("argument --exact-prior: needs --problem (an analytic law with a known p_T)")
    if args.data is not None and args.num_samples is not None:
        raise CLIError("argument --num-samples: applies to --problem without --data; every point of --data is used")
    trace = trace_options(args)

    def solve(job: _Job, options: dict[str, Any], progress: bool) -> D.ShardResult:
        if args.exact_prior:
            options["prior_log_prob"] = job.law.marginal(job.sde, job.sde.T).log_prob
        return D.log_likelihood_sharded(
            job.score, job.sde, job.data, seed=args.seed, batch_size=args.batch_size, device=job.device,
            progress=progress, **trace, **options,
        )

    def describe(job: _Job, merged: D.ShardResult) -> tuple[str, str]:
        result = f", mean log p = {merged.values.mean():.6f} nats"
        if job.law is not None:
            # Without --exact-prior the solve ends in the N(0, prior_std^2) prior, so this error includes its
            # mismatch with p_T.
            exact = job.law.marginal(job.sde, args.t_min or job.sde.t_min).log_prob(job.data)
            result += f", mean |log p - exact log p_t_min| = {(merged.values - exact).abs().mean():.2e}"
        return f"{job.data.shape[0]} points", result

    return _run(args, "likelihood", solve, describe, {"trace": args.trace})
