"""``scoreflow demo``: its errors against independent computations, its verdicts and its option checks."""

import re

import pytest
import torch

from scoreflow.bench.demo import ERRORS, _exact_spread, _verdict, run_demo, sample_errors
from scoreflow.bench.study import progress_bar
from scoreflow.cli import main
from scoreflow.metrics import mode_weights
from scoreflow.testing import make_problem


@pytest.fixture(scope="module")
def ring():
    problem = make_problem("ring2d", "vp")
    return problem.law, problem.law.marginal(problem.sde, problem.sde.t_min)


def test_sample_errors_match_torch_cov_and_mode_weights(ring):
    law, exact = ring
    x = exact.sample(3 * 400, generator=torch.Generator().manual_seed(0)).reshape(3, 400, 2)
    errors = sample_errors(law, exact, x)
    for r in range(3):
        expected = [
            (x[r].mean(0) - exact.mean).norm(),
            (torch.cov(x[r].T) - exact.covariance).norm(),
            (mode_weights(law, x[r]) - law.weights).abs().max(),
        ]
        torch.testing.assert_close(errors[r], torch.stack(expected))


def test_verdict_passes_exact_samples_and_names_the_error_of_a_biased_sampler(ring):
    law, exact = ring
    g = torch.Generator().manual_seed(1)
    largest = _exact_spread(law, exact, 500, 200, g, progress_bar(None, "", False)).amax(dim=0)
    fresh = exact.sample(500, generator=g)
    assert _verdict(sample_errors(law, exact, fresh[None])[0], largest) == "yes"
    # A sampler that shrinks the ring by 10 %: the covariance error is far outside the spread.
    verdict = _verdict(sample_errors(law, exact, 0.9 * fresh[None])[0], largest)
    assert verdict.startswith("no: ") and "cov err" in verdict and "mean err" not in verdict


def test_demo_judges_every_sampler_of_the_exact_score(capsys):
    assert run_demo(n=400, steps=100, seed=0) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("ode ", "sde "))]
    assert len(rows) == 4
    for row in rows:
        assert row.endswith("yes"), row
    largest = [float(v) for v in re.search(r"exact samples: largest\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out).groups()]
    assert len(largest) == len(ERRORS) and all(v > 0 for v in largest)


def test_demo_on_a_flow_path_samples_from_pure_noise_and_names_the_row_it_skips(capsys):
    # Rectified flow ends in pure noise: the ODE rows start there through the exact velocity; the reverse SDE
    # is infinite at T, so its row says why it was skipped instead of failing the demo.
    assert run_demo(sde="rf", n=400, steps=100, seed=0, replicates=50) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("ode ", "sde "))]
    assert [row.endswith("yes") for row in rows] == [True, True, True, False]
    assert "skipped" in rows[-1] and "pure noise" in rows[-1]


@pytest.mark.parametrize(("argv", "message"), [(["--num-samples", "1"], "--num-samples"), (["--steps", "0"], "--steps")])
def test_demo_rejects_unusable_options_in_one_line(argv, message, capsys):
    assert main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


def test_without_tqdm_progress_is_one_line_at_the_start_and_one_at_the_end(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)  # import tqdm.auto now raises ImportError
    bar = progress_bar(10, "ode dopri5", True, unit="NFE")
    for _ in range(7):
        bar.update()
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["ode dopri5 ...", "ode dopri5: done (7 NFE)"]
