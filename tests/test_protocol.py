"""The comparison protocol's training pieces: early stopping on the validation macro (with its checkpoint and
export), a snapshot export at a fixed step, and a stage-1 run that continues a stage-1 export (the reference for
stage 2's gain: the same extra steps with every part trainable and no stage-2 parts)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_training import launch, tiny_config, write_config


@pytest.mark.slow
def test_early_stopping_snapshot_and_stage1_continuation(tmp_path):
    # lr 1e-9: the predictions never change, so the macro never improves after the first validation
    cfg = tiny_config(tmp_path / "run", steps=40, lr=1e-9, eval_every=5, save_every=40, early_stopping={"patience": 2}, export_steps=[5, 35])
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "run"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validations = [r["step"] for r in records if r["kind"] == "validation"]
    stop = [r for r in records if r["kind"] == "early_stop"]
    assert validations == [5, 10, 15] and [r["step"] for r in stop] == [15] and stop[0]["evals_since_best"] == 2
    assert max(r["step"] for r in records if r["kind"] == "train") == 15  # no step after the stop
    assert (out / "checkpoints" / "step15").is_dir() and (out / "export" / "tasks.json").is_file()
    assert (out / "export_step5" / "tasks.json").is_file() and not (out / "export_step35").exists()
    assert (out / "best" / "tasks.json").is_file()

    more = tiny_config(tmp_path / "more", steps=4, lr=0.01, init_from=str(out / "export"))
    more["mta"]["data"]["curriculum"] = None
    run = launch(["--deepspeed", str(write_config(tmp_path / "more.json", more))])
    assert run.returncode == 0, run.stderr[-3000:]
    before, after = load_file(out / "export" / "model.safetensors"), load_file(tmp_path / "more" / "export" / "model.safetensors")
    assert before.keys() == after.keys()  # no stage-2 parts
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("shared" in k or "embed" in k for k in changed) and any("deepspeed_experts" in k for k in changed)
    assert json.loads((tmp_path / "more" / "export" / "mta_config.json").read_text()).get("stage", 1) == 1
