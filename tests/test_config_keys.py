"""Every key of ds_configs/*.json and of the docs' tables takes effect or is refused by name.

The walk: the keys the config classes accept are exactly the keys the README documents, every key of the
shipped configs is one of them, and each key has a probe here. A layer key changes the built model (its
parameters, outputs, aux loss or routing statistics) or is equal by design with the reason tested; a data key
changes the loaded rows, the tokenised lengths or the mixture the trainer draws from; a DeepSpeed key reaches the
engine (read back from the engine itself) or is refused; a training key names the test that shows its effect.
A new key fails `test_every_key_has_a_probe` until it gets one.
"""

import ast
import dataclasses
import json
import re

import pytest
import torch
from backbones import make_backbone, make_inputs, perturb_mta
from test_config_data_keys import DATA_PROBES, SAMPLING_PROBES
from test_training import REPO, launch, tiny_config, write_config

from mta_moe import ConfigError, MTAConfig, MTAModel
from mta_moe.data import DataConfig
from mta_moe.data.sampling import SamplingConfig
from mta_moe.training.run_config import ModelConfig, TrainConfig, build_run_config

# the README and docs/, where the key tables and lists live
README = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
TESTS = REPO / "tests"


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


SECTIONS = {"mta": MTAConfig, "mta.model": ModelConfig, "mta.data": DataConfig, "mta.data.sampling": SamplingConfig, "mta.train": TrainConfig}
OUR_KEYS = {f"{section}.{name}" for section, cls in SECTIONS.items() for name in _fields(cls)}
OUR_KEYS -= {"mta.model", "mta.data", "mta.train"}  # sections, not keys (none is a field of MTAConfig)


def _leaves(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in ("mta.model.from_scratch", "mta.data.suite"):
            yield from _leaves(value, path + ".")
        else:
            yield path


SHIPPED = {path for name in ("stage1", "stage2") for path in _leaves(json.loads((REPO / "ds_configs" / f"{name}.json").read_text()))}
DEEPSPEED_KEYS = {k for k in SHIPPED if not k.startswith("mta.")}


def _table_keys(first: str) -> set[str]:
    """The backticked names in the first column of the README table that starts with the row of ``first``."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| `{first}` |"))
    names = set()
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return names


# ----------------------------------------------------------------------------- the walk


def test_the_readme_documents_exactly_the_keys_that_exist():
    """The docs' tables (generated from the fields, see test_config_reference) list exactly the keys that exist."""
    assert _table_keys("num_experts") == set(_fields(MTAConfig))  # the layer-key table
    assert _table_keys("suite") == set(_fields(DataConfig))  # the data table
    assert _table_keys("strategy") == set(_fields(SamplingConfig))
    assert _table_keys("stage") == set(_fields(TrainConfig))
    assert _table_keys("backbone") == set(_fields(ModelConfig))


def test_the_shipped_configs_hold_only_known_keys():
    assert {k for k in SHIPPED if k.startswith("mta.")} <= OUR_KEYS
    for name in ("stage1", "stage2"):  # and they load (unknown keys would be refused by name)
        build_run_config(json.loads((REPO / "ds_configs" / f"{name}.json").read_text()), name)


def test_every_key_has_a_probe():
    probed = (
        {f"mta.{k}" for k in LAYER_PROBES}
        | {f"mta.data.{k}" for k in DATA_PROBES}
        | {f"mta.data.sampling.{k}" for k in SAMPLING_PROBES}
        | set(TRAIN_EVIDENCE)
        | set(DEEPSPEED_PROBES)
    )
    assert OUR_KEYS <= probed, f"keys without a probe: {sorted(OUR_KEYS - probed)}"
    assert DEEPSPEED_KEYS <= set(DEEPSPEED_PROBES), sorted(DEEPSPEED_KEYS - set(DEEPSPEED_PROBES))


# ----------------------------------------------------------------------------- layer keys

BASE = dict(num_experts=4, k=2, adapter_dim=8, shared_adapter_dim=8, task_types=["classify", "nli", "generate"])
LAYER_PROBES = {  # key: (the changed value, other keys the probe needs, stage of the probed model)
    "num_experts": (6, {}, 1),
    "k": (1, {}, 1),
    "expert_kind": ("ffn", {}, 1),
    "adapter_dim": (16, {}, 1),
    "adapter_activation": ("gelu", {}, 1),
    "adapter_bias": (False, {}, 1),
    "task_types": (["classify", "nli", "generate", "qa"], {}, 1),
    "route_by": ("task", {"tasks": ["t0", "t1", "t2"]}, 1),
    "tasks": (["t0", "t1", "t2", "t3"], {"route_by": "task", "tasks": ["t0", "t1", "t2"]}, 1),
    "task_adapter_assignment": ({"classify": [3], "nli": [2], "generate": [0, 1]}, {}, 1),
    "gate_mode": ("learned", {"selector_init_std": 0.5}, 1),
    "temperature": (1.0, {}, 1),
    "bias_init": (0.5, {}, 1),
    "bias_margin": (0.5, {}, 1),
    "selector_init_std": (0.5, {"gate_mode": "both"}, 1),
    "sequence_repr": ("mean", {"gate_mode": "both", "selector_init_std": 0.5}, 1),
    "load_balance_coef": (0.1, {}, 1),
    "z_loss_coef": (0.1, {}, 1),
    "num_shared_adapters": (2, {}, 2),
    "shared_adapter_dim": (16, {}, 2),
    "gate_network_hidden": (8, {}, 2),
    "stage2_form": ("official", {}, 2),
    "init_seed": (1, {}, 1),
    "track_routing": (False, {}, 1),
    "inject_layers": ("all", {}, 1),
    "inject_stacks": ("encoder", {}, 1),
    "dispatch": ("deepspeed", {}, 1),
    "ep_size": (2, {}, 1),
    "always_on_adapters": (1, {}, 1),
    "always_on_dim": (4, {"always_on_adapters": 1}, 1),
}


def _signature(cfg: MTAConfig, stage: int) -> dict:
    """What a run would see of the layer: parameter names/shapes/values, outputs, aux loss, routing counts."""
    model = MTAModel(make_backbone("t5"), cfg)
    if stage == 2:
        model.enable_stage2()
    perturb_mta(model, seed=1, scale=0.1, biases=False)  # adapters away from their zero start, selector as built
    inputs = make_inputs("t5")
    with torch.no_grad():
        out = model(**inputs, task_type_ids=torch.tensor([0, 1, 2, 0]), task_ids=torch.tensor([1, 2, 0, 1]))
    stats = [layer.get_routing_stats().adapter_counts.clone() for layer in model.mta_layers.values()]
    return {
        "shapes": {n: tuple(p.shape) for n, p in model.named_parameters()},
        "values": {n: p.detach().clone() for n, p in model.named_parameters()},
        "logits": out.logits,
        "aux": model.last_aux_loss,
        "routing": stats,
    }


def _differs(a: dict, b: dict) -> list[str]:
    if a["shapes"] != b["shapes"]:
        return ["parameters"]
    found = [what for what in ("logits", "aux") if not _same(a[what], b[what])]
    if any(not torch.equal(a["values"][n], b["values"][n]) for n in a["values"]):
        found.append("values")
    if any(not torch.equal(x, y) for x, y in zip(a["routing"], b["routing"])):
        found.append("routing")
    return found


def _same(x, y) -> bool:
    if x is None or y is None:
        return x is y
    return torch.equal(torch.as_tensor(x), torch.as_tensor(y))


@pytest.mark.parametrize("key", sorted(LAYER_PROBES))
def test_layer_key_changes_the_model_or_is_equal_by_design(key):
    value, needs, stage = LAYER_PROBES[key]
    base = MTAConfig(**{**BASE, **needs})
    if key == "ep_size":  # the adapters split over ranks: a world of that size is needed (the 2-rank tests)
        with pytest.raises(Exception, match="ep_size|expert parallel|world"):
            _signature(base.replace(ep_size=2), stage)
        return
    before, after = _signature(base, stage), _signature(base.replace(**{key: value}), stage)
    found = _differs(before, after)
    if key == "dispatch":  # two implementations of one computation: equal outputs (to rounding: the grouped
        assert found in ([], ["logits"])  # GEMMs sum in another order) and gradients are its contract
        assert torch.allclose(before["logits"], after["logits"], atol=1e-5)
        return
    assert found, f"mta.{key}: {value!r} changed nothing the run sees"
    if key == "bias_init":  # the softmax ignores a shift shared by every bias: the stored values move, the
        assert "values" in found  # outputs only by rounding (it matters once weight decay pulls on the biases)
        assert torch.allclose(before["logits"], after["logits"], atol=1e-5)


# ----------------------------------------------------------------------------- training and model keys

TRAIN_EVIDENCE = {  # key -> the test that shows it acting on a run (or refused)
    "mta.task_heads": "test_encoder_mode.py::test_heads_save_and_load_with_the_model",  # (encoder backbones only)
    "mta.pooling": "test_encoder_mode.py::test_each_row_is_scored_by_its_own_tasks_head",
    "mta.train.stage": "test_stage_settings.py::test_stage2_settings_take_effect_in_the_run",
    "mta.train.steps": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.lr": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.weight_decay": "test_unfreezing.py::test_requires_grad_and_weight_decay_switch_at_the_declared_steps",
    "mta.train.warmup_steps": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.seed": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.output_dir": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.init_from": "test_training.py::test_stage2_trains_only_mta_parameters",
    "mta.train.trainable": "test_training.py::test_stage2_trains_only_mta_parameters",
    "mta.train.stop_at_step": "test_training.py::test_kill_and_resume_reproduces_the_losses",
    "mta.train.early_stopping": "test_protocol.py::test_early_stopping_snapshot_and_stage1_continuation",
    "mta.train.export_steps": "test_protocol.py::test_early_stopping_snapshot_and_stage1_continuation",
    "mta.train.log_every": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.eval_every": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.save_every": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.eval_batch_size": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.max_new_tokens": "test_training.py::test_seed_lr_warmup_and_run_length_keys_shape_the_run",
    "mta.train.loss_reduction": "test_losses.py::test_objective_computes_the_loss_once_and_equal_to_the_backbones",
    "mta.train.task_weights": "test_negative_transfer_training.py::test_dynamic_weights_logged_every_step_and_resumed_exactly",
    "mta.train.warn_margin": "test_training.py::test_stage1_logs_and_exports",
    "mta.train.baseline_scores": "test_training.py::test_stage1_logs_and_exports",
    "mta.train.weighting": "test_negative_transfer_training.py::test_dynamic_weights_logged_every_step_and_resumed_exactly",
    "mta.train.gradient_projection": "test_negative_transfer_training.py::test_pcgrad_logs_conflicts_and_gradnorm_runs_expert_parallel",
    "mta.train.unfreeze": "test_unfreezing.py::test_frozen_blocks_are_bit_identical_until_their_step",
    "mta.train.add_task_types": "test_add_task.py::test_launcher_adds_a_task_type_and_leaves_old_tasks_untouched",
    "mta.train.distributed_timeout_s": "test_faults.py::test_a_rank_that_dies_or_stalls_ends_the_run_within_the_timeout",
    "mta.train.skip_nonfinite_batches": "test_faults.py::test_nonfinite_batches_are_skipped_up_to_the_limit_then_stop_the_run",
    "mta.train.activation_checkpointing": "test_training.py::test_activation_checkpointing_key_recomputes_and_trains_the_same",
    "mta.model.backbone": "test_training.py::test_training_starts_from_a_backbone_directory_with_its_tokenizer",
    "mta.model.from_scratch": "test_training.py::test_evaluate_cli_reproduces_validation_scores_for_seq2seq_and_causal",
    "mta.model.tokenizer": "test_training.py::test_training_starts_from_a_backbone_directory_with_its_tokenizer",
    "mta.model.vocab_size": "test_data_tokenizer.py::test_special_tokens_and_frame",
}


def _test_source(node_id: str) -> str | None:
    """The test's source plus that of the fixtures it takes from its own module."""
    file, name = node_id.split("::")
    source = (TESTS / file).read_text()
    functions = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    if name not in functions:
        return None
    parts = [ast.get_source_segment(source, functions[name])]
    parts += [ast.get_source_segment(source, functions[a.arg]) for a in functions[name].args.args if a.arg in functions]
    return "\n".join(parts)


@pytest.mark.parametrize("key", sorted(TRAIN_EVIDENCE))
def test_training_key_names_a_test_that_exercises_it(key):
    source = _test_source(TRAIN_EVIDENCE[key])
    assert source is not None, f"{key}: {TRAIN_EVIDENCE[key]} does not exist"
    assert key.rsplit(".", 1)[1] in source, f"{key}: {TRAIN_EVIDENCE[key]} does not touch it"


# ----------------------------------------------------------------------------- DeepSpeed keys

DEEPSPEED_PROBES = {  # key -> the value set here, and what the engine reports for it
    "train_micro_batch_size_per_gpu": (2, "train_micro_batch_size_per_gpu", 2),
    "gradient_accumulation_steps": (2, "gradient_accumulation_steps", 2),
    "gradient_clipping": (0.5, "gradient_clipping", 0.5),
    "bf16.enabled": (True, "param_dtypes", ["bfloat16"]),
    "zero_optimization.stage": (1, "zero_stage", 1),
    "zero_optimization.overlap_comm": (True, "overlap_comm", True),
    "zero_optimization.contiguous_gradients": (True, "contiguous_gradients", True),
    "steps_per_print": (2, "steps_per_print", 2),
    "zero_allow_untested_optimizer": (True, None, None),  # false is refused (below); true is what the trainer needs
}


def _set(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = cfg
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


@pytest.mark.slow
def test_deepspeed_keys_reach_the_engine(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=2, save_every=2, eval_every=2)
    for key, (value, _, _) in DEEPSPEED_PROBES.items():
        _set(cfg, key, value)
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    engine = next(json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if json.loads(line)["kind"] == "engine")
    for key, (_, reported, expected) in DEEPSPEED_PROBES.items():
        if reported is not None:
            assert engine[reported] == expected, key


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("zero_allow_untested_optimizer", False, "zero_allow_untested_optimizer: must be true"),
        ("zero_optimization.contiguous_gradients", False, "zero_optimization.contiguous_gradients: must be true"),
        ("zero_optimization.reduce_scatter", False, "zero_optimization.reduce_scatter: must be true"),
        ("zero_optimization.stage", 3, "zero_optimization.stage: 3 is refused"),
    ],
)
def test_deepspeed_values_that_cannot_work_are_refused_by_name(tmp_path, key, value, message):
    cfg = tiny_config(tmp_path / "run")
    _set(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        build_run_config(cfg, "cfg.json")
