"""Hutchinson's v^T (dF/dx) v by reverse mode (what scoreflow does) against forward mode, per evaluation.

Every evaluation of a Hutchinson likelihood needs the field F(x) and v^T J v for a fixed probe v.  Reverse mode
(``torch.autograd.grad`` of F with cotangent v, then a dot with v) records the forward pass and runs one backward
pass; forward mode pushes the tangent v through the forward pass (J v, then the dot with v), either with
``torch.autograd.forward_ad`` dual tensors or with ``torch.func.jvp``.  The three give the same number to round-off
(checked here: the largest difference relative to the estimate's scale is printed).

Fields: the exact scores / velocities of random 16-D Gaussian mixtures (``peers.random_mixture``, seeds 0-2, the
mixture's own batched linear algebra) under VP (float64, batch 1000) and RectifiedFlow's velocity (float32, batch
256), and SiLU MLPs of width 64, 256 and 512 (two hidden layers, time as an input) at the same batches.  CPU time per
evaluation, median over interleaved rounds, one thread.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_divergence_modes.py [--rounds 15]

Prints a table and writes ``benchmarks/results/bench_divergence_modes.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwad
from torch.func import jvp

import scoreflow as sf
from peers import random_mixture, write_json


def reverse(fn, x, v):
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = fn(leaf)
        pulled = torch.autograd.grad(out, leaf, v)[0]
    return out.detach(), (pulled * v).sum(-1)


def forward_dual(fn, x, v):
    with fwad.dual_level():
        out = fn(fwad.make_dual(x, v))
        value, tangent = fwad.unpack_dual(out)
    return value, (tangent * v).sum(-1)


def forward_func(fn, x, v):
    value, tangent = jvp(fn, (x,), (v,))
    return value, (tangent * v).sum(-1)


MODES = {"reverse (autograd.grad)": reverse, "forward (forward_ad)": forward_dual, "forward (torch.func.jvp)": forward_func}


def fields():
    """(name, fn, x, probe) for every field of the study."""
    out = []
    for path, dtype, batch in (("vp", torch.float64, 1000), ("rf", torch.float32, 256)):
        sde = sf.VPSDE() if path == "vp" else sf.RectifiedFlow()
        t = torch.full((batch,), 0.3, dtype=dtype)
        g = torch.Generator().manual_seed(7)
        x = torch.randn(batch, 16, generator=g, dtype=torch.float64).to(dtype)
        probe = (2 * torch.randint(0, 2, x.shape, generator=g) - 1).to(dtype)
        for seed in (0, 1, 2):
            law = random_mixture(3000 + seed, dims=(16, 16), components=(2, 6))[0].to(dtype)
            model = law.score(sde)
            fn = (lambda y, m=model, t=t: m(y, t)) if path == "vp" else (lambda y, m=model, t=t: m.predict(y, t))
            out.append((f"{path} mixture seed {seed} ({law.n_components} comp.), {str(dtype)[6:]}, B={batch}", fn, x, probe))
        for width in (64, 256, 512):
            torch.manual_seed(width)
            net = torch.nn.Sequential(torch.nn.Linear(17, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                      torch.nn.SiLU(), torch.nn.Linear(width, 16)).to(dtype)
            out.append((f"{path} MLP width {width}, {str(dtype)[6:]}, B={batch}",
                        lambda y, n=net, t=t: n(torch.cat([y, t[:, None]], dim=1)), x, probe))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_divergence_modes.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = {"start": os.getloadavg()}
    rows = []
    for name, fn, x, probe in fields():
        results = {mode: f(fn, x, probe) for mode, f in MODES.items()}
        ref_value, ref_est = results["reverse (autograd.grad)"]
        scale = float(ref_est.abs().max())
        gaps = {mode: max(float((value - ref_value).abs().max()), float((est - ref_est).abs().max()) / scale)
                for mode, (value, est) in results.items()}
        times = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode, f in MODES.items():
                start = time.process_time()
                for _ in range(10):
                    f(fn, x, probe)
                times[mode].append((time.process_time() - start) / 10)
        ms = {mode: 1e3 * statistics.median(v) for mode, v in times.items()}
        rows.append({"field": name, "ms": ms, "relative_gap_to_reverse": gaps})
        print(f"{name}: " + ", ".join(f"{m} {t:.3f} ms" for m, t in ms.items()), flush=True)
    load["end"] = os.getloadavg()
    print(f"\nCPU ms per evaluation (value and v^T J v, one probe), median of {args.rounds} interleaved rounds; "
          f"load average at start {load['start']}, at end {load['end']}")
    print("| field | " + " | ".join(MODES) + " | forward / reverse (best forward) | largest relative gap |")
    print("|---|" + "---:|" * (len(MODES) + 2))
    for r in rows:
        best = min(r["ms"][m] for m in MODES if m.startswith("forward"))
        print(f"| {r['field']} | " + " | ".join(f"{r['ms'][m]:.3f}" for m in MODES)
              + f" | {best / r['ms']['reverse (autograd.grad)']:.2f} | {max(r['relative_gap_to_reverse'].values()):.1e} |")
    write_json(args.out, {"config": vars(args), "load_average": load, "rows": rows}, indent=2)


if __name__ == "__main__":
    main()
