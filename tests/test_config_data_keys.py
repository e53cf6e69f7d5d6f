"""Every data and sampling key of the `"mta"` section changes what a run loads, tokenises or draws: one probe per
key, each comparing the key's effect against the default (`test_config_keys.py` checks that every key has one)."""

import json
from pathlib import Path

import pytest

from mta_moe.data import DataConfig, DataError, load_task_data, make_sampler, tokenize_examples
from mta_moe.data.tokenizer import train_sentencepiece_tokenizer
from mta_moe.metrics import profile_tasks

TASKS = ["sentiment", "fact_entail", "answer"]


def _data(tmp_path, name: str, **changes) -> DataConfig:
    raw = {"suite": {"seed": 1, "train": 12, "validation": 3, "test": 3, "tasks": TASKS}, **changes}
    return DataConfig.from_dict(raw), tmp_path / name


def _rows_file(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load(cfg_dir) -> object:
    cfg, work = cfg_dir
    return load_task_data(cfg, ["classify", "nli", "generate"], work)


def _summary(data) -> dict:
    return {split: sorted(zip(ds["task"], ds["type"], ds["input"])) for split, ds in data.splits.items()}


def _probe_suite(tmp_path):
    a = _summary(_load(_data(tmp_path, "a")))
    b = _summary(_load(_data(tmp_path, "b", suite={"seed": 1, "train": 16, "validation": 3, "test": 3, "tasks": TASKS})))
    assert len(b["train"]) == len(a["train"]) + 3 * 4


def _probe_files(tmp_path):
    extra = _rows_file(tmp_path / "x.jsonl", [{"input": f"x {i}", "target": "yes", "type": "classify", "task": "extra"} for i in range(3)])
    data = _load(_data(tmp_path, "b", files={"train": [extra]}))
    assert "extra" in data.registry.names


def _probe_recipes(tmp_path):
    local = _rows_file(tmp_path / "sst.jsonl", [{"sentence": f"good {i}", "label": i % 2} for i in range(4)])
    data = _load(_data(tmp_path, "b", recipes=[{"name": "sst2", "data_files": {"train": local}}]))
    assert "sst2" in data.registry.names


def _probe_on_bad_rows(tmp_path):
    rows = [{"input": "a", "target": "yes", "type": "classify", "task": "extra"}, {"input": "b", "type": "classify"}]
    bad = _rows_file(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: missing field 'target'"):
        _load(_data(tmp_path, "a", files={"train": [bad]}))
    data = _load(_data(tmp_path, "b", files={"train": [bad]}, on_bad_rows="skip"))
    assert any(r.skipped for r in data.reports) and "extra" in data.registry.names


def _lengths(tmp_path, **changes):
    data = _load(_data(tmp_path, "d", **changes))
    tokenizer_dir = tmp_path / "tok"
    if not tokenizer_dir.exists():
        texts = list(data.splits["train"]["input"]) + list(data.splits["train"]["target"])
        train_sentencepiece_tokenizer(texts, tokenizer_dir, vocab_size=120)
    from mta_moe.data import load_tokenizer

    cfg = DataConfig.from_dict({"suite": {}, **changes})
    tokenized, _ = tokenize_examples(data.splits["train"], load_tokenizer(tokenizer_dir), data.registry, cfg.max_input_length, cfg.max_target_length, "seq2seq")
    return max(map(len, tokenized["input_ids"])), max(map(len, tokenized["labels"]))


def _probe_max_input_length(tmp_path):
    assert _lengths(tmp_path, max_input_length=8)[0] == 8 < _lengths(tmp_path)[0]


def _probe_max_target_length(tmp_path):
    assert _lengths(tmp_path, max_target_length=4)[1] == 4 < _lengths(tmp_path)[1]


def _draws(tmp_path, **changes) -> list:
    cfg, _ = _data(tmp_path, "s", **changes)
    return make_sampler(cfg, {"sentiment": 50, "fact_entail": 10, "answer": 5}).next_batch(64, step=0)


def _probe_seed(tmp_path):
    assert _draws(tmp_path, seed=1) != _draws(tmp_path)


def _probe_sampling(tmp_path):
    assert _draws(tmp_path, sampling={"strategy": "proportional"}) != _draws(tmp_path)


def _probe_curriculum(tmp_path):
    draws = _draws(tmp_path, curriculum=[{"start_step": 0, "tasks": ["answer"]}, {"start_step": 5, "tasks": None}])
    assert {task for task, _ in draws} == {"answer"} != {task for task, _ in _draws(tmp_path)}


def _probe_task_kinds(tmp_path):
    data = _load(_data(tmp_path, "a"))
    train = data.splits["train"]
    rows = (list(train["task"]), list(train["input"]), list(train["target"]))
    assert (
        profile_tasks(*rows, DataConfig.from_dict({"task_kinds": {"answer": "generation"}}).task_kinds)["answer"]["kind"]
        == "generation"
        != profile_tasks(*rows)["answer"]["kind"]
    )


def _probe_type_overrides(tmp_path):
    data = _load(_data(tmp_path, "b", type_overrides={"answer": "nli"}))
    assert data.registry.type_of["answer"] == "nli" != _load(_data(tmp_path, "a")).registry.type_of["answer"]


def _probe_tasks(tmp_path):
    assert _load(_data(tmp_path, "b", tasks=["answer"])).registry.names == ["answer"]


def _probe_merge_tasks(tmp_path):
    twin = _rows_file(tmp_path / "twin.jsonl", [{"input": "x", "target": "positive", "type": "classify", "task": "sentiment"}])
    with pytest.raises(DataError, match="task 'sentiment' has train rows in"):
        _load(_data(tmp_path, "a", files={"train": [twin]}))
    merged = _load(_data(tmp_path, "b", files={"train": [twin]}, merge_tasks=["sentiment"]))
    assert "x" in merged.splits["train"]["input"]


def _probe_group_by_length(tmp_path):
    sizes = {"sentiment": 50, "fact_entail": 10, "answer": 5}
    length = {"sentiment": 40, "fact_entail": 9, "answer": 25}  # per task: a batch of one length is one task

    def batches(**changes) -> list:
        sampler = make_sampler(_data(tmp_path, "s", **changes)[0], sizes, lambda task, index: (length[task], 1), 4)
        return [sampler.next_batch(16, step) for step in range(4)]

    plain, grouped = batches(), batches(group_by_length=4)
    assert sorted(p for b in grouped for p in b) == sorted(p for b in plain for p in b)  # the same examples
    assert sum(len({task for task, _ in b}) for b in grouped) < sum(len({task for task, _ in b}) for b in plain)


DATA_PROBES = {name[len("_probe_") :]: fn for name, fn in globals().items() if name.startswith("_probe_")}


@pytest.mark.parametrize("key", sorted(DATA_PROBES))
def test_data_key_changes_what_the_run_loads_or_draws(key, tmp_path):
    DATA_PROBES[key](tmp_path)


SAMPLING_PROBES = {  # each changes the mixing rates (or, for the dynamic keys, the re-weighted rates)
    "strategy": {"strategy": "uniform"},
    "temperature": {"temperature": 1.0},
    "caps": {"caps": {"sentiment": 5}},
    "default_cap": {"default_cap": 5},
    "min_rate": {"strategy": "dynamic", "min_rate": 1.0},
    "dynamic_signal": {"strategy": "dynamic", "dynamic_signal": "metric"},
    "dynamic_alpha": {"strategy": "dynamic", "dynamic_alpha": 3.0},
}


@pytest.mark.parametrize("key", sorted(SAMPLING_PROBES))
def test_sampling_key_changes_the_mixing_rates(key, tmp_path):
    def rates(sampling):
        cfg, _ = _data(tmp_path, "s", sampling=sampling)
        sampler = make_sampler(cfg, {"sentiment": 50, "fact_entail": 10, "answer": 5})
        if sampler.config.strategy == "dynamic":  # two validations: losses 2.0 / 0.4 / 0.9 after 2.0 each
            sampler.update_dynamic({"sentiment": 2.0, "fact_entail": 2.0, "answer": 2.0})
            return sampler.update_dynamic({"sentiment": 0.4, "fact_entail": 0.9, "answer": 0.3})
        return sampler.rates()

    changed = SAMPLING_PROBES[key]
    reference = {k: v for k, v in changed.items() if k == "strategy"} if key != "strategy" else {}
    assert rates(changed) != pytest.approx(rates(reference))
