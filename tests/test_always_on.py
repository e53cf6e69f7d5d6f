"""Always-on adapters beside the routed task adapters: exact at initialisation, the layer's formula, a model that
contains the shared model, per-task weights that move, exact per-task folds, save/load, growth and stage 2."""

import pytest
import torch
from backbones import BACKBONES, make_backbone, make_inputs
from tolerances import assert_close_to_scale

from mta_moe import ConfigError, MTAConfig, MTAModel
from mta_moe.merging.fold import fold_task
from mta_moe.modeling.grow import grow_saved_model, new_parameters

TYPES = torch.tensor([0, 2, 1, 0])


def _config(**changes):
    return MTAConfig(**{"num_experts": 3, "k": 1, "adapter_dim": 8, "inject_layers": "all", "always_on_adapters": 1, "adapter_bias": False, **changes})


def _perturbed(model, scale=0.05, seed=1):
    """Every MTA part moved (stands in for training); the backbone's FFN left as it is."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in model.mta_layers.values():
            for name, p in layer.named_parameters():
                if "base_ffn" not in name:
                    p.add_(torch.randn_like(p) * scale)
    return model


@pytest.mark.parametrize("name", [n for n in BACKBONES if n != "t5_gated"])
def test_equals_the_base_model_at_init(name):
    inputs = make_inputs(name)
    reference = make_backbone(name)(**inputs).logits
    model = MTAModel(make_backbone(name), _config(always_on_adapters=2, always_on_dim=4)).eval()
    assert torch.equal(model(**inputs, task_type_ids=TYPES).logits, reference)
    for layer in model.mta_layers.values():
        assert torch.equal(layer.always_on.key_weights(), torch.ones(3, 3))  # every weight starts at 1


def test_layer_computes_ffn_plus_weighted_mixture_plus_weighted_always_on():
    model = _perturbed(MTAModel(make_backbone("t5"), _config(always_on_adapters=2)).eval())
    layer = model.mta_layers["encoder.0"]
    with torch.no_grad():
        layer.always_on.mix_logits.copy_(torch.tensor([[0.5, -1.0, 0.2], [0.0, 0.0, 0.0], [2.0, 0.3, -0.4]]))
        x = torch.randn(4, 6, 32)
        out, _, _ = layer(x, TYPES)
        routing = layer.last_routing.selection
        mixture = torch.stack([routing.weights[b, 0] * layer.local_experts[int(routing.indices[b, 0])](x[b]) for b in range(4)])
        weights = 3 * torch.softmax(layer.always_on.mix_logits[TYPES], dim=-1)
        expected = (
            layer.base_ffn(x)
            + weights[:, :1, None] * mixture
            + sum(weights[:, j + 1, None, None] * adapter(x) for j, adapter in enumerate(layer.always_on.adapters))
        )
    assert_close_to_scale(out, expected)


def test_with_silent_task_adapters_the_model_is_the_shared_model():
    """What makes MTA contain the shared model: task adapters that add nothing leave one adapter every sequence
    uses, which is exactly the shared baseline (one adapter, k 1) with the same weights."""
    model = _perturbed(MTAModel(make_backbone("t5"), _config()).eval())
    shared = MTAModel(make_backbone("t5"), MTAConfig(num_experts=1, k=1, adapter_dim=8, inject_layers="all", adapter_bias=False)).eval()
    with torch.no_grad():
        for key, layer in model.mta_layers.items():
            for expert in layer.local_experts:
                expert.up.weight.zero_()
            layer.always_on.mix_logits.zero_()
            target = shared.mta_layers[key].local_experts[0]
            target.load_state_dict(layer.always_on.adapters[0].state_dict())
    inputs = make_inputs("t5")
    assert_close_to_scale(model(**inputs, task_type_ids=TYPES).logits, shared(**inputs, task_type_ids=TYPES).logits)


def test_mixing_weights_train_per_routing_key():
    model = _perturbed(MTAModel(make_backbone("t5"), _config()))
    model.train()
    out = model(**make_inputs("t5"), task_type_ids=torch.tensor([0, 0, 2, 2]))
    out.logits.pow(2).mean().backward()
    grad = model.mta_layers["decoder.1"].always_on.mix_logits.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0 and torch.equal(grad[1], torch.zeros(2))


def test_each_task_folds_exactly_into_a_stock_model(tmp_path):
    model = _perturbed(MTAModel(make_backbone("t5"), _config(always_on_adapters=2)).eval(), scale=0.2)
    inputs = make_inputs("t5")
    for type_id, name in enumerate(model.mta_config.task_types):
        folded = fold_task(model, task_type=name)
        ids = torch.full((4,), type_id)
        assert_close_to_scale(folded.model(**inputs).logits, model(**inputs, task_type_ids=ids).logits, rtol=1e-5)
        weights = folded.layers["encoder.0"].weights
        mix = model.mta_layers["encoder.0"].always_on.key_weights()[type_id].tolist()
        assert len(weights) == 1 + 2 and weights[1:] == pytest.approx(mix[1:])


def test_save_load_and_growth_keep_the_old_keys(tmp_path):
    model = _perturbed(MTAModel(make_backbone("t5"), _config()).eval())
    model.save_pretrained(tmp_path / "m")
    loaded = MTAModel.from_pretrained(tmp_path / "m").eval()
    inputs = make_inputs("t5")
    assert torch.equal(loaded(**inputs, task_type_ids=TYPES).logits, model(**inputs, task_type_ids=TYPES).logits)
    grown, growth = grow_saved_model(tmp_path / "m", ["qa"], 1, {"qa": "nli"})
    grown.eval()
    assert_close_to_scale(grown(**inputs, task_type_ids=TYPES).logits, model(**inputs, task_type_ids=TYPES).logits)
    for key, layer in grown.mta_layers.items():
        old = model.mta_layers[key].always_on.mix_logits
        assert torch.equal(layer.always_on.mix_logits[:3], old) and torch.equal(layer.always_on.mix_logits[3], old[1])
    _, tables = new_parameters(grown, growth)
    assert sum(t is layer.always_on.mix_logits for t in tables for layer in grown.mta_layers.values()) == len(grown.mta_layers)


def test_stage2_switch_leaves_the_output_unchanged():
    model = _perturbed(MTAModel(make_backbone("t5"), _config()).eval())
    inputs = make_inputs("t5")
    before = model(**inputs, task_type_ids=TYPES).logits
    model.enable_stage2()
    assert_close_to_scale(model(**inputs, task_type_ids=TYPES).logits, before)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"mta.always_on_adapters: must be an integer >= 0"):
        _config(always_on_adapters=-1)
    with pytest.raises(ConfigError, match=r"mta.always_on_dim: must be an integer >= 1"):
        _config(always_on_dim=0)
    with pytest.raises(ConfigError, match=r"mta.always_on_adapters: .* expert_kind 'ffn'"):
        _config(expert_kind="ffn")
