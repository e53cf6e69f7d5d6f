"""MTA injected into real transformers architectures (tiny random configs): identity, routing, generate, save/load."""

import json

import pytest
import torch
import transformers as tf
from backbones import BACKBONES, make_backbone, make_inputs
from tolerances import assert_close_to_scale

from mta_moe import ConfigError, MTAConfig, MTAModel, parameter_counts

TASKS = torch.tensor([0, 1, 2, 1])


def _perturb(model: MTAModel, std: float = 0.2) -> None:
    """Give adapters and selector non-trivial values so routing visibly changes outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.mta_layers.values():
            for p in layer.local_experts.parameters():
                p.add_(torch.randn_like(p) * std)
            if layer.shared_adapters is not None:
                for p in layer.shared_adapters.parameters():
                    p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("kind", ["bottleneck", "ffn"])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_injected_model_equals_base_at_init(name, kind):
    base = make_backbone(name)
    inputs = make_inputs(name)
    with torch.no_grad():
        ref = base(**inputs).logits
    model = MTAModel(base, MTAConfig(expert_kind=kind, k=2, adapter_dim=8)).eval()
    with torch.no_grad():
        out = model(**inputs, task_type_ids=TASKS).logits
    assert (out - ref).abs().max().item() <= 1e-5
    expected = {"encoder.1", "decoder.1"} & {f"{s}.1" for s in model.family.stacks}
    assert set(model.mta_layers) == expected  # default: the last block of each stack


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_training_step_with_frozen_backbone_changes_only_mta(name):
    model = MTAModel(make_backbone(name), MTAConfig(k=2, adapter_dim=8)).train()
    model.enable_stage2()
    model.freeze_all_but_mta()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**make_inputs(name), task_type_ids=TASKS)
    out.loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        if not p.requires_grad:
            assert not moved, f"frozen parameter changed: {n}"
        elif n.endswith((".up.weight", ".up.bias")):
            assert moved, f"adapter up-projection did not train: {n}"  # every adapter is used by some task
    counts = parameter_counts(model)
    assert counts["backbone"]["trainable"] == 0 and counts["shared_adapters"]["trainable"] > 0
    layer = next(iter(model.mta_layers.values()))
    assert counts["selector"]["trainable"] == layer.selector.task_bias.numel() * len(model.mta_layers)
    assert not layer.selector.wg.weight.requires_grad  # 'task' mode never uses W
    assert counts["all"]["trainable"] == sum(counts[c]["trainable"] for c in counts if c != "all")


@pytest.mark.parametrize("name", ["t5", "gpt2", "bert"])
def test_each_sample_routes_by_its_own_task_in_a_mixed_batch(name):
    model = MTAModel(make_backbone(name), MTAConfig(k=2, adapter_dim=8)).eval()
    _perturb(model)
    inputs = make_inputs(name)
    inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])  # rows comparable one by one
    with torch.no_grad():
        batch = model(**inputs, task_type_ids=TASKS).logits
        for i in range(4):
            one = model(**{k: v[i : i + 1] for k, v in inputs.items()}, task_type_ids=TASKS[i : i + 1]).logits
            assert torch.allclose(batch[i : i + 1], one, atol=1e-5), f"sample {i}"
        same = model(**inputs, task_type_ids=torch.zeros(4, dtype=torch.long)).logits
    assert not torch.allclose(batch[1], same[1], atol=1e-4), "task type changes the output"
    layer = next(iter(model.mta_layers.values()))
    assert layer.last_routing.selection.route_ids.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("name", ["t5", "gpt2", "qwen2", "bart"])
def test_generate_with_and_without_cache_gives_identical_tokens(name):
    # a mean representation + learned term: recomputing routing as the sequence grows would change it
    cfg = MTAConfig(k=2, adapter_dim=8, gate_mode="both", selector_init_std=0.5, sequence_repr="mean")
    model = MTAModel(make_backbone(name), cfg).eval()
    _perturb(model, std=0.5)
    with torch.no_grad():  # a strong task signal next to the learned term
        for layer in model.mta_layers.values():
            layer.selector.task_bias.normal_(0.0, 1.0)
    inputs = make_inputs(name)
    inputs.pop("labels")
    if name not in ("t5", "bart"):  # decoder-only: row 0 is left-padded, as for generation
        inputs["attention_mask"] = inputs["attention_mask"].roll(3, dims=1)
    common = dict(max_new_tokens=8, do_sample=False, pad_token_id=model.config.pad_token_id or 0, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(**inputs, task_type_ids=TASKS, use_cache=True, **common)
    uncached = model.generate(**inputs, task_type_ids=TASKS, use_cache=False, **common)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(cached.scores, uncached.scores))
    other = model.generate(**inputs, task_type_ids=torch.tensor([2, 2, 0, 0]), use_cache=True, **common)
    assert not torch.allclose(cached.scores[0], other.scores[0], atol=1e-4), "task type changes the scores"
    common = dict(max_new_tokens=8, do_sample=False, pad_token_id=model.config.pad_token_id or 0)
    beams = model.generate(**inputs, task_type_ids=TASKS, num_beams=2, use_cache=True, **common)
    beams_nc = model.generate(**inputs, task_type_ids=TASKS, num_beams=2, use_cache=False, **common)
    assert torch.equal(beams, beams_nc)


@pytest.mark.parametrize("name,stage", [("t5", 2), ("gpt2", 1), ("bert", 2), ("llama", 1)])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, name, stage):
    model = MTAModel(make_backbone(name), MTAConfig(k=2, adapter_dim=8, expert_kind="ffn")).eval()
    if stage == 2:
        model.enable_stage2()
    _perturb(model)
    inputs = make_inputs(name)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "backbone_config.json",
        "config.json",
        "model.safetensors",
        "mta_config.json",
        "mta_moe_auto.py",
    ]
    loaded = MTAModel.from_pretrained(tmp_path / "saved").eval()
    assert loaded.stage == stage
    with torch.no_grad():
        a = model(**inputs, task_type_ids=TASKS)
        b = loaded(**inputs, task_type_ids=TASKS)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    # no stock class mistakes the folder for a plain backbone (it would load random weights with a warning)
    with pytest.raises(ValueError, match="mta_moe"):
        tf.AutoModel.from_pretrained(tmp_path / "saved")


def test_exports_of_format_1_still_load(tmp_path):
    """Format 1 kept the backbone's config as config.json."""
    model = _perturb_and_save(tmp_path)
    saved = tmp_path / "saved"
    (saved / "backbone_config.json").replace(saved / "config.json")
    meta = json.loads((saved / "mta_config.json").read_text())
    (saved / "mta_config.json").write_text(json.dumps({**meta, "format_version": 1}))
    inputs = make_inputs("t5")
    with torch.no_grad():
        assert torch.equal(MTAModel.from_pretrained(saved).eval()(**inputs, task_type_ids=TASKS).logits, model(**inputs, task_type_ids=TASKS).logits)


def _perturb_and_save(tmp_path):
    model = MTAModel(make_backbone("t5"), MTAConfig(k=2, adapter_dim=8)).eval()
    _perturb(model)
    model.save_pretrained(tmp_path / "saved")
    return model


def test_errors_are_clear(tmp_path):
    gptj = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match=r"model_type 'gpt_neox' is not supported; supported model types: \["):
        MTAModel(gptj, MTAConfig())
    with pytest.raises(ConfigError, match=r"mta.inject_stacks: 'encoder' is not a stack of gpt2 models"):
        MTAModel(make_backbone("gpt2"), MTAConfig(inject_stacks="encoder"))
    with pytest.raises(ConfigError, match=r"mta.inject_layers: block 5 is out of range for the decoder"):
        MTAModel(make_backbone("gpt2"), MTAConfig(inject_layers=[5]))
    with pytest.raises(ConfigError, match=r"mta.inject_layers: must be 'all', 'last:N'"):
        MTAConfig(inject_layers="first")
    model = MTAModel(make_backbone("gpt2"), MTAConfig())
    inputs = make_inputs("gpt2")
    with pytest.raises(ValueError, match="task_type_ids: required when mta.gate_mode is 'task'"):
        model(**inputs)
    with pytest.raises(ValueError, match=r"task_type_ids: ids must be in \[0, 2\]"):
        model(**inputs, task_type_ids=torch.tensor([0, 1, 2, 3]))
    learned = MTAModel(make_backbone("gpt2"), MTAConfig(gate_mode="learned"))
    assert learned(**inputs).loss.isfinite()  # a learned-only gate needs no task ids
    with pytest.raises(FileNotFoundError, match=r"nowhere/mta_config.json: missing|nowhere/config.json: missing"):
        MTAModel.from_pretrained(tmp_path / "nowhere")


def test_layer_choice_all_and_explicit():
    model = MTAModel(make_backbone("t5"), MTAConfig(inject_layers="all", inject_stacks="decoder"))
    assert set(model.mta_layers) == {"decoder.0", "decoder.1"}
    model = MTAModel(make_backbone("bart"), MTAConfig(inject_layers=[0, -1]))
    assert set(model.mta_layers) == {"encoder.0", "encoder.1", "decoder.0", "decoder.1"}


@pytest.mark.distributed
def test_saved_model_loads_with_expert_parallelism(tmp_path):
    from distributed import run_workers

    model = MTAModel(make_backbone("t5"), MTAConfig(num_experts=4, k=2, adapter_dim=8)).eval()
    _perturb(model)
    inputs = make_inputs("t5")
    with torch.no_grad():
        ref = model(**inputs, task_type_ids=TASKS).logits
    model.save_pretrained(tmp_path / "saved")
    torch.save({"inputs": inputs, "tasks": TASKS}, tmp_path / "batch.pt")
    (tmp_path / "out").mkdir()
    results = run_workers("load_ep_worker.py", [str(tmp_path / "saved"), str(tmp_path / "batch.pt")], nproc=2, out_dir=tmp_path / "out")
    assert [r["experts"] for r in results] == [[0, 1], [2, 3]] and results[0]["local"] == 2
    for r in results:
        assert (torch.tensor(r["logits"]) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["t5", "gpt2"])
def test_gradient_checkpointing_recomputes_with_the_calls_task_ids(name):
    """Checkpointed blocks are recomputed in backward, after the call's ids were cleared: same loss, same gradients,
    routing counted once."""

    def run(checkpointing: bool):
        model = MTAModel(make_backbone(name), MTAConfig(num_experts=4, k=2, adapter_dim=8, inject_layers="all", load_balance_coef=0.1))
        torch.manual_seed(5)
        with torch.no_grad():
            for layer in model.mta_layers.values():
                for p in layer.local_experts.parameters():
                    p.add_(torch.randn_like(p) * 0.3)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        torch.manual_seed(0)  # the same dropout masks in both runs
        loss = model(**make_inputs(name), task_type_ids=torch.tensor([0, 2, 1, 0])).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        counts = sum(int(layer.get_routing_stats().sequences.sum()) for layer in model.mta_layers.values())
        return loss.detach(), grads, counts

    plain_loss, plain_grads, plain_counts = run(False)
    ckpt_loss, ckpt_grads, ckpt_counts = run(True)
    assert torch.allclose(plain_loss, ckpt_loss, rtol=1e-6, atol=0)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 20
    for n in plain_grads:  # recomputation may take other kernels: equal to fp32 rounding of each tensor's scale
        assert_close_to_scale(ckpt_grads[n], plain_grads[n])
    assert ckpt_counts == plain_counts == 4 * len(MTAModel(make_backbone(name), MTAConfig(inject_layers="all")).mta_layers)


def test_reentrant_checkpointing_is_refused():
    model = MTAModel(make_backbone("t5"), MTAConfig())
    with pytest.raises(ValueError, match="use_reentrant=True cannot restore the task ids"):
        model.gradient_checkpointing_enable({"use_reentrant": True})
