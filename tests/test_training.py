"""Two-stage training through the real launchers: stage-2 freezing, kill-and-resume, 2 ranks, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed import free_port
from safetensors.torch import load_file

from mta_moe import MTAModel
from mta_moe.data import DataConfig, load_task_data, load_tokenizer
from mta_moe.evaluation.scoring import evaluate_rows, load_export
from mta_moe.modeling.layer import component_of

REPO = Path(__file__).resolve().parents[1]
TASKS = ["sentiment", "fact_entail", "answer"]


def tiny_config(out_dir: Path, stage: int = 1, **train) -> dict:
    cfg = json.loads((REPO / "ds_configs" / f"stage{stage}.json").read_text())
    cfg["train_micro_batch_size_per_gpu"] = 4
    mta = cfg["mta"]
    mta.update(num_experts=4, k=2, adapter_dim=8, shared_adapter_dim=8)
    mta["model"] = {
        "backbone": None,
        "tokenizer": "sentencepiece",
        "vocab_size": 200,
        "from_scratch": {
            "model_type": "t5",
            "d_model": 32,
            "d_ff": 64,
            "num_layers": 1,
            "num_decoder_layers": 1,
            "num_heads": 2,
            "d_kv": 16,
            "dropout_rate": 0.0,
        },
    }
    mta["data"] = {"suite": {"seed": 1, "train": 24, "validation": 6, "test": 6, "tasks": TASKS}, "max_input_length": 64, "max_target_length": 12}
    # 30 steps at lr 0.01: the tiny model already generates label words, so comparing predictions means something
    mta["train"].update(
        {
            "steps": 30,
            "lr": 0.01,
            "warmup_steps": 2,
            "log_every": 1,
            "eval_every": 30,
            "save_every": 15,
            "eval_batch_size": 8,
            "max_new_tokens": 8,
            "output_dir": str(out_dir),
            **train,
        }
    )
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg, indent=2))
    return path


def launch(args, nproc: int = 0, timeout: int = 300):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    if nproc:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()), "launchers/train.py", *args]
    else:
        cmd = [sys.executable, "launchers/train.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    cfg = tiny_config(out / "run", baseline_scores={"answer": 1.0}, warn_margin=0.0)  # a baseline it cannot reach
    cfg = write_config(out / "cfg.json", cfg)
    run = launch(["--deepspeed", str(cfg)])
    assert run.returncode == 0, run.stderr[-3000:]
    return out / "run"


def test_stage1_logs_and_exports(stage1):
    records = [json.loads(line) for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 31))
    assert all(set(r["task_loss"]) <= set(TASKS) and r["lr"] > 0 and r["tokens_per_s"] > 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    validation = [r for r in records if r["kind"] == "validation"][-1]
    assert set(validation["scores"]) == {*TASKS, "macro"}
    assert set(validation["metrics"]["sentiment"]) == {"accuracy", "macro_f1", "primary"}
    assert set(validation["metrics"]["answer"]) == {"exact_match", "token_f1", "primary"}
    assert validation["by_type"]["generate"] == validation["scores"]["answer"]
    # routing since the previous record (one step of 4 sequences), per layer and task type
    routing = [r for r in records if r["kind"] == "routing"]
    assert [r["step"] for r in routing] == list(range(1, 31))
    for layer in routing[-1]["layers"].values():
        assert sum(layer["sequences"]) == 4 and sum(map(sum, layer["adapter_counts"])) == 4 * 2  # k = 2
    warnings = [r for r in records if r["kind"] == "warning"]
    assert {(w["task"], w["reason"]) for w in warnings if "task" in w} == {("answer", "below_baseline")}
    assert (stage1 / "checkpoints" / "latest").read_text().strip() == "step30"
    assert list((stage1 / "tensorboard").glob("events.out.tfevents.*"))
    model = MTAModel.from_pretrained(stage1 / "export")
    assert model.stage == 1 and load_tokenizer(stage1 / "export").start_token_id == 3
    card = (stage1 / "export" / "README.md").read_text().splitlines()  # the model card: the final validation scores
    assert f"| sentiment | classify | classification | {validation['scores']['sentiment']:.3f} |" in card
    assert f"| **macro** | | | {validation['scores']['macro']:.3f} |" in card
    assert any(line.startswith("One stock Hugging Face model per task") for line in card)


def test_stage2_trains_only_mta_parameters(stage1, tmp_path):
    cfg = tiny_config(tmp_path / "run", stage=2, init_from=str(stage1 / "export"), steps=6, save_every=6, eval_every=6)
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    before = load_file(str(stage1 / "export" / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    frozen = [k for k in before if component_of(k) == "backbone" or k.endswith("gate.wg.weight")]
    assert len(frozen) > 20 and all(torch.equal(before[k], after[k]) for k in frozen)
    changed = {component_of(k) for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"adapters", "selector"}
    new = {component_of(k) for k in after if k not in before}
    assert new == {"shared_adapters", "gate_network"}
    assert MTAModel.from_pretrained(tmp_path / "run" / "export").stage == 2
    # trainable names what trains: without the adapter and selector patterns, only the stage-2 parts move
    narrow = tiny_config(tmp_path / "narrow", stage=2, init_from=str(stage1 / "export"), steps=3, save_every=3, eval_every=3)
    narrow["mta"]["train"]["trainable"] = [{"pattern": "*shared_adapters*"}, {"pattern": "*gate_network*"}]
    run = launch(["--deepspeed", str(write_config(tmp_path / "narrow.json", narrow))])
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith(
        "error: mta.train.trainable: no trainable adapter (MoE expert) parameter; DeepSpeed's ZeRO stage 2 needs"
    )
    narrow["zero_optimization"]["stage"] = 0  # without ZeRO the experts may all stay frozen
    run = launch(["--deepspeed", str(write_config(tmp_path / "narrow.json", narrow))])
    assert run.returncode == 0, run.stderr[-3000:]
    after = load_file(str(tmp_path / "narrow" / "export" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {component_of(k) for k in after if k not in before} == {"shared_adapters", "gate_network"}


def test_kill_and_resume_reproduces_the_losses(stage1, tmp_path):
    cfg = write_config(tmp_path / "cfg.json", tiny_config(tmp_path / "run"))
    first = launch(["--deepspeed", str(cfg), "--train.stop_at_step", "20"])  # the job's time runs out at step 20
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "run" / "export").exists()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step20"
    second = launch(["--deepspeed", str(cfg), "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert train_losses(tmp_path / "run") == train_losses(stage1)  # bit-identical on CPU, steps 1..30


@pytest.mark.slow
def test_seed_lr_warmup_and_run_length_keys_shape_the_run(tmp_path):
    """Each key changes what the run logs, saves or generates; eval_batch_size changes only how it batches."""
    base = dict(steps=4, log_every=2, eval_every=2, save_every=3, max_new_tokens=3, eval_batch_size=8)
    variants = {"base": {}, "seed": {"seed": 1}, "lr": {"lr": 0.02}, "warmup": {"warmup_steps": 0}, "eval_batch": {"eval_batch_size": 5}}
    records = {}
    for name, change in variants.items():
        cfg = tiny_config(tmp_path / name, **{**base, **change})
        run = launch(["--deepspeed", str(write_config(tmp_path / f"{name}.json", cfg))])
        assert run.returncode == 0, run.stderr[-3000:]
        records[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    def of(name, kind, field):
        return [r[field] for r in records[name] if r["kind"] == kind]

    # steps, log_every, eval_every, save_every, output_dir
    assert json.loads((tmp_path / "base" / "run_config.json").read_text())["mta"]["train"]["output_dir"] == str(tmp_path / "base")
    assert of("base", "train", "step") == [2, 4] and of("base", "validation", "step") == [2, 4]
    assert sorted(p.name for p in (tmp_path / "base" / "checkpoints").iterdir() if p.is_dir()) == ["step3", "step4"]
    # seed: another initialisation; lr and warmup_steps: other learning rates, and so other losses
    assert of("seed", "train", "loss")[0] != of("base", "train", "loss")[0]
    assert of("lr", "train", "lr") == [2 * lr for lr in of("base", "train", "lr")]
    assert of("lr", "train", "loss")[1] != of("base", "train", "loss")[1]
    assert of("warmup", "train", "lr") != of("base", "train", "lr")
    # max_new_tokens caps each generation (3 tokens: at most 3 pieces of text)
    predictions = [json.loads(line)["prediction"] for line in (tmp_path / "base" / "predictions" / "step4.jsonl").read_text().splitlines()]
    assert predictions and all(len(p.split()) <= 3 for p in predictions)
    # eval_batch_size: generation in batches of 5 instead of 8 gives the same texts (right-padded seq2seq)
    assert of("eval_batch", "validation", "scores") == of("base", "validation", "scores")
    assert (tmp_path / "eval_batch" / "predictions" / "step4.jsonl").read_text() == (tmp_path / "base" / "predictions" / "step4.jsonl").read_text()


def test_training_starts_from_a_backbone_directory_with_its_tokenizer(stage1, tmp_path):
    """mta.model.backbone (a directory, as a hub name would be after download) with tokenizer 'backbone': the
    weights are the directory's (a run that trains only the adapters leaves them bit-identical) and so is the
    tokenizer."""
    import transformers

    tokenizer = load_tokenizer(stage1 / "tokenizer")
    torch.manual_seed(3)
    base = transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_ff=64,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
            d_kv=16,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    backbone = tmp_path / "my-t5"
    base.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    cfg = tiny_config(tmp_path / "run", steps=3, save_every=3, eval_every=3, trainable=[{"pattern": "*deepspeed_experts*"}])
    cfg["mta"]["model"] = {"backbone": str(backbone), "tokenizer": "backbone"}
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "run" / "tokenizer").exists()  # nothing trained: the backbone's own tokenizer
    export = MTAModel.from_pretrained(tmp_path / "run" / "export")
    saved = base.state_dict()
    loaded = export.base_model.state_dict()
    inside = {k: k if k in loaded else k.replace("DenseReluDense.", "DenseReluDense.mta.base_ffn.") for k in saved}
    assert all(torch.equal(v, loaded[inside[k]]) for k, v in saved.items())  # (the injected FFNs wrap the originals)
    assert load_tokenizer(tmp_path / "run" / "export")("a good film").input_ids == tokenizer("a good film").input_ids


def test_activation_checkpointing_key_recomputes_and_trains_the_same(stage1, tmp_path):
    cfg = tiny_config(tmp_path / "run", baseline_scores={"answer": 1.0}, warn_margin=0.0, activation_checkpointing=True)
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    engines = [r for r in records if r["kind"] == "engine"]
    assert engines[0]["activation_checkpointed_modules"] >= 2  # the encoder and decoder stacks recompute
    plain = [json.loads(line) for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in plain if r["kind"] == "engine"][0]["activation_checkpointed_modules"] == 0
    losses, reference = train_losses(tmp_path / "run"), train_losses(stage1)
    assert sorted(losses) == sorted(reference) == list(range(1, 31))
    assert [losses[s] for s in range(1, 31)] == pytest.approx([reference[s] for s in range(1, 31)], rel=1e-5)


@pytest.mark.slow
def test_two_ranks_expert_parallel_then_evaluated_at_ep1(tmp_path):
    """Routing by task, adapters split over 2 ranks; the export scores the same in one process."""
    cfg = tiny_config(tmp_path / "run")
    cfg["mta"].update(ep_size=2, route_by="task")
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))], nproc=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("step 30 validation:") == 1  # the library's messages come from rank 0 only
    logged, logged_texts = _last_validation(tmp_path / "run")
    # the consolidated export holds all 4 adapters and scores the same in one process (ep 1)
    export = tmp_path / "run" / "export"
    assert json.loads((export / "mta_config.json").read_text())["mta"]["ep_size"] == 1
    loaded = load_export(export)
    assert len(loaded.model.mta_layers) and all(layer.num_local_experts == 4 for layer in loaded.model.mta_layers.values())
    assert loaded.model.mta_config.tasks == sorted(TASKS)  # filled from the data: one bias row per task
    assert all(layer.selector.task_bias.shape == (3, 4) for layer in loaded.model.mta_layers.values())
    data = load_task_data(DataConfig.from_dict(cfg["mta"]["data"]), cfg["mta"]["task_types"], tmp_path / "run" / "data")
    result = evaluate_rows(loaded, data.splits["validation"], 8, 64, 8)
    scores = {task: m["primary"] for task, m in result["tasks"].items()}
    assert result["predictions"] == logged_texts and {**scores, "macro": result["macro"]} == logged
    # stage 2 on 2 ranks from the ep-2 export
    cfg2 = tiny_config(tmp_path / "run2", stage=2, init_from=str(export), steps=4, save_every=4, eval_every=4)
    cfg2["mta"]["ep_size"] = 2
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg2.json", cfg2))], nproc=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert MTAModel.from_pretrained(tmp_path / "run2" / "export").stage == 2


def _evaluate_cli(export: Path, data: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    out = tmp_path / f"scores_{export.parent.name}.json"
    texts = tmp_path / f"predictions_{export.parent.name}.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            "launchers/evaluate.py",
            "--model",
            str(export),
            "--data",
            str(data),
            "--batch-size",
            "8",
            "--out",
            str(out),  # lengths: from the run's run_config.json
            "--predictions",
            str(texts),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())["scores"], _predictions(texts)


def _predictions(path: Path) -> list[str]:
    return [json.loads(line)["prediction"] for line in path.read_text().splitlines()]


def _last_validation(run_dir: Path) -> tuple[dict, list[str]]:
    """The run's last validation scores and the texts it generated (non-empty even for an untrained model)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "validation"][-1]
    texts = _predictions(run_dir / "predictions" / f"step{last['step']}.jsonl")
    assert len(texts) == 3 * 6 and any(t.strip() for t in texts)
    return last["scores"], texts


@pytest.mark.slow
def test_evaluate_cli_reproduces_validation_scores_for_seq2seq_and_causal(stage1, tmp_path):
    assert _evaluate_cli(stage1 / "export", stage1 / "data" / "suite" / "validation.jsonl", tmp_path) == _last_validation(stage1)
    cfg = tiny_config(tmp_path / "gpt2", steps=80, eval_every=80, save_every=80)  # GPT-2 needs longer to emit words
    cfg["mta"]["model"]["from_scratch"] = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128}
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    losses = train_losses(tmp_path / "gpt2")
    assert losses[80] < losses[1]
    assert _evaluate_cli(tmp_path / "gpt2" / "export", tmp_path / "gpt2" / "data" / "suite" / "validation.jsonl", tmp_path) == _last_validation(
        tmp_path / "gpt2"
    )


def test_per_task_stock_exports_reproduce_the_runs_predictions(stage1, tmp_path):
    """The shipped stage-1 config folds: each task's stock model predicts exactly what the MTA model does."""
    out = tmp_path / "plain_export.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/plain_export.py",
            "--model",
            str(stage1 / "export"),
            "--data",
            str(stage1 / "data" / "suite" / "validation.jsonl"),
            "--out",
            str(out),
            "--work",
            str(tmp_path / "folders"),
            "--repeats",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert sorted(r["key"] for r in result["keys"]) == sorted(TASKS)
    assert result["all_identical"] and all(r["rows"] == 6 for r in result["keys"])
    assert all(r["plain_score"] == r["mta_score"] and r["max_abs_output_difference"] <= 1e-5 for r in result["keys"])
    assert sorted(p.name for p in (tmp_path / "folders").iterdir()) == sorted(TASKS)
