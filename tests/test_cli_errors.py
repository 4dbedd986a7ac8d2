"""Every command answers a user's mistake with one line on stderr and exit status 2, before computing anything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scoreflow
from scoreflow.cli import main
from scoreflow.cli.options import CLIError

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def assert_one_line_error(err: str, command: str, pattern: str) -> None:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"scoreflow {command}: error: "), err
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"


# One subprocess per command, each a different kind of mistake, run as a user runs it (`python -m scoreflow`).
# A subprocess costs seconds of torch import; the in-process cases below cover the rest.
@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["demo", "--num-samples", "-5"], r"argument --num-samples: expected an int >= 2, got -5$"),
        (["bench", "--max-nfe", "-1", "--out", "{tmp}/report"], r"argument --max-nfe: expected an int >= 8, got -1$"),
        (["sample", "--sampler", "sde", "--method", "dopri5"],
         r"argument --method: expected one of euler, .* with --sampler sde, got 'dopri5'$"),
        (["likelihood", "--method", "rk4", "--steps", "0"], r"argument --steps: expected an int >= 1, got 0$"),
        (["dist", "sample", "--model", "no_such_package.models:load", "--data-shape", "2", "--out", "{tmp}/x.pt"],
         r"argument --model: cannot import 'no_such_package.models' \(ModuleNotFoundError"),
        (["dist", "likelihood", "--problem", "ring2d", "--data", "{tmp}/missing.pt", "--out", "{tmp}/ll.npz"],
         r"argument --data: cannot read '.*missing.pt'"),
    ],
    ids=["demo", "bench", "sample", "likelihood", "dist-sample", "dist-likelihood"],
)
def test_each_command_run_as_a_program_reports_one_line_and_exit_status_2(tmp_path, argv, pattern):
    argv = [a.format(tmp=tmp_path) for a in argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "scoreflow", *argv], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, " ".join(argv[:2] if argv[0] == "dist" else argv[:1]), pattern)
    assert proc.stdout == ""  # rejected before any computation
    assert list(tmp_path.iterdir()) == []  # and nothing written


PROBLEM = ["--problem", "gaussian2d", "--sde", "vp"]
MODEL = ["--model", "_cli_models:gaussian"]
# name: (argv, the message's pattern, files made in {tmp} first: name -> "file" | "folder" | "flat tensor")
CASES: dict[str, tuple[list[str], str, dict[str, str]]] = {
    # option values
    "zero steps": (["sample", "--method", "rk4", "--steps", "0"], r"argument --steps: expected an int >= 1, got 0$", {}),
    "negative steps": (["dist", "sample", *PROBLEM, "--method", "rk4", "--steps", "-2", "--out", "{tmp}/x.pt"],
                       r"argument --steps: expected an int >= 1, got -2$", {}),
    "steps not an int": (["sample", "--method", "rk4", "--steps", "ten"], r"argument --steps: expected an int >= 1, got 'ten'$", {}),
    "negative step size": (["sample", "--method", "rk4", "--step-size", "-0.1"],
                           r"argument --step-size: expected a finite number > 0, got -0.1$", {}),
    "negative num-samples": (["likelihood", "--num-samples", "-1"], r"argument --num-samples: expected an int >= 1, got -1$", {}),
    "zero num-samples": (["bench", "--num-samples", "0"], r"argument --num-samples: expected an int >= 2, got 0$", {}),
    # the covariance errors of one sample are NaN (and torch warns)
    "one sample": (["sample", "--num-samples", "1"], r"argument --num-samples: expected an int >= 2, got 1$", {}),
    "one trajectory": (["bench", "--num-samples", "1"], r"argument --num-samples: expected an int >= 2, got 1$", {}),
    "negative rtol": (["likelihood", "--rtol", "-1"], r"argument --rtol: expected a finite number > 0, got -1$", {}),
    "nan atol": (["sample", "--atol", "nan"], r"argument --atol: expected a finite number > 0, got nan$", {}),
    "negative seed": (["sample", "--seed", "-1"], r"argument --seed: expected an int >= 0, got -1$", {}),
    "negative threads": (["bench", "--threads", "-1"], r"argument --threads: expected an int >= 1, got -1$", {}),
    "zero threads": (["dist", "sample", *PROBLEM, "--threads", "0", "--out", "{tmp}/x.pt"],
                     r"argument --threads: expected an int >= 1, got 0$", {}),
    # beyond an int64: torch failed with a traceback (the seed at the generator, the count at randn)
    "seed beyond int64": (["sample", "--seed", "99999999999999999999"],
                          r"argument --seed: expected an int from 0 to 2\^63-1 \(torch's int64\), got 99999999999999999999$", {}),
    "num-samples beyond int64": (["dist", "likelihood", *PROBLEM, "--num-samples", str(2**63), "--out", "{tmp}/ll.npz"],
                                 rf"argument --num-samples: expected an int from 1 to 2\^63-1 \(torch's int64\), got {2**63}$", {}),
    # an empty name was read as the default method
    "empty method": (["sample", "--method", ""], r"argument --method: expected one of euler, .* with --sampler ode, got ''$", {}),
    "t-min above T": (["sample", "--t-min", "2"], r"argument --t-min: expected a time in \(0, T=1\) of the forward SDE, got 2$", {}),
    "negative max-nfe": (["bench", "--max-nfe", "-1"], r"argument --max-nfe: expected an int >= 8, got -1$", {}),
    "unknown problem": (["bench", "--problem", "moons"], r"argument --problem: invalid choice: 'moons' \(choose from 'gaussian2d'", {}),
    "unknown study method": (["bench", "--ode-methods", "euler,rk45"],
                             r"argument --ode-methods: expected comma-separated ODE study methods from euler, .*\('rk45' unknown\)$", {}),
    "repeated study method": (["bench", "--sde-methods", "euler,srk,euler"],
                              r"argument --sde-methods: expected each of the SDE study methods once, got 'euler,srk,euler' \('euler' repeated\)$", {}),
    "repeated study": (["bench", "--study", "ode", "likelihood", "ode", "--out", "{tmp}/report"],
                       r"argument --study: expected each study once, got ode likelihood ode \('ode' repeated\)$", {}),
    "data shape": (["dist", "sample", *MODEL, "--data-shape", "2,abc", "--out", "{tmp}/x.pt"],
                   r"argument --data-shape: expected comma-separated ints >= 1 such as 3,32,32, got '2,abc'$", {}),
    "data shape zero": (["dist", "sample", *MODEL, "--data-shape", "0,2", "--out", "{tmp}/x.pt"],
                        r"argument --data-shape: expected comma-separated ints >= 1", {}),
    "bad device": (["dist", "sample", *PROBLEM, "--device", "gpu", "--out", "{tmp}/x.pt"],
                   r"argument --device: expected 'auto' or a torch device such as cpu, cuda, cuda:1, got 'gpu'$", {}),
    "model spec": (["dist", "sample", "--model", "mymodels", "--data-shape", "2", "--out", "{tmp}/x.pt"],
                   r"argument --model: expected 'package.module:factory', e.g. mypkg.models:load_score, got 'mymodels'$", {}),
    # methods and how they step
    "unknown method": (["dist", "sample", *PROBLEM, "--method", "rk45", "--out", "{tmp}/x.pt"],
                       r"argument --method: expected one of .*dopri5.* with --sampler ode, got 'rk45'$", {}),
    "sampler-only method for likelihood": (["likelihood", "--method", "ddim", "--steps", "10"],
                                           r"argument --method: expected one of euler, .*adaptive_heun, .*got 'ddim'$", {}),
    "steps for an adaptive method": (["likelihood", "--steps", "10"],
                                     r"argument --steps: the adaptive method 'dopri5' chooses its own steps from --rtol/--atol", {}),
    "rtol for a fixed-grid method": (["sample", "--method", "rk4", "--rtol", "1e-3"],
                                     r"argument --rtol: the fixed-grid method 'rk4' takes --steps or --step-size; .*\(dopri5, ", {}),
    "step size for a steps-only method": (["sample", "--method", "dpmpp_2m", "--step-size", "0.1"],
                                          r"argument --step-size: the method 'dpmpp_2m' takes --steps only", {}),
    "probe with the exact trace": (["likelihood", "--probe", "gaussian"],
                                   r"argument --probe: applies to a Hutchinson trace; --trace exact computes the divergence", {}),
    "n-probes with the exact trace": (["dist", "likelihood", *PROBLEM, "--n-probes", "4", "--out", "{tmp}/ll.pt"],
                                      r"argument --n-probes: applies to a Hutchinson trace", {}),
    "unknown schedule": (["sample", "--method", "rk4", "--schedule", "cosine"],
                         r"argument --schedule: invalid choice: 'cosine' \(choose from 't', 'log_snr', 'karras', ", {}),
    "schedule for an adaptive method": (["sample", "--schedule", "karras"],
                                        r"argument --schedule: the adaptive method 'dopri5' chooses its own steps from --rtol/--atol", {}),
    "schedule with a step size": (["sample", "--method", "rk4", "--step-size", "0.1", "--schedule", "karras"],
                                  r"argument --schedule: places the --steps of a fixed-grid method; --step-size 0.1 ", {}),
    "schedule the process lacks": (["sample", "--sde", "rf", "--method", "rk4", "--schedule", "karras"],
                                   r"argument --schedule: time_grid: schedule 'karras' needs a finite log-SNR at its ends, but "
                                   r"RectifiedFlow has log-SNR -inf at T=1", {}),
    "steps and step size": (["sample", "--method", "rk4", "--steps", "3", "--step-size", "0.1"],
                            r"argument --step-size: not allowed with argument --steps$", {}),
    # sources and their options
    "sde with a model": (["dist", "sample", *MODEL, "--sde", "ve", "--data-shape", "2", "--out", "{tmp}/x.pt"],
                         r"argument --sde: applies to --problem; a --model factory returns its own SDE$", {}),
    "problem and model": (["dist", "sample", *PROBLEM, *MODEL, "--out", "{tmp}/x.pt"], r"argument --model: not allowed with argument --problem$", {}),
    "model without data shape": (["dist", "sample", *MODEL, "--out", "{tmp}/x.pt"], r"argument --data-shape: required with --model", {}),
    "data shape with a problem": (["dist", "sample", *PROBLEM, "--data-shape", "2", "--out", "{tmp}/x.pt"],
                                  r"argument --data-shape: applies to --model", {}),
    "model without data": (["dist", "likelihood", *MODEL, "--out", "{tmp}/ll.pt"], r"argument --data: required with --model", {}),
    "exact prior with a model": (["dist", "likelihood", *MODEL, "--data", "{tmp}/x.pt", "--exact-prior", "--out", "{tmp}/ll.pt"],
                                 r"argument --exact-prior: needs --problem", {}),
    "data suffix": (["dist", "likelihood", *PROBLEM, "--data", "{tmp}/x.csv", "--out", "{tmp}/ll.pt"],
                    r"argument --data: expected a .pt tensor or .npy array of shape \(N, \*D\), got '.*x.csv'$", {}),
    "no such function": (["dist", "sample", "--model", "_cli_models:load", "--data-shape", "2", "--out", "{tmp}/x.pt"],
                         r"argument --model: module '_cli_models' has no function 'load'", {}),
    "factory fails": (["dist", "sample", "--model", "_cli_models:missing_checkpoint", "--data-shape", "2", "--out", "{tmp}/x.pt"],
                      r"argument --model: _cli_models:missing_checkpoint\(cpu\) raised FileNotFoundError: no checkpoint at weights/ema.pt", {}),
    "factory returns no pair": (["dist", "sample", "--model", "_cli_models:not_a_pair", "--data-shape", "2", "--out", "{tmp}/x.pt"],
                                r"argument --model: _cli_models:not_a_pair\(device\) returned str; expected a pair \(score, sde\)", {}),
    # --out
    "out is a folder": (["sample", "--out", "{tmp}"], r"argument --out: '.*' is a folder; expected a file name such as '.*result.pt'$", {}),
    "out names a new folder": (["sample", "--out", "{tmp}/runs/"], r"argument --out: '.*runs/' is a folder; expected a file name such as '.*runs/result.pt'$", {}),
    "dist out is a folder": (["dist", "sample", *PROBLEM, "--out", "{tmp}/runs.pt"], r"argument --out: '.*runs.pt' is a folder", {"runs.pt": "folder"}),
    "out inside a file": (["sample", "--out", "{tmp}/notes.txt/x.pt"], r"argument --out: cannot write in the folder '.*notes.txt'", {"notes.txt": "file"}),
    "out exists": (["sample", "--out", "{tmp}/x.pt"], r"argument --out: '.*x.pt' exists; pass --overwrite to replace it", {"x.pt": "file"}),
    "dist out exists": (["dist", "likelihood", *PROBLEM, "--out", "{tmp}/ll.npz"], r"argument --out: '.*ll.npz' exists; pass --overwrite",
                        {"ll.npz": "file"}),
    "dist out suffix": (["dist", "sample", *PROBLEM, "--out", "{tmp}/x.csv"],
                        r"argument --out: expected a file name ending in .pt or .npz, got '.*x.csv'$", {}),
    "stale shards": (["dist", "sample", *PROBLEM, "--out", "{tmp}/s.pt"],
                     r"argument --out: shard s.rank2-of-3.pt of s.pt exists from an earlier run; pass --overwrite", {"s.rank2-of-3.pt": "file"}),
    "bench out is a file": (["bench", "--out", "{tmp}/report"], r"argument --out: '.*report' is a file; expected a folder$", {"report": "file"}),
    "bench report exists": (["bench", "--study", "sde", "--out", "{tmp}"],
                            r"argument --out: '.*' holds sde_w2.png from an earlier run; pass --overwrite to replace them", {"sde_w2.png": "file"}),
    # values that only the API can judge: its ValueError, raised on purpose, becomes the message
    "data of the wrong shape": (["dist", "likelihood", *PROBLEM, "--data", "{tmp}/flat.pt", "--out", "{tmp}/ll.pt"],
                                r"log_likelihood_sharded: argument 'data' expected a tensor of shape \(B, \*D\)", {"flat.pt": "flat tensor"}),
    "model of the wrong shape": (["dist", "sample", "--model", "_cli_models:flat_score", "--data-shape", "2", "--out", "{tmp}/x.pt"],
                                 r"sample_ode: the score expected shape \(256, 2\)", {}),
    # options that were silently ignored, and data the problem's law cannot take
    "num-samples with data": (["dist", "likelihood", *PROBLEM, "--data", "{tmp}/p3.pt", "--num-samples", "3", "--out", "{tmp}/ll.pt"],
                              r"argument --num-samples: applies to --problem without --data; every point of --data is used$",
                              {"p3.pt": "points of dimension 3"}),
    "brownian with the ode": (["dist", "sample", *PROBLEM, "--brownian", "per-batch", "--out", "{tmp}/x.pt"],
                              r"argument --brownian: applies to --sampler sde", {}),
    "data of another dimension": (["dist", "likelihood", *PROBLEM, "--data", "{tmp}/p3.pt", "--out", "{tmp}/ll.pt"],
                                  r"argument --data: '.*p3.pt' holds points of shape \(3,\); --problem gaussian2d has points of shape \(2,\)$",
                                  {"p3.pt": "points of dimension 3"}),
}


def _make(path: Path, kind: str) -> None:
    if kind == "folder":
        path.mkdir()
    elif kind == "flat tensor":
        torch.save(torch.zeros(5), path)  # five numbers, not five points of shape (N, *D)
    elif kind == "points of dimension 3":
        torch.save(torch.zeros(5, 3), path)
    else:
        path.write_text("an earlier result")


@pytest.mark.parametrize("argv, pattern, files", CASES.values(), ids=CASES.keys())
def test_a_bad_option_is_one_line_with_exit_status_2_before_any_computation(tmp_path, monkeypatch, capsys, argv, pattern, files):
    monkeypatch.syspath_prepend(str(TESTS))
    for name, kind in files.items():
        _make(tmp_path / name, kind)
    before = sorted(tmp_path.iterdir())
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert_one_line_error(err, " ".join(argv[:2] if argv[0] == "dist" else argv[:1]), pattern)
    assert out == ""  # nothing was computed
    assert sorted(tmp_path.iterdir()) == before  # nothing was written


@NO_CUDA
@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--device", "cuda"], r"argument --device: cuda is not available \(no CUDA on this machine\); use --device cpu or auto$"),
        (["--backend", "nccl"], r"argument --backend: nccl needs CUDA, which this machine does not have; use --backend gloo$"),
    ],
)
def test_cuda_options_on_a_machine_without_cuda_are_rejected(tmp_path, capsys, argv, pattern):
    assert main(["dist", "sample", *PROBLEM, *argv, "--out", str(tmp_path / "x.pt")]) == 2
    assert_one_line_error(capsys.readouterr().err, "dist sample", pattern)


def test_debug_lets_the_error_through_with_its_traceback():
    with pytest.raises(CLIError, match="argument --method: expected one of .* got 'rk45'"):
        main(["sample", "--method", "rk45", "--debug"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    """A ValueError that no scoreflow check raised (here from int() inside the solver) is a bug, not a user's error."""

    def broken(*args, **kwargs):
        return int("not a number")

    monkeypatch.setattr(scoreflow, "sample_ode", broken)
    with pytest.raises(ValueError, match="invalid literal for int"):
        main(["sample", "--num-samples", "4"])


def test_an_interrupt_is_one_line_with_status_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scoreflow, "log_likelihood", interrupted)
    assert main(["likelihood", "--num-samples", "4"]) == 130
    assert capsys.readouterr().err == "scoreflow likelihood: error: interrupted (results are written whole or not at all)\n"


@pytest.mark.parametrize("argv", [["sample", "--method", "euler", "--steps", str(10**12)],
                                  ["sample", "--sampler", "sde", "--steps", str(10**12)]])
def test_an_allocation_beyond_the_machine_is_one_line_with_status_1(capsys, argv):
    """A grid of 10^12 steps (8 TB) fails in torch's allocator; that is the size asked for, not a bug."""
    assert main([*argv, "--num-samples", "4", "--no-progress"]) == 1
    assert_one_line_error(capsys.readouterr().err, "sample", r"out of memory \(7\.45e\+03 GiB in one allocation\)")


def test_another_runtime_error_keeps_its_traceback(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(scoreflow, "sample_ode", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["sample", "--num-samples", "4"])
