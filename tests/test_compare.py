"""The comparison command: the runs it plans, equal-examples budgets, parameter-matched baselines, file data,
reuse of finished runs, and the report's deltas against the single-task models."""

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import pytest
from test_training import REPO, tiny_config, write_config

from mta_moe.config import ConfigError
from mta_moe.data import Curriculum, MixtureSampler
from mta_moe.data.suite import SuiteSizes, write_suite
from mta_moe.experiments.budget import examples_per_task, single_task_steps
from mta_moe.experiments.compare import ensure_run, same_config
from mta_moe.experiments.data_files import chance_levels
from mta_moe.experiments.plan import Variant, plan_runs
from mta_moe.training.run_config import apply_overrides, build_run_config

TASKS = ["sentiment", "fact_entail", "answer"]


def test_plan_derives_each_system_from_the_stage_configs(tmp_path):
    stage1, stage2 = tiny_config(tmp_path / "a"), tiny_config(tmp_path / "b", stage=2, init_from="x")
    stage1["mta"]["num_experts"] = 2  # = k: no shared_wide (see below)
    stage1["mta"]["data"]["curriculum"] = [{"start_step": 0, "tasks": ["sentiment"]}]
    stage1["mta"]["data"]["task_kinds"] = {"answer": "extraction", "sentiment": "classification"}
    runs = {r.name: r for r in plan_runs(stage1, stage2, tmp_path, temperatures=[1.0], no_freeze=True, single_steps={"sentiment": 7, "answer": 3}, seeds=[5])}
    assert list(runs) == [
        "single_sentiment",
        "single_answer",
        "shared",
        "shared_matched",
        "mta_stage1",
        "mta_stage2",
        "shared_stage2",
        "mta_stage1_more",
        "shared_s5",
        "shared_matched_s5",
        "mta_stage1_s5",
        "mta_stage2_s5",
        "shared_stage2_s5",
        "mta_stage1_more_s5",
        "mta_stage1_T1",
        "mta_stage2_nofreeze",
    ]
    single = runs["single_answer"].raw["mta"]
    assert single["data"]["tasks"] == ["answer"] and single["data"]["curriculum"] is None
    assert single["train"]["steps"] == 3 and single["num_experts"] == 1
    assert single["data"]["task_kinds"] == {"answer": "extraction"}  # per-task settings of its own task only
    assert single["train"].get("seed") == stage1["mta"]["train"].get("seed")
    shared = runs["shared"].raw["mta"]
    assert (shared["num_experts"], shared["k"], shared["adapter_dim"]) == (1, 1, 8)
    matched = runs["shared_matched"].raw["mta"]  # k = 2 adapters of width 8 per sequence: one of width 16
    assert (matched["num_experts"], matched["adapter_dim"], matched["always_on_adapters"]) == (1, 16, 0)
    assert "shared_wide" not in runs
    assert runs["mta_stage2"].raw["mta"]["train"]["init_from"] == str(tmp_path / "mta_stage1" / "export")
    assert runs["shared_stage2"].raw["mta"]["train"]["init_from"] == str(tmp_path / "shared" / "export")
    assert runs["mta_stage2_s5"].raw["mta"]["train"]["init_from"] == str(tmp_path / "mta_stage1_s5" / "export")
    more = runs["mta_stage1_more"].raw["mta"]  # stage 2's steps and data, stage 1's parts, everything trainable
    assert (more["train"]["stage"], more["train"]["trainable"], more["train"]["init_from"]) == (1, None, str(tmp_path / "mta_stage1" / "export"))
    assert more["train"]["steps"] == stage2["mta"]["train"]["steps"]
    seeded = runs["mta_stage1_s5"]
    assert (seeded.raw["mta"]["train"]["seed"], seeded.raw["mta"]["data"]["seed"], seeded.system) == (5, 5, "mta_stage1")
    assert runs["mta_stage1_T1"].raw["mta"]["temperature"] == 1.0
    assert runs["mta_stage2_nofreeze"].raw["mta"]["train"]["trainable"][0]["pattern"] == "*"
    assert stage1["mta"]["train"]["output_dir"] == str(tmp_path / "a")  # the inputs are not modified


def test_shared_wide_matches_all_adapters_and_every_planned_run_is_a_valid_config(tmp_path):
    stage1 = tiny_config(tmp_path / "a")
    stage1["mta"].update(num_experts=6, k=1, always_on_adapters=0)
    runs = {r.name: r for r in plan_runs(stage1, tiny_config(tmp_path / "b", stage=2, init_from="x"), tmp_path, single_steps={"answer": 2})}
    assert "shared_matched" not in runs and runs["shared_wide"].raw["mta"]["adapter_dim"] == 6 * 8
    stage1["mta"].update(always_on_adapters=1, always_on_dim=4)  # counted in both matched models
    more = {r.name: r.raw["mta"]["adapter_dim"] for r in plan_runs(stage1, None, tmp_path)}
    assert (more["shared_matched"], more["shared_wide"]) == (8 + 4, 6 * 8 + 4)
    for spec in runs.values():
        build_run_config(spec.raw, spec.name)


def test_equal_examples_budget_replays_the_mixture(tmp_path):
    cfg = tiny_config(tmp_path / "a", steps=40)
    cfg["mta"]["data"]["curriculum"] = [{"start_step": 0, "tasks": ["sentiment"]}, {"start_step": 10, "tasks": None, "weights": {"answer": 3.0}}]
    run = build_run_config(cfg)
    sizes = {"answer": 24, "fact_entail": 24, "sentiment": 24}
    counts = examples_per_task(run, sizes)
    sampler = MixtureSampler(sizes, run.data.sampling, run.data.seed, Curriculum.from_list(run.data.curriculum, TASKS))
    expected = Counter(t for step in range(40) for t, _ in sampler.next_batch(4, step))
    assert counts == dict(expected) and sum(counts.values()) == 40 * 4
    assert counts["answer"] > counts["fact_entail"]  # weight 3 after step 10
    steps = single_task_steps(run, counts, "examples")
    assert all(steps[t] == -(-counts[t] // 4) for t in TASKS)  # whole steps of 4 examples, rounded up
    assert single_task_steps(run, counts, "steps") == {t: 40 for t in TASKS}


def test_chance_levels_for_any_data():
    import datasets

    train = datasets.Dataset.from_list(
        [{"input": f"x{i}", "target": t, "task": "c", "type": "classify"} for i, t in enumerate("aaab")]
        + [{"input": "the cat sat", "target": "the cat", "task": "g", "type": "generate"}] * 3
    )
    test = datasets.Dataset.from_list(
        [{"input": "y", "target": t, "task": "c", "type": "classify"} for t in "abbb"]
        + [{"input": "a dog", "target": "the dog", "task": "g", "type": "generate"}]
    )
    levels = chance_levels(train, test, {"g": "generation"})
    assert levels["c"] == pytest.approx(0.25)  # always "a", the majority training label
    assert levels["g"] == pytest.approx(0.5)  # ROUGE-L F of "the cat" against "the dog"


def _file_data(tmp_path):
    paths = write_suite(tmp_path / "files", seed=3, sizes=SuiteSizes(24, 6, 6), tasks=TASKS)
    return {split: [str(paths[split])] for split in ("train", "validation", "test")}


def _compare(tmp_path, *extra, files=None):
    cfg1 = tiny_config(tmp_path / "unused1", steps=12, save_every=12, eval_every=12)
    cfg2 = tiny_config(tmp_path / "unused2", stage=2, init_from="x", steps=4, save_every=4, eval_every=4)
    for cfg in (cfg1, cfg2):
        cfg["mta"].update(num_experts=2, k=2)
        if files:
            cfg["mta"]["data"].update(suite=None, files=files)
    args = [
        sys.executable,
        "-m",
        "mta_moe.cli",
        "compare",
        "--config",
        str(write_config(tmp_path / "s1.json", cfg1)),
        "--stage2",
        str(write_config(tmp_path / "s2.json", cfg2)),
        "--out",
        str(tmp_path / "cmp"),
        *extra,
    ]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1200, env={**os.environ, "DS_ACCELERATOR": "cpu"})


@pytest.mark.slow
def test_compare_on_file_data_trains_reuses_and_reports_against_single_task_models(tmp_path):
    first = _compare(tmp_path, files=_file_data(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    # 3 single-task, shared, shared_matched, mta stage 1 and 2, shared through stage 2, mta stage 1 trained on
    assert first.stdout.count(": trained") == 9
    report = json.loads((tmp_path / "cmp" / "report" / "report.json").read_text())
    assert list(report["systems"]) == ["shared", "shared_matched", "mta_stage1", "mta_stage2", "shared_stage2", "mta_stage1_more"]
    assert set(report["baseline_scores"]) == set(TASKS)
    protocol = report["protocol"]
    assert protocol["single_task_budget"] == "examples" and sum(protocol["examples_per_task"].values()) == 12 * 4
    for task in TASKS:  # each single-task run saw as many examples of its task as the mixture gave it
        assert protocol["single_task_steps"][task] == -(-protocol["examples_per_task"][task] // 4)
        single = json.loads((tmp_path / "cmp" / f"single_{task}" / "run_config.json").read_text())
        assert single["mta"]["train"]["steps"] == protocol["single_task_steps"][task]
        assert single["mta"]["data"]["tasks"] == [task] and single["mta"]["data"]["suite"] is None
    for name, entry in report["systems"].items():
        for task in TASKS:
            assert report["deltas"][name][task] == pytest.approx(entry["scores"][task] - report["baseline_scores"][task])
    assert set(report["chance"]) == set(TASKS)
    text = (tmp_path / "cmp" / "report" / "report.md").read_text()
    assert "| task | kind | single-task | shared | shared_matched | mta_stage1 |" in text and "## Budget" in text
    # the protocol: stage-1 runs train twice the budget, scored at their best checkpoint and at the budget
    assert protocol["multi_task_steps"] == 24 and protocol["fixed_budget"] == 12 and report["checkpoint"] == "best"
    assert (tmp_path / "cmp" / "mta_stage1" / "export_step12" / "tasks.json").is_file()
    assert report["fixed_budget"]["exports"]["mta_stage1"].endswith("export_step12")
    assert set(report["summary"]["tests"]) == {"shared_matched", "mta_stage1", "mta_stage2", "shared_stage2", "mta_stage1_more"}
    assert "Paired tests against `shared`" in text and "At the fixed budget (step 12)" in text
    assert "Δ shared" not in text  # no per-run delta columns in the grouped table
    # a rerun trains nothing: every run is reused
    stamp = (tmp_path / "cmp" / "mta_stage1" / "export" / "model.safetensors").stat().st_mtime_ns
    second = _compare(tmp_path, files=_file_data(tmp_path))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count(": reused") == 9 and ": trained" not in second.stdout
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
    with pytest.raises(ConfigError, match=f"holds a finished run {spec.name} trained with another configuration"):
        ensure_run(spec, launcher=["false"])
    assert (run_dir / "export" / "tasks.json").is_file()  # refused: nothing removed
    (run_dir / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0}))
    with pytest.raises(ConfigError, match=f"run {spec.name}: .* is in use by a run of pid {os.getpid()}"):
        ensure_run(spec, launcher=["false"], overwrite=True)
    (run_dir / ".lock").unlink()
    with pytest.raises(RuntimeError, match=f"run {spec.name} failed"):  # "false" stands in for the trainer
        ensure_run(spec, launcher=["false"], overwrite=True)
    assert not (run_dir / "export").exists()  # the stale run was cleared before retraining


def test_variants_are_derived_from_either_stage_with_launcher_style_overrides(tmp_path):
    stage1, stage2 = tiny_config(tmp_path / "a"), tiny_config(tmp_path / "b", stage=2, init_from="x")
    variants = [
        Variant("gn", 1, ["--train.weighting", '{"method": "gradnorm"}']),
        Variant("pc2", 2, ["--train.gradient_projection", "pcgrad", "--train.steps", "7"]),
    ]
    runs = {r.name: r for r in plan_runs(stage1, stage2, tmp_path, variants=variants)}
    assert runs["gn"].raw["mta"]["train"]["weighting"] == {"method": "gradnorm"}
    assert runs["gn"].raw["mta"]["train"]["output_dir"] == str(tmp_path / "gn")
    pc2 = runs["pc2"].raw["mta"]["train"]
    assert (pc2["stage"], pc2["steps"], pc2["gradient_projection"]) == (2, 7, "pcgrad")
    assert pc2["init_from"] == str(tmp_path / "mta_stage1" / "export")
    # one dialect with `train`: a bare key is a DeepSpeed key, mta.* a layer key, train.* short for mta.train.*
    key = next(k for k in stage1 if k != "mta")
    same = Variant("same", 1, [f"--{key}", json.dumps(stage1[key]), "--mta.temperature", "0.5"])
    derived = next(r for r in plan_runs(stage1, stage2, tmp_path, variants=[same]) if r.name == "same").raw
    trained = json.loads(json.dumps(stage1))
    apply_overrides(trained, [f"--{key}", json.dumps(stage1[key]), "--mta.temperature", "0.5"])
    assert derived[key] == trained[key] and derived["mta"]["temperature"] == trained["mta"]["temperature"] == 0.5
    with pytest.raises(ConfigError, match=r"override --temperature: unknown DeepSpeed key"):
        plan_runs(stage1, stage2, tmp_path, variants=[Variant("bare", 1, ["--temperature", "0.5"])])
    with pytest.raises(ConfigError, match=r"two runs are named 'shared'"):
        plan_runs(stage1, stage2, tmp_path, variants=[Variant("shared", 1, [])])
    with pytest.raises(ConfigError, match=r"variant v is a stage-2 run; pass --stage2"):
        plan_runs(stage1, None, tmp_path, variants=[Variant("v", 2, [])])


def test_options_added_since_a_run_count_as_equal_only_at_their_default(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["mta"]["route_by"] = "type"  # route_by's default: an older run without the key routed by type
    resolved = build_run_config(cfg).to_json()
    older = json.loads(json.dumps(resolved))
    del older["mta"]["train"]["weighting"], older["mta"]["data"]["type_overrides"], older["mta"]["route_by"]
    assert same_config(older, resolved)
    changed = json.loads(json.dumps(resolved))
    changed["mta"]["train"]["weighting"] = {"method": "gradnorm"}
    assert not same_config(older, changed)
    assert not same_config(resolved, older)  # a key the request lacks is a difference
    changed = json.loads(json.dumps(resolved))
    changed["mta"]["route_by"] = "task"
    assert not same_config(older, changed)


def test_compare_errors_are_one_line(tmp_path):
    cfg = tiny_config(tmp_path / "x")
    cfg["mta"]["data"]["suite"] = None
    cfg["mta"]["data"]["files"] = {"train": [str(tmp_path / "t.jsonl")]}
    (tmp_path / "t.jsonl").write_text('{"input": "a", "target": "b", "type": "nli", "task": "t"}\n')
    config = write_config(tmp_path / "c.json", cfg)
    for extra, message in [
        ([], "error: compare: the data has no test split"),
        (["--seeds", "1,x"], "error: --seeds: expected comma-separated integers"),
        (["--variant", "a b", "--train.steps 3"], "error: --variant 'a b': expected NAME or NAME:2"),
        (["--variant", "v", "train.steps 3"], "error: --variant v: expected '--key value ...'"),
    ]:
        run = subprocess.run(
            [sys.executable, "launchers/compare.py", "--config", str(config), "--out", str(tmp_path / "o"), *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith(message), run.stderr
