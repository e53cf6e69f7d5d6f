"""Adding a task type to a trained model: old task types' outputs are equal at growth (to fp32 summation order)
and stay bit-identical while the new parts train, the closest trained type is found, bad requests are refused by name, and the
launcher run changes no old weight and no old validation prediction."""

import json

import pytest
import torch
from backbones import _gpt2, _t5
from safetensors.torch import load_file
from test_training import launch, tiny_config, write_config
from tolerances import assert_close_to_scale

from mta_moe import MTAConfig, MTAModel
from mta_moe.config import ConfigError
from mta_moe.modeling.grow import BLOCKED, closest_task_types, grow_saved_model, new_parameters


def _trained(make, tmp_path, **mta):
    torch.manual_seed(0)
    model = MTAModel(make(), MTAConfig(num_experts=4, k=2, adapter_dim=8, inject_layers="all", **mta)).eval()
    with torch.no_grad():  # stands in for training: every adapter and bias now matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "trained")
    return model


def _inputs(model, types):
    ids = torch.randint(3, 90, (len(types), 10), generator=torch.Generator().manual_seed(1))
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "task_type_ids": torch.tensor(types)}
    if model.config.is_encoder_decoder:
        kw["decoder_input_ids"] = ids[:, :5].clone()
    return kw


@pytest.mark.parametrize("make", [lambda: _t5(False), _gpt2], ids=["t5", "gpt2"])
@pytest.mark.parametrize("new_adapters", [0, 1])
def test_old_task_types_are_bit_identical_after_growing_and_training(make, new_adapters, tmp_path):
    trained = _trained(make, tmp_path)
    old_kw = _inputs(trained, [0, 1, 2, 0, 1, 2])
    before = trained(**old_kw).logits
    grown, growth = grow_saved_model(tmp_path / "trained", ["qa"], new_adapters, {"qa": "generate"})
    grown.eval()
    # At growth the old types' routing is exact (the new adapter's weight is 0), but the grown model is another
    # computation (stacked weights of another shape, frozen weights): equal up to fp32 summation order.
    assert_close_to_scale(grown(**old_kw).logits, before)
    experts, biases = new_parameters(grown, growth)
    before = grown(**old_kw).logits  # from here on, the same computation: training the new parts is invisible
    assert len(experts) == 4 * len(grown.mta_layers) * new_adapters and len(biases) == len(grown.mta_layers)
    optimizer = torch.optim.AdamW([{"params": experts, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0}], lr=0.05)
    new_kw = _inputs(grown, [3] * 4)
    start = grown(**new_kw).logits.detach()
    for _ in range(5):  # the new type learns to push its logits down; old types must not notice
        optimizer.zero_grad()
        grown(**new_kw).logits.logsumexp(-1).mean().backward()
        optimizer.step()
    assert not torch.equal(grown(**new_kw).logits, start)
    assert torch.equal(grown(**old_kw).logits, before)
    assert all(not p.requires_grad for n, p in grown.named_parameters() if "task_bias" not in n and not any(p is q for q in experts))


def test_grown_bias_table_layout(tmp_path):
    trained = _trained(lambda: _t5(False), tmp_path)
    grown, growth = grow_saved_model(tmp_path / "trained", ["qa", "ner"], 1, {"qa": "nli", "ner": None})
    assert growth.new_experts == [4] and grown.mta_config.task_types == ["classify", "nli", "generate", "qa", "ner"]
    for key, layer in grown.mta_layers.items():
        old = trained.mta_layers[key].selector.task_bias.detach()
        bias = layer.selector.task_bias.detach()
        assert bias.shape == (5, 5) and torch.equal(bias[:3, :4], old)
        assert torch.all(bias[:3, 4] == BLOCKED)
        assert torch.equal(bias[3, :4], old[1]) and bias[3, 4] == old[1].max() + grown.mta_config.bias_margin
        cfg = grown.mta_config  # no warm start: Softmax-T on the new adapter
        assert torch.allclose(bias[4], torch.tensor([cfg.bias_init] * 4 + [cfg.bias_init + cfg.bias_margin]))


def test_closest_trained_type_is_the_one_whose_adapters_fit_the_new_data(tmp_path):
    model = _trained(lambda: _t5(False), tmp_path)
    with torch.no_grad():  # types 0 and 1 route to adapters that wreck the output; type 2 to silent ones
        for layer in model.mta_layers.values():
            layer.selector.task_bias.copy_(torch.tensor([[5.0, 5.0, 0, 0], [5.0, 5.0, 0, 0], [0, 0, 5.0, 5.0]]))
            for i, expert in enumerate(layer.local_experts):
                expert.up.weight.normal_(0, 3.0 if i < 2 else 0.0)
    kw = _inputs(model, [0] * 4)
    batch = {**kw, "labels": kw["decoder_input_ids"]}
    del batch["decoder_input_ids"]
    assert closest_task_types(model, {"qa": [batch]}, ["classify", "nli", "generate"]) == {"qa": "generate"}


@pytest.mark.parametrize(
    "mta,args,message",
    [
        ({"gate_mode": "learned"}, (["qa"], 1), r"gate_mode 'learned' routes without task types"),
        ({}, (["nli"], 1), r"the new task types must be appended after the trained ones"),
        ({"ep_size": 1}, (["qa"], 1, {"qa": "ner"}), r"warm_start: 'ner' is not a trained task type"),
    ],
)
def test_bad_growth_is_refused_by_name(tmp_path, mta, args, message):
    _trained(lambda: _t5(False), tmp_path, **mta)
    with pytest.raises(ConfigError, match=message):
        grow_saved_model(tmp_path / "trained", *args)


@pytest.mark.slow
def test_launcher_adds_a_task_type_and_leaves_old_tasks_untouched(tmp_path):
    base = tiny_config(tmp_path / "base", steps=20, save_every=20, eval_every=20)
    base["mta"]["route_by"] = "type"  # the paper's routing: a new task *type* gets a bias row
    run = launch(["--deepspeed", str(write_config(tmp_path / "base.json", base))])
    assert run.returncode == 0, run.stderr[-3000:]
    grown = tiny_config(
        tmp_path / "grown", steps=10, save_every=10, eval_every=10, init_from=str(tmp_path / "base" / "export"), add_task_types={"new_adapters": 1}
    )
    grown["mta"]["task_types"] = ["classify", "nli", "generate", "qa"]
    grown["mta"]["route_by"] = "type"
    grown["mta"]["data"]["type_overrides"] = {"answer": "qa"}
    run = launch(["--deepspeed", str(write_config(tmp_path / "grown.json", grown))])
    assert run.returncode == 0, run.stderr[-3000:]
    before = load_file(str(tmp_path / "base" / "export" / "model.safetensors"))
    after = load_file(str(tmp_path / "grown" / "export" / "model.safetensors"))
    assert all(torch.equal(v, after[k][tuple(slice(0, n) for n in v.shape)]) for k, v in before.items())
    changed = {k for k in after if k not in before or after[k].shape != before[k].shape}
    assert changed and all("experts.4." in k or k.endswith(("task_bias", "gate.wg.weight")) for k in changed)
    records = [json.loads(line) for line in (tmp_path / "grown" / "metrics.jsonl").read_text().splitlines()]
    added = next(r for r in records if r["kind"] == "add_task_types")
    assert added["tasks"] == ["answer"] and added["warm_start"]["qa"] in ("classify", "nli", "generate")
    # training batches hold only the new task; old tasks' validation predictions are unchanged
    assert all(set(r["task_loss"]) == {"answer"} for r in records if r["kind"] == "train")
    old = [json.loads(line) for line in (tmp_path / "base" / "predictions" / "step20.jsonl").read_text().splitlines()]
    new = [json.loads(line) for line in (tmp_path / "grown" / "predictions" / "step10.jsonl").read_text().splitlines()]
    assert [r for r in new if r["task"] != "answer"] == [r for r in old if r["task"] != "answer"]
    tasks = json.loads((tmp_path / "grown" / "export" / "tasks.json").read_text())
    assert tasks["tasks"]["answer"] == "qa" and MTAModel.from_pretrained(tmp_path / "grown" / "export")


@pytest.mark.slow
def test_launcher_adds_a_task_to_a_model_that_routes_by_task(tmp_path):
    base = tiny_config(tmp_path / "base", steps=12, save_every=12, eval_every=12)
    base["mta"]["data"]["suite"]["tasks"] = ["fact_entail", "sentiment"]
    run = launch(["--deepspeed", str(write_config(tmp_path / "base.json", base))])
    assert run.returncode == 0, run.stderr[-3000:]
    grown = tiny_config(
        tmp_path / "grown", steps=6, save_every=6, eval_every=6, init_from=str(tmp_path / "base" / "export"), add_task_types={"new_adapters": 1}
    )
    run = launch(["--deepspeed", str(write_config(tmp_path / "grown.json", grown))])
    assert run.returncode == 0, run.stderr[-3000:]
    model = MTAModel.from_pretrained(tmp_path / "grown" / "export")
    assert model.mta_config.tasks == ["fact_entail", "sentiment", "answer"] and model.mta_config.num_experts == 5
    records = [json.loads(line) for line in (tmp_path / "grown" / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["task_loss"]) == {"answer"} for r in records if r["kind"] == "train")
    old = [json.loads(line) for line in (tmp_path / "base" / "predictions" / "step12.jsonl").read_text().splitlines()]
    new = [json.loads(line) for line in (tmp_path / "grown" / "predictions" / "step6.jsonl").read_text().splitlines()]
    key = lambda r: (r["task"], r["target"], r["prediction"])  # noqa: E731
    assert sorted(map(key, (r for r in new if r["task"] != "answer"))) == sorted(map(key, old))  # as before


def test_add_task_config_errors(tmp_path):
    from mta_moe.training.run_config import build_run_config

    assert build_run_config(tiny_config(tmp_path, init_from="x")).train.init_from == "x"  # stage 1 continues it
    cfg = tiny_config(tmp_path, add_task_types={"new_adapters": 1})
    with pytest.raises(ConfigError, match=r"add_task_types: set mta.train.init_from"):
        build_run_config(cfg)
    cfg = tiny_config(tmp_path, add_task_types={"adapters": 1}, init_from="x")
    with pytest.raises(ConfigError, match=r"add_task_types.adapters: unknown key \(did you mean new_adapters\?\)"):
        build_run_config(cfg)
    cfg = tiny_config(tmp_path)
    cfg["mta"]["data"]["type_overrides"] = {"answer": "qa"}
    with pytest.raises(ConfigError, match=r"type_overrides.answer: type 'qa' is not in mta.task_types"):
        build_run_config(cfg)
