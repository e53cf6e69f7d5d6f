"""The report from small real runs: deltas are differences of the listed scores, routing tables match the
layers' own statistics, calibration and figures are written, and evaluate.py prints every metric."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_training import REPO, launch, tiny_config, write_config

from mta_moe.data import load_examples, tokenize_examples
from mta_moe.evaluation.routing import routing_by_task
from mta_moe.evaluation.scoring import load_export


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cfg1 = tiny_config(root / "stage1")
    assert launch(["--deepspeed", str(write_config(root / "cfg1.json", cfg1))]).returncode == 0
    cfg2 = tiny_config(root / "stage2", stage=2, init_from=str(root / "stage1" / "export"), steps=10, save_every=10, eval_every=10)
    run = launch(["--deepspeed", str(write_config(root / "cfg2.json", cfg2))])
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def _report(root, *extra):
    suite = root / "stage2" / "data" / "suite"
    args = [
        sys.executable,
        "launchers/report.py",
        "--system",
        f"stage1={root / 'stage1'}",
        "--system",
        f"stage2={root / 'stage2'}",
        "--baseline",
        "stage1",
        "--test",
        str(suite / "test.jsonl"),
        "--validation",
        str(suite / "validation.jsonl"),
        "--chance",
        str(suite / "suite.json"),
        "--out",
        str(root / "report"),
        "--max-input-length",
        "64",
        "--max-new-tokens",
        "12",
        *extra,
    ]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})


def test_report_deltas_routing_and_calibration(two_stages):
    run = _report(two_stages, "--threshold", "0.0")
    assert run.returncode == 0, run.stderr[-3000:]
    out = two_stages / "report"
    report = json.loads((out / "report.json").read_text())
    s1, s2 = report["systems"]["stage1"], report["systems"]["stage2"]
    assert set(s1["scores"]) == {"sentiment", "fact_entail", "answer"}
    for task in s1["scores"]:
        assert report["deltas"]["stage2"][task] == pytest.approx(s2["scores"][task] - s1["scores"][task])
        assert report["deltas"]["stage1"][task] == 0.0
    assert report["negative_transfer"]["stage2"] == [t for t, d in report["deltas"]["stage2"].items() if d < 0]
    assert s1["kinds"] == {"sentiment": "classification", "fact_entail": "classification", "answer": "extraction"}
    assert set(s1["metrics"]["sentiment"]) == {"accuracy", "macro_f1", "primary"}
    # calibration for the classification tasks only, one reliability figure each
    assert set(s2["calibration"]) == {"sentiment", "fact_entail"}
    for task, cal in s2["calibration"].items():
        assert cal["temperature"] > 0 and (out / cal["png"]).stat().st_size > 0
        assert cal["accuracy"] == pytest.approx(float(cal["accuracy"]))
    for entry in (s1, s2):
        assert (out / entry["loss_curve_png"]).stat().st_size > 0
        for layer, table in entry["routing"].items():
            assert (out / table["png"]).stat().st_size > 0
            assert sum(table["sequences"]) == 3 * 6  # every test sequence routed once per layer
    markdown = (out / "report.md").read_text()
    for task in s1["scores"]:
        assert f"| `{task}` |" in markdown
    assert "Δ stage2" in markdown


def test_routing_tables_match_the_layer_statistics(two_stages):
    export = load_export(two_stages / "stage2" / "export")
    rows, _ = load_examples(two_stages / "stage2" / "data" / "suite" / "test.jsonl", export.registry.task_types)
    tokenized, _ = tokenize_examples(rows, export.tokenizer, export.registry, 64, 12, export.mode)
    for layer in export.model.mta_layers.values():
        layer.reset_routing_stats()
    tables = routing_by_task(export.model, tokenized, export.collator(), batch_size=5)
    for name, layer in export.model.mta_layers.items():
        stats = layer.get_routing_stats()
        table = tables[name]
        by_type = torch.zeros_like(stats.adapter_counts)
        weights = torch.zeros_like(stats.weight_sums)
        by_task = export.model.mta_config.route_by == "task"
        for i, task in enumerate(table.tasks):  # the layer's rows: its routing keys (tasks, or task types)
            row = stats.row_names.index(task if by_task else export.registry.type_of[task])
            by_type[row] += torch.tensor(table.counts[i], dtype=by_type.dtype)
            weights[row] += torch.tensor(table.mean_weights[i], dtype=weights.dtype) * table.sequences[i]
        assert torch.equal(by_type, stats.adapter_counts)
        assert torch.allclose(weights, stats.weight_sums)
        assert table.mean_mix is not None  # stage 2: the gate network's mixing weights are reported


def test_report_errors_are_one_line(two_stages, tmp_path):
    run = _report(two_stages, "--baseline", "nobody")
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error: baseline 'nobody'")
    bad = subprocess.run(
        [sys.executable, "launchers/report.py", "--system", f"x={tmp_path}", "--test", "t.jsonl", "--out", str(tmp_path / "r")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "neither an export" in bad.stderr


def test_tasks_a_system_was_not_trained_on_are_left_out_of_its_scores(two_stages, tmp_path):
    """A system from before a task was added: its scores and macro cover the tasks it knows."""
    suite = two_stages / "stage2" / "data" / "suite"
    rows = [json.loads(line) for line in (suite / "test.jsonl").read_text().splitlines()]
    extra = [{**r, "task": "later_task"} for r in rows if r["task"] == "fact_entail"]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    args = [
        sys.executable,
        "launchers/report.py",
        "--system",
        f"stage1={two_stages / 'stage1'}",
        "--test",
        str(test),
        "--out",
        str(tmp_path / "report"),
        "--max-input-length",
        "64",
        "--max-new-tokens",
        "12",
    ]
    run = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    entry = json.loads((tmp_path / "report" / "report.json").read_text())["systems"]["stage1"]
    assert entry["untrained_tasks"] == ["later_task"] and set(entry["scores"]) == {"sentiment", "fact_entail", "answer"}
    assert entry["macro"] == pytest.approx(sum(entry["scores"].values()) / 3)
    assert "not trained on later_task" in (tmp_path / "report" / "report.md").read_text()
    test.write_text("".join(json.dumps(r) + "\n" for r in extra))
    run = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert run.returncode == 2 and "tasks ['later_task'] are not among the training tasks" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a CUDA device that is not there")
@pytest.mark.slow
def test_evaluate_runs_where_device_says_and_refuses_a_missing_gpu(two_stages, tmp_path):
    suite = two_stages / "stage2" / "data" / "suite"
    scores = {}
    for device in ("cpu", "auto"):
        out = tmp_path / f"{device}.json"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "mta_moe.cli",
                "evaluate",
                "--model",
                str(two_stages / "stage2" / "export"),
                "--data",
                str(suite / "test.jsonl"),
                "--device",
                device,
                "--out",
                str(out),
                "--max-input-length",
                "64",
                "--max-new-tokens",
                "12",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DS_ACCELERATOR": "cpu"},
        )
        assert run.returncode == 0, run.stderr[-2000:]
        scores[device] = json.loads(out.read_text())["scores"]
    assert scores["cpu"] == scores["auto"]  # auto is the CPU where no GPU is visible
    for bad, message in (
        ("cuda", "error: --device cuda: no such CUDA device is visible"),
        ("tpu", "error: --device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "mta_moe.cli",
                "evaluate",
                "--model",
                str(two_stages / "stage2" / "export"),
                "--data",
                str(suite / "test.jsonl"),
                "--device",
                bad,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 2 and run.stderr.strip().splitlines() == [run.stderr.strip()]
        assert run.stderr.startswith(message)
    report = _report(two_stages, "--device", "cuda:1")
    assert report.returncode == 2 and "error: --device cuda:1: no such CUDA device" in report.stderr


def test_loss_curves_of_a_resumed_run_keep_one_value_per_step(tmp_path, monkeypatch):
    from mta_moe.evaluation import report as report_module

    records = [{"kind": "run", "step": 0}] + [{"kind": "train", "step": s, "task_loss": {"a": 1.0 / s}} for s in (1, 2, 3)]
    records += [{"kind": "run", "step": 0, "resume": True}] + [{"kind": "train", "step": s, "task_loss": {"a": 2.0 / s}} for s in (2, 3, 4)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    drawn = {}
    monkeypatch.setattr(report_module.figures, "loss_curves", lambda path, title, curves: drawn.update(curves) or path)
    report_module._loss_curves("run", metrics, tmp_path)
    assert drawn == {"a": [(1, 1.0), (2, 1.0), (3, 2.0 / 3), (4, 0.5)]}  # steps 2-3 from the resumed segment
