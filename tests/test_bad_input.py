"""The bad-input matrix: malformed data, wrong config values and keys at every level, bad command lines, exports
with a missing or tampered file. Each case exits with code 2, prints one `error:` line that names the file:line
or the key and what was expected, and writes nothing (the run's output directory is never created).

The cases run in one worker process (tests/workers/bad_input_worker.py) through `mta_moe.cli.main`, the code
behind `mta-moe`; tests/test_training.py checks the same exit codes from separate processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_config_keys import _set as set_key
from test_training import REPO, tiny_config

WORKER = REPO / "tests" / "workers" / "bad_input_worker.py"
GOOD = {"input": "a good film", "target": "positive", "type": "classify", "task": "sentiment"}


def _rows(path: Path, rows, raw: bytes | None = None) -> str:
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _data_case(root: Path, name: str, file: str) -> dict:
    cfg = tiny_config(root / name / "run")
    cfg["mta"]["data"] = {"suite": None, "files": {"train": [file]}, "max_input_length": 64, "max_target_length": 12}
    return cfg


def _config_case(root: Path, name: str, change) -> dict:
    cfg = tiny_config(root / name / "run")
    change(cfg)
    return cfg


def _set(path: str, value):
    return lambda cfg: set_key(cfg, path, value)


def _build(root: Path) -> list[tuple[str, list[str], str, list[str]]]:
    """(id, argv, the text the error line must hold, paths that must not exist afterwards)."""
    d = root / "files"
    d.mkdir()
    data = {
        "missing_field": (_rows(d / "a.jsonl", [GOOD, {"input": "x", "type": "classify"}]), "a.jsonl:line 2: missing field 'target'"),
        "empty_target": (_rows(d / "b.jsonl", [GOOD, {**GOOD, "target": "  "}]), "b.jsonl:line 2: field 'target' is empty"),
        "not_utf8": (_rows(d / "c.jsonl", [], raw=json.dumps(GOOD).encode() + b'\n{"input": "\xff"}\n'), "c.jsonl:line 2: not valid UTF-8 (byte 0xff"),
        "wrong_type": (_rows(d / "d.jsonl", [{**GOOD, "target": 1}]), "d.jsonl:line 1: field 'target' must be a string"),
        "unknown_task_type": (_rows(d / "e.jsonl", [{**GOOD, "type": "qa"}]), "e.jsonl:line 1: type 'qa' is not configured"),
        "not_json": (_rows(d / "f.jsonl", [GOOD, "{input: x"]), "f.jsonl:line 2: not valid JSON"),
        "empty_file": (_rows(d / "g.jsonl", []), "g.jsonl: no valid rows"),
        "a_directory": (str(d), "files: is a directory, expected a data file"),
        "missing_file": (str(d / "nope.jsonl"), "nope.jsonl: data file not found"),
        "csv_without_header_fields": (_rows(d / "h.csv", ["text,label", "x,y"]), "h.csv:line 1: CSV header must contain"),
        "csv_wrong_field_count": (_rows(d / "i.csv", ["input,target,type", "x,positive"]), "i.csv:line 2: expected 3 fields"),
        "unknown_suffix": (_rows(d / "j.txt", [GOOD]), "j.txt: unknown file format '.txt'"),
        "not_a_row_object": (_rows(d / "k.jsonl", ['["a", "b"]']), "k.jsonl:line 1: expected an object with fields"),
        "task_name_is_a_path": (
            _rows(d / "l.jsonl", [GOOD, {**GOOD, "task": "../../../victim"}]),
            "l.jsonl:line 2: field 'task': '../../../victim' is not a valid name",
        ),
        "task_name_with_slash": (_rows(d / "m.jsonl", [{**GOOD, "task": "a/b"}]), "m.jsonl:line 1: field 'task': 'a/b' is not a valid name"),
        "task_name_hidden": (_rows(d / "n.jsonl", [{**GOOD, "task": ".hidden"}]), "n.jsonl:line 1: field 'task': '.hidden' is not a valid name"),
        "csv_duplicate_column": (_rows(d / "o.csv", ["input,target,type,target", "x,y,classify,z"]), "o.csv:line 1: CSV header names column 'target' twice"),
    }
    cases = []
    for name, (file, message) in data.items():
        cases.append((name, _data_case(root, name, file), message))
    not_export = root / "not_an_export"
    not_export.mkdir()
    config = {
        "k_wrong_type": (_set("mta.k", "two"), "mta.k: must be"),
        "temperature_zero": (_set("mta.temperature", 0), "mta.temperature: must be"),
        "num_experts_zero": (_set("mta.num_experts", 0), "mta.num_experts: must be"),
        "lr_negative": (_set("mta.train.lr", -1), "mta.train.lr: must be a number > 0"),
        "steps_text": (_set("mta.train.steps", "x"), "mta.train.steps: must be an integer"),
        "input_length_small": (_set("mta.data.max_input_length", 2), "mta.data.max_input_length: must be an integer"),
        "sampling_strategy": (_set("mta.data.sampling", {"strategy": "random"}), "mta.data.sampling.strategy: must be"),
        "unknown_layer_key": (_set("mta.kk", 1), "mta.kk: unknown key"),
        "unknown_train_key": (_set("mta.train.epochs", 1), "mta.train.epochs: unknown key"),
        "unknown_data_key": (_set("mta.data.shuffle", True), "mta.data.shuffle: unknown key"),
        "unknown_sampling_key": (_set("mta.data.sampling", {"strategy": "uniform", "temp": 2}), "mta.data.sampling.temp: unknown key"),
        "unknown_model_key": (_set("mta.model.layers", 2), "mta.model.layers: unknown key"),
        "zero_3": (_set("zero_optimization.stage", 3), "zero_optimization.stage: 3 is refused"),
        "ep_size_not_dividing": (_set("mta.ep_size", 3), "mta.ep_size"),
        "stage2_without_init_from": (_set("mta.train.stage", 2), "mta.train.init_from: stage 2 starts from"),
        "init_from_not_an_export": (lambda c: c["mta"]["train"].update(stage=2, init_from=str(not_export)), "not_an_export"),
        "curriculum_unknown_task": (
            _set("mta.data.curriculum", [{"start_step": 0, "tasks": ["sentimnt"]}]),
            "mta.data.curriculum[0].tasks: unknown task 'sentimnt'",
        ),
        "task_weights_unknown_task": (_set("mta.train.task_weights", {"sentimnt": 2.0}), "mta.train.task_weights.sentimnt: unknown task"),
        "optimizer_section": (_set("optimizer", {"type": "Adam"}), "optimizer: leave it out"),
        "skip_with_accumulation": (
            lambda c: (c.update(gradient_accumulation_steps=2), c["mta"]["train"].update(skip_nonfinite_batches=1)),
            "mta.train.skip_nonfinite_batches: needs gradient_accumulation_steps 1",
        ),
        "contiguous_gradients_off": (_set("zero_optimization.contiguous_gradients", False), "zero_optimization.contiguous_gradients: must be true"),
        "task_type_is_a_path": (_set("mta.task_types", ["classify", "nli", "../generate"]), "mta.task_types: '../generate' is not a valid name"),
        "routing_task_is_a_path": (_set("mta.tasks", ["sentiment", "../x"]), "mta.tasks: '../x' is not a valid name"),
        "suite_name_unknown": (_set("mta.data.suite", {"name": "glue"}), "mta.data.suite.name: must be one of"),
        "early_stopping_patience_zero": (_set("mta.train.early_stopping", {"patience": 0}), "mta.train.early_stopping.patience: must be an integer >= 1"),
        "early_stopping_unknown_key": (
            _set("mta.train.early_stopping", {"patience": 2, "wait": 1}),
            "mta.train.early_stopping.wait: unknown key; allowed keys are ['min_delta', 'patience']",
        ),
        "export_steps_not_steps": (_set("mta.train.export_steps", [0]), "mta.train.export_steps[0]: must be an integer"),
        "always_on_negative": (_set("mta.always_on_adapters", -1), "mta.always_on_adapters: must be an integer >= 0"),
        "misspelt_deepspeed_key": (_set("gradient_clipingg", 0.3), "gradient_clipingg: unknown DeepSpeed key"),
        "lr_nan": (_set("mta.train.lr", float("nan")), "mta.train.lr: nan is not a finite number"),
        "temperature_infinity": (_set("mta.temperature", float("inf")), "mta.temperature: inf is not a finite number"),
        "warn_margin_nan": (_set("mta.train.warn_margin", float("nan")), "mta.train.warn_margin: nan is not a finite"),
        "task_weight_infinity": (_set("mta.train.task_weights", {"sentiment": float("-inf")}), "mta.train.task_weights.sentiment: -inf is not a finite number"),
        "clipping_nan": (_set("gradient_clipping", float("nan")), "gradient_clipping: nan is not a finite number"),
        "always_on_with_ffn_experts": (
            lambda c: c["mta"].update(expert_kind="ffn", always_on_adapters=1),
            "mta.always_on_adapters: always-on adapters sit beside bottleneck",
        ),
        "suite_task_of_the_other_suite": (_set("mta.data.suite", {"name": "confirm", "tasks": ["sentiment"]}), "the confirm suite has"),
        "misspelt_nested_deepspeed_key": (_set("zero_optimization.stagee", 1), "zero_optimization.stagee: Extra inputs are not permitted"),
        "trainable_optional_not_bool": (
            _set("mta.train.trainable", [{"pattern": "*", "optional": "yes"}]),
            "mta.train.trainable[0].optional: must be true or false, got 'yes'",
        ),
    }
    for name, (change, message) in config.items():
        cases.append((name, _config_case(root, name, change), message))
    out = []
    for name, cfg, message in cases:
        path = root / f"{name}.json"
        path.write_text(json.dumps(cfg))
        out.append((name, ["train", "--deepspeed", str(path)], message, [cfg["mta"]["train"]["output_dir"]]))
    good = root / "good.json"
    good.write_text(json.dumps(tiny_config(root / "good" / "run")))
    bad_json = root / "bad.json"
    bad_json.write_text('{"mta": {\n  "k": 1,,\n}}')
    run = str(root / "good" / "run")
    out += [
        ("config_file_missing", ["train", "--deepspeed", str(root / "none.json")], "none.json: DeepSpeed config file not found", [run]),
        ("config_not_json", ["train", "--deepspeed", str(bad_json)], "bad.json: line 2: not valid JSON", [run]),
        ("override_unknown_key", ["train", "--deepspeed", str(good), "--trian_steps", "5"], "override --trian_steps: unknown DeepSpeed key", [run]),
        ("override_without_value", ["train", "--deepspeed", str(good), "--train.steps"], "override --train.steps: missing a value", [run]),
        ("override_bad_value", ["train", "--deepspeed", str(good), "--train.steps", "-3"], "mta.train.steps: must be", [run]),
        ("resume_without_checkpoint", ["train", "--deepspeed", str(good), "--resume"], "no checkpoint to resume from", [run]),
        ("train_without_config", ["train"], "the following arguments are required: --deepspeed", [run]),
        (
            "evaluate_missing_export",
            ["evaluate", "--model", str(root / "nothing"), "--data", "x.jsonl", "--out", str(root / "scores.json")],
            "tasks.json: missing",
            [str(root / "scores.json")],
        ),
        ("override_nan", ["train", "--deepspeed", str(good), "--train.weight_decay", "NaN"], "mta.train.weight_decay: nan is not a finite number", [run]),
        (
            "compare_threshold_nan",
            ["compare", "--config", str(good), "--out", str(root / "cmp2"), "--threshold", "nan"],
            "--threshold: expected a finite number",
            [str(root / "cmp2")],
        ),
        (
            "evaluate_batch_size_zero",
            ["evaluate", "--model", str(root / "nothing"), "--data", "x.jsonl", "--batch-size", "0"],
            "--batch-size: expected an integer >= 1, got 0",
            [],
        ),
        (
            "evaluate_batch_size_negative",
            ["evaluate", "--model", str(root / "nothing"), "--data", "x.jsonl", "--batch-size", "-3"],
            "--batch-size: expected an integer >= 1, got -3",
            [],
        ),
        (
            "compare_patience_negative",
            ["compare", "--config", str(good), "--out", str(root / "cmp3"), "--patience", "-1"],
            "compare: --patience must be an integer >= 0",
            [str(root / "cmp3")],
        ),
        (
            "resume_and_overwrite",
            ["train", "--deepspeed", str(good), "--resume", "--overwrite"],
            "--resume continues the run in mta.train.output_dir and --overwrite replaces it",
            [run],
        ),
        (
            "compare_steps_below_budget",
            ["compare", "--config", str(good), "--out", str(root / "cmp"), "--steps", "3", "--no-single-task"],
            "compare: --steps (3) is below",
            [str(root / "cmp" / "shared")],
        ),
    ]
    locked = root / "locked" / "run"  # a directory another live run holds
    locked.mkdir(parents=True)
    (locked / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0}))
    cfg = tiny_config(locked)
    (root / "locked.json").write_text(json.dumps(cfg))
    out.append(
        ("run_dir_in_use", ["train", "--deepspeed", str(root / "locked.json")], f"is in use by a run of pid {os.getpid()}", [str(locked / "run_config.json")])
    )
    return out


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    cases = _build(root)
    cases += _export_cases(root)
    (root / "cases.json").write_text(json.dumps([{"id": i, "argv": a, "watch": w} for i, a, _, w in cases]))
    run = subprocess.run(
        [sys.executable, str(WORKER), str(root / "cases.json"), str(root / "results.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "DS_ACCELERATOR": "cpu",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "HOME": str(root),
            "OMP_NUM_THREADS": "1",
            "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],  # the op conftest built, not a fresh build under HOME
        },
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    return {i: (results[i], message) for i, _, message, _ in cases}


def _export_cases(root: Path) -> list:
    """An export with a missing and with a tampered file (from the tiny stage-1 run of tests/test_training.py)."""
    from test_training import launch, write_config

    out = root / "export_run"
    out.mkdir()
    cfg = tiny_config(out / "run", steps=2, save_every=2, eval_every=2)
    assert launch(["--deepspeed", str(write_config(out / "cfg.json", cfg))]).returncode == 0
    export = out / "run" / "export"
    data = out / "run" / "data" / "suite" / "validation.jsonl"
    missing, tampered = root / "missing_weights", root / "tampered_weights"
    for target in (missing, tampered):
        subprocess.run(["cp", "-r", str(export), str(target)], check=True)
    (missing / "model.safetensors").unlink()
    weights = tampered / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    scores = str(root / "export_scores.json")
    crafted = root / "crafted_tasks"  # export metadata whose task list holds a path
    subprocess.run(["cp", "-r", str(export), str(crafted)], check=True)
    meta = json.loads((crafted / "mta_config.json").read_text())
    meta["mta"].update(route_by="task", tasks=["../../escaped", "b", "c"])
    (crafted / "mta_config.json").write_text(json.dumps(meta))
    foreign = root / "foreign_tokenizer"  # the export with another tokenizer's files of the same size
    subprocess.run(["cp", "-r", str(export), str(foreign)], check=True)
    from mta_moe.data.tokenizer import load_tokenizer, train_sentencepiece_tokenizer

    size = len(load_tokenizer(export))
    texts = [f"{w} {v} number {i}" for i, (w, v) in enumerate(zip(["alpha", "beta", "gamma", "delta"] * 200, ["omega", "psi", "chi", "phi"] * 200))]
    train_sentencepiece_tokenizer(texts, root / "other_tokenizer", vocab_size=size).save_pretrained(foreign)
    edited = root / "edited_num_experts"  # mta_config.json edited by hand: the weights no longer fit
    subprocess.run(["cp", "-r", str(export), str(edited)], check=True)
    meta = json.loads((edited / "mta_config.json").read_text())
    meta["mta"]["num_experts"] += 2
    (edited / "mta_config.json").write_text(json.dumps(meta))
    filled = root / "filled"
    filled.mkdir()
    (filled / "keep.txt").write_text("mine")
    return [
        (
            "export_all_crafted_task_names",
            ["export", "--model", str(crafted), "--all", "--out", str(root / "a" / "b")],
            "mta.tasks: '../../escaped' is not a valid name",
            [str(root / "escaped"), str(root / "a")],
        ),
        (
            "export_with_a_foreign_tokenizer",
            ["evaluate", "--model", str(foreign), "--data", str(data), "--out", scores],
            "not the tokenizer the model",
            [scores],
        ),
        (
            "per_task_export_with_a_foreign_tokenizer",
            ["export", "--model", str(export), "--all", "--tokenizer", str(root / "other_tokenizer"), "--out", str(root / "pt2")],
            "--tokenizer",
            [str(root / "pt2")],
        ),
        (
            "export_with_an_edited_num_experts",
            ["evaluate", "--model", str(edited), "--data", str(data), "--out", scores],
            "weights do not fit the model that",
            [scores],
        ),
        (
            "evaluate_out_is_a_directory",
            ["evaluate", "--model", str(export), "--data", str(data), "--out", str(filled)],
            "is a directory; name the JSON file",
            [str(filled / "scores.json")],
        ),
        (
            "save_adapters_into_a_used_folder",
            ["save-adapters", "--model", str(export), "--backbone", str(export), "--out", str(filled)],
            "exists and is not an empty directory; pass --overwrite",
            [str(filled / "adapters.safetensors")],
        ),
        (
            "export_all_into_a_used_folder",
            ["export", "--model", str(export), "--all", "--out", str(filled)],
            "exists and is not an empty directory",
            [str(filled / "classify")],
        ),
        ("export_missing_weights", ["evaluate", "--model", str(missing), "--data", str(data), "--out", scores], "model.safetensors", [scores]),
        ("export_tampered_weights", ["evaluate", "--model", str(tampered), "--data", str(data), "--out", scores], "model.safetensors", [scores]),
        ("export_unknown_task", ["export", "--model", str(export), "--task", "nosuch", "--out", str(root / "per_task")], "nosuch", [str(root / "per_task")]),
    ]


CASE_IDS = [
    "missing_field",
    "empty_target",
    "not_utf8",
    "wrong_type",
    "unknown_task_type",
    "not_json",
    "empty_file",
    "a_directory",
    "missing_file",
    "csv_without_header_fields",
    "csv_wrong_field_count",
    "unknown_suffix",
    "not_a_row_object",
    "k_wrong_type",
    "temperature_zero",
    "num_experts_zero",
    "lr_negative",
    "steps_text",
    "input_length_small",
    "sampling_strategy",
    "unknown_layer_key",
    "unknown_train_key",
    "unknown_data_key",
    "unknown_sampling_key",
    "unknown_model_key",
    "zero_3",
    "ep_size_not_dividing",
    "stage2_without_init_from",
    "init_from_not_an_export",
    "curriculum_unknown_task",
    "task_weights_unknown_task",
    "optimizer_section",
    "skip_with_accumulation",
    "contiguous_gradients_off",
    "config_file_missing",
    "config_not_json",
    "override_unknown_key",
    "override_without_value",
    "override_bad_value",
    "resume_without_checkpoint",
    "train_without_config",
    "evaluate_missing_export",
    "export_missing_weights",
    "export_tampered_weights",
    "export_unknown_task",
    "task_name_is_a_path",
    "task_name_with_slash",
    "task_name_hidden",
    "csv_duplicate_column",
    "task_type_is_a_path",
    "routing_task_is_a_path",
    "suite_name_unknown",
    "early_stopping_patience_zero",
    "early_stopping_unknown_key",
    "export_steps_not_steps",
    "always_on_negative",
    "trainable_optional_not_bool",
    "lr_nan",
    "temperature_infinity",
    "warn_margin_nan",
    "task_weight_infinity",
    "clipping_nan",
    "always_on_with_ffn_experts",
    "suite_task_of_the_other_suite",
    "misspelt_deepspeed_key",
    "misspelt_nested_deepspeed_key",
    "override_nan",
    "compare_threshold_nan",
    "evaluate_batch_size_zero",
    "evaluate_batch_size_negative",
    "compare_patience_negative",
    "resume_and_overwrite",
    "compare_steps_below_budget",
    "run_dir_in_use",
    "export_all_crafted_task_names",
    "export_with_a_foreign_tokenizer",
    "per_task_export_with_a_foreign_tokenizer",
    "export_with_an_edited_num_experts",
    "evaluate_out_is_a_directory",
    "save_adapters_into_a_used_folder",
    "export_all_into_a_used_folder",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_exits_2_with_one_named_error_and_writes_nothing(matrix, case):
    result, message = matrix[case]
    errors = [line for line in result["stderr"] if "error:" in line]
    assert result["code"] == 2, result
    assert len(errors) == 1 and message in errors[0], result["stderr"][-5:]
    assert result["written"] == []


def test_the_matrix_lists_every_case():
    assert len(CASE_IDS) == len(set(CASE_IDS)) >= 30
