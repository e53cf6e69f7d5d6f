"""Routing by task (``mta.route_by: task``): one selector bias row per task name, everywhere task-type routing
works (forward, generate with and without cache, save/load, growth, routing statistics)."""

import pytest
import torch
from backbones import make_backbone, make_inputs, perturb_mta

from mta_moe import ConfigError, MTAConfig, MTAModel
from mta_moe.data import DataError, TaskRegistry
from mta_moe.modeling.grow import grow_saved_model

TASK_NAMES = ["answer", "irony", "sentiment", "topic"]
IDS = torch.tensor([0, 2, 1, 3])


def _perturbed(model: MTAModel) -> MTAModel:
    return perturb_mta(model, seed=1, scale=0.2)


@pytest.mark.parametrize("name", ["t5", "gpt2"])
def test_task_routing_equals_type_routing_when_every_task_is_its_own_type(name):
    by_type = MTAModel(make_backbone(name), MTAConfig(num_experts=4, k=2, adapter_dim=8, task_types=TASK_NAMES))
    by_task = MTAModel(
        make_backbone(name), MTAConfig(num_experts=4, k=2, adapter_dim=8, route_by="task", tasks=TASK_NAMES, task_types=["classify", "generate"])
    )
    _perturbed(by_type)
    by_task.load_state_dict(by_type.state_dict())
    by_task.eval()
    inputs = make_inputs(name)
    with torch.no_grad():
        a = by_type(**inputs, task_type_ids=IDS).logits
        b = by_task(**inputs, task_type_ids=torch.zeros(4, dtype=torch.long), task_ids=IDS).logits
    assert torch.equal(a, b)
    for key in by_type.mta_layers:
        assert torch.equal(by_type.mta_layers[key].last_routing.selection.indices, by_task.mta_layers[key].last_routing.selection.indices)
    stats = next(iter(by_task.mta_layers.values())).get_routing_stats()
    assert stats.row_names == TASK_NAMES + ["<no task id>"] and stats.sequences.tolist() == [1, 1, 1, 1, 0]


def test_task_routing_needs_task_ids_and_task_names():
    model = MTAModel(make_backbone("t5"), MTAConfig(num_experts=4, route_by="task", tasks=TASK_NAMES))
    with pytest.raises(ValueError, match=r"^task_ids: this model routes by task"):
        model(**make_inputs("t5"), task_type_ids=IDS)
    with pytest.raises(ValueError, match=r"task_ids: ids must be in \[0, 3\] \(mta.tasks = "):
        model(**make_inputs("t5"), task_ids=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ConfigError, match=r"^mta.tasks: route_by 'task' needs the task names"):
        MTAModel(make_backbone("t5"), MTAConfig(route_by="task"))
    with pytest.raises(ConfigError, match=r"^mta.task_adapter_assignment: unknown task\(s\) \['nli'\]"):
        MTAConfig(num_experts=2, route_by="task", tasks=["a", "b"], task_adapter_assignment={"a": [0], "b": [1], "nli": [0]})
    with pytest.raises(ConfigError, match=r"^mta.route_by: must be one of \['type', 'task'\]"):
        MTAConfig(route_by="name")


def test_task_ids_do_not_outlive_the_call():
    """A direct call of the backbone after an MTA forward has no ids to reuse (no stale routing)."""
    model = MTAModel(make_backbone("t5"), MTAConfig(num_experts=4, route_by="task", tasks=TASK_NAMES)).eval()
    inputs = make_inputs("t5")
    model(**inputs, task_ids=IDS)
    with pytest.raises(ValueError, match="task_ids: required"):
        model.base_model(**inputs)


@pytest.mark.parametrize("name", ["t5", "gpt2"])
def test_generate_and_save_load_with_task_routing(name, tmp_path):
    model = _perturbed(MTAModel(make_backbone(name), MTAConfig(num_experts=4, k=1, adapter_dim=8, route_by="task", tasks=TASK_NAMES)))
    inputs = {k: v for k, v in make_inputs(name).items() if k != "labels"}
    common = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(**inputs, task_ids=IDS, use_cache=True, **common)
    uncached = model.generate(**inputs, task_ids=IDS, use_cache=False, **common)
    assert torch.equal(cached, uncached)
    model.save_pretrained(tmp_path / "m")
    loaded = MTAModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.mta_config.route_by == "task" and loaded.mta_config.tasks == TASK_NAMES
    assert torch.equal(loaded.generate(**inputs, task_ids=IDS, use_cache=True, **common), cached)


def test_growing_a_task_leaves_the_trained_tasks_bit_identical(tmp_path):
    model = _perturbed(MTAModel(make_backbone("t5"), MTAConfig(num_experts=4, k=2, adapter_dim=8, route_by="task", tasks=TASK_NAMES)))
    model.save_pretrained(tmp_path / "m")
    inputs = make_inputs("t5")
    with torch.no_grad():
        before = model(**inputs, task_ids=IDS).logits
    grown, growth = grow_saved_model(tmp_path / "m", ["negate"], new_adapters=1, warm_start={"negate": "topic"})
    grown.eval()
    assert grown.mta_config.tasks == TASK_NAMES + ["negate"] and grown.mta_config.num_experts == 5
    assert growth.old_types == TASK_NAMES and growth.new_experts == [4]
    with torch.no_grad():
        after = grown(**inputs, task_ids=IDS).logits
        new = grown(**inputs, task_ids=torch.full((4,), 4)).logits
    assert torch.equal(before, after)
    assert not torch.allclose(new, after)


def test_registry_follows_the_models_task_order():
    registry = TaskRegistry(["classify", "generate"], {"b": "classify", "a": "generate", "c": "classify"})
    assert registry.names == ["a", "b", "c"] and registry.task_id("c") == 2
    ordered = registry.in_order(["c", "a", "b"])
    assert [ordered.task_id(t) for t in "abc"] == [1, 2, 0] and ordered.type_id("c") == 0
    with pytest.raises(DataError, match=r"^mta.tasks: the model's tasks \['a', 'b'\] are not the data's tasks"):
        registry.in_order(["a", "b"])
