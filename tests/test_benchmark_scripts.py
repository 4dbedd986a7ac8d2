"""The benchmark scripts' reporting options answer a missing result file with one line, as the command line does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, argv", [("bench_fixed_step_grids.py", ["--report"]),
                                          ("bench_few_nfe.py", ["--replot"]),
                                          ("bench_pc_grids.py", ["--report"]),
                                          ("bench_inpaint_grids.py", ["--report"])])
def test_a_report_without_its_results_is_one_line_and_status_2(tmp_path, script, argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "nothing here"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv, "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"{script}: error: cannot read the results {out}"), run.stderr
    assert "No such file or directory" in run.stderr
