"""The full convergence study: every reference problem under every SDE (several minutes).

    python benchmarks/convergence.py                        # ODE and SDE studies, all 12 problems
    python benchmarks/convergence.py --laws ring2d --sdes ve --studies ode likelihood

Writes one report per problem under benchmarks/results/<law>-<sde>/ (git-ignored) and prints
a summary table of measured orders, one line per problem x study x method. ``scoreflow bench``
is the quick version of the same study on one problem.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from scoreflow.bench import run_likelihood_study, run_ode_study, run_sde_study
from scoreflow.bench.report import write_report
from scoreflow.testing import LAWS, SDES, make_problem

RUNS = {"ode": run_ode_study, "sde": run_sde_study, "likelihood": run_likelihood_study}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laws", nargs="+", choices=LAWS, default=list(LAWS))
    parser.add_argument("--sdes", nargs="+", choices=SDES, default=list(SDES))
    parser.add_argument("--studies", nargs="+", choices=tuple(RUNS), default=["ode", "sde"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'problem':<18}{'study':<12}{'method':<22}{'metric':<14}{'declared':>9}{'measured':>10}{'agrees':>8}")
    for law in args.laws:
        for sde in args.sdes:
            problem = make_problem(law, sde)
            start = time.perf_counter()
            studies = [RUNS[name](problem, progress=True) for name in args.studies]
            write_report(
                studies,
                Path(args.out) / problem.name,
                command=f"python benchmarks/convergence.py --laws {law} --sdes {sde}",
            )
            for study in studies:
                for o in study.orders:
                    declared = "-" if o["declared"] is None else f"{o['declared']:g}"
                    measured = "-" if o["measured"] is None else f"{o['measured']:.2f}"
                    print(
                        f"{problem.name:<18}{study.name:<12}{o['method']:<22}{o['metric']:<14}{declared:>9}{measured:>10}{str(o['agrees']):>8}"
                    )
            print(f"{problem.name}: {time.perf_counter() - start:.1f} s, report in {Path(args.out) / problem.name}")


if __name__ == "__main__":
    main()
