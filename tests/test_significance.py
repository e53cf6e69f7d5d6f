"""Paired tests and the systems table: the bootstrap finds a real difference and not a null one, its interval
holds the observed difference, runs pair by seed, and the table marks what the tests found."""

import numpy as np
import pytest

from mta_moe.evaluation.significance import compare_systems, paired_bootstrap
from mta_moe.evaluation.systems import group_runs, recommendation, render_system_table, system_summary

TASKS = ["a"] * 200 + ["b"] * 100


def _scores(p, seed, n=300):
    return (np.random.default_rng(seed).random(n) < p).astype(float).tolist()


def test_a_real_difference_is_found_and_a_null_one_is_not():
    better = [_scores(0.8, s) for s in range(3)]
    worse = [_scores(0.6, s + 10) for s in range(3)]
    found = paired_bootstrap(better, worse, TASKS)
    assert found["macro"]["p"] < 0.01 and found["macro"]["low"] > 0
    assert found["macro"]["low"] <= found["macro"]["delta"] <= found["macro"]["high"]
    same = paired_bootstrap([_scores(0.7, s) for s in range(3)], [_scores(0.7, s + 20) for s in range(3)], TASKS)
    assert same["macro"]["p"] > 0.05 and same["macro"]["low"] < 0 < same["macro"]["high"]


def test_the_macro_is_the_mean_of_task_differences_and_identical_systems_tie():
    a, b = [[1.0] * 200 + [0.0] * 100], [[0.5] * 200 + [0.5] * 100]
    result = paired_bootstrap(a, b, TASKS)
    assert result["tasks"]["a"]["delta"] == 0.5 and result["tasks"]["b"]["delta"] == -0.5
    assert result["macro"]["delta"] == 0.0  # tasks weigh equally whatever their size
    tie = paired_bootstrap(a, a, TASKS)
    assert tie["macro"] == {"delta": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    with pytest.raises(ValueError, match="equal shape"):
        paired_bootstrap(a, [[0.0] * 10], TASKS)


def test_runs_pair_by_seed_and_the_table_marks_significant_cells():
    runs = ["shared", "shared_s1", "mta", "mta_s1", "mta_s2"]
    groups = {"shared": "shared", "shared_s1": "shared", "mta": "mta", "mta_s1": "mta", "mta_s2": "mta"}
    assert group_runs(runs, groups) == {"shared": {"": "shared", "_s1": "shared_s1"}, "mta": {"": "mta", "_s1": "mta_s1", "_s2": "mta_s2"}}
    rows = {"shared": _scores(0.5, 1), "shared_s1": _scores(0.5, 2), "mta": _scores(0.9, 3), "mta_s1": _scores(0.9, 4), "mta_s2": _scores(0.9, 5)}
    entries = {}
    for name, scores in rows.items():
        per_task = {t: float(np.mean([s for s, k in zip(scores, TASKS) if k == t])) for t in ("a", "b")}
        entries[name] = {"scores": per_task, "macro": float(np.mean(list(per_task.values()))), "row_scores": scores, "row_tasks": TASKS}
    summary = system_summary(entries, groups, "shared")
    assert summary["systems"]["mta"]["macro"]["n"] == 3 and summary["tests"]["mta"]["seeds"] == 2  # s2 unpaired
    assert summary["systems"]["shared"]["tasks"]["a"]["mean"] == pytest.approx((entries["shared"]["scores"]["a"] + entries["shared_s1"]["scores"]["a"]) / 2)
    table = "\n".join(render_system_table(summary, {"a": "classification", "b": "classification"}, {"a": 0.5}, "Scores"))
    assert "| task | kind | shared | mta | chance |" in table
    assert "▲" in table.split("| **macro**")[1].split("\n")[0]  # mta's macro cell is marked
    assert "| mta | 2 |" in table
    assert "**Verdict:** pick `mta`: +0.3" in table
    entries["mta_s2"]["macro"] = entries["mta"]["macro"] = entries["mta_s1"]["macro"] = 0.0  # mean below shared
    assert recommendation(system_summary(entries, groups, "shared")).startswith("pick `shared`: no system")


def test_systems_table_without_a_reference_has_no_tests():
    entries = {"x": {"scores": {"a": 0.5}, "macro": 0.5, "row_scores": [0.5], "row_tasks": ["a"]}}
    summary = system_summary(entries, {}, None)
    assert summary["tests"] == {} and compare_systems({"x": {"": [0.5]}}, ["a"], "x") == {}
