"""Sharded sampling and likelihood: results do not depend on the world size or the batch split."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import scoreflow as sf
from scoreflow import distributed as D
from scoreflow.distributed import group, results
from scoreflow.distributed.noise import PROBES, batch_generator
from scoreflow.analytic import Gaussian
from scoreflow.cli import main
from scoreflow.testing import make_problem

SRC = Path(__file__).resolve().parents[1] / "src"
WORKER = Path(__file__).resolve().parent / "_distributed_worker.py"
FAILURES_WORKER = Path(__file__).resolve().parent / "_distributed_failures.py"
LAUNCH_TIMEOUT_S = 120


def run_as_ranks(monkeypatch, world_size: int, fn, *args, **kwargs) -> D.ShardResult:
    """Run ``fn`` once per rank in this process (``world()`` patched), merging as ``gather`` would."""
    parts = []
    for rank in range(world_size):
        monkeypatch.setattr(group, "world", lambda rank=rank: (rank, world_size))
        parts.append(fn(*args, **kwargs))
    monkeypatch.undo()
    return results.concat(parts)


@pytest.mark.parametrize("n, batch_size", [(1, 4), (10, 3), (12, 4), (100, 7)])
def test_global_batches_partition_the_items_identically_for_every_world_size(n, batch_size):
    reference = D.global_batches(n, batch_size, 0, 1)
    for world_size in (1, 2, 3, 8):
        batches = [b for r in range(world_size) for b in D.global_batches(n, batch_size, r, world_size)]
        assert sorted(batches, key=lambda b: b.start) == reference
    assert [i for b in reference for i in b] == list(range(n))
    assert all(0 < len(b) <= batch_size for b in reference)


@pytest.mark.parametrize("sampler, options", [
    ("ode", {"method": "rk4", "steps": 5}),
    ("sde", {"method": "euler", "steps": 20}),
    ("sde", {"method": "euler", "steps": 20, "per_item_brownian": False}),
])
def test_sharded_sampling_is_independent_of_world_size_and_batch_split(monkeypatch, sampler, options):
    problem = make_problem("gaussian2d", "vp")
    score, sde = problem.score, problem.sde
    kwargs = dict(sampler=sampler, seed=7, batch_size=5, dtype=torch.float64, **options)
    one = D.sample_sharded(score, sde, 12, (2,), **kwargs)
    assert torch.equal(one.indices, torch.arange(12))
    for world_size in (2, 3):
        many = run_as_ranks(monkeypatch, world_size, D.sample_sharded, score, sde, 12, (2,), **kwargs)
        assert torch.equal(many.values, one.values) and many.nfe == one.nfe
    resplit = D.sample_sharded(score, sde, 12, (2,), **{**kwargs, "batch_size": 12})
    if options.get("per_item_brownian", True):  # per-item noise: another batch split changes only round-off
        torch.testing.assert_close(resplit.values, one.values, rtol=1e-10, atol=1e-10)
    else:  # one path per global batch: a new split draws new noise
        assert not torch.allclose(resplit.values, one.values)
    assert not torch.equal(D.sample_sharded(score, sde, 12, (2,), **{**kwargs, "seed": 8}).values, one.values)


@pytest.mark.parametrize("call, error, pattern", [
    # before: rank 3 of 2 was given batch 3 (rank 1's), rank -1 the items -2, -1 (both silently); ZeroDivision-like
    # range() errors; SeedSequence's and torch.cat's messages without the argument
    (lambda: D.global_batches(10, 2, 3, 2), ValueError, r"global_batches: argument 'rank' expected an int in \[0, world_size=2\), got 3"),
    (lambda: D.global_batches(10, 2, -1, 2), ValueError, r"global_batches: argument 'rank' expected an int >= 0, got -1"),
    (lambda: D.global_batches(10, 0, 0, 1), ValueError, r"global_batches: argument 'batch_size' expected an int >= 1, got 0"),
    (lambda: D.global_batches(10, 2, 0, 0), ValueError, r"global_batches: argument 'world_size' expected an int >= 1, got 0"),
    (lambda: D.shard_path("s.pt", 2, 2), ValueError, r"shard_path: argument 'rank' expected an int in \[0, world_size=2\), got 2"),
    (lambda: D.item_seed(-1, 0, 0), ValueError, r"item_seed: argument 'seed' expected an int >= 0, got -1"),
    (lambda: D.item_seed(1.5, 0, 0), TypeError, r"item_seed: argument 'seed' expected an int, got float 1.5"),
    (lambda: D.prior_sample_per_item(make_problem("gaussian2d", "vp").sde, range(0), (2,), seed=0), ValueError,
     r"prior_sample_per_item: argument 'indices' expected at least one item index, got range\(0, 0\)"),
    (lambda: D.prior_sample_per_item(make_problem("gaussian2d", "vp").sde, range(3), 2, seed=0), ValueError,
     r"prior_sample_per_item: argument 'data_shape' expected a non-empty tuple of ints >= 1 .* got 2"),
    (lambda: D.brownian_per_item(range(3), 2, 1.0, seed=-2), ValueError, r"brownian_per_item: argument 'seed' expected an int >= 0, got -2"),
    (lambda: D.brownian_per_item(range(0), 2, 1.0, seed=0), ValueError, r"brownian_per_item: argument 'indices' expected at least one"),
])
def test_the_building_blocks_refuse_bad_arguments_naming_them(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_item_seeds_differ_across_seeds_streams_and_items_even_for_seeds_beyond_32_bits():
    # a seed >= 2**32 fills two 32-bit words of one entropy list [seed, stream, index]: item_seed(2**32 + 5, 0, 0)
    # was item_seed(5, 0, 1), so two runs with different seeds drew the same noise for some items
    seeds = [0, 1, 5, 2**32, 2**32 + 5, 2**63 + 5, 2**64 + 5]
    keys = [(seed, index, stream) for seed in seeds for index in range(3) for stream in range(3)]
    values = [D.item_seed(*key) for key in keys]
    assert len(set(values)) == len(keys)
    assert all(0 <= v < 2**64 for v in values)


def test_per_item_brownian_rows_are_independent_standard_brownian_increments():
    dim, n = 3, 400
    bm = D.brownian_per_item(range(n), dim, 2.0, seed=0, dtype=torch.float64)
    assert tuple(bm.shape) == (n, dim)
    w1, w2 = bm(0.0, 0.5), bm(0.5, 2.0)
    # Var W(0.5) = 0.5 and Var(W(2) - W(0.5)) = 1.5; 4 standard errors of a variance estimate from n*dim draws.
    for w, var in ((w1, 0.5), (w2, 1.5)):
        assert abs(w.var().item() - var) < 4 * var * (2 / (n * dim)) ** 0.5
    assert abs(torch.corrcoef(torch.stack([w1.flatten(), w2.flatten()]))[0, 1].item()) < 4 / (n * dim) ** 0.5
    # A row is the same path whatever batch it is drawn in.
    assert torch.equal(D.brownian_per_item(range(5, 7), dim, 2.0, seed=0, dtype=torch.float64)(0.0, 0.5), w1[5:7])


def test_sharded_exact_likelihood_matches_one_unsharded_solve(monkeypatch, generator):
    problem = make_problem("ring2d", "vp")
    data = problem.law.sample(40, generator=generator)
    options = dict(trace="exact", rtol=1e-6, atol=1e-6)
    sharded = run_as_ranks(monkeypatch, 2, D.log_likelihood_sharded, problem.score, problem.sde, data, batch_size=15, **options)
    whole = sf.log_likelihood(problem.score, problem.sde, data, **options)
    assert torch.equal(sharded.indices, torch.arange(40))
    torch.testing.assert_close(sharded.values, whole.log_prob, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sharded.extras["prior_log_prob"] + sharded.extras["delta_log_prob"], sharded.values)


def test_sharded_likelihood_under_another_batch_split(generator):
    """As documented: a fixed-step exact-trace likelihood changes by round-off only; Hutchinson probes belong to the
    batch, so its estimate moves by the estimator's noise."""
    problem = make_problem("ring2d", "vp")
    data = problem.law.sample(8, generator=generator)

    def solve(trace, batch_size):
        return D.log_likelihood_sharded(problem.score, problem.sde, data, trace=trace, method="rk4", steps=10, batch_size=batch_size).values

    torch.testing.assert_close(solve("exact", 3), solve("exact", 8), rtol=1e-12, atol=1e-12)
    assert (solve("hutchinson", 3) - solve("hutchinson", 8)).abs().max() > 1e-3


def test_sharded_hutchinson_keeps_the_standard_error_of_several_probes(monkeypatch, generator):
    """With n_probes > 1 each batch's std_error is kept (it was dropped), the same as one solve of the batch
    with its generator; a rank without items has the same extras, so the ranks' results merge."""
    problem = make_problem("ring2d", "vp")
    data = problem.law.sample(5, generator=generator)
    options = dict(trace="hutchinson", probe="gaussian", n_probes=3, method="rk4", steps=4)
    sharded = run_as_ranks(monkeypatch, 3, D.log_likelihood_sharded, problem.score, problem.sde, data, batch_size=3, **options)
    assert torch.equal(sharded.indices, torch.arange(5))
    for items in (range(0, 3), range(3, 5)):
        g = batch_generator(0, items, PROBES)
        whole = sf.log_likelihood(problem.score, problem.sde, data[items.start : items.stop], generator=g, **options)
        torch.testing.assert_close(sharded.extras["std_error"][items.start : items.stop], whole.std_error, rtol=0, atol=0)
        assert bool((whole.std_error > 0).all())


def test_results_round_trip_through_pt_and_npz(tmp_path):
    result = D.ShardResult(torch.arange(4), torch.randn(4, 2, dtype=torch.float64), 17, {"prior_log_prob": torch.randn(4)})
    for suffix in (".pt", ".npz"):
        path = D.save_result(result, tmp_path / f"out{suffix}", seed=3)
        back = D.load_result(path)
        assert torch.equal(back.indices, result.indices) and torch.equal(back.values, result.values)
        assert back.nfe == 17 and torch.equal(back.extras["prior_log_prob"], result.extras["prior_log_prob"])
    assert D.shard_path(tmp_path / "s.npz", 1, 4).name == "s.rank1-of-4.npz"
    # files of something else: a tensor and an array archive (were AttributeError 'items' and KeyError 'indices')
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match=r"load_result: '.*tensor.pt' is not a result .* holds a Tensor, without indices, values, nfe"):
        D.load_result(tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match=r"load_result: '.*other.npz' is not a result .* holds a dict with keys \['a'\]"):
        D.load_result(tmp_path / "other.npz")


def test_npz_meta_reads_back_without_pickle(tmp_path):
    """None (or a list holding None) became a pickled object array, which np.load refuses without allow_pickle=True
    ("Object arrays cannot be loaded"): the file was written but its meta unreadable safely."""
    meta = {"t_min": None, "steps": (10, None), "seed": 3, "trace": "exact"}
    path = D.save_result(D.ShardResult(torch.arange(2), torch.zeros(2, 2), 1), tmp_path / "m.npz", **meta)
    with np.load(path) as f:
        back = {k[len("meta_"):]: f[k] for k in f.files if k.startswith("meta_")}
    assert back["seed"].item() == 3 and back["trace"].item() == "exact"
    assert json.loads(back["t_min"].item()) is None and json.loads(back["steps"].item()) == [10, None]


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_load_result_names_a_damaged_file(tmp_path, suffix, damage):
    """A shard cut short (a copy that stopped, a full disk) or overwritten is refused naming the file; before: torch's
    and numpy's own errors without the path (RuntimeError from the zip reader, EOFError, KeyError 101, BadZipFile)."""
    path = D.save_result(D.ShardResult(torch.arange(3), torch.randn(3, 2), 5), tmp_path / f"s.rank0-of-2{suffix}")
    content = path.read_bytes()
    path.write_bytes({"truncated": content[: len(content) // 2], "empty": b"", "garbage": b"hello world"}[damage])
    with pytest.raises(ValueError, match=rf"load_result: '.*s\.rank0-of-2\{suffix}' is not a readable \{suffix} result file"):
        D.load_result(path)
    with pytest.raises(FileNotFoundError):
        D.load_result(tmp_path / f"missing{suffix}")


@pytest.mark.parametrize("value", [np.float64(0.5), Path("runs")])
def test_save_result_refuses_meta_that_load_result_could_not_read(tmp_path, value):
    """torch.load(weights_only=True) refuses numpy scalars and paths: such a .pt file was written but unreadable."""
    result = D.ShardResult(torch.arange(2), torch.zeros(2, 2), 1)
    with pytest.raises(TypeError, match="save_result: meta 'where' expected a str, int, float, bool or None"):
        D.save_result(result, tmp_path / "out.pt", where=value)
    assert list(tmp_path.iterdir()) == []
    D.save_result(result, tmp_path / "out.pt", where=str(value), t=(1, 2.5, None))
    assert torch.equal(D.load_result(tmp_path / "out.pt").values, result.values)


def test_sharded_errors():
    problem = make_problem("gaussian2d", "vp")
    with pytest.raises(ValueError, match="'sampler' expected one of 'ode', 'sde'"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), sampler="pc")
    with pytest.raises(ValueError, match="'generator' is not accepted"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), generator=torch.Generator())
    with pytest.raises(ValueError, match="'batch_size' expected an int >= 1"):
        D.log_likelihood_sharded(problem.score, problem.sde, torch.zeros(3, 2), batch_size=0)
    with pytest.raises(ValueError, match=r"'data_shape' expected a non-empty tuple of ints >= 1 .* got \(2, 'abc'\)"):
        D.sample_sharded(problem.score, problem.sde, 4, (2, "abc"))
    with pytest.raises(ValueError, match="'seed' expected an int >= 0, got -1"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), seed=-1)
    with pytest.raises(TypeError, match="'dtype' expected a floating torch.dtype .* got torch.int64"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), dtype=torch.int64)
    with pytest.raises(ValueError, match="'seed' expected an int >= 0, got -3"):
        D.log_likelihood_sharded(problem.score, problem.sde, torch.zeros(3, 2), seed=-3)
    with pytest.raises(ValueError, match="path suffix.*'.pt', '.npz'"):
        D.save_result(results.empty((0, 2), torch.float32), "out.csv")
    # options that were ignored: a trajectory (computed, then dropped), a per-batch Brownian path for the ODE,
    # and a string read as true
    with pytest.raises(ValueError, match="'return_trajectory' is not accepted: a ShardResult holds the final samples only"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), method="rk4", steps=2, return_trajectory=True)
    with pytest.raises(ValueError, match="'save_at' is not accepted"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), sampler="sde", method="euler", steps=2, save_at=[0.5])
    with pytest.raises(ValueError, match="'per_item_brownian' applies to sampler='sde'"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), sampler="ode", per_item_brownian=False)
    with pytest.raises(TypeError, match="'per_item_brownian' expected True or False, got str 'no'"):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), sampler="sde", per_item_brownian="no")
    with pytest.raises(TypeError, match="log_likelihood_sharded: argument 'progress' expected True or False"):
        D.log_likelihood_sharded(problem.score, problem.sde, torch.zeros(3, 2), progress="yes")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(worker: Path, *args: str) -> subprocess.Popen:
    """Start ``torchrun --nproc-per-node 2 worker args...`` on CPU (gloo) over loopback only."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_loopback_port()), str(worker), *args,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, timeout_s: float = LAUNCH_TIMEOUT_S) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers (each in its own session) on SIGTERM, not on SIGKILL
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout_s} s:\n{out}")
    assert proc.returncode == 0, out
    return out


def test_two_rank_launch_equals_one_rank_results(tmp_path):
    """torchrun, 2 CPU ranks on gloo, running the CLI's sample and likelihood commands (see _distributed_worker.py):
    SDE samples equal the 1-rank result bit for bit, Hutchinson likelihoods within the solver tolerance; a solve
    that fails on one rank stops both with its message."""
    if "lo" not in {name for _, name in socket.if_nameindex()}:
        pytest.skip("no loopback interface named 'lo' for gloo")
    log = _wait(_torchrun(WORKER, str(tmp_path)))
    assert log.count("on 2 rank(s)") == 3, log  # samples.pt, ll.npz and the earlier failed.pt
    # A solve that fails on rank 1 only is reported once, by rank 0, and leaves no file: neither of its own nor
    # of the earlier run it was to replace.
    assert "scoreflow dist sample: error: on rank 1: score became non-finite" in log, log
    assert "Traceback" not in log and not list(tmp_path.glob("failed*"))
    assert re.search(r"scoreflow dist sample: error: on rank 1: writing '.*blocked.rank1-of-2.pt' failed", log), log
    assert not (tmp_path / "blocked.pt").exists()
    problem = make_problem("gaussian2d", "vp")

    reference = D.sample_sharded(
        problem.score, problem.sde, 100, (2,), sampler="sde", method="euler", steps=20, seed=5, batch_size=16,
        dtype=torch.float64,
    )
    merged = D.load_result(tmp_path / "samples.pt")
    assert torch.equal(merged.indices, torch.arange(100))
    assert torch.equal(merged.values, reference.values) and merged.nfe == reference.nfe
    shards = [D.load_result(D.shard_path(tmp_path / "samples.pt", r, 2)) for r in range(2)]
    assert sorted(torch.cat([s.indices for s in shards]).tolist()) == list(range(100))
    assert all(len(s.indices) > 0 for s in shards)

    data = problem.law.sample(100, generator=torch.Generator().manual_seed(5))
    reference = D.log_likelihood_sharded(
        problem.score, problem.sde, data, trace="hutchinson", rtol=1e-5, atol=1e-5, seed=5, batch_size=25
    )
    merged = D.load_result(tmp_path / "ll.npz")
    assert torch.equal(merged.indices, torch.arange(100))
    # The same probes meet each point on either world size, so only solver round-off may differ.
    torch.testing.assert_close(merged.values, reference.values, rtol=1e-6, atol=1e-6)


#: How rank 1's model fails in its solve (``_cli_models``), and ``merged-write``: rank 0 cannot write the merged file.
FAILURES = ["runtime_error", "os_error", "assertion_error", "value_error", "interrupt", "merged-write"]
#: Well below the process group's timeout (1800 s), which the other rank waited for before; the launch takes ~5 s.
FAILURES_TIMEOUT_S = 60


def _one_process_outcome(case: str, tmp_path: Path, capsys) -> tuple[str, str]:
    """What ``main`` does on one process when the model of ``case`` fails: its status or the exception it lets
    through, and what it prints on stderr."""
    argv = ["dist", "sample", "--model", f"_cli_models:{case}_for_single_items", "--data-shape", "2", "--num-samples",
            "1", "--method", "euler", "--steps", "2", "--no-progress", "--out", str(tmp_path / "one.pt")]
    try:
        status = str(main(argv))
    except Exception as e:
        status = f"raised {type(e).__name__}: {e}"
    return status, capsys.readouterr().err


def test_a_failure_on_one_rank_stops_every_rank_promptly(tmp_path, capsys):
    """torchrun, 2 CPU ranks on gloo: whatever rank 1's model raises in its solve, rank 1 ends as one process would
    (its exception, or Ctrl-C's status), and rank 0 at once, with one line naming rank 1 and what it raised, and the
    status main gives that exception on one process (1 for a traceback).  Before, rank 0 waited in the agreement
    for the process group's timeout.  Earlier files of --out are removed after a failed solve (status 1) and left
    after an interrupted one, as after a killed one."""
    if "lo" not in {name for _, name in socket.if_nameindex()}:
        pytest.skip("no loopback interface named 'lo' for gloo")
    for case in FAILURES:
        (tmp_path / f"{case}.pt").write_bytes(b"an earlier run")
        (tmp_path / f"{case}.rank2-of-3.pt").write_bytes(b"an earlier run's shard")
    start = time.monotonic()
    log = _wait(_torchrun(FAILURES_WORKER, str(tmp_path), *FAILURES), FAILURES_TIMEOUT_S)
    assert time.monotonic() - start < FAILURES_TIMEOUT_S, log
    lines = map(json.loads, re.findall(r"RESULT (\[.*\])", log))
    results = {(r, case): (status, err) for r, case, status, err in lines}
    assert len(results) == 2 * len(FAILURES), log
    one = tmp_path / "one"
    one.mkdir()
    for case in FAILURES[:-1]:
        alone, alone_err = _one_process_outcome(case, one, capsys)
        # On one process: the exception with its traceback (Python's status 1), or one line with its status.
        status, line = ("1", alone.removeprefix("raised ")) if alone.startswith("raised") else (alone, alone_err)
        line = line.removeprefix("scoreflow dist sample: error: ").strip()
        assert results[1, case] == (alone, ""), (case, log)  # rank 0 speaks for all
        rank0, err = results[0, case]
        assert rank0 == status and err.startswith(f"scoreflow dist sample: error: on rank 1: {line}"), (case, log)
        assert err.count("\n") == 1, (case, log)
        earlier = [tmp_path / f"{case}.pt", tmp_path / f"{case}.rank2-of-3.pt"]
        assert [p.exists() for p in earlier] == [case == "interrupt"] * 2, case
        assert not list(tmp_path.glob(f"{case}.rank?-of-2.pt")), case
    # Rank 0 cannot write the merged file: both ranks end with status 1 (before, rank 1 ended with 0), the shards
    # of this run written and no merged file.
    assert results[1, "merged-write"] == ("1", ""), log
    status, err = results[0, "merged-write"]
    assert status == "1", log
    assert re.fullmatch(r"scoreflow dist sample: error: writing '.*merged-write.pt' failed \(\[Errno 28\].*\n", err), log
    assert sorted(p.name for p in tmp_path.glob("merged-write*")) == [f"merged-write.rank{r}-of-2.pt" for r in range(2)]


def test_per_item_score_conditions_each_item(monkeypatch):
    """Item i is a Gaussian with mean (3 (i mod 2), 0): each sample follows its own closed-form flow map."""
    sde = sf.VPSDE()
    cov = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=torch.float64)

    def law(i: int) -> Gaussian:
        return Gaussian(torch.tensor([3.0 * (i % 2), 0.0], dtype=torch.float64), cov)

    def factory(items: range):
        scores = [law(i).score(sde) for i in items]
        return lambda x, t: torch.cat([s(x[j : j + 1], t[j : j + 1]) for j, s in enumerate(scores)])

    kwargs = dict(seed=1, batch_size=3, dtype=torch.float64, method="dopri5", rtol=1e-7, atol=1e-7)
    many = run_as_ranks(monkeypatch, 2, D.sample_sharded, D.PerItemScore(factory), sde, 6, (2,), **kwargs)
    x_T = torch.cat([D.prior_sample_per_item(sde, range(i, i + 1), (2,), seed=1, dtype=torch.float64) for i in range(6)])
    exact = torch.cat([law(i).flow_map(sde, x_T[i : i + 1], sde.T, sde.t_min) for i in range(6)])
    # The prior N(0, I) stands in for p_T, so samples follow the flow map from x_T exactly.
    torch.testing.assert_close(many.values, exact, rtol=1e-5, atol=1e-5)


def test_progress_without_tqdm_is_a_line_per_batch_done(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails, as without the bench extra
    problem = make_problem("gaussian2d", "vp")
    D.sample_sharded(problem.score, problem.sde, 10, (2,), method="euler", steps=2, batch_size=4, progress=True)
    assert capsys.readouterr().err.splitlines() == [
        f"sample_sharded rank 0/1: batch {k}/3 done (items {a}..{b})" for k, (a, b) in enumerate([(0, 3), (4, 7), (8, 9)], 1)
    ]


def test_dist_sample_places_the_steps_by_the_schedule(tmp_path):
    """`dist sample --schedule` is sample_sharded's schedule=, as `sample --schedule` is sample_ode's."""
    problem = make_problem("gaussian2d", "ve")
    argv = ["dist", "sample", "--problem", "gaussian2d", "--sde", "ve", "--method", "dpmpp_3m_pc", "--steps", "8",
            "--num-samples", "12", "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "karras.pt"), "--schedule", "karras"]) == 0
    saved = D.load_result(tmp_path / "karras.pt").values

    def api(**grid):
        return D.sample_sharded(problem.law.score(problem.sde), problem.sde, 12, (2,), sampler="ode", seed=0,
                                dtype=torch.float64, method="dpmpp_3m_pc", steps=8, **grid).values

    assert torch.equal(saved, api(schedule="karras"))
    assert not torch.equal(saved, api())  # the default grid gives other samples


@pytest.mark.parametrize("device, pattern", [
    ("meta", r"argument --device: meta holds no data to solve on; use --device cpu, cuda or auto"),
    pytest.param(
        "mps", r"argument --device: mps is not available on this machine \(.*\); use --device cpu or auto",
        marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has mps"),
    ),
])
@pytest.mark.parametrize("command", ["sample", "likelihood"])
def test_dist_refuses_a_device_it_cannot_solve_on_in_one_line(tmp_path, capsys, command, device, pattern):
    """Before: --device meta reached the solver (RuntimeError 'Tensor.item() cannot be called on meta tensors') and
    --device mps without MPS the first tensor moved there, each with a traceback and status 1."""
    argv = ["dist", command, "--problem", "gaussian2d", "--device", device, "--out", str(tmp_path / "x.pt")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and re.fullmatch(rf"scoreflow dist {command}: error: {pattern}\n", err), err
    assert list(tmp_path.iterdir()) == []


def test_a_torchrun_launch_without_a_process_group_is_refused(monkeypatch):
    """Under torchrun (WORLD_SIZE=2) without init_distributed, world() was (0, 1) on every rank: each rank solved
    all the items (world_size times the work) and gather returned each rank's own copy, without an error."""
    problem = make_problem("gaussian2d", "vp")
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = r"WORLD_SIZE=2 in the environment .* no process group is initialised.* call scoreflow.distributed.init_distributed\(\) first"
    with pytest.raises(RuntimeError, match=message):
        D.sample_sharded(problem.score, problem.sde, 4, (2,), method="euler", steps=2)
    with pytest.raises(RuntimeError, match=message):
        D.gather(results.empty((0, 2), torch.float32))
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: one process, nothing to share
    assert D.world() == (0, 1)


@pytest.mark.parametrize("rank", [0, 3])
def test_half_precision_data_is_refused_naming_data_on_every_rank(monkeypatch, rank):
    """float16 data reached log_likelihood, whose message named its own argument 'x'; and a rank without items
    (rank 3 of 4 for 3 points) accepted it, so the ranks disagreed about the same input."""
    problem = make_problem("gaussian2d", "vp")
    monkeypatch.setattr(group, "world", lambda: (rank, 4))
    with pytest.raises(TypeError, match=r"log_likelihood_sharded: argument 'data' expected a float32 or float64 tensor .* got dtype torch.float16"):
        D.log_likelihood_sharded(problem.score, problem.sde, torch.zeros(3, 2, dtype=torch.float16), batch_size=1)
