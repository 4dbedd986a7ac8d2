"""Run by torchrun from test_distributed.py: ``dist sample`` in a 2-rank gloo group where one rank fails.

``python _distributed_failures.py OUT CASE...``: for every CASE, a model of ``_cli_models`` raises
``CASE`` on rank 1 only, in its solve (``merged-write``: rank 0 cannot write the merged file).  Every
rank prints one line per case, ``RESULT [rank, case, outcome, stderr]`` (JSON) with ``outcome`` main's exit
status, or ``raised TYPE: MESSAGE`` for the exception main let through (the traceback a user would see),
and ``stderr`` what main printed there (captured, so that the other rank's lines cannot cut it).
"""

import contextlib
import io
import json
import sys
from pathlib import Path

import torch.distributed as dist

from scoreflow import distributed as D
from scoreflow.cli import main

SOLVE = ["--data-shape", "2", "--num-samples", "3", "--batch-size", "2", "--method", "euler", "--steps", "2",
         "--backend", "gloo", "--no-progress", "--overwrite"]


def outcome(argv: list[str]) -> tuple[str, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            status = str(main(argv))
    except BaseException as e:  # noqa: BLE001 - what main let through is the outcome
        status = f"raised {type(e).__name__}: {e}"
    return status, err.getvalue()


def merged_write_fails(save_result):
    """``D.save_result``, except that the merged file (written without a rank) meets a full disk."""

    def save(result, path, **meta):
        if "rank" not in meta:
            raise OSError(28, "No space left on device")
        return save_result(result, path, **meta)

    return save


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank, _ = D.init_distributed("gloo")
    save_result = D.save_result
    for case in sys.argv[2:]:
        model = "_cli_models:gaussian" if case == "merged-write" else f"_cli_models:{case}_for_single_items"
        if case == "merged-write" and rank == 0:
            D.save_result = merged_write_fails(save_result)
        result = outcome(["dist", "sample", "--model", model, *SOLVE, "--out", str(out / f"{case}.pt")])
        D.save_result = save_result
        # One write: unbuffered (PYTHONUNBUFFERED), print writes a line and its end apart, and the other rank's
        # line may come between.
        sys.stdout.write(f"RESULT {json.dumps([rank, case, *result])}\n")
        sys.stdout.flush()
    dist.destroy_process_group()
