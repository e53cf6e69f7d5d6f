"""A run that starts from an export: every layer key it sets takes effect or stops the run with the key named."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_training import launch, tiny_config, write_config

from mta_moe import ConfigError, MTAConfig, MTAModel
from mta_moe.training.stages import APPLY_AT_RESTART, STAGE2_PARTS, restart_config

SAVED = MTAConfig(num_experts=4, k=2, adapter_dim=8, shared_adapter_dim=8, temperature=0.1)


def test_stage2_parts_apply_to_a_stage1_export_and_are_fixed_in_a_stage2_one():
    wanted = SAVED.replace(num_shared_adapters=2, shared_adapter_dim=4, stage2_form="official", temperature=0.5)
    keys = {"num_shared_adapters", "shared_adapter_dim", "stage2_form", "temperature"}
    out = restart_config(SAVED, 1, wanted, keys, "ex")
    assert (out.num_shared_adapters, out.shared_adapter_dim, out.stage2_form, out.temperature) == (2, 4, "official", 0.5)
    assert out.adapter_dim == 8  # not set here: the export's
    with pytest.raises(
        ConfigError,
        match=r"^mta.num_shared_adapters: 2 is set here but the export at ex is already "
        r"a stage-2 model",
    ):
        restart_config(SAVED, 2, wanted, keys, "ex")
    assert restart_config(SAVED, 2, wanted, {"temperature"}, "ex").temperature == 0.5  # acts in every forward


@pytest.mark.parametrize(
    "key,value",
    [
        ("num_experts", 6),
        ("k", 1),
        ("adapter_dim", 16),
        ("expert_kind", "ffn"),
        ("route_by", "task"),
        ("inject_layers", "all"),
        ("bias_margin", 0.5),
        ("task_types", ["a", "b", "c"]),
    ],
)
def test_keys_the_export_fixes_are_refused_by_name(key, value):
    changes = {key: value}
    if key == "route_by":
        changes["tasks"] = ["x"]
    wanted = SAVED.replace(**changes)
    with pytest.raises(ConfigError, match=rf"^mta.{key}: .* is set here but the export at ex was trained with"):
        restart_config(SAVED, 1, wanted, {key}, "ex")
    assert restart_config(SAVED, 1, SAVED, {key}, "ex") == SAVED  # the same value is fine


def test_every_layer_key_is_classified():
    """A key added to MTAConfig must say whether a restarted run applies it (or it is fixed by the export)."""
    fixed = {
        "num_experts",
        "k",
        "expert_kind",
        "adapter_dim",
        "adapter_activation",
        "adapter_bias",
        "task_types",
        "route_by",
        "tasks",
        "task_adapter_assignment",
        "bias_init",
        "bias_margin",
        "selector_init_std",
        "inject_layers",
        "inject_stacks",
        "always_on_adapters",
        "always_on_dim",
        "task_heads",
        "pooling",
    }
    assert set(MTAConfig().to_dict()) == fixed | set(APPLY_AT_RESTART) | set(STAGE2_PARTS)


@pytest.mark.slow
def test_stage2_settings_take_effect_in_the_run(tmp_path):
    stage1 = tiny_config(tmp_path / "s1", steps=6, save_every=6, eval_every=6)
    assert launch(["--deepspeed", str(write_config(tmp_path / "c1.json", stage1))]).returncode == 0
    export = tmp_path / "s1" / "export"
    cfg = tiny_config(tmp_path / "s2", stage=2, init_from=str(export), steps=3, save_every=3, eval_every=3)
    for key in ("num_experts", "k", "adapter_dim"):
        del cfg["mta"][key]  # stage 2 takes them from the export
    cfg["mta"].update(num_shared_adapters=2, shared_adapter_dim=4, stage2_form="official")
    run = launch(["--deepspeed", str(write_config(tmp_path / "c2.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads((tmp_path / "s2" / "export" / "mta_config.json").read_text())["mta"]
    assert (saved["num_shared_adapters"], saved["shared_adapter_dim"], saved["stage2_form"]) == (2, 4, "official")
    weights = load_file(str(tmp_path / "s2" / "export" / "model.safetensors"))
    downs = [v for k, v in weights.items() if ".shared_adapters." in k and k.endswith("down.weight")]
    assert len(downs) == 2 * 2 and all(v.shape == (4, 32) for v in downs)  # 2 layers x 2 adapters, r = 4
    model = MTAModel.from_pretrained(tmp_path / "s2" / "export")
    assert model.mta_config.stage2_form == "official" and model.stage == 2
    cfg["mta"]["adapter_dim"] = 16  # fixed by the stage-1 export: refused before any step
    run = launch(["--deepspeed", str(write_config(tmp_path / "c3.json", cfg)), "--train.output_dir", str(tmp_path / "s3")])
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith(
        f"error: mta.adapter_dim: 16 is set here but the export at {export} was trained with 8"
    )
    del cfg["mta"]["adapter_dim"]
    cfg["mta"]["data"]["type_overrides"] = {"answer": "nli"}  # would route answer by another type's row
    run = launch(["--deepspeed", str(write_config(tmp_path / "c4.json", cfg)), "--train.output_dir", str(tmp_path / "s4")])
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1] == (
        f"error: mta.data: task 'answer' has type 'nli' in this run's data but the export at {export} was trained "
        "with it as 'generate'; use the same mta.data.type_overrides as that run"
    )


def test_official_stage2_form_lets_the_gate_weigh_the_task_mixture_against_shared_experts():
    from backbones import make_backbone

    torch.manual_seed(0)
    model = MTAModel(make_backbone("t5"), MTAConfig(k=2, adapter_dim=8, stage2_form="official")).eval()
    layer = next(iter(model.mta_layers.values()))
    with torch.no_grad():
        for p in layer.local_experts.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.enable_stage2()
    x = torch.randn(3, 5, 32)
    ids = torch.tensor([0, 1, 2])
    with torch.no_grad():
        out, _, _ = layer(x, ids)
        g = layer.last_routing.mix_weights
        layer.stage = 1
        mixture, _, _ = layer(x, ids)
        base = layer.base_ffn(x)
        shared = base + layer.shared_adapters[0](x)
    expected = g[:, :1, None] * mixture + g[:, 1:2, None] * shared
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, mixture, atol=1e-4)  # unlike the residual form, the switch moves the output
    with pytest.raises(ConfigError, match=r"^mta.stage2_form: 'official' .* needs expert_kind 'bottleneck'"):
        MTAConfig(expert_kind="ffn", stage2_form="official")


@pytest.mark.slow
def test_dynamic_sampling_moves_the_rates_and_resumes_exactly(tmp_path):
    """Also with length-grouped batches in windows of 3 steps: the stop at step 8 falls inside a window, so the
    resumed run must take its remaining batches and its token divisor from the checkpoint."""

    def config(out):
        cfg = tiny_config(out, steps=12, eval_every=4, save_every=4, log_every=1)
        cfg["mta"]["data"]["sampling"] = {"strategy": "dynamic", "dynamic_signal": "loss", "dynamic_alpha": 2.0}
        cfg["mta"]["data"]["group_by_length"] = 3
        return write_config(tmp_path / f"{out.name}.json", cfg)

    whole = launch(["--deepspeed", str(config(tmp_path / "whole"))])
    assert whole.returncode == 0, whole.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    sampling = [r for r in records if r["kind"] == "sampling"]
    assert [r["step"] for r in sampling] == [4, 8, 12]
    first = sampling[0]
    assert set(first["signal"]) == set(first["rates"]) == {"answer", "fact_entail", "sentiment"}
    # the first validation fixes each task's reference loss (rates stay uniform); later ones move them
    assert max(sampling[1]["rates"].values()) - min(sampling[1]["rates"].values()) > 0.01
    assert sum(sampling[1]["rates"].values()) == pytest.approx(1.0)
    cut = config(tmp_path / "cut")
    assert launch(["--deepspeed", str(cut), "--train.stop_at_step", "8"]).returncode == 0
    resumed = launch(["--deepspeed", str(cut), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    assert {r["step"]: r["loss"] for r in again if r["kind"] == "train"} == losses  # bit-identical
    assert [r["rates"] for r in again if r["kind"] == "sampling" and r["step"] == 12] == [sampling[-1]["rates"]]


@pytest.mark.slow
def test_a_deepspeed_scheduler_section_sets_the_learning_rate(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=6, eval_every=6, save_every=6, log_every=1)
    del cfg["mta"]["train"]["warmup_steps"]
    cfg["scheduler"] = {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 0.01, "warmup_num_steps": 4, "warmup_type": "linear"}}
    run = launch(["--deepspeed", str(write_config(tmp_path / "c.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    # WarmupLR, linear: min + (max - min) * i / 4 for the i-th update (DeepSpeed's own formula), then max
    assert lrs == pytest.approx([0.0, 0.0025, 0.005, 0.0075, 0.01, 0.01])


def test_a_scheduler_section_and_the_trainers_warmup_are_not_both_accepted(tmp_path):
    from mta_moe.training.run_config import build_run_config

    cfg = tiny_config(tmp_path / "run")
    cfg["scheduler"] = {"type": "WarmupLR", "params": {"warmup_num_steps": 4}}
    with pytest.raises(ConfigError, match=r"mta.train.warmup_steps: the DeepSpeed \"scheduler\" section sets"):
        build_run_config(cfg)
    del cfg["mta"]["train"]["warmup_steps"]
    assert build_run_config(cfg).ds["scheduler"]["type"] == "WarmupLR"


def test_a_diverging_run_stops_at_the_first_non_finite_step(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=30, lr=1.0e4, warmup_steps=0, log_every=1)
    cfg["gradient_clipping"] = 0.0
    run = launch(["--deepspeed", str(write_config(tmp_path / "c.json", cfg))])
    assert run.returncode == 3, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step ") and "is not finite" not in last and "on a batch of tasks [" in last
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    diverged = next(r for r in records if r["kind"] == "diverged")
    assert all(r["step"] < diverged["step"] for r in records if r["kind"] == "train")
    assert not (tmp_path / "run" / "export").exists()


@pytest.mark.slow
def test_the_divergence_check_between_logged_steps_names_the_same_first_step(tmp_path):
    """Losses stay on the device between logged steps; the first non-finite step is still the one named, and
    no record or file holds anything from it or after it."""
    found = {}
    for log_every in (1, 7):
        out = tmp_path / f"log{log_every}"
        cfg = tiny_config(out, steps=30, lr=1.0e4, warmup_steps=0, log_every=log_every, eval_every=30, save_every=30)
        cfg["gradient_clipping"] = 0.0
        run = launch(["--deepspeed", str(write_config(tmp_path / f"c{log_every}.json", cfg))])
        assert run.returncode == 3, run.stderr[-2000:]
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        diverged = next(r for r in records if r["kind"] == "diverged")
        assert all(r["step"] < diverged["step"] for r in records if r["kind"] in ("train", "validation"))
        assert not (out / "export").exists() and not (out / "checkpoints" / "latest").exists()
        found[log_every] = (diverged["step"], run.stderr.strip().splitlines()[-1])
    assert found[1][0] == found[7][0] and found[1][0] % 7 != 0  # named between two logged steps
    assert found[1][1] == found[7][1]  # the same message: step, loss, gradient norm, tasks
