"""Gradual unfreezing: the schedule's blocks and switches, and frozen blocks staying bit-identical under
ZeRO until their declared step (weight decay on) while unfrozen ones train."""

import pytest
import torch
from backbones import _t5
from test_training import launch, tiny_config, write_config

from mta_moe import MTAConfig, MTAModel
from mta_moe.config import ConfigError
from mta_moe.modeling.layer import component_of
from mta_moe.training.run_config import TrainConfig
from mta_moe.training.unfreezing import GROUP_PREFIX, UnfreezeSchedule


def _schedule():
    model = MTAModel(_t5(False), MTAConfig(k=2, adapter_dim=8, inject_layers="all"))
    return model, UnfreezeSchedule(model, start_step=3, every=2)


def test_blocks_top_down_without_mta_parameters():
    model, schedule = _schedule()
    assert [u.name for u in schedule.units] == ["decoder.1", "decoder.0", "encoder.1", "encoder.0"]
    mta = {id(p) for n, p in model.named_parameters() if component_of(n) != "backbone"}
    assert mta and not any(id(p) in mta for u in schedule.units for p in u.params)
    # the wrapped FFN of a block belongs to its block
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("base_ffn" in names[id(p)] for p in schedule.units[0].params)


def test_requires_grad_and_weight_decay_switch_at_the_declared_steps():
    model, schedule = _schedule()
    optimizer = torch.optim.AdamW(schedule.param_groups(lr=1e-3, weight_decay=0.1))
    groups = optimizer.param_groups
    block_groups = [g for g in groups if g["name"].startswith(GROUP_PREFIX)]
    assert [g["name"] for g in block_groups] == [GROUP_PREFIX + u.name for u in schedule.units]
    always = [p for g in groups if not g["name"].startswith(GROUP_PREFIX) for p in g["params"]]
    expected = {0: 0, 2: 0, 3: 1, 4: 1, 5: 2, 7: 3, 9: 4, 50: 4}
    for step, n in expected.items():
        newly = schedule.apply(step, optimizer)
        for i, unit in enumerate(schedule.units):
            assert all(p.requires_grad == (i < n) for p in unit.params), (step, unit.name)
            assert block_groups[i]["weight_decay"] == (0.1 if i < n else 0.0)
        assert all(p.requires_grad for p in always)
        assert (step, newly) != (3, []) and (step != 5 or newly == ["decoder.0"])


def test_a_block_restarts_its_adam_state_when_its_turn_comes():
    """Under ZeRO a waiting block is stepped with zero gradients: its moments stay 0 but its step count grows."""
    model, schedule = _schedule()
    optimizer = torch.optim.AdamW(schedule.param_groups(lr=1e-3, weight_decay=0.1))
    schedule.apply(0, optimizer)
    for step in range(3):  # steps 0-2 as ZeRO runs them: waiting parameters get zero gradients
        schedule.apply(step, optimizer)
        for p in model.parameters():
            p.grad = torch.ones_like(p) if p.requires_grad else torch.zeros_like(p)
        optimizer.step()
    top = schedule.units[0].params[0]
    before = top.detach().clone()
    assert float(optimizer.state[top]["step"]) == 3 and torch.equal(top, before)
    assert schedule.apply(3, optimizer) == ["decoder.1"]  # its turn: the Adam state restarts
    assert float(optimizer.state[top]["step"]) == 0 and torch.equal(top, before)
    optimizer.state[top]["step"].fill_(9)
    resumed = UnfreezeSchedule(model, start_step=3, every=2)  # a run resumed at step 4
    assert resumed.apply(4, optimizer) == ["decoder.1"]
    assert float(optimizer.state[top]["step"]) == 9  # it unfroze before the checkpoint: state kept


@pytest.mark.parametrize(
    "value,stage,trainable,message",
    [
        ({"every": 0}, 1, None, r"mta.train.unfreeze.every: must be an integer >= 1"),
        ({"start_step": 2}, 1, None, r"mta.train.unfreeze.every: required, must be an integer >= 1"),
        ([5], 1, None, r"mta.train.unfreeze: must be null or \{\"start_step\": int, \"every\": int\}, got \[5\]"),
        ({"every": 5}, 2, None, r"stage 2 keeps the backbone frozen"),
        ({"every": 5}, 1, [{"pattern": "*"}], r"cannot be combined with mta.train.trainable"),
    ],
)
def test_bad_schedules_name_the_key(value, stage, trainable, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(unfreeze=value, stage=stage, trainable=trainable, init_from="export")


def _module_state(run, step):
    state = torch.load(run / "checkpoints" / f"step{step}" / "mp_rank_00_model_states.pt", weights_only=False)
    return state["module"]


@pytest.mark.parametrize("zero", [0, 2])
def test_frozen_blocks_are_bit_identical_until_their_step(tmp_path, zero):
    cfg = tiny_config(tmp_path / "run", steps=15, save_every=5, eval_every=15, weight_decay=0.1, unfreeze={"start_step": 5, "every": 5})
    cfg["zero_optimization"]["stage"] = zero
    cfg["mta"]["model"]["from_scratch"].update(num_layers=2, num_decoder_layers=2)
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 0, run.stderr[-3000:]
    states = {s: _module_state(tmp_path / "run", s) for s in (5, 10, 15)}

    def block(state, stack, i):
        prefix = f"model.base_model.{stack}.block.{i}."
        return {k: v for k, v in state.items() if k.startswith(prefix) and component_of(k[6:]) == "backbone"}

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    # steps 0-4: no block; 5-9: decoder.1; 10-14: + decoder.0; 15: + encoder.1 (after the last checkpoint)
    assert not same(block(states[5], "decoder", 1), block(states[10], "decoder", 1))
    assert same(block(states[5], "decoder", 0), block(states[10], "decoder", 0))
    assert not same(block(states[10], "decoder", 0), block(states[15], "decoder", 0))
    for i in (0, 1):
        assert same(block(states[5], "encoder", i), block(states[15], "encoder", i))
    records = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"unfreeze"' in line]
    assert [r.split('"step": ')[1].split(",")[0] for r in records] == ["5", "10"]
