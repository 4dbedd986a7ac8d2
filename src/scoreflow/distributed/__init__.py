r"""Sampling and likelihood over many processes (``torchrun``), reproducible whatever the world size.

The work is cut into *global batches*: batch ``k`` holds the items
``[k * batch_size, (k + 1) * batch_size)`` and runs on rank ``k % world_size``.  Every random
draw belongs to one item and is seeded by ``(seed, item index)`` — the prior sample
:math:`x_T`, the Brownian path of a reverse-SDE solve — or to one global batch — the Hutchinson
probes of a likelihood solve.  A global batch is therefore computed identically on any number
of ranks, so the union of the results is bit-identical for every world size.  Another
``batch_size`` leaves every item's noise in place: fixed-step results then change by round-off
only, adaptive ones (whose steps a batch shares) within the solver tolerance.  It does draw new
Hutchinson probes, which belong to the batch: those likelihoods change by the estimator's noise.

Each rank solves its batches without talking to the others: an adaptive solver takes as many
steps as its own batch needs, and no collective runs inside a solve, so ranks that take
different step counts cannot deadlock.  The only collective is the final :func:`gather`, which
sends every rank's results to rank 0 in item order.

The modules: :mod:`.group` (process group, batches, seeds), :mod:`.noise` (per-item prior samples
and Brownian paths), :mod:`.sharded` (the sharded solves), :mod:`.results` (results and their
gathering) and :mod:`.files` (result files).
"""

from .files import load_result, save_result, shard_files, shard_path
from .group import global_batches, init_distributed, item_seed, world
from .noise import brownian_per_item, prior_sample_per_item
from .results import ShardResult, gather
from .sharded import PerItemScore, log_likelihood_sharded, sample_sharded

__all__ = [
    "init_distributed", "world", "global_batches", "item_seed", "prior_sample_per_item",
    "brownian_per_item", "sample_sharded", "log_likelihood_sharded", "gather", "ShardResult",
    "save_result", "load_result", "shard_path", "shard_files", "PerItemScore",
]
