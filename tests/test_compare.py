"""The comparison command on a tiny config: every system trained once, reused on a rerun, the report's deltas
taken against the single-task models."""
import json
import os
import subprocess
import sys

import pytest

from mta_moe.config import ConfigError
from mta_moe.evaluation.compare import Variant, ensure_run, plan_runs, same_config
from mta_moe.training.run_config import build_run_config
from test_training import REPO, tiny_config, write_config

TASKS = ["sentiment", "fact_entail", "answer"]


def _compare(tmp_path, *extra):
    cfg1 = write_config(tmp_path / "s1.json", tiny_config(tmp_path / "unused1", steps=12, save_every=12,
                                                          eval_every=12))
    cfg2 = write_config(tmp_path / "s2.json", tiny_config(tmp_path / "unused2", stage=2, init_from="x", steps=4,
                                                          save_every=4, eval_every=4))
    args = [sys.executable, "launchers/compare.py", "--config", str(cfg1), "--stage2", str(cfg2),
            "--out", str(tmp_path / "cmp"), *extra]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})


def test_plan_derives_each_system_from_the_stage_configs(tmp_path):
    stage1, stage2 = tiny_config(tmp_path / "a"), tiny_config(tmp_path / "b", stage=2, init_from="x")
    stage1["mta"]["data"]["curriculum"] = [{"start_step": 0, "tasks": ["sentiment"]}]
    runs = {r.name: r for r in plan_runs(stage1, stage2, tmp_path, temperatures=[1.0], no_freeze=True)}
    assert list(runs) == ["single_sentiment", "single_fact_entail", "single_answer", "shared", "mta_stage1",
                          "mta_stage1_T1", "mta_stage2", "mta_stage2_nofreeze"]
    single = runs["single_answer"].raw["mta"]
    assert single["data"]["suite"]["tasks"] == ["answer"] and single["data"]["curriculum"] is None
    assert single["train"]["steps"] == stage1["mta"]["train"]["steps"]  # same budget and seed
    assert single["train"].get("seed") == stage1["mta"]["train"].get("seed")
    shared = runs["shared"].raw["mta"]
    assert shared["num_experts"] == 1 and set(map(tuple, shared["task_adapter_assignment"].values())) == {(0,)}
    assert runs["mta_stage1_T1"].raw["mta"]["temperature"] == 1.0
    assert runs["mta_stage2"].raw["mta"]["train"]["init_from"] == str(tmp_path / "mta_stage1" / "export")
    assert runs["mta_stage2_nofreeze"].raw["mta"]["train"]["trainable"][0]["pattern"] == "*"
    assert stage1["mta"]["train"]["output_dir"] == str(tmp_path / "a")  # the inputs are not modified


def test_compare_trains_reuses_and_reports_deltas_against_single_task_models(tmp_path):
    first = _compare(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    assert first.stdout.count(": trained") == 6  # 3 single-task, shared, stage 1, stage 2
    report = json.loads((tmp_path / "cmp" / "report" / "report.json").read_text())
    assert list(report["systems"]) == ["shared", "mta_stage1", "mta_stage2"]
    assert set(report["baseline_scores"]) == set(TASKS)
    for name, entry in report["systems"].items():
        for task in TASKS:
            assert report["deltas"][name][task] == pytest.approx(entry["scores"][task] -
                                                                 report["baseline_scores"][task])
    assert "| task | kind | single-task |" in (tmp_path / "cmp" / "report" / "report.md").read_text()
    # a rerun trains nothing: every run is reused
    stamp = (tmp_path / "cmp" / "mta_stage1" / "export" / "model.safetensors").stat().st_mtime_ns
    second = _compare(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count(": reused") == 6 and ": trained" not in second.stdout
    assert (tmp_path / "cmp" / "mta_stage1" / "export" / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_run_is_reused_only_when_finished_with_the_same_resolved_config(tmp_path):
    spec = plan_runs(tiny_config(tmp_path / "a"), None, tmp_path)[-1]
    resolved = build_run_config(spec.raw).to_json()
    run_dir = tmp_path / spec.name
    (run_dir / "export").mkdir(parents=True)
    (run_dir / "export" / "tasks.json").write_text("{}")
    (run_dir / "run_config.json").write_text(json.dumps(resolved))
    assert ensure_run(spec, launcher=["false"]) is True  # finished, same config: nothing is started
    spec.raw["mta"]["train"]["steps"] += 1
    with pytest.raises(RuntimeError, match=f"run {spec.name} failed"):  # "false" stands in for the trainer
        ensure_run(spec, launcher=["false"])
    assert not (run_dir / "export").exists()  # the stale run was cleared before retraining


def test_variants_are_derived_from_either_stage_with_launcher_style_overrides(tmp_path):
    stage1, stage2 = tiny_config(tmp_path / "a"), tiny_config(tmp_path / "b", stage=2, init_from="x")
    variants = [Variant("gn", 1, ["--train.weighting", '{"method": "gradnorm"}']),
                Variant("pc2", 2, ["--train.gradient_projection", "pcgrad", "--train.steps", "7"])]
    runs = {r.name: r for r in plan_runs(stage1, stage2, tmp_path, variants=variants)}
    assert runs["gn"].raw["mta"]["train"]["weighting"] == {"method": "gradnorm"}
    assert runs["gn"].raw["mta"]["train"]["output_dir"] == str(tmp_path / "gn")
    pc2 = runs["pc2"].raw["mta"]["train"]
    assert (pc2["stage"], pc2["steps"], pc2["gradient_projection"]) == (2, 7, "pcgrad")
    assert pc2["init_from"] == str(tmp_path / "mta_stage1" / "export")
    with pytest.raises(ConfigError, match=r"two runs are named 'shared'"):
        plan_runs(stage1, stage2, tmp_path, variants=[Variant("shared", 1, [])])
    with pytest.raises(ConfigError, match=r"variant v is a stage-2 run; pass --stage2"):
        plan_runs(stage1, None, tmp_path, variants=[Variant("v", 2, [])])


def test_options_added_since_a_run_count_as_equal_only_at_their_default(tmp_path):
    resolved = build_run_config(tiny_config(tmp_path)).to_json()
    older = json.loads(json.dumps(resolved))
    del older["mta"]["train"]["weighting"], older["mta"]["data"]["type_overrides"]
    assert same_config(older, resolved)
    changed = json.loads(json.dumps(resolved))
    changed["mta"]["train"]["weighting"] = {"method": "gradnorm"}
    assert not same_config(older, changed)
    assert not same_config(resolved, older)  # a key the request lacks is a difference
    changed = json.loads(json.dumps(resolved))
    changed["mta"]["train"]["steps"] += 1
    assert not same_config(older, changed)


def test_compare_errors_are_one_line(tmp_path):
    cfg = tiny_config(tmp_path / "x")
    cfg["mta"]["data"]["suite"] = None
    cfg["mta"]["data"]["files"] = {"train": [str(tmp_path / "t.jsonl")]}
    (tmp_path / "t.jsonl").write_text('{"input": "a", "target": "b", "type": "nli", "task": "t"}\n')
    config = write_config(tmp_path / "c.json", cfg)
    run = subprocess.run([sys.executable, "launchers/compare.py", "--config", str(config), "--out", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and last.startswith("error: compare: mta.data.suite is null")


def test_variant_flag_errors_are_one_line(tmp_path):
    config = write_config(tmp_path / "c.json", tiny_config(tmp_path / "x"))
    for name, words, message in [("a b", "--train.steps 3", "error: --variant 'a b': expected NAME or NAME:2"),
                                 ("v", "train.steps 3", "error: --variant v: expected '--key value ...'")]:
        run = subprocess.run([sys.executable, "launchers/compare.py", "--config", str(config), "--out",
                              str(tmp_path / "o"), "--variant", name, words], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith(message)
