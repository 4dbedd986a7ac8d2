"""Run by torchrun from test_distributed.py: both CLI commands in one 2-rank gloo group (one start-up)."""

import sys
from pathlib import Path

import torch.distributed as dist

from scoreflow import distributed as D
from scoreflow.cli import main

# float64, the default dtype of an analytic --problem
COMMON = ["--problem", "gaussian2d", "--sde", "vp", "--num-samples", "100", "--seed", "5", "--backend", "gloo"]

if __name__ == "__main__":
    out = sys.argv[1]
    D.init_distributed("gloo")
    sample = ["--sampler", "sde", "--method", "euler", "--steps", "20", "--batch-size", "16", "--out", f"{out}/samples.pt"]
    likelihood = ["--trace", "hutchinson", "--rtol", "1e-5", "--atol", "1e-5", "--batch-size", "25", "--out", f"{out}/ll.npz"]
    assert main(["dist", "sample", *COMMON, *sample]) == 0
    assert main(["dist", "likelihood", *COMMON, *likelihood]) == 0
    # Only rank 1 meets a non-finite score (its batch holds the single third item): both ranks stop with status 1,
    # and both remove the files of the earlier run that --overwrite replaces.
    failing = ["--data-shape", "2", "--num-samples", "3", "--batch-size", "2", "--method", "euler", "--steps", "2",
               "--backend", "gloo", "--no-progress", "--out", f"{out}/failed.pt"]
    assert main(["dist", "sample", "--model", "_cli_models:gaussian", *failing]) == 0
    assert main(["dist", "sample", "--model", "_cli_models:nan_for_single_items", *failing, "--overwrite"]) == 1
    # Only rank 1 cannot write its shard (a folder holds its name): both ranks stop with status 1.
    (Path(out) / "blocked.rank1-of-2.pt").mkdir(exist_ok=True)
    blocked = ["--method", "euler", "--steps", "2", "--no-progress", "--overwrite", "--out", f"{out}/blocked.pt"]
    assert main(["dist", "sample", *COMMON, *blocked]) == 1
    dist.destroy_process_group()
