"""Verdicts on measured orders: right on the shapes error curves take, and a reason whenever not "yes"."""

import pytest
import torch

from scoreflow.bench import run_sde_study
from scoreflow.bench.report import orders_table, write_report
from scoreflow.bench.verdict import judge_order, local_slopes, round_off_plateau
from scoreflow.testing import make_problem

NFE = [8, 16, 32, 64, 128, 256, 512]
EPS32 = torch.finfo(torch.float32).eps


def test_a_clean_power_law_agrees_without_a_reason():
    verdict = judge_order(NFE, [3.0 * n**-2.0 for n in NFE], 2, kind="fixed", scale=1.0, eps=EPS32)
    assert verdict == {"measured": pytest.approx(2.0), "agrees": True, "reason": None, "round_off": 0.0}


def test_a_round_off_plateau_is_left_out_of_the_fit():
    # Order 4 down to float32 round-off, then flat (what rk4 shows in float32).
    errors = [max(2.0 * n**-4.0, 3e-7) * (1 + 0.01 * (-1) ** i) for i, n in enumerate(NFE)]
    points = sorted(zip(NFE, errors))
    assert round_off_plateau(points, 1e3 * EPS32) == pytest.approx(max(errors[-2:]))
    verdict = judge_order(NFE, errors, 4, kind="fixed", scale=1.0, eps=EPS32)
    assert verdict["agrees"] is True and verdict["measured"] == pytest.approx(4.0, abs=0.05)
    # The same errors far above round-off are a real flattening, not a plateau to drop.
    assert round_off_plateau(points, 1e-9) == 0.0


def test_an_instability_decaying_faster_than_any_error_term_is_no():
    errors = [52.7, 41.6, 7.88, 0.952, 0.123]  # reversible Heun on VP, 8 to 128 steps
    verdict = judge_order([9, 17, 33, 65, 129], errors, 1, kind="pathwise", scale=0.7, eps=2.2e-16, upper=2)
    assert verdict["agrees"] is False and verdict["measured"] > 2.4
    assert "pre-asymptotic decay of an instability" in verdict["reason"]


def test_a_slope_still_rising_towards_the_order_is_no_with_that_reason():
    # Order 2 at coarse steps turning into order 4 beyond NFE ~100 (a stiff term resolved late).
    nfe = NFE[:5]
    errors = [n**-2.0 / (1 + (n / 100) ** 2) for n in nfe]
    slopes = local_slopes(sorted(zip(nfe, errors)))
    assert slopes == sorted(slopes) and slopes[0] < 2.1 and slopes[-1] > 2.8
    verdict = judge_order(nfe, errors, 4, kind="fixed", scale=1.0, eps=2.2e-16)
    assert verdict["agrees"] is False and verdict["reason"].startswith("slope still rising")
    # With the budget extended the fit reaches order 4 and agrees.
    more = [8 * 2**k for k in range(10)]
    assert judge_order(more, [n**-2.0 / (1 + (n / 100) ** 2) for n in more], 4, kind="fixed", scale=1.0, eps=2.2e-16)["agrees"]


def test_a_pathwise_order_between_strong_and_drift_order_agrees():
    errors = [0.2 * n**-1.9 for n in NFE]  # srk: strong order 1.5, drift order 3
    assert judge_order(NFE, errors, 1.5, kind="pathwise", scale=1.0, eps=2.2e-16, upper=3)["agrees"] is True
    assert judge_order(NFE, errors, 1.5, kind="pathwise", scale=1.0, eps=2.2e-16)["agrees"] is False


def test_too_few_points_above_round_off_give_no_order_and_say_so():
    errors = [1e-3, 1e-5, 3e-7, 3.1e-7, 2.9e-7, 3e-7, 3e-7]
    verdict = judge_order(NFE, errors, 4, kind="fixed", scale=1.0, eps=EPS32)
    assert verdict["measured"] is None and verdict["agrees"] is None and "round-off" in verdict["reason"]


def test_sde_study_judges_reversible_heun_pre_asymptotic_and_notes_milstein_equals_euler(tmp_path):
    study = run_sde_study(
        make_problem("gaussian2d", "vp"), methods=("euler", "milstein", "reversible_heun"), n=32, max_nfe=128,
        n_exact=512, replicates=20,
    )
    verdicts = {(o["method"], o["metric"]): o for o in study.orders}
    assert verdicts["euler", "strong_error"]["agrees"] is True
    heun = verdicts["reversible_heun", "strong_error"]
    assert heun["agrees"] is False and "instability" in heun["reason"]
    assert any(note.startswith("milstein gives exactly the errors of euler") for note in study.notes)
    low, high = study.config["monte_carlo_range"]["sw2"]
    assert low <= study.config["monte_carlo_floor"]["sw2"] <= high
    table = orders_table(study)
    assert f"**no**: {heun['reason']}" in table
    report = write_report([study], tmp_path, plots=False)["report"].read_text()
    assert "Note: milstein gives exactly the errors of euler" in report
