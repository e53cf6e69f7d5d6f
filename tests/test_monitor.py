"""Training warnings: validation drops against the best so far and a known baseline; routing collapse."""

from mta_moe.training.monitor import TrainingMonitor


def test_validation_warnings_against_best_and_baseline():
    monitor = TrainingMonitor(margin=0.05, baselines={"b": 0.8})
    assert [w["reason"] for w in monitor.check_validation({"a": 0.6, "b": 0.9, "macro": 0.75})] == []
    warnings = monitor.check_validation({"a": 0.5, "b": 0.74, "macro": 0.62})
    assert [(w["task"], w["reason"]) for w in warnings] == [("a", "below_best"), ("b", "below_best"), ("b", "below_baseline")]
    assert warnings[0]["reference"] == 0.6 and warnings[2]["reference"] == 0.8
    # within the margin: nothing; the best so far is kept
    assert monitor.check_validation({"a": 0.56, "b": 0.86}) == []
    assert monitor.best == {"a": 0.6, "b": 0.9}
    restored = TrainingMonitor(margin=0.05)
    restored.load_state_dict(monitor.state_dict())
    assert restored.best == monitor.best


def test_routing_collapse_is_judged_over_the_window_and_reported_when_it_appears():
    monitor = TrainingMonitor(margin=0.05)
    healthy = {"enc": {"sequences": [10, 10, 0], "adapter_counts": [[10, 10, 0, 0], [0, 0, 10, 10], [0, 0, 0, 0]]}}
    collapsed = {"enc": {"sequences": [10, 10, 0], "adapter_counts": [[10, 0, 0, 0], [10, 0, 0, 0], [0, 0, 0, 0]]}}
    monitor.add_routing(healthy)
    assert monitor.check_routing() == []
    monitor.add_routing(collapsed)
    monitor.add_routing(collapsed)
    messages = [w["message"] for w in monitor.check_routing()]
    assert messages == ["enc: adapter 0 serves 100% of all sequences", "enc: adapters [1, 2, 3] are never used"]
    monitor.add_routing(collapsed)
    assert monitor.check_routing() == []  # still collapsed: not repeated
    # a window with both: adapter 0 serves 30 of 40 sequences and every adapter is used
    monitor.add_routing(healthy)
    monitor.add_routing(collapsed)
    assert monitor.check_routing() == []
