"""The measured gates of heuristic methods (DESIGN §6.6–6.7): points, and intervals when the
forgotten set is small."""

from __future__ import annotations

import math

import pytest

from workers.unlearning.gates import auc_interval, check_measured_gates, wilson_interval
from workers.unlearning.methods.lcodec.config import LCodecConfig

CFG = LCodecConfig(max_accuracy_drop=0.02, max_retain_drop=0.03, max_forget_gap=0.05, max_mia_gap=0.1, min_forget_samples=30)
PARENT = {"eval_accuracy": 0.90, "retain_accuracy": 0.99}


def _new(**kw):
    return {"eval_accuracy": 0.90, "eval_n": 300, "retain_accuracy": 0.99, "forget_accuracy": 0.88, "forget_n": 100, "mia_auc": 0.55, **kw}


def test_wilson_and_hanley_mcneil_against_published_values():
    # Wilson 95 %: 0/10 → [0, 0.2775]; 8/10 → [0.4902, 0.9433] (Newcombe 1998, table I method 3)
    assert wilson_interval(0, 10, 0.95) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(8, 10, 0.95) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    # Hanley & McNeil: A = 0.8, 50 + 50 → SE 0.0445 (by hand: Q1 = 2/3, Q2 = 0.7111)
    lo, hi = auc_interval(0.8, 50, 50, 0.95)
    assert (hi - lo) / 2 == pytest.approx(1.959964 * math.sqrt((0.16 + 49 * (2 / 3 - 0.64) + 49 * (1.28 / 1.8 - 0.64)) / 2500), rel=1e-6)


def test_points_within_thresholds_pass_and_each_breach_is_named():
    assert check_measured_gates(PARENT, _new(), CFG).ok
    cases = {
        "eval accuracy dropped": _new(eval_accuracy=0.85),
        "retained accuracy dropped": _new(retain_accuracy=0.9),
        "forget-set accuracy": _new(forget_accuracy=1.0),  # still remembered
        "MIA AUC": _new(mia_auc=0.7),
    }
    for what, new in cases.items():
        gate = check_measured_gates(PARENT, new, CFG)
        assert not gate.ok and any(what in r for r in gate.reasons), (what, gate.reasons)
    # scoring 0 on the forgotten samples is not forgetting either (they should look unseen)
    assert not check_measured_gates(PARENT, _new(forget_accuracy=0.0), CFG).ok
    # nothing to measure against: refused, not published on faith
    assert not check_measured_gates(PARENT, {"eval_accuracy": None}, CFG).ok


def test_a_small_forgotten_set_is_judged_by_its_interval():
    # 5 of 5 right while eval is 0.90: the point is 0.10 away, but with n = 5 the Wilson
    # interval [0.57, 1] reaches the band: not evidence of a failure
    gate = check_measured_gates(PARENT, _new(forget_accuracy=1.0, forget_n=5, mia_auc=0.7), CFG)
    assert gate.ok, gate.reasons
    lo, hi = gate.measured["forget_accuracy_interval"]
    assert lo < 0.8 and hi == 1.0 and gate.measured["mia_auc_interval"][0] < 0.6
    # the same point with n = 100 is judged as a point and fails
    assert not check_measured_gates(PARENT, _new(forget_accuracy=1.0, forget_n=100), CFG).ok
    # far enough off even the interval: 29 of 29 while eval is 0.5
    gate = check_measured_gates({"eval_accuracy": 0.5}, _new(eval_accuracy=0.5, forget_accuracy=1.0, forget_n=29, mia_auc=0.5), CFG)
    assert not gate.ok and "[0.88" in gate.reasons[0]
