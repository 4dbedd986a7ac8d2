"""Sampling and likelihood of this rank's global batches, with every item's noise its own."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .._checks import STATE_DTYPES, check_batch, check_bool, check_choice, check_int, resolve_t_min
from .._tensor import ScoreFn
from ..dynamics.sdeint import brownian_motion
from ..likelihood import log_likelihood
from ..methods import get_method
from ..sampling import sample_ode, sample_sde
from ..sde import ForwardSDE, check_sde
from . import group
from .noise import BROWNIAN, PROBES, batch_generator, brownian_per_item, check_data_shape, prior_sample_per_item
from .results import ShardResult, concat, empty

__all__ = ["PerItemScore", "sample_sharded", "log_likelihood_sharded"]

# Seconds before a progress bar appears.
_PROGRESS_DELAY_S = 1.0


class PerItemScore:
    """A score that depends on which items a batch holds (per-item class labels, prompts, ...).

    Args:
        factory: ``factory(items) -> score`` for a ``range`` of global item indices, e.g.
            ``lambda items: from_diffusers(unet, sch, class_labels=labels[items.start:items.stop])[0]``.
    """

    def __init__(self, factory: Callable[[range], ScoreFn]) -> None:
        if not callable(factory):
            raise TypeError(f"PerItemScore: argument 'factory' expected a callable factory(items), got {type(factory).__name__}.")
        self.factory = factory

    def for_items(self, items: range) -> ScoreFn:
        return self.factory(items)


def _score_for(score: ScoreFn | PerItemScore, items: range) -> ScoreFn:
    return score.for_items(items) if isinstance(score, PerItemScore) else score


def _my_batches(fn: str, n: int, batch_size: int, progress: bool) -> Iterable[range]:
    """This rank's global batches, behind a progress report if asked: a tqdm bar, else a line per batch done.

    Either appears only once a batch has taken a while, so an input rejected by the first batch's
    checks is not preceded by an empty bar.
    """
    rank, world_size = group.world()
    batches = group.global_batches(n, batch_size, rank, world_size)
    if not progress:
        return batches
    desc = f"{fn} rank {rank}/{world_size}"
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _logged(batches, desc)
    return tqdm(batches, desc=desc, unit="batch", dynamic_ncols=True, delay=_PROGRESS_DELAY_S)


def _logged(batches: Sequence[range], desc: str) -> Iterable[range]:
    for k, items in enumerate(batches, 1):
        yield items
        print(f"{desc}: batch {k}/{len(batches)} done (items {items.start}..{items.stop - 1})", file=sys.stderr, flush=True)


def _check_dtype(fn: str, dtype: Any) -> torch.dtype:
    if dtype not in STATE_DTYPES:
        raise TypeError(
            f"{fn}: argument 'dtype' expected a floating torch.dtype for the solver state, torch.float32 or torch.float64 (a half-precision "
            f"network runs in its own dtype through scoreflow.adapters), got {dtype!r}."
        )
    return dtype


def sample_sharded(
    score: ScoreFn | PerItemScore,
    sde: ForwardSDE,
    n: int,
    data_shape: tuple[int, ...],
    *,
    sampler: str = "ode",
    seed: int = 0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    per_item_brownian: bool = True,
    progress: bool = False,
    **solver_options: Any,
) -> ShardResult:
    """Draw this rank's share of ``n`` samples; the union over ranks does not depend on the world size.

    Args:
        score: the score model, on ``device``, or a :class:`PerItemScore` for per-item conditioning.
        sde: its forward SDE.
        n: the total number of samples (over all ranks).
        data_shape: the shape ``D`` of one sample.
        sampler: ``"ode"`` (:func:`~scoreflow.sample_ode`) or ``"sde"`` (:func:`~scoreflow.sample_sde`
            with a per-item Brownian path).
        seed: seeds every item's noise through ``(seed, item index)``; an int >= 0.
        batch_size: items per global batch (the unit of work; keep it fixed to reproduce bit for bit).
        dtype, device: of the solver state.
        per_item_brownian: with ``sampler="sde"``, give every item its own Brownian path (results
            independent of ``batch_size``); ``False`` draws one path per global batch, seeded by its
            first item, which is still independent of the world size and much cheaper per step
            (torchsde queries one path instead of ``batch_size``; ~0.09 ms per item and step on one CPU thread).
        progress: show a progress bar over this rank's batches (tqdm if installed, else a line per batch).
        **solver_options: passed to the sampler (``method``, ``steps``, ``rtol``, ``t_min`` ...).

    Returns:
        This rank's :class:`ShardResult` (items in increasing order); :func:`gather` merges them.

    Raises:
        ValueError: for an unknown sampler, a non-positive ``n`` or ``batch_size``, a negative ``seed``, a
            malformed ``data_shape``, ``generator``/``bm`` among the options (the noise is per item),
            ``return_trajectory``/``save_at`` (only the final samples are kept), or ``per_item_brownian=False``
            with ``sampler="ode"`` (which draws no Brownian path).
        TypeError: for a non-integer ``n``, ``batch_size`` or ``seed``, a ``dtype`` other than float32/float64, or
            flags other than True/False.
    """
    fn = "sample_sharded"
    check_sde(fn, sde)
    check_choice(fn, "sampler", sampler, ("ode", "sde"))
    check_int(fn, "n", n)
    check_int(fn, "seed", seed, minimum=0)
    check_int(fn, "batch_size", batch_size)
    data_shape = check_data_shape(fn, data_shape)
    _check_dtype(fn, dtype)
    check_bool(fn, "per_item_brownian", per_item_brownian)
    check_bool(fn, "progress", progress)
    if sampler == "ode" and not per_item_brownian:
        raise ValueError(
            f"{fn}: argument 'per_item_brownian' applies to sampler='sde'; the probability-flow ODE draws no Brownian "
            "path (got per_item_brownian=False with sampler='ode')."
        )
    for name in ("generator", "bm"):
        if name in solver_options:
            raise ValueError(f"{fn}: argument {name!r} is not accepted: every item's noise is seeded by (seed, index).")
    for name, unset in (("return_trajectory", False), ("save_at", None)):
        if solver_options.get(name, unset) is not unset:
            raise ValueError(
                f"{fn}: argument {name!r} is not accepted: a ShardResult holds the final samples only, got "
                f"{name}={solver_options[name]!r}. Fix: call sample_ode/sample_sde on a batch for its trajectory."
            )
    dim = int(np.prod(data_shape))
    duration = float(torch.tensor(sde.T - resolve_t_min(fn, sde, solver_options.get("t_min")), dtype=dtype))
    levy = sampler == "sde" and get_method("sde", solver_options.get("method", "euler"), caller=fn).levy_area
    parts = []
    for items in _my_batches(fn, n, batch_size, progress):
        x_T = prior_sample_per_item(sde, items, data_shape, seed=seed, dtype=dtype, device=device)
        if sampler == "ode":
            res = sample_ode(_score_for(score, items), sde, x_T, **solver_options)
        else:
            if per_item_brownian:
                bm = brownian_per_item(items, dim, duration, seed=seed, dtype=dtype, device=device, levy_area=levy)
            else:
                bm = brownian_motion(x_T, duration, generator=batch_generator(seed, items, BROWNIAN), levy_area=levy)
            res = sample_sde(_score_for(score, items), sde, x_T, bm=bm, **solver_options)
        parts.append(ShardResult(torch.tensor(list(items), dtype=torch.int64), res.samples.detach().cpu(), res.nfe))
    return concat(parts) if parts else empty((0, *data_shape), dtype)


def log_likelihood_sharded(
    score: ScoreFn | PerItemScore,
    sde: ForwardSDE,
    data: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
    **likelihood_options: Any,
) -> ShardResult:
    """This rank's share of :func:`~scoreflow.log_likelihood` over ``data`` (the full set, on every rank).

    Hutchinson probes are drawn per global batch from a generator seeded by ``(seed, first item)``,
    so every point meets the same probes whatever the world size, but not whatever ``batch_size``:
    another split draws other probes, and a Hutchinson estimate changes by its own noise.

    Args:
        score: the score model, on ``device``, or a :class:`PerItemScore` for per-item conditioning.
        sde: its forward SDE.
        data: all points, shape ``(N, *D)``; each rank reads only its batches.
        seed: seeds the probes; an int >= 0.
        batch_size: points per global batch.
        device: where to solve (default: ``data``'s device).
        progress: show a progress bar over this rank's batches (tqdm if installed, else a line per batch).
        **likelihood_options: passed to ``log_likelihood`` (``trace``, ``probe``, ``rtol`` ...).

    Returns:
        This rank's :class:`ShardResult` with ``values`` the log-densities in nats and
        ``extras["prior_log_prob"]``, ``extras["delta_log_prob"]``, and with ``n_probes > 1``
        ``extras["std_error"]`` (the standard error of each Hutchinson estimate across its probes).

    Raises:
        ValueError: for a malformed ``data``, a non-positive ``batch_size``, a negative ``seed`` or a
            ``generator`` option.
        TypeError: for ``data`` that is not a float32 or float64 tensor (checked on every rank, also one without items).
    """
    fn = "log_likelihood_sharded"
    check_sde(fn, sde)
    check_batch(fn, "data", data, state=True)
    check_int(fn, "seed", seed, minimum=0)
    check_int(fn, "batch_size", batch_size)
    check_bool(fn, "progress", progress)
    if "generator" in likelihood_options:
        raise ValueError(f"{fn}: argument 'generator' is not accepted: the probes are seeded by (seed, batch).")
    device = data.device if device is None else device
    # The same extras on every rank, also on one without items, for gather to merge them.
    n_probes = likelihood_options.get("n_probes", 1)
    names = ("prior_log_prob", "delta_log_prob", *(("std_error",) if isinstance(n_probes, int) and n_probes > 1 else ()))
    parts = []
    for items in _my_batches(fn, data.shape[0], batch_size, progress):
        x = data[items.start : items.stop].to(device)
        g = batch_generator(seed, items, PROBES, device)
        res = log_likelihood(_score_for(score, items), sde, x, generator=g, **likelihood_options)
        extras = {name: getattr(res, name).detach().cpu() for name in names}
        parts.append(ShardResult(torch.tensor(list(items), dtype=torch.int64), res.log_prob.detach().cpu(), res.nfe, extras))
    return concat(parts) if parts else empty((0,), data.dtype, names)
