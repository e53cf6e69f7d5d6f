"""Paired tests and the systems table: the bootstrap finds a real difference and not a null one, its interval
holds the observed difference, runs pair by seed, and the table marks what the tests found."""

import numpy as np
import pytest

from mta_moe.evaluation.significance import compare_systems, paired_bootstrap, seed_test
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
    assert tie["seed_level"] == {"deltas": [0.0], "delta": 0.0, "sd": 0.0, "agree": 0, "n": 1, "p": None, "seeds_needed": None}
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
    # the rows separate them, but two seeds of unequal gain do not (a t-test with 1 degree of freedom)
    assert "**Verdict:** pick `shared`: the best system, `mta`, is +0.3" in table and "t-test over 2 seeds" in table
    entries["mta_s2"]["macro"] = entries["mta"]["macro"] = entries["mta_s1"]["macro"] = 0.0  # mean below shared
    assert recommendation(system_summary(entries, groups, "shared")).startswith("pick `shared`: no system")


def test_systems_table_without_a_reference_has_no_tests():
    entries = {"x": {"scores": {"a": 0.5}, "macro": 0.5, "row_scores": [0.5], "row_tasks": ["a"]}}
    summary = system_summary(entries, {}, None)
    assert summary["tests"] == {} and compare_systems({"x": {"": [0.5]}}, ["a"], "x") == {}


def test_the_seed_level_test_is_a_paired_t_test_over_per_seed_macro_differences():
    # df = 2 has a closed form: P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2; deltas 0.01, 0.03, 0.02: t = sqrt(12)
    result = seed_test([0.01, 0.03, 0.02])
    assert result["delta"] == pytest.approx(0.02) and result["sd"] == pytest.approx(0.01)
    assert result["p"] == pytest.approx(1 - np.sqrt(12) / np.sqrt(14), rel=1e-9) and result["agree"] == 3
    # at this mean and spread: t = 0.02 / (0.01 / sqrt(n)) passes t(0.975, n - 1) first at n = 4 (4.0 > 3.18)
    assert result["seeds_needed"] == 4
    assert seed_test([0.02, 0.02])["p"] == 0.0 and seed_test([0.0, 0.0])["p"] == 1.0
    assert seed_test([0.05])["p"] is None
    # per-seed macros come from the rows: task a +0.5 in seed 0 and 0 in seed 1, task b 0 in both
    a = [[1.0] * 200 + [0.0] * 100, [0.5] * 200 + [0.0] * 100]
    b = [[0.5] * 200 + [0.0] * 100, [0.5] * 200 + [0.0] * 100]
    assert paired_bootstrap(a, b, TASKS)["seed_level"]["deltas"] == [0.25, 0.0]


def _entries(levels):
    """Runs named ``system`` / ``system_sN`` scoring rows correct with the given probability per seed."""
    entries, groups = {}, {}
    for system, probs in levels.items():
        for i, prob in enumerate(probs):
            name = system if i == 0 else f"{system}_s{i}"
            scores = _scores(prob, 100 * len(system) + i)
            per_task = {t: float(np.mean([s for s, k in zip(scores, TASKS) if k == t])) for t in ("a", "b")}
            entries[name] = {"scores": per_task, "macro": float(np.mean(list(per_task.values()))), "row_scores": scores, "row_tasks": TASKS}
            groups[name] = system
    return entries, groups


def test_a_gain_that_one_seed_carries_is_not_picked_though_the_rows_separate_it():
    # one seed of mta learns much more, the others land on either side of shared: the row bootstrap (models
    # fixed) separates the systems, the seeds do not
    entries, groups = _entries({"shared": [0.6, 0.6, 0.6], "mta": [0.98, 0.55, 0.62]})
    summary = system_summary(entries, groups, "shared")
    test = summary["tests"]["mta"]
    assert test["macro"]["p"] < 0.05 and test["seed_level"]["p"] > 0.05 and test["seed_level"]["n"] == 3
    verdict = recommendation(summary)
    assert verdict.startswith("pick `shared`: the best system, `mta`") and "but the seeds do not" in verdict
    assert f"about {test['seed_level']['seeds_needed']} seeds would at this spread" in verdict
    table = "\n".join(render_system_table(summary, {}, {}, "Scores"))
    assert f"| {test['seed_level']['p']:.3f} |" in table and "seed p" in table
    # every seed well above: both tests agree, mta is picked
    entries, groups = _entries({"shared": [0.6, 0.6, 0.6], "mta": [0.9, 0.88, 0.92]})
    verdict = recommendation(system_summary(entries, groups, "shared"))
    assert verdict.startswith("pick `mta`: +0.") and "t-test over 3 seeds p = " in verdict
    # one seed: picked on the rows, with the caveat said
    entries, groups = _entries({"shared": [0.6], "mta": [0.9]})
    assert "one seed: run-to-run spread untested" in recommendation(system_summary(entries, groups, "shared"))
