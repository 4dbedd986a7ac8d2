"""How examples/digits.py's training recipe was chosen: validation bits/dim of each variant, never the test split.

    python examples/digits_validation.py --out runs/digits-validation        # ~1 minute per variant on an idle core

Every variant trains the residual score model of ``digits.py`` on the same 1 293 training digits for the same
number of steps (its last weights or weight average, no checkpoint selection) and is scored on the 144
validation digits held out of the training split (exact trace, ``rtol = atol = 1e-3``); the paired difference to the first variant, over the same validation points, comes
with its standard error. Writes ``DIR/validation.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import scoreflow as sf
from scoreflow._files import atomic_write
from digits import bpd, dequantized, fit_gaussian, load_split, train_score

#: name -> keyword arguments of ``train_score``; the first is the reference of the paired differences.
VARIANTS = {
    "noise prediction (sigma2), uniform t (the first recipe)": {"weighting": "sigma2", "time_sampling": "uniform",
                                                                "dropout": 0.0, "ema": 0.0},
    "+ EMA 0.999": {"weighting": "sigma2", "time_sampling": "uniform", "dropout": 0.0},
    "+ EMA, dropout 0.1": {"weighting": "sigma2", "time_sampling": "uniform"},
    "likelihood weighting g^2, uniform t, EMA, dropout": {"weighting": "likelihood", "time_sampling": "uniform"},
    "likelihood weighting g^2, t uniform in log-SNR, EMA, dropout (digits.py)": {},
}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/digits-validation"))
    parser.add_argument("--steps", type=int, default=8000, help="training steps of every variant (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fit, val, _, _ = load_split(args.seed)
    val_y = dequantized(val, torch.Generator().manual_seed(args.seed + 6))  # the flow's validation draw in digits.py
    sde = sf.VPSDE()
    gaussian = fit_gaussian(fit)
    rows, reference = {}, None
    for name, options in VARIANTS.items():
        score, seconds, _ = train_score(fit, val_y, gaussian, sde, args.steps, args.seed, checks=1, **options)
        with torch.no_grad():
            per_point = bpd(sf.log_likelihood(score, sde, val_y, rtol=1e-3, atol=1e-3).log_prob)
        reference = per_point if reference is None else reference
        diff = per_point - reference
        rows[name] = {"options": options, "bpd": float(per_point.mean()), "median": float(per_point.median()),
                      "se": float(per_point.std() / math.sqrt(len(per_point))), "paired_diff": float(diff.mean()),
                      "paired_se": float(diff.std() / math.sqrt(len(diff))), "train_seconds": seconds}
        print(f"{name}: {rows[name]['bpd']:.3f} ({seconds:.0f} s of training)", flush=True)
    lines = ["| variant | validation bits/dim ± SE (median) | paired difference to the first ± SE |", "| --- | --- | --- |"]
    lines += [f"| {name} | {r['bpd']:.3f} ± {r['se']:.3f} ({r['median']:.3f}) | {r['paired_diff']:+.3f} ± {r['paired_se']:.3f} |"
              for name, r in rows.items()]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"steps": args.steps, "seed": args.seed, "time": time.ctime(), "variants": rows}
    with atomic_write(args.out / "validation.json") as tmp:  # complete or absent
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
