"""The ``scoreflow`` command line on tiny configurations."""

import json
import re

import pytest
import torch

import scoreflow as sf
from scoreflow.cli import main


def test_bench_writes_the_report_and_orders_agree(tmp_path, capsys):
    out = tmp_path / "report"
    argv = [
        "bench",
        "--study",
        "ode",
        "sde",
        "--ode-methods",
        "euler,midpoint",
        "--sde-methods",
        "euler",
        "--max-nfe",
        "128",
        "--sde-max-nfe",
        "8",
        "--num-samples",
        "16",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    n_png = len(list(out.glob("*.png")))
    assert f"report written to {out / 'report.md'} (markdown, 2 JSON files and {n_png} PNG plots in {out}/)" in printed
    # At 8-64 SDE steps Euler-Maruyama's weak error is still pre-asymptotic (its local slopes fall from
    # about 2 to 1): that verdict may be "no", but only with its reason; every other order agrees.
    disagree = re.search(r"orders that disagree with theory: (.*)", printed).group(1)
    assert disagree in ("none", "euler (weak_error)")
    assert all("**no**: " in line for line in printed.splitlines() if "**no**" in line)
    for name in ("report.md", "ode.json", "sde.json", "ode_error.png", "sde_strong_error.png", "sde_weak_error.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # each file was moved into place whole
    ode = json.loads((out / "ode.json").read_text())
    # One row per method x step count, each within the NFE budget.
    assert len(ode["rows"]) == len({(r["method"], r["value"]) for r in ode["rows"]})
    assert {r["method"] for r in ode["rows"]} == {"euler", "midpoint"}
    assert all(r["nfe"] <= 128 for r in ode["rows"])
    measured = {o["method"]: o["measured"] for o in ode["orders"]}
    assert measured["euler"] == pytest.approx(1, abs=0.3)
    assert measured["midpoint"] == pytest.approx(2, abs=0.4)
    sde = json.loads((out / "sde.json").read_text())
    strong = next(o for o in sde["orders"] if o["metric"] == "strong_error")
    assert strong["measured"] == pytest.approx(1, abs=0.3)
    assert "scoreflow bench --study ode sde" in (out / "report.md").read_text()


def test_bench_without_plots_says_it_wrote_none(tmp_path, capsys):
    # Before: the last line claimed "JSON, markdown and PNG plots" under --no-plots too.
    out = tmp_path / "report"
    argv = ["bench", "--study", "likelihood", "--max-nfe", "8", "--num-samples", "2", "--no-plots", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"(markdown, 1 JSON file in {out}/)")
    assert sorted(p.name for p in out.iterdir()) == ["likelihood.json", "report.md"]


def test_bench_overwrite_without_plots_leaves_no_plot_of_the_earlier_run(tmp_path, capsys):
    # Before: --overwrite --no-plots kept likelihood_error.png of the earlier run beside the new report.
    argv = ["bench", "--study", "likelihood", "--max-nfe", "8", "--num-samples", "2", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert (tmp_path / "likelihood_error.png").exists()
    assert main([*argv, "--no-plots", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["likelihood.json", "report.md"]


def test_bench_without_the_bench_extra_says_what_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["bench", "--out", str(tmp_path), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("scoreflow bench: error: matplotlib not installed; install the bench extra")
    assert not any(tmp_path.iterdir())


def test_sample_prints_errors_and_saves_samples(tmp_path, capsys):
    path = tmp_path / "x.pt"
    assert (
        main(
            [
                "sample",
                "--problem",
                "gaussian2d",
                "--sampler",
                "sde",
                "--method",
                "euler",
                "--steps",
                "50",
                "--num-samples",
                "200",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert re.search(r"NFE 50\b", printed)  # one score call per Euler step
    w2 = float(re.search(r"w2 ([0-9.]+)", printed).group(1))
    assert w2 < 0.5
    assert torch.load(path).shape == (200, 2)


@pytest.mark.parametrize("sampler, method", [("ode", "euler"), ("sde", "ddim")])
def test_sample_places_the_steps_by_the_schedule(tmp_path, capsys, sampler, method):
    # the saved samples are the API's on the named grid from the same prior draws (--seed 0), not its default grid's
    path = tmp_path / "x.pt"
    argv = ["sample", "--problem", "gaussian2d", "--sde", "ve", "--sampler", sampler, "--method", method, "--steps", "8",
            "--schedule", "karras", "--num-samples", "50", "--no-progress", "--out", str(path)]
    assert main(argv) == 0
    assert "steps=8, schedule=karras" in capsys.readouterr().out
    problem = sf.testing.make_problem("gaussian2d", "ve")
    front_end = sf.sample_ode if sampler == "ode" else sf.sample_sde

    def run(**grid):
        g = torch.Generator().manual_seed(0)
        x = problem.sde.prior_sample((50, 2), generator=g, dtype=torch.float64)
        kwargs = {} if sampler == "ode" else {"generator": g}
        return front_end(problem.law.score(problem.sde), problem.sde, x, method=method, **grid, **kwargs).samples

    saved = torch.load(path)
    assert torch.equal(saved, run(steps=8, schedule="karras"))
    assert not torch.equal(saved, run(steps=8))  # the default grid (uniform in t on VE) gives other samples


def test_likelihood_matches_the_exact_log_density(capsys):
    assert main(["likelihood", "--problem", "gaussian2d", "--num-samples", "8", "--rtol", "1e-7", "--atol", "1e-7", "--exact-prior"]) == 0
    printed = capsys.readouterr().out
    err = float(re.search(r"mean \|error\| ([0-9.e+-]+)", printed).group(1))
    assert err < 1e-5
    nfe, vjp = map(int, re.search(r"NFE (\d+) \(\+(\d+) VJPs\)", printed).groups())
    assert vjp == 2 * nfe  # the exact trace takes D = 2 VJPs per evaluation
    argv = ["likelihood", "--problem", "gaussian2d", "--num-samples", "8", "--trace", "hutchinson", "--rtol", "1e-3", "--atol", "1e-3"]
    assert main(argv) == 0
    nfe, vjp = map(int, re.search(r"NFE (\d+) \(\+(\d+) VJPs\)", capsys.readouterr().out).groups())
    assert vjp == nfe  # one probe: one VJP per evaluation


@pytest.mark.parametrize("command", ["bench", "sample", "likelihood", "demo", "dist sample", "dist likelihood"])
def test_help_describes_each_command_with_the_shared_options(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command.split(), "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"usage: scoreflow {command}" in text
    assert all(option in text for option in ("--seed", "--threads", "--debug", "--num-samples"))
    assert ("--dtype" in text) == (command != "demo")
    assert ("--out" in text and "--overwrite" in text) == (command not in ("demo", "likelihood"))
    # the long solves show a bar
    assert ("--no-progress" in text) == (command in ("bench", "sample", "dist sample", "dist likelihood"))


@pytest.mark.parametrize("command, kinds", [("sample", ("ode", "sde")), ("likelihood", ("likelihood",)), ("dist sample", ("ode", "sde"))])
def test_method_help_lists_the_registry(command, kinds, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind in kinds:
        names = ", ".join(m.name for m in sf.list_methods(kind))
        assert names in text
    assert "--steps" in text and "--step-size" in text and "--rtol" in text and "--atol" in text


def test_sample_default_method_follows_the_sampler(capsys):
    assert main(["sample", "--sampler", "sde", "--num-samples", "20"]) == 0
    printed = capsys.readouterr().out
    assert "by sde euler (steps=500)" in printed and re.search(r"NFE 500\b", printed)


def test_likelihood_takes_steps_or_a_step_size_for_fixed_grid_methods(capsys):
    common = ["likelihood", "--problem", "gaussian2d", "--num-samples", "4", "--exact-prior", "--method", "rk4"]
    for option, nfe in ((["--steps", "10"], 40), (["--step-size", "0.1"], 40)):
        assert main([*common, *option]) == 0
        printed = capsys.readouterr().out
        assert re.search(rf"NFE {nfe} \(", printed), printed
        assert float(re.search(r"mean \|error\| ([0-9.e+-]+)", printed).group(1)) < 1e-3
