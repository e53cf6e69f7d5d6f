"""Adapter-only files: the MTA weights alone, loaded on top of the backbone they were trained with, and only that."""

import pytest
import torch
from backbones import make_backbone, make_inputs
from safetensors.torch import load_file

from mta_moe import MTAConfig, MTAModel, load_adapters, save_adapters
from mta_moe.cli import main as cli_main
from mta_moe.modeling.adapter_files import ADAPTER_WEIGHTS_FILE
from mta_moe.modeling.layer import component_of


def _adapted(backbone_dir, stage2=False) -> MTAModel:
    """An MTA model on the saved backbone whose MTA parts (only) have moved, as after training with it frozen."""
    model = MTAModel(
        type(make_backbone("gpt2")).from_pretrained(backbone_dir),
        MTAConfig(num_experts=4, k=2, adapter_dim=8, adapter_activation="gelu_new", inject_layers="all"),
    )
    if stage2:
        model.enable_stage2()
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".deepspeed_moe." in name or ".shared_adapters." in name or ".gate_network." in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.fixture()
def backbone_dir(tmp_path):
    make_backbone("gpt2").save_pretrained(tmp_path / "backbone")
    return tmp_path / "backbone"


@pytest.mark.parametrize("stage2", [False, True])
def test_adapters_reload_on_their_backbone_exactly(backbone_dir, tmp_path, stage2):
    model = _adapted(backbone_dir, stage2)
    save_adapters(model, tmp_path / "adapters", str(backbone_dir))
    saved = set(load_file(str(tmp_path / "adapters" / ADAPTER_WEIGHTS_FILE)))
    assert saved == {k for k in model.state_dict() if component_of(k) != "backbone"}  # no backbone tensor
    assert {component_of(k) for k in saved} == ({"adapters", "selector", "shared_adapters", "gate_network"} if stage2 else {"adapters", "selector"})
    loaded = load_adapters(tmp_path / "adapters")
    assert loaded.stage == (2 if stage2 else 1)
    inputs = make_inputs("gpt2")
    ids = torch.tensor([0, 2, 1, 0])
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, task_type_ids=ids).logits, model(**inputs, task_type_ids=ids).logits)


def test_adapters_refuse_a_different_backbone(backbone_dir, tmp_path):
    save_adapters(_adapted(backbone_dir), tmp_path / "adapters", str(backbone_dir))
    other = make_backbone("gpt2")
    with torch.no_grad():
        other.transformer.h[0].attn.c_attn.weight[0, 0] += 1e-3
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"its weights are not the backbone the adapters in .* were saved with"):
        load_adapters(tmp_path / "adapters", backbone=str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match=r"mta_adapters.json: missing; not an adapter-only directory"):
        load_adapters(tmp_path / "other")


def test_save_adapters_command_checks_the_export_really_has_that_backbone(backbone_dir, tmp_path, capsys):
    model = _adapted(backbone_dir)
    model.save_pretrained(tmp_path / "frozen_backbone")
    out = tmp_path / "adapters"
    assert cli_main(["save-adapters", "--model", str(tmp_path / "frozen_backbone"), "--backbone", str(backbone_dir), "--out", str(out)]) == 0
    assert torch.equal(load_adapters(out).mta_layers["decoder.1"].selector.task_bias, model.mta_layers["decoder.1"].selector.task_bias)
    with torch.no_grad():  # a stage 1 that trained the backbone
        model.base_model.lm_head.weight.mul_(1.01)
    model.save_pretrained(tmp_path / "trained_backbone")
    assert cli_main(["save-adapters", "--model", str(tmp_path / "trained_backbone"), "--backbone", str(backbone_dir), "--out", str(tmp_path / "refused")]) == 2
    assert "its backbone weights are not" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
