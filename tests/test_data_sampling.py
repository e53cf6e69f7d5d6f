"""Mixture sampling: rates match their formulas and the draws match the rates; resume; curriculum; dynamic."""

import collections
import json

import numpy as np
import pytest

from mta_moe.config import ConfigError
from mta_moe.data import Curriculum, MixtureSampler, SamplingConfig, rank_slice
from mta_moe.typed_config import expected

SIZES = {"big": 1000, "mid": 100, "small": 10}


def draw_counts(sampler, batches=400, batch_size=50, step=0):
    counts = collections.Counter(t for _ in range(batches) for t, _ in sampler.next_batch(batch_size, step))
    total = sum(counts.values())
    return {t: counts[t] / total for t in sampler.tasks}


@pytest.mark.parametrize(
    "config,expected",
    [
        (SamplingConfig(strategy="proportional"), [1000 / 1110, 100 / 1110, 10 / 1110]),
        (SamplingConfig(strategy="temperature", temperature=2.0), list(np.sqrt([1000, 100, 10]) / np.sqrt([1000, 100, 10]).sum())),
        (SamplingConfig(strategy="uniform"), [1 / 3] * 3),
        (SamplingConfig(strategy="proportional", caps={"big": 100}), [100 / 210, 100 / 210, 10 / 210]),
        (SamplingConfig(strategy="proportional", default_cap=50), [50 / 110, 50 / 110, 10 / 110]),
    ],
)
def test_rates_follow_their_formula_and_draws_follow_the_rates(config, expected):
    sampler = MixtureSampler(SIZES, config, seed=0)
    assert list(sampler.rates().values()) == pytest.approx(expected, abs=1e-12)
    observed = draw_counts(sampler)
    assert list(observed.values()) == pytest.approx(expected, abs=0.01)  # 20,000 draws: 3 sigma < 0.01


def test_each_epoch_visits_every_example_once():
    sampler = MixtureSampler({"only": 37}, seed=5)
    first = [i for _ in range(37) for _, i in sampler.next_batch(1)]
    second = [i for _ in range(37) for _, i in sampler.next_batch(1)]
    assert sorted(first) == sorted(second) == list(range(37))
    assert first != second  # reshuffled each epoch
    assert sampler.epochs() == {"only": 2.0}


def test_resume_reproduces_the_batches():
    config = SamplingConfig(strategy="dynamic", temperature=1.5)
    sampler = MixtureSampler(SIZES, config, seed=11)
    for step in range(30):
        sampler.next_batch(16, step)
    sampler.update_dynamic({"big": 1.0, "mid": 2.0, "small": 3.0})
    saved = json.loads(json.dumps(sampler.state_dict()))  # what a checkpoint stores
    expected = [sampler.next_batch(16, step) for step in range(30, 90)]
    resumed = MixtureSampler(SIZES, config, seed=11)
    resumed.load_state_dict(saved)
    assert [resumed.next_batch(16, step) for step in range(30, 90)] == expected
    with pytest.raises(ValueError, match="sampler state is for tasks"):
        MixtureSampler({"big": 1000}, config).load_state_dict(saved)


def test_dynamic_rates_favour_tasks_that_lag():
    sampler = MixtureSampler({"a": 100, "b": 100}, SamplingConfig(strategy="dynamic", min_rate=0.2), seed=0)
    assert sampler.rates() == {"a": 0.5, "b": 0.5}
    sampler.update_dynamic({"a": 2.0, "b": 2.0})  # first losses: the reference
    assert sampler.rates() == pytest.approx({"a": 0.5, "b": 0.5})
    rates = sampler.update_dynamic({"a": 0.5, "b": 1.5})  # a fell to 25 %, b to 75 % of its start
    assert rates == pytest.approx({"a": 0.25, "b": 0.75})
    rates = sampler.update_dynamic({"a": 0.0, "b": 1.0})  # the floor: min_rate of the uniform rate
    assert rates["a"] == pytest.approx(0.1 / 1.1) and rates["a"] + rates["b"] == pytest.approx(1.0)
    metric = MixtureSampler({"a": 100, "b": 100}, SamplingConfig(strategy="dynamic", dynamic_signal="metric"))
    assert metric.update_dynamic({"a": 0.9, "b": 0.6}) == pytest.approx({"a": 0.1 / 0.5, "b": 0.4 / 0.5})
    with pytest.raises(ValueError, match="needs strategy 'dynamic'"):
        MixtureSampler({"a": 1}).update_dynamic({"a": 1.0})


def test_curriculum_phases_switch_tasks_and_weights():
    curriculum = Curriculum.from_list(
        [
            {"start_step": 0, "tasks": ["big", "mid"]},
            {"start_step": 100, "weights": {"small": 4.0}},
        ],
        list(SIZES),
    )
    sampler = MixtureSampler(SIZES, SamplingConfig(strategy="uniform"), seed=0, curriculum=curriculum)
    assert sampler.rates(99) == pytest.approx({"big": 0.5, "mid": 0.5, "small": 0.0})
    assert {t for _ in range(50) for t, _ in sampler.next_batch(20, step=99)} == {"big", "mid"}
    assert sampler.rates(100) == pytest.approx({"big": 1 / 6, "mid": 1 / 6, "small": 4 / 6})
    assert draw_counts(sampler, step=100)["small"] == pytest.approx(4 / 6, abs=0.015)


@pytest.mark.parametrize(
    "raw,message",
    [
        ([{"start_step": 5}], r"mta.data.curriculum\[0\].start_step: the first phase must start at step 0"),
        ([{"start_step": 0}, {"start_step": 0}], r"curriculum\[1\].start_step: must be larger than the previous"),
        ([{"start_step": 0, "tasks": ["poetry"]}], r"curriculum\[0\].tasks: unknown task 'poetry'"),
        ([{"start_step": 0, "weights": {"big": -1}}], r"curriculum\[0\].weights.big: must be a number >= 0"),
        ([{"start_step": 0, "when": 3}], r"curriculum\[0\].when: unknown key"),
        ([], r"mta.data.curriculum: must be a non-empty list"),
    ],
)
def test_curriculum_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        Curriculum.from_list(raw, list(SIZES))


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"strategy": "annealed"}, r"mta.data.sampling.strategy: must be one of"),
        ({"temperature": 0}, r"mta.data.sampling.temperature: must be a number > 0"),
        ({"caps": {"big": 0}}, r"mta.data.sampling.caps.big: must be an integer >= 1"),
        ({"tau": 2}, r"mta.data.sampling.tau: unknown key"),
        ({"dynamic_signal": "accuracy"}, r"mta.data.sampling.dynamic_signal: must be one of"),
        # typed and strict: no coercion of booleans or strings into numbers
        ({"temperature": True}, r"mta.data.sampling.temperature: must be a number > 0, got True"),
        ({"default_cap": "4"}, r"mta.data.sampling.default_cap: must be an integer >= 1 or null, got '4'"),
        ({"caps": {"big": 2.5}}, r"mta.data.sampling.caps.big: must be an integer >= 1, got 2.5"),
        ({"caps": ["big"]}, r"mta.data.sampling.caps: must be an object \{task: cap\}, got \['big'\]"),
        ({"min_rate": 1.5}, r"mta.data.sampling.min_rate: must be a number in \[0, 1\], got 1.5"),
    ],
)
def test_sampling_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig.from_dict(raw)


def test_sampling_fields_carry_their_description_and_what_they_expect():
    """The typed section: every field has a description and an expectation (what the docs and errors say)."""
    fields = SamplingConfig.__pydantic_fields__
    assert set(fields) == {"strategy", "temperature", "caps", "default_cap", "dynamic_signal", "dynamic_alpha", "min_rate"}
    for name, info in fields.items():
        assert info.description and expected(info), name
    assert SamplingConfig.from_dict({"strategy": "uniform", "caps": {"a": 3}}) == SamplingConfig(strategy="uniform", caps={"a": 3})


def test_caps_must_name_known_tasks_and_rank_slices():
    with pytest.raises(ConfigError, match=r"mta.data.sampling.caps.poetry: unknown task; tasks in the data"):
        MixtureSampler(SIZES, SamplingConfig(caps={"poetry": 3}))
    batch = list(range(8))
    assert rank_slice(batch, 0, 2) + rank_slice(batch, 1, 2) == batch
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        rank_slice(batch, 0, 3)
