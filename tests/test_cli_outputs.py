"""Result files of the command line: complete or absent, never replaced unless asked, no stale shards."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoreflow import distributed as D
from scoreflow._files import atomic_write
from scoreflow.cli import main
from scoreflow.testing import make_problem

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
SAMPLE = ["sample", "--no-progress", "--problem", "gaussian2d", "--method", "rk4", "--steps", "4", "--num-samples", "16"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".txt" and tmp != path
            tmp.write_text("half of the n")
            raise OSError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # the temporary file is gone
    with atomic_write(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def _failing_save(obj, f, *args, **kwargs):
    """torch.save that writes part of the file, then finds the disk full."""
    with open(f, "wb") as out:
        out.write(b"PK\x03\x04 the first bytes of a zip archive")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("existing", [False, True], ids=["new file", "overwrite"])
def test_a_failed_sample_write_leaves_no_file_or_the_old_one(tmp_path, monkeypatch, capsys, existing):
    out = tmp_path / "x.pt"
    if existing:
        torch.save(torch.ones(3), out)
    monkeypatch.setattr(torch, "save", _failing_save)
    assert main([*SAMPLE, "--out", str(out), *(["--overwrite"] if existing else [])]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"scoreflow sample: error: writing '{out}' failed (")
    assert "No space left on device" in err[0]
    assert [p.name for p in tmp_path.iterdir()] == (["x.pt"] if existing else [])
    if existing:
        monkeypatch.undo()
        assert torch.equal(torch.load(out), torch.ones(3))


def test_a_killed_sample_write_leaves_no_file(tmp_path):
    """The process dies (SIGKILL) half-way through torch.save: no truncated file under the final name."""
    out = tmp_path / "x.pt"
    script = (
        "import os, signal, sys, torch\n"
        "from scoreflow.cli import main\n"
        "def save(obj, f, *a, **k):\n"
        "    open(f, 'wb').write(b'PK the first bytes')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = save\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *SAMPLE, "--out", str(out)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    (partial,) = tmp_path.iterdir()  # the write was under way: its hidden temporary file is all that is left
    assert partial.name.startswith(".x.pt.") and partial.read_bytes() == b"PK the first bytes"
    assert main([*SAMPLE, "--out", str(out)]) == 0  # a leftover temporary file is no obstacle
    assert torch.load(out).shape == (16, 2)


def test_sample_creates_the_folder_and_replaces_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "runs" / "today" / "x.pt"
    assert main([*SAMPLE, "--out", str(out)]) == 0
    first = torch.load(out)
    assert first.shape == (16, 2) and first.dtype == torch.float64  # an analytic problem solves in float64
    assert main([*SAMPLE, "--seed", "1", "--out", str(out)]) == 2
    assert torch.equal(torch.load(out), first)
    assert main([*SAMPLE, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert not torch.equal(torch.load(out), first)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.pt"]


def test_dist_overwrite_removes_stale_shards_of_another_world_size(tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = ["dist", "sample", "--problem", "gaussian2d", "--method", "rk4", "--steps", "4", "--num-samples", "10", "--out", str(out)]
    for rank in range(3):  # an earlier run on 3 ranks
        D.save_result(D.results.empty((0, 2), torch.float64), D.shard_path(out, rank, 3))
    other = tmp_path / "other.rank0-of-3.npz"
    other.write_text("a shard of another output")
    assert main(argv) == 2
    assert "shard s.rank0-of-3.npz and 2 more of s.npz exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.rank0-of-3.npz", "s.npz", "s.rank0-of-1.npz"]
    merged = D.load_result(out)
    assert torch.equal(merged.indices, torch.arange(10)) and merged.values.dtype == torch.float64
    assert torch.equal(D.load_result(D.shard_path(out, 0, 1)).values, merged.values)


DIST = ["dist", "sample", "--no-progress", "--method", "rk4", "--steps", "4"]
GAUSSIAN = ["--problem", "gaussian2d", "--num-samples", "10"]
# Only the single third item's batch meets a NaN score: a solve that fails part-way, with status 1.
NAN_MODEL = ["--model", "_cli_models:nan_for_single_items", "--data-shape", "2", "--num-samples", "3", "--batch-size", "2"]


def _earlier_run(out: Path, world_size: int) -> dict[str, bytes]:
    """The files a run (seed 1) on ``world_size`` ranks leaves at ``out``, by name: the merged file and a shard per
    rank, rank 0's holding all 10 samples (one global batch); a run on one rank writes them, the rest is renamed."""
    assert main([*DIST, *GAUSSIAN, "--seed", "1", "--out", str(out)]) == 0
    if world_size > 1:
        D.shard_path(out, 0, 1).rename(D.shard_path(out, 0, world_size))
        for rank in range(1, world_size):
            D.save_result(D.results.empty((0, 2), torch.float64), D.shard_path(out, rank, world_size))
    return {p.name: p.read_bytes() for p in out.parent.iterdir()}


def _full_disk_for(name: str):
    """torch.save that finds the disk full when it writes the file ``name`` (under its temporary name)."""
    save = torch.save

    def failing(obj, f, *args, **kwargs):
        if Path(f).name.startswith(f".{name}."):
            return _failing_save(obj, f)
        return save(obj, f, *args, **kwargs)

    return failing


@pytest.mark.parametrize("earlier_world_size", [1, 2], ids=["earlier on 1 rank", "earlier on 2 ranks"])
@pytest.mark.parametrize(
    "failure, message, left",
    [
        (None, "", ["s.pt", "s.rank0-of-1.pt"]),
        (NAN_MODEL, "score became non-finite", []),
        ("s.rank0-of-1.pt", "writing '{out}/s.rank0-of-1.pt' failed", []),  # the disk is full for this file
        ("s.pt", "writing '{out}/s.pt' failed", ["s.rank0-of-1.pt"]),
    ],
    ids=["success", "non-finite solve", "shard write", "merged write"],
)
def test_a_dist_overwrite_leaves_no_file_of_the_earlier_run(tmp_path, monkeypatch, capsys, earlier_world_size, failure,
                                                            message, left):
    """Whether this run succeeds or fails part-way, the files at --out are all its own (the merged file last):
    none of the earlier run's merged file or shards is left to be taken for its result."""
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "s.pt"
    _earlier_run(out, earlier_world_size)
    if isinstance(failure, str):
        monkeypatch.setattr(torch, "save", _full_disk_for(failure))
    source = failure if isinstance(failure, list) else GAUSSIAN
    assert main([*DIST, *source, "--seed", "2", "--overwrite", "--out", str(out)]) == (1 if failure else 0)
    assert message.format(out=tmp_path) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == left
    problem = make_problem("gaussian2d", "vp")
    this_run = D.sample_sharded(problem.score, problem.sde, 10, (2,), method="rk4", steps=4, seed=2, dtype=torch.float64)
    for name in left:
        assert torch.equal(D.load_result(tmp_path / name).values, this_run.values), name


@pytest.mark.parametrize(
    "refusal, message",
    [
        ([*GAUSSIAN, "--t-min", "2"], "argument --t-min: expected a time in (0, T=1)"),  # the command's check
        (["--model", "_cli_models:flat_score", "--data-shape", "2"], "sample_ode: the score expected shape"),  # the solver's
    ],
    ids=["option", "model"],
)
def test_a_refused_dist_overwrite_leaves_the_earlier_files_untouched(tmp_path, monkeypatch, capsys, refusal, message):
    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "s.pt"
    earlier = _earlier_run(out, 2)
    assert main([*DIST, *refusal, "--overwrite", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == earlier


def test_dist_sample_with_a_model_runs_in_float32(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    out = tmp_path / "m.pt"
    argv = ["dist", "sample", "--model", "_cli_models:gaussian", "--data-shape", "2", "--method", "heun", "--steps", "8",
            "--num-samples", "6", "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    assert "6 samples of shape (2,) on 1 rank(s), NFE 32" in capsys.readouterr().out  # 2 batches x 8 steps x 2 evaluations
    merged = D.load_result(out)
    assert merged.values.shape == (6, 2) and merged.values.dtype == torch.float32
