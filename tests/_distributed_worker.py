"""Run by torchrun from test_distributed.py: both CLI commands in one 2-rank gloo group (one start-up)."""

import sys

import torch.distributed as dist

from scoreflow import distributed as D
from scoreflow.distributed_cli import main

COMMON = ["--problem", "gaussian2d-vp", "--num-samples", "100", "--dtype", "float64", "--seed", "5", "--backend", "gloo"]

if __name__ == "__main__":
    out = sys.argv[1]
    D.init_distributed("gloo")
    main(["sample", *COMMON, "--sampler", "sde", "--method", "euler", "--steps", "20", "--batch-size", "16",
          "--out", f"{out}/samples.pt"])
    main(["likelihood", *COMMON, "--trace", "hutchinson", "--rtol", "1e-5", "--atol", "1e-5", "--batch-size", "25",
          "--out", f"{out}/ll.npz"])
    dist.destroy_process_group()
