"""Per-task merged exports: for each routing key, a stock transformers model whose outputs equal the MTA model's."""

import json
import subprocess
import sys

import pytest
import torch
import transformers as tf
from backbones import SEQ2SEQ, make_backbone, make_inputs, perturb_mta

from mta_moe import ConfigError, MTAConfig, MTAModel
from mta_moe.cli import main as cli_main
from mta_moe.data.tokenizer import train_sentencepiece_tokenizer
from mta_moe.merging import MERGE_FILE, MergeError, export_task, fold_task
from mta_moe.merging.ffn_weights import WIDTH_KEYS

TYPES = ["classify", "nli", "generate"]
# (backbone, layer settings) pairs that fold exactly into the stock class
FOLDABLE = {
    "t5": dict(adapter_activation="relu", adapter_bias=False, inject_layers="all"),
    "t5_gated": dict(expert_kind="ffn", inject_layers="last:1"),
    "bart": dict(adapter_activation="gelu", inject_layers="all"),
    "mbart": dict(adapter_activation="gelu", inject_layers="last:1", inject_stacks="decoder"),
    "gpt2": dict(adapter_activation="gelu_new", inject_layers="last:1"),
    "llama": dict(expert_kind="ffn", inject_layers="all"),
    "qwen2": dict(expert_kind="ffn", inject_layers="last:1"),
    "bert": dict(adapter_activation="gelu", inject_layers="last:1"),
    "roberta": dict(adapter_activation="gelu", inject_layers="all"),
}


def _trained_like(name: str, **settings) -> MTAModel:
    """An MTA model whose adapters, biases and selector have moved away from their initial values."""
    cfg = MTAConfig(**{"num_experts": 4, "k": 2, "adapter_dim": 8, "task_types": TYPES, **settings})
    return perturb_mta(MTAModel(make_backbone(name), cfg), seed=3, scale=0.3)


def _output(model, inputs, **routing):
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs, **routing)[0]


@pytest.mark.parametrize("name", sorted(FOLDABLE))
def test_fold_equals_the_mta_model_for_every_type(name):
    model = _trained_like(name, **FOLDABLE[name])
    base = make_backbone(name)
    inputs = make_inputs(name)
    if name in SEQ2SEQ:
        inputs["decoder_input_ids"] = inputs["labels"]
    batch = inputs["input_ids"].shape[0]
    for type_id, task_type in enumerate(TYPES):
        result = fold_task(model, task_type=task_type)
        plain = result.model
        assert type(plain) is type(model.base_model)
        ids = torch.full((batch,), type_id)
        expected = _output(model, inputs, task_type_ids=ids)
        got = _output(plain, inputs)
        assert (expected - got).abs().max().item() <= 1e-5
        # the adapters matter: the stock backbone alone is far off
        assert (expected - _output(base, inputs)).abs().max().item() > 1e-2
        d_ff = 128 if name == "gpt2" else 64  # GPT-2's FFN is 4 × n_embd
        folded = d_ff + 2 * 8 if model.mta_config.expert_kind == "bottleneck" else 2 * d_ff
        assert {layer.width for layer in result.layers.values()} == {folded}
        for stack, key in WIDTH_KEYS[model.family.name].items():  # a stack without MTA layers keeps its width
            injected = any(k.startswith(stack + ".") for k in result.layers)
            assert getattr(plain.config, key) == (folded if injected else d_ff)
        assert all(len(layer.adapters) == 2 and abs(sum(layer.weights) - 1) < 1e-6 for layer in result.layers.values())


@pytest.mark.parametrize("name", ["t5", "gpt2", "llama"])
def test_folded_model_generates_the_same_tokens(name):
    model = _trained_like(name, **FOLDABLE[name])
    plain = fold_task(model, task_type="nli").model
    inputs = make_inputs(name, batch=3, seq_len=8)
    kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=6, do_sample=False, num_beams=1, pad_token_id=0)
    if name not in SEQ2SEQ:
        kwargs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    expected = model.generate(**kwargs, task_type_ids=torch.tensor([1, 1, 1]))
    with torch.no_grad():
        got = plain.generate(**kwargs)
    assert torch.equal(expected, got)


def test_task_routed_model_folds_per_task_and_names_the_key():
    tasks = ["irony", "sentiment", "topic"]
    model = _trained_like("t5", route_by="task", tasks=tasks, num_experts=3, k=1, **FOLDABLE["t5"])
    inputs = make_inputs("t5")
    inputs["decoder_input_ids"] = inputs.pop("labels")
    chosen = set()
    for task_id, task in enumerate(tasks):
        result = fold_task(model, task=task)
        assert result.route_by == "task" and result.key == task
        chosen.add(tuple(result.layers["encoder.0"].adapters))
        assert all(layer.weights == [1.0] for layer in result.layers.values())  # k 1: the adapter alone
        expected = _output(model, inputs, task_ids=torch.full((4,), task_id))
        assert (expected - _output(result.model, inputs)).abs().max().item() <= 1e-5
    assert len(chosen) > 1  # different tasks really got different adapters
    with pytest.raises(MergeError, match="routes by task .* name a task, not a task type"):
        fold_task(model, task_type="classify")
    with pytest.raises(MergeError, match="'negate' is not one of the model's tasks"):
        fold_task(model, task="negate")


@pytest.mark.parametrize(
    "name, settings, message",
    [
        ("t5", dict(adapter_activation="relu"), "mta.adapter_bias false"),
        ("llama", dict(adapter_activation="silu"), "gated .* use expert_kind 'ffn'"),
        ("gpt2", dict(adapter_activation="relu"), "adapter_activation is 'relu' but the backbone's FFN uses 'gelu_new'"),
        ("bart", dict(adapter_activation="gelu", gate_mode="both"), "gate_mode is 'both': the adapter weights depend"),
    ],
)
def test_no_exact_fold_is_refused_by_name(name, settings, message):
    model = _trained_like(name, **settings)
    with pytest.raises(MergeError, match=message):
        fold_task(model, task_type="classify")


def test_stage2_model_is_refused():
    model = _trained_like("bart", adapter_activation="gelu")
    model.enable_stage2()
    with pytest.raises(MergeError, match="stage-2 layer with shared adapters: their gate network weighs them"):
        fold_task(model, task_type="classify")


def test_bias_free_adapters_have_no_bias_and_start_as_the_base_model():
    model = MTAModel(make_backbone("t5"), MTAConfig(num_experts=2, adapter_dim=4, adapter_bias=False, inject_layers="all")).eval()
    names = [n for n, _ in model.named_parameters() if ".deepspeed_experts." in n]
    assert names and not any(n.endswith(".bias") for n in names)
    inputs = make_inputs("t5")
    with torch.no_grad():
        assert torch.equal(model(**inputs, task_type_ids=torch.tensor([0, 1, 2, 0])).logits, make_backbone("t5")(**inputs).logits)
    with pytest.raises(ConfigError, match="mta.adapter_bias: must be true or false, got 'no'"):
        MTAConfig(adapter_bias="no")


_LOAD_STOCK = r"""
import json, sys, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
model, info = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1], output_loading_info=True)
tok = AutoTokenizer.from_pretrained(sys.argv[1])
enc = tok(["Review: the pacing was great.", "Is it ironic? Sure, great."], return_tensors="pt", padding=True)
dec = torch.tensor([[0, 5, 6], [0, 7, 8]])
with torch.no_grad():
    logits = model(**enc, decoder_input_ids=dec).logits
print(json.dumps({"mta_moe_imported": any(m.startswith("mta_moe") for m in sys.modules),
                  "loading": {k: list(v) for k, v in info.items()}, "ids": enc.input_ids.tolist(),
                  "logits": logits.tolist()}))
"""


def _saved_t5(tmp_path, **settings):
    texts = [f"Review: the pacing was {w}. Is it ironic? Sure, {w}." for w in ("great", "awful", "fine", "slow")] * 50
    tokenizer = train_sentencepiece_tokenizer(texts, tmp_path / "run" / "tokenizer", vocab_size=64)
    backbone = tf.T5ForConditionalGeneration(
        tf.T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="relu",
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    cfg = MTAConfig(num_experts=4, k=2, adapter_dim=8, task_types=TYPES, inject_layers="all", **settings)
    model = MTAModel(backbone, cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in model.mta_layers.values():
            for p in layer.local_experts.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(tmp_path / "run" / "export")
    return model.eval(), tokenizer


def test_export_folder_loads_in_plain_transformers_without_mta_moe(tmp_path):
    model, tokenizer = _saved_t5(tmp_path, adapter_bias=False)
    out = tmp_path / "plain"
    assert cli_main(["export", "--model", str(tmp_path / "run" / "export"), "--type", "nli", "--out", str(out)]) == 0
    record = json.loads((out / MERGE_FILE).read_text())
    assert record["routing_key"] == "nli" and record["max_abs_output_difference"] <= 1e-5
    assert (out / "model.safetensors").is_file() and not (out / "mta_config.json").exists()
    proc = subprocess.run([sys.executable, "-c", _LOAD_STOCK, str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stock = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stock["mta_moe_imported"] is False
    assert all(not v for v in stock["loading"].values()), stock["loading"]  # nothing missing, unexpected, ...
    enc = tokenizer(["Review: the pacing was great.", "Is it ironic? Sure, great."], return_tensors="pt", padding=True)
    assert stock["ids"] == enc.input_ids.tolist()
    with torch.no_grad():
        expected = model(**enc, decoder_input_ids=torch.tensor([[0, 5, 6], [0, 7, 8]]), task_type_ids=torch.tensor([1, 1])).logits
    assert (expected - torch.tensor(stock["logits"])).abs().max().item() <= 1e-5


def test_export_command_all_types_and_refusals(tmp_path, capsys):
    _saved_t5(tmp_path, adapter_bias=False)
    export = str(tmp_path / "run" / "export")
    assert cli_main(["export", "--model", export, "--all", "--out", str(tmp_path / "all")]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(TYPES)
    # into a non-empty folder: refused, nothing changed
    before = sorted(p.name for p in (tmp_path / "all" / "nli").iterdir())
    assert cli_main(["export", "--model", export, "--type", "nli", "--out", str(tmp_path / "all" / "nli")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "all" / "nli").iterdir()) == before
    assert cli_main(["export", "--model", export, "--task", "irony", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: this model routes by type (mta.route_by 'type'): name a type, not a task; its types are ['classify', 'nli', 'generate']"]
    assert not (tmp_path / "x").exists()


def test_export_refuses_t5_adapters_with_biases_and_writes_nothing(tmp_path, capsys):
    _saved_t5(tmp_path)
    code = cli_main(["export", "--model", str(tmp_path / "run" / "export"), "--type", "nli", "--out", str(tmp_path / "plain")])
    assert code == 2
    assert "train with mta.adapter_bias false" in capsys.readouterr().err
    assert not (tmp_path / "plain").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_export_api_without_a_tokenizer_writes_the_model_only(tmp_path):
    model, _ = _saved_t5(tmp_path, adapter_bias=False)
    record = export_task(model, tmp_path / "ok", task_type="generate")
    assert record["layers"]["decoder.1"]["width"] == 64 + 16
    assert not (tmp_path / "ok" / "tokenizer_config.json").exists()  # no tokenizer given: model files only


def test_model_card_lists_tasks_routing_and_how_to_serve():
    from mta_moe.merging import model_card

    model = _trained_like("t5", **FOLDABLE["t5"])
    tasks = {"sentiment": "classify", "fact_entail": "nli", "answer": "generate"}
    profiles = {"sentiment": {"kind": "classification"}, "answer": {"kind": "extraction"}}
    card = model_card(model, tasks, profiles, {"sentiment": 0.9, "answer": 0.25, "macro": 0.5}, step=30)
    lines = card.splitlines()
    assert "| sentiment | classify | classification | 0.900 |" in lines
    assert "| fact_entail | nli |  |  |" in lines and "| **macro** | | | 0.500 |" in lines
    routing = [line for line in lines if line.startswith(("| classify |", "| nli |", "| generate |"))]
    assert len(routing) == 3 and all(line.count("|") == 2 + len(model.mta_layers) for line in routing)
    first = fold_task(model, task_type="nli").layers["encoder.0"]
    assert f"{first.adapters[0]} ({first.weights[0]:.2f})" in routing[1]
    assert "`mta-moe export --model this_directory --type NAME --out DIR`" in card
    learned = model_card(_trained_like("t5", gate_mode="both"), tasks, profiles)
    assert "The gate reads each input" in learned and "No exact per-task stock export: mta.gate_mode is 'both'" in learned
    assert "model = AutoModelForSeq2SeqLM.from_pretrained(this_directory)" in card


def test_cards_carry_hub_metadata_and_per_task_folders_have_one(tmp_path):
    """The MTA card's front matter parses with huggingface_hub (library, tags, base model, datasets, a model-index
    entry per scored task with the kind's metric); each per-task folder gets a card with its task's entry."""
    from huggingface_hub import ModelCard

    from mta_moe.merging.model_card import CardSource, model_card

    model, _ = _saved_t5(tmp_path, adapter_bias=False)
    export = tmp_path / "run" / "export"
    profiles = {"classify": {"kind": "classification"}, "nli": {"kind": "classification"}, "generate": {"kind": "generation"}}
    (export / "tasks.json").write_text(json.dumps({"tasks": {t: t for t in TYPES}, "profiles": profiles}))
    source = CardSource("t5-small", ["nyu-mll/glue"], "own data files, validation split")
    card = model_card(model, {t: t for t in TYPES}, profiles, {"classify": 0.9, "generate": 0.41, "macro": 0.6}, step=30, source=source)
    (export / "README.md").write_text(card)
    data = ModelCard.load(export / "README.md").data
    assert data.library_name == "mta_moe" and "mixture-of-task-adapters" in data.tags and "t5" in data.tags
    assert data.base_model == "t5-small" and data.datasets == ["nyu-mll/glue"]
    scored = {r.task_name: (r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results}
    assert scored == {"classify": ("accuracy", 0.9, "validation"), "generate": ("rougeL", 0.41, "validation")}
    assert cli_main(["export", "--model", str(export), "--all", "--out", str(tmp_path / "all")]) == 0
    for name, expected in (("classify", ("accuracy", 0.9)), ("nli", None)):
        task = ModelCard.load(tmp_path / "all" / name / "README.md")
        assert task.data.library_name == "transformers" and task.data.base_model == "t5-small"
        assert task.data.pipeline_tag == "text2text-generation" and name in task.data.tags
        assert all(r.dataset_name == "own data files, validation split" for r in task.data.eval_results or [])
        results = [(r.metric_type, r.metric_value) for r in task.data.eval_results or []]
        assert results == ([] if expected is None else [expected])
        assert "AutoModelForSeq2SeqLM.from_pretrained(this_directory)" in task.text


def test_a_fold_that_does_not_match_is_refused_and_nothing_written(tmp_path, monkeypatch):
    import mta_moe.merging.export as export_module

    model, _ = _saved_t5(tmp_path, adapter_bias=False)
    real_fold = export_module.fold_task

    def broken_fold(*args, **kwargs):  # a folding bug: one unit's output column off
        result = real_fold(*args, **kwargs)
        with torch.no_grad():
            result.model.encoder.block[0].layer[-1].DenseReluDense.wo.weight[:, -1] += 1.0
        return result

    monkeypatch.setattr(export_module, "fold_task", broken_fold)
    with pytest.raises(MergeError, match=r"the folded model differs from the MTA model by .* nothing was written"):
        export_task(model, tmp_path / "bad", task_type="nli")
    assert not (tmp_path / "bad").exists()


def test_evaluate_scores_a_per_task_folder_as_the_mta_export_scores_its_task(tmp_path, capsys):
    """`mta-moe evaluate` on a per-task stock folder: only the rows of its task type, and the same predictions and
    scores as the MTA export gives those rows."""
    import shutil

    from mta_moe.evaluation.scoring import evaluate_export

    model, tokenizer = _saved_t5(tmp_path, adapter_bias=False)
    export = tmp_path / "run" / "export"
    for f in (tmp_path / "run" / "tokenizer").iterdir():
        shutil.copy(f, export / f.name)
    profiles = {t: {"kind": "classification", "labels": ["great", "awful"]} for t in TYPES}
    (export / "tasks.json").write_text(json.dumps({"task_types": TYPES, "tasks": {t: t for t in TYPES}, "profiles": profiles}))
    rows = [{"input": f"Review: the pacing was {w}.", "target": w, "task": t, "type": t} for t in TYPES for w in ("great", "awful", "fine", "slow")]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    nli_only = tmp_path / "nli.jsonl"
    nli_only.write_text("".join(json.dumps(r) + "\n" for r in rows if r["type"] == "nli"))
    assert cli_main(["export", "--model", str(export), "--type", "nli", "--out", str(tmp_path / "nli")]) == 0
    folded = evaluate_export(tmp_path / "nli", data, max_input_length=32, max_new_tokens=4)
    routed = evaluate_export(export, nli_only, max_input_length=32, max_new_tokens=4)
    assert list(folded["tasks"]) == ["nli"] and folded["predictions"] == routed["predictions"]
    assert folded["tasks"]["nli"]["primary"] == routed["tasks"]["nli"]["primary"]
    capsys.readouterr()
    assert (
        cli_main(["evaluate", "--model", str(tmp_path / "nli"), "--data", str(tmp_path / "nli.jsonl"), "--max-input-length", "32", "--max-new-tokens", "4"])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[1].startswith("nli")
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps(rows[0]) + "\n")  # a classify row only
    assert cli_main(["evaluate", "--model", str(tmp_path / "nli"), "--data", str(none)]) == 2
    assert "no rows of type 'nli', the one" in capsys.readouterr().err
