"""``examples/digits.py --quick`` end to end: the score model beats the closed-form Gaussian on held-out digits.

Skipped without scikit-learn or zuko (``pip install -e '.[digits]'`` and ``pip install --no-deps zuko``).
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MISSING = [m for m in ("sklearn", "zuko", "matplotlib") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"examples/digits.py needs {', '.join(MISSING)}: pip install -e '.[digits]' and pip install --no-deps zuko",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py"), "--quick", "--out", str(out), "--threads", "1"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def _gaussian_expected_bpd() -> float:
    """The Gaussian baseline's test bits/dim averaged over the dequantization noise, in closed form (numpy).

    With y = lo + w (k + u), u ~ U[0,1)^D: E_u log N(y; m, C) = log N(E y; m, C) - w^2/24 tr(C^-1).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x_train, x_test = train_test_split(load_digits().data, test_size=0.2, random_state=0)
    fit, _ = train_test_split(x_train, test_size=0.1, random_state=0)
    w, d = 2 / 17, 64
    mean = -1 + w * (fit.mean(0) + 0.5)
    cov = w**2 * (np.cov(fit.T, bias=True) + np.eye(d) / 12)
    prec = np.linalg.inv(cov)
    dev = -1 + w * (x_test + 0.5) - mean
    log_det = np.linalg.slogdet(cov)[1]
    log_p = -0.5 * (np.einsum("ni,ij,nj->n", dev, prec, dev) + log_det + d * math.log(2 * math.pi)) - w**2 / 24 * np.trace(prec)
    return float((-log_p / (d * math.log(2)) + math.log2(17) - 1).mean())


def test_score_model_beats_the_gaussian_on_the_test_digits(quick_run):
    _, results, _ = quick_run
    bpd, (diff, diff_se) = results["bpd"], results["paired"]["score_minus_gaussian"]
    assert bpd["score_exact"] < bpd["gaussian"]
    assert diff + 3 * diff_se < 0, results["paired"]  # by more than three paired standard errors
    assert all(1.0 < v < math.log2(17) for v in bpd.values()), bpd  # below 4.09 bits: better than uniform levels


def test_gaussian_baseline_matches_its_closed_form_expectation(quick_run):
    _, results, _ = quick_run
    # One dequantization draw of 360 x 64 uniforms: its spread around the expectation is ~0.002 bits/dim.
    assert results["bpd"]["gaussian"] == pytest.approx(_gaussian_expected_bpd(), abs=0.01)


def test_hutchinson_estimate_agrees_with_the_exact_trace_within_its_standard_error(quick_run):
    _, results, _ = quick_run
    gap = abs(results["bpd"]["score_hutchinson"] - results["bpd"]["score_exact"])
    assert 0 < results["hutchinson_probe_se"] < 0.05
    assert gap < 4 * results["hutchinson_probe_se"] + 2e-3  # + the two adaptive solves' own tolerance


def test_outputs_table_picture_and_classifier_report(quick_run):
    out, results, stdout = quick_run
    assert (out / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "| score model, exact trace |" in table and table.strip() in stdout
    assert results["classifier_accuracy"] > 0.9  # the classifier recognises real test digits
    real = results["classifier"]["real test digits"]
    assert sum(real["histogram"]) == 360
    for name, stats in results["classifier"].items():
        assert len(stats["histogram"]) == 10 and 0.1 <= stats["confidence"] <= 1.0, name
    assert {"score, dpmpp_3m_pc (20 steps)", "score, dopri5", "Gaussian", "flow (MAF)"} <= set(results["classifier"])


def test_command_line_errors_are_one_line_with_status_two(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("digits_example", ROOT / "examples" / "digits.py")
    digits = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "digits_example", digits)  # dataclasses look their module up there
    spec.loader.exec_module(digits)
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    for argv, message in ((["--threads", "0"], "expected a positive integer, got '0'"),
                          (["--out", str(not_a_folder)], "expected a folder"), (["--bogus"], "unrecognized arguments")):
        with pytest.raises(SystemExit) as exc:
            digits.main(argv)
        captured = capsys.readouterr()
        assert exc.value.code == 2 and captured.out == "", argv
        assert captured.err.count("\n") == 1 and message in captured.err, (argv, captured.err)
