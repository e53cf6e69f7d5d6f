"""Invalid MTA settings raise errors that name the key and what is allowed."""

import json

import pytest

from mta_moe import ConfigError, MTAConfig, load_ds_config
from mta_moe.config_files import read_config_file


@pytest.mark.parametrize(
    "changes, key, allowed",
    [
        ({"k": 6}, "mta.k", "between 1 and num_experts (5)"),
        ({"k": 0}, "mta.k", ">= 1"),
        ({"num_experts": 6, "ep_size": 4}, "mta.ep_size", "divisible by ep_size"),
        ({"expert_kind": "lora"}, "mta.expert_kind", "['bottleneck', 'ffn']"),
        ({"gate_mode": "random"}, "mta.gate_mode", "['task', 'learned', 'both']"),
        ({"temperature": 0.0}, "mta.temperature", "> 0"),
        ({"temperature": -1}, "mta.temperature", "> 0"),
        ({"sequence_repr": "last"}, "mta.sequence_repr", "['first', 'mean']"),
        ({"adapter_activation": "swish"}, "mta.adapter_activation", "'relu'"),
        ({"task_types": []}, "mta.task_types", "non-empty"),
        ({"task_types": ["a", "a"]}, "mta.task_types", "unique"),
        ({"task_adapter_assignment": {"classify": [0], "nli": [9], "generate": [4]}}, "mta.task_adapter_assignment.nli", "[0, 4]"),
        ({"task_adapter_assignment": {"classify": [0]}}, "mta.task_adapter_assignment", "no adapters given"),
        ({"task_adapter_assignment": {"classify": [0], "nli": [1], "generate": [2], "qa": [3]}}, "mta.task_adapter_assignment", "unknown task type"),
        ({"load_balance_coef": -0.1}, "mta.load_balance_coef", ">= 0"),
        ({"num_shared_adapters": -1}, "mta.num_shared_adapters", ">= 0"),
        ({"adapter_dim": "8"}, "mta.adapter_dim", "integer"),
    ],
)
def test_invalid_values_name_the_key(changes, key, allowed):
    with pytest.raises(ConfigError) as err:
        MTAConfig(**changes)
    msg = str(err.value)
    assert msg.startswith(key + ":") and allowed in msg, msg


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(
        ConfigError,
        match=r"^mta\.num_expert: unknown key \(did you mean num_experts\?\); allowed keys are \[",
    ):
        MTAConfig.from_dict({"num_expert": 4})


def test_defaults_reproduce_official_assignment():
    cfg = MTAConfig()
    assert cfg.top_k == 5 and cfg.temperature == 0.1
    assert cfg.assignment() == [[0, 1], [2, 3], [4]]
    assert MTAConfig(num_experts=2, task_types=["a", "b", "c"]).assignment() == [[0], [1], [0]]
    explicit = MTAConfig(task_adapter_assignment={"classify": [4], "nli": [0, 1], "generate": [2]})
    assert explicit.assignment() == [[4], [0, 1], [2]]


def test_round_trip_and_replace():
    cfg = MTAConfig(num_experts=4, k=2, gate_mode="both")
    assert MTAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="mta.k"):
        cfg.replace(num_experts=1)


def test_ds_config_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json: DeepSpeed config file not found"):
        load_ds_config(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "train_batch_size": 8,\n  "mta": {"k": }\n}')
    with pytest.raises(ConfigError, match=r"bad\.json: line 3: not valid JSON"):
        load_ds_config(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"train_batch_size": 8, "mta": {"gate_mode": "x"}}))
    with pytest.raises(ConfigError, match=r"wrong\.json: mta\.gate_mode: must be one of"):
        load_ds_config(wrong)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"train_batch_size": 8, "mta": {"num_experts": 4, "k": 2}}))
    ds, cfg = load_ds_config(good)
    assert ds == {"train_batch_size": 8} and cfg.top_k == 2


def test_shipped_ds_configs_are_valid():
    from pathlib import Path

    from mta_moe.training.run_config import load_run_config

    for path in sorted((Path(__file__).resolve().parents[1] / "ds_configs").glob("*.json")):
        ds, cfg = load_ds_config(path)
        assert "zero_optimization" in ds and ds["zero_optimization"]["stage"] in (0, 1, 2), path
        run = load_run_config(path)
        assert run.mta == cfg and run.train.stage == int(path.stem[-1])


def test_routing_keys_that_outnumber_the_adapters_are_named():
    from mta_moe.config import sharing_adapters

    twelve = [f"t{i}" for i in range(12)]
    cfg = MTAConfig(num_experts=9, k=1, route_by="task", tasks=twelve)
    assert sharing_adapters(cfg) == {0: ["t0", "t9"], 1: ["t1", "t10"], 2: ["t2", "t11"]}
    assert sharing_adapters(cfg.replace(num_experts=12)) == {}
    assignment = {t: [i % 9] for i, t in enumerate(twelve)}
    assert sharing_adapters(cfg.replace(task_adapter_assignment=assignment)) == {}  # chosen on purpose: no warning


def test_config_files_take_comments_and_refuse_duplicate_keys(tmp_path):
    """Hjson as DeepSpeed reads its own configs: comments are allowed; a key given twice is refused by name (plain
    JSON keeps the last silently)."""
    commented = tmp_path / "commented.json"
    commented.write_text('{\n  // the engine\n  "train_batch_size": 8,\n  # ours\n  "mta": {"k": 1}\n}\n')
    assert read_config_file(commented) == {"train_batch_size": 8, "mta": {"k": 1}}
    for text in ('{"train_batch_size": 8, "mta": {"k": 1, "k": 2}}', '{\n  // c\n  "mta": {"k": 1, "k": 2}\n}'):
        twice = tmp_path / "twice.json"
        twice.write_text(text)
        with pytest.raises(ConfigError, match=r"twice\.json: key 'k' appears twice in one object; keep one"):
            read_config_file(twice)
