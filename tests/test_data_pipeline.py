"""From an mta.data section to tokenised mixed-task batches: config errors, registry, truncation, collation."""

import json

import datasets
import pytest
import torch

from mta_moe.config import ConfigError
from mta_moe.data import (
    IGNORE_INDEX,
    Collator,
    DataConfig,
    DataError,
    MixtureSampler,
    TaskRegistry,
    load_task_data,
    tokenize_examples,
    train_sentencepiece_tokenizer,
)

TYPES = ["classify", "nli", "generate"]
SMALL_SUITE = {"seed": 2, "train": 40, "validation": 10, "test": 10}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    data = load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE}), TYPES, work)
    texts = list(data.splits["train"]["input"]) + list(data.splits["train"]["target"])
    tokenizer = train_sentencepiece_tokenizer(texts, work / "tok", vocab_size=400)
    return data, tokenizer, work


def test_suite_loads_with_a_stable_registry(loaded):
    data, _, work = loaded
    assert {s: d.num_rows for s, d in data.splits.items()} == {"train": 360, "validation": 90, "test": 90}
    assert data.registry.names == sorted(data.registry.names) and len(data.registry.names) == 9
    assert data.registry.type_id("sentiment") == 0 and data.registry.type_id("answer") == 2
    indices = data.task_indices()
    assert sorted(i for rows in indices.values() for i in rows) == list(range(360))
    # a second load reuses the generated files
    stamp = (work / "suite" / "train.jsonl").stat().st_mtime_ns
    load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE}), TYPES, work)
    assert (work / "suite" / "train.jsonl").stat().st_mtime_ns == stamp
    # ... unless it was written by another generator version or for other sizes
    manifest = work / "suite" / "suite.json"
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "version": old["version"] - 1}))
    load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE}), TYPES, work)
    assert json.loads(manifest.read_text()) == old
    assert (work / "suite" / "train.jsonl").stat().st_mtime_ns != stamp


def test_files_and_suite_combine_and_task_type_clashes_fail(loaded, tmp_path):
    _, _, work = loaded
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"input": "x y", "target": "z", "task": "copy", "type": "generate"}) + "\n")
    cfg = DataConfig.from_dict({"suite": SMALL_SUITE, "files": {"train": [str(extra)]}})
    data = load_task_data(cfg, TYPES, work)
    assert "copy" in data.registry.names and data.splits["train"].num_rows == 361
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps({"input": "x", "target": "yes", "task": "sentiment", "type": "nli"}) + "\n")
    with pytest.raises(DataError, match=r"task 'sentiment' has type 'nli' here but 'classify'"):
        load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE, "files": {"train": [str(clash)]}, "merge_tasks": ["sentiment"]}), TYPES, work)
    with pytest.raises(DataError, match=r"validation data: tasks \['copy'\] have no training rows"):
        load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE, "files": {"validation": [str(extra)]}}), TYPES, work)
    with pytest.raises(DataError, match=r"task 'copy' has type 'generate', which is not configured"):
        TaskRegistry(["classify"], {"copy": "generate"})


def test_a_task_in_two_sources_is_refused_unless_merged_on_purpose(loaded, tmp_path):
    _, _, work = loaded
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"input": f"great {i}", "target": "positive", "task": "sentiment", "type": "classify"}) + "\n" for i in range(3)))
    files = {"train": [str(mine)]}
    with pytest.raises(
        DataError,
        match=r"^mta.data: task 'sentiment' has train rows in mta.data.files and the "
        r"bundled suite; rename one, drop a source \(e.g. --data.suite null\), or "
        r"pool them on purpose with mta.data.merge_tasks: \['sentiment'\]$",
    ):
        load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE, "files": files}), TYPES, work)
    merged = load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE, "files": files, "merge_tasks": ["sentiment"]}), TYPES, work)
    assert merged.splits["train"].num_rows == 363 and len(merged.task_indices()["sentiment"]) == 43
    # a task filtered out by mta.data.tasks is not pooled, so it is not refused either
    kept = load_task_data(DataConfig.from_dict({"suite": SMALL_SUITE, "files": files, "tasks": ["topic"]}), TYPES, work)
    assert kept.registry.names == ["topic"]
    # one source may hold a task in several files (shards)
    shards = DataConfig.from_dict({"suite": None, "files": {"train": [str(mine), str(mine)]}})
    assert load_task_data(shards, TYPES, work).splits["train"].num_rows == 6
    with pytest.raises(ConfigError, match=r"mta.data.merge_tasks: must be a list of task names, got 'sentiment'"):
        DataConfig.from_dict({"merge_tasks": "sentiment"})


def test_tokenised_batches_carry_task_ids_and_start_token(loaded):
    data, tokenizer, _ = loaded
    train, report = tokenize_examples(data.splits["train"], tokenizer, data.registry, 128, 32)
    assert not report.any and report.summary() == "truncated: none"
    indices = data.task_indices()
    sampler = MixtureSampler({t: len(r) for t, r in indices.items()}, seed=0)
    picks = sampler.next_batch(12)
    features = [train[indices[t][i]] for t, i in picks]
    batch = Collator(tokenizer.pad_token_id)(features)
    assert batch["input_ids"][:, 0].tolist() == [tokenizer.start_token_id] * 12
    assert batch["task_ids"].tolist() == [data.registry.task_id(t) for t, _ in picks]
    assert batch["task_type_ids"].tolist() == [data.registry.type_id(t) for t, _ in picks]
    assert len(set(batch["task_ids"].tolist())) > 1  # mixed-task batch
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        assert batch["attention_mask"][row].sum() == n
        assert batch["input_ids"][row, n:].eq(tokenizer.pad_token_id).all()
        labels = batch["labels"][row]
        assert labels[: len(feature["labels"])].tolist() == feature["labels"]
        assert labels[len(feature["labels"]) :].eq(IGNORE_INDEX).all()
        assert tokenizer.decode(feature["labels"], skip_special_tokens=True) == feature["target"]


def test_truncation_is_counted_per_task(loaded):
    data, tokenizer, _ = loaded
    limit_in, limit_out = 24, 6
    tokenized, report = tokenize_examples(data.splits["train"], tokenizer, data.registry, limit_in, limit_out)
    expected: dict[str, list[int]] = {}
    for row in data.splits["train"]:
        n_in = len(tokenizer(row["input"], add_special_tokens=False)["input_ids"])
        n_out = len(tokenizer(row["target"], add_special_tokens=False)["input_ids"])
        counts = expected.setdefault(row["task"], [0, 0, 0])
        counts[0] += 1
        counts[1] += n_in > limit_in - 2
        counts[2] += n_out > limit_out - 1
    assert {t: [r["examples"], r["inputs_truncated"], r["targets_truncated"]] for t, r in report.counts.items()} == expected
    assert report.any and "past_tense" in report.summary()
    assert max(len(x) for x in tokenized["input_ids"]) == limit_in
    assert all(x[0] == tokenizer.start_token_id and x[-1] == tokenizer.eos_token_id for x in tokenized["input_ids"])
    assert all(x[-1] == tokenizer.eos_token_id for x in tokenized["labels"])


def test_causal_mode_masks_the_prompt(loaded):
    data, tokenizer, _ = loaded
    one = data.splits["train"].select(range(3))
    tokenized, _ = tokenize_examples(one, tokenizer, data.registry, 128, 32, mode="causal")
    batch = Collator(tokenizer.pad_token_id, mode="causal", padding_side="left")([tokenized[i] for i in range(3)])
    for row in range(3):
        keep = batch["labels"][row] != IGNORE_INDEX
        target = batch["input_ids"][row][keep].tolist()
        assert tokenizer.decode(target, skip_special_tokens=True) == one[row]["target"]
        assert batch["input_ids"][row, -1] == tokenizer.eos_token_id  # left padding: ends are aligned
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([len(x) for x in tokenized["input_ids"]]))


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"suit": {}}, r"mta.data.suit: unknown key"),
        ({"suite": {"train": 0}}, r"mta.data.suite.train: must be an integer >= 1"),
        ({"suite": {"tasks": ["poetry"]}}, r"mta.data.suite.tasks: unknown task 'poetry'"),
        ({"suite": None}, r"mta.data: no training data; set suite, files.train or recipes"),
        ({"files": {"dev": ["a.jsonl"]}}, r"mta.data.files.dev: unknown split"),
        ({"recipes": [{"name": "cola"}]}, r"mta.data.recipes\[0\].name: must be one of"),
        ({"recipes": [{"name": "sst2", "limt": 3}]}, r"mta.data.recipes\[0\].limt: unknown key"),
        ({"on_bad_rows": "ignore"}, r"mta.data.on_bad_rows: must be one of \['raise', 'skip'\]"),
        ({"max_input_length": 2}, r"mta.data.max_input_length: must be an integer >= 4"),
        ({"sampling": {"strategy": "x"}}, r"mta.data.sampling.strategy"),
    ],
)
def test_data_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig.from_dict(raw)


def test_recipes_through_the_config(tmp_path):
    rows = [{"sentence": f"sentence {i}", "label": i % 2, "idx": i} for i in range(6)]
    path = tmp_path / "sst2.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    cfg = DataConfig.from_dict({"suite": None, "recipes": [{"name": "sst2", "data_files": {"train": str(path)}, "limit": 4}]})
    data = load_task_data(cfg, TYPES, tmp_path)
    assert data.registry.names == ["sst2"] and data.splits["train"]["target"] == ["negative", "positive"] * 2


def test_settings_keyed_by_task_are_checked_before_the_suite_is_generated(tmp_path):
    """The curriculum, task weights, caps, ... name tasks: checked against the names the config and the user files
    give, before anything is generated or tokenised (the bundled suite's full size takes minutes to build)."""
    from test_training import tiny_config

    from mta_moe.training.run_config import build_run_config

    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"input": "x", "target": "yes", "type": "classify", "task": "mine"}) + "\n")
    for key, value, message in [
        ("curriculum", [{"start_step": 0, "tasks": ["sentimnt"]}], r"mta.data.curriculum\[0\].tasks: unknown task"),
        ("sampling", {"strategy": "temperature", "caps": {"sentimnt": 4}}, "mta.data.sampling.caps.sentimnt"),
        ("task_kinds", {"sentimnt": "generation"}, "mta.data.task_kinds.sentimnt: unknown task"),
    ]:
        cfg = tiny_config(tmp_path / "run")
        cfg["mta"]["data"].update({key: value, "files": {"train": [str(extra)]}})
        run = build_run_config(cfg)
        with pytest.raises(ConfigError, match=message):
            load_task_data(run.data, run.mta.task_types, tmp_path / "work", run.check_task_names)
        assert not (tmp_path / "work").exists()
    cfg = tiny_config(tmp_path / "run")  # a task of the user's file is a known name too
    cfg["mta"]["data"].update({"files": {"train": [str(extra)]}, "curriculum": [{"start_step": 0, "tasks": ["mine"]}]})
    run = build_run_config(cfg)
    data = load_task_data(run.data, run.mta.task_types, tmp_path / "work", run.check_task_names)
    assert "mine" in data.registry.names and (tmp_path / "work" / "suite").is_dir()


def test_evaluation_rows_that_repeat_training_inputs_are_reported(tmp_path):
    from mta_moe.data import DataConfig, load_task_data

    rows = [{"input": f"text {i}", "target": "yes", "type": "classify", "task": "t"} for i in range(4)]
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    validation.write_text("".join(json.dumps(r) + "\n" for r in [rows[2], {**rows[0], "input": "new"}]))
    cfg = DataConfig.from_dict({"suite": None, "files": {"train": [str(train)], "validation": [str(validation)]}})
    data = load_task_data(cfg, ["classify"], tmp_path / "work")
    leak = [r for r in data.reports if r.path.startswith("validation data")]
    assert len(leak) == 1 and leak[0].duplicates == ["t row 1 repeats a training input"]
    assert "1 duplicate rows (kept)" in leak[0].summary()
