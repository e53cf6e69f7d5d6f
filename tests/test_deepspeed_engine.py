"""The MTA layer under real DeepSpeed engines: ZeRO updates, expert parallelism over 2 gloo ranks."""

import json

import pytest
from distributed import run_workers
from test_training import REPO

pytestmark = pytest.mark.distributed


def test_zero2_step_updates_selector_and_adapters(tmp_path):
    (result,) = run_workers("engine_worker.py", ["zero2_updates"], nproc=1, out_dir=tmp_path)
    changed = result["changed"]
    assert set(result["trainable"]) == set(changed), "gate_mode 'both' trains every parameter"
    selector = [n for n in changed if ".deepspeed_moe.gate." in n]
    adapters = [n for n in changed if ".deepspeed_moe.experts." in n]
    assert sorted(selector) == ["mta.deepspeed_moe.gate.task_bias", "mta.deepspeed_moe.gate.wg.weight"]
    shipped = json.loads((REPO / "ds_configs" / "stage1.json").read_text())["mta"]
    assert len(adapters) == 4 * 2 * (2 if shipped.get("adapter_bias", True) else 1)  # experts × (down, up) × w[, b]
    # Step 1: up-projections start at zero, so only they (not the gate, not the down-projections)
    # can receive gradient; step 2: everything has moved, W and β included.
    for name in adapters:
        assert changed[name][0] == name.split(".")[-2].startswith("up"), name
    unchanged = [n for n, flags in changed.items() if not flags[1]]
    assert unchanged == [], f"not updated after two ZeRO-2 steps: {unchanged}"


def test_ep1_and_ep2_give_equal_losses_at_zero1_and_zero2(tmp_path):
    results = run_workers("engine_worker.py", ["ep_equivalence"], nproc=2, out_dir=tmp_path)
    r0, r1 = results
    # the experts really are distributed: 2 per rank with ep_size 2, all 4 on each rank with ep_size 1
    assert r0["layout_ep2"] == [0, 1] and r1["layout_ep2"] == [2, 3]
    assert r0["layout_ep1"] == r1["layout_ep1"] == [0, 1, 2, 3]
    for zero in (1, 2):
        ep1, ep2 = r0[f"zero{zero}_ep1"], r0[f"zero{zero}_ep2"]
        assert len(ep1) == len(ep2) == 4
        assert max(abs(a - b) for a, b in zip(ep1, ep2)) <= 1e-6, (zero, ep1, ep2)
        assert ep1[-1] < ep1[0], "training lowers the loss"
    stock = r0["zero2_ep2_deepspeed"]
    assert max(abs(a - b) for a, b in zip(stock, r0["zero2_ep2"])) <= 1e-6, "grouped == DeepSpeed dispatch"
    assert all(r0[k] == r1[k] for k in r0 if k.startswith("zero")), "ranks agree on the mean loss"


@pytest.mark.parametrize("scenario", ["empty_expert", "empty_expert_deepspeed"])
def test_adapter_without_sequences_does_not_hang(tmp_path, scenario):
    # rank 0 routes everything to adapter 0, rank 1 to adapter 1; adapters 2 and 3 get nothing
    r0, r1 = run_workers("engine_worker.py", [scenario], nproc=2, out_dir=tmp_path, timeout=180)
    assert len(r0["losses"]) == 3 and all(loss == loss for loss in r0["losses"])  # completed, finite (not NaN)
    for r in (r0, r1):
        counts = r["stats_all_reduced"]["adapter_counts"]
        assert counts[0] == [24.0, 0.0, 0.0, 0.0] and counts[1] == [0.0, 24.0, 0.0, 0.0]
    assert r0["stats_local"]["sequences"][:2] == [24.0, 0.0]
    assert r1["stats_local"]["sequences"][:2] == [0.0, 24.0]


@pytest.mark.slow
def test_long_unbalanced_expert_parallel_run_matches_ep1(tmp_path):
    """60 steps, every batch a single task type, two of four adapters idle throughout: no hang, ep 2 == ep 1."""
    r0, r1 = run_workers("engine_worker.py", ["long_unbalanced"], nproc=2, out_dir=tmp_path, timeout=300)
    assert len(r0["ep1"]) == len(r0["ep2"]) == 60
    assert max(abs(a - b) for a, b in zip(r0["ep1"], r0["ep2"])) <= 1e-5
    assert r0["ep2"] == r1["ep2"]  # both ranks report the same mean loss
    for key in ("counts_ep1", "counts_ep2"):  # adapters 2 and 3 idle, 0 and 1 used (the last step's window)
        assert all(row[2:] == [0.0, 0.0] for row in r0[key]) and sum(row[0] + row[1] for row in r0[key]) > 0
