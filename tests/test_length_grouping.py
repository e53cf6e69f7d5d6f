"""Length-grouped batches (mta.data.group_by_length): the same examples as the mixture draws, re-cut by length;
less padding; the last window ends with the run; a checkpoint taken inside a window resumes exactly."""

import collections
import json

import pytest

from mta_moe.config import ConfigError
from mta_moe.data import Curriculum, DataConfig, LengthGroupedSampler, MixtureSampler, SamplingConfig, make_sampler

SIZES = {"long": 300, "short": 200, "mid": 100}
BASE = {"long": 60, "short": 8, "mid": 30}


def length(task: str, index: int) -> tuple[int, int]:
    """A fixed pseudo-random length per example, around its task's typical length."""
    return BASE[task] + (index * 7919) % 17, (index * 31) % 5


def mixture(seed: int = 3) -> MixtureSampler:
    curriculum = Curriculum.from_list([{"start_step": 0, "tasks": ["long", "mid"]}, {"start_step": 6, "tasks": None}], list(SIZES))
    return MixtureSampler(SIZES, SamplingConfig(strategy="uniform"), seed=seed, curriculum=curriculum)


def padded(batches) -> int:
    return sum(len(batch) * max(length(*pick)[0] for pick in batch) for batch in batches)


def test_whole_windows_hold_the_mixtures_examples_cut_by_length():
    plain = _draws(mixture(), 24)
    grouped = LengthGroupedSampler(mixture(), length, window=8)
    batches = [grouped.next_batch(16, step) for step in range(24)]
    for first in range(0, 24, 8):
        window = batches[first : first + 8]
        assert collections.Counter(p for b in window for p in b) == collections.Counter(p for b in plain[first : first + 8] for p in b)
        # the batches partition the window's length order: one batch's longest <= the next one's shortest
        ordered = sorted(window, key=lambda b: min(length(*p) for p in b))
        assert all(max(length(*p) for p in a) <= min(length(*p) for p in b) for a, b in zip(ordered, ordered[1:]))
        assert [len(b) for b in window] == [16] * 8
    assert padded(batches) < 0.8 * padded(plain)
    # the curriculum is applied per drawn step: the first window (steps 0-5 before "short" joins) has 6 x 16
    # draws of long/mid and 2 x 16 that may include short, exactly as the plain mixture
    assert sum(p[0] == "short" for b in batches[:8] for p in b) == sum(p[0] == "short" for b in plain[:8] for p in b)


def _draws(sampler, steps: int, batch: int = 16) -> list:
    return [sampler.next_batch(batch, step) for step in range(steps)]


def test_the_last_window_ends_with_the_run_so_the_run_draws_what_the_mixture_draws():
    grouped = LengthGroupedSampler(mixture(), length, window=4, total_steps=10)
    batches = _draws(grouped, 10)
    plain = _draws(mixture(), 10)
    assert collections.Counter(p for b in batches for p in b) == collections.Counter(p for b in plain for p in b)
    assert grouped.state_dict()["pending"] == []  # the window of steps 8-9 had two batches, both handed out


def test_window_one_keeps_every_batchs_examples():
    grouped = _draws(LengthGroupedSampler(mixture(), length, window=1), 5)
    assert [sorted(b) for b in grouped] == [sorted(b) for b in _draws(mixture(), 5)]


def test_a_checkpoint_inside_a_window_resumes_the_same_batches():
    grouped = LengthGroupedSampler(mixture(), length, window=8)
    _draws(grouped, 11)  # 3 batches of the second window handed out, 5 pending
    saved = json.loads(json.dumps(grouped.state_dict()))
    assert len(saved["pending"]) == 5
    expected = [grouped.next_batch(16, step) for step in range(11, 30)]
    resumed = LengthGroupedSampler(mixture(), length, window=8)
    resumed.load_state_dict(saved)
    assert [resumed.next_batch(16, step) for step in range(11, 30)] == expected
    with pytest.raises(ValueError, match=r"saved with mta.data.group_by_length = 8; this run has 0"):
        mixture().load_state_dict(saved)
    with pytest.raises(ValueError, match=r"saved with mta.data.group_by_length = 8; this run has 4"):
        LengthGroupedSampler(mixture(), length, window=4).load_state_dict(saved)
    with pytest.raises(ValueError, match=r"saved with mta.data.group_by_length = 0; this run has 8"):
        LengthGroupedSampler(mixture(), length, window=8).load_state_dict(mixture().state_dict())


def test_tokens_per_batch_is_the_windows_mean_of_scored_target_tokens():
    grouped = LengthGroupedSampler(mixture(), length, window=4)
    assert grouped.tokens_per_batch is None
    batches = _draws(grouped, 4)
    expected = sum(length(*p)[1] for b in batches for p in b) / 4
    assert grouped.tokens_per_batch == expected
    # the batches' own counts differ (short-target batches), the divisor of the window does not
    assert len({sum(length(*p)[1] for p in b) for b in batches}) > 1
    resumed = LengthGroupedSampler(mixture(), length, window=4)
    resumed.load_state_dict(json.loads(json.dumps(grouped.state_dict())))
    assert resumed.tokens_per_batch == expected


def test_the_window_order_is_shuffled_not_sorted():
    batches = _draws(LengthGroupedSampler(mixture(seed=1), length, window=8), 32)
    firsts = [min(length(*p) for p in b) for b in batches]
    windows = [firsts[i : i + 8] for i in range(0, 32, 8)]
    assert any(w != sorted(w) for w in windows)  # unshuffled, every window would run short to long


def test_a_batch_size_change_inside_a_window_is_refused():
    grouped = LengthGroupedSampler(mixture(), length, window=4)
    grouped.next_batch(16, 0)
    with pytest.raises(ValueError, match="drawn with batches of 16, now 8 are asked for"):
        grouped.next_batch(8, 1)


def test_the_data_key_is_validated_and_reaches_the_sampler():
    for bad in (-1, 2.5, "8", True):
        with pytest.raises(ConfigError, match=r"^mta.data.group_by_length: must be an integer >= 0"):
            DataConfig.from_dict({"group_by_length": bad})
    config = DataConfig.from_dict({"group_by_length": 6, "sampling": {"strategy": "uniform"}})
    sampler = make_sampler(config, SIZES, length, total_steps=20)
    assert isinstance(sampler, LengthGroupedSampler) and (sampler.window, sampler.total_steps) == (6, 20)
    assert isinstance(make_sampler(DataConfig.from_dict({}), SIZES), MixtureSampler)
    with pytest.raises(ValueError, match="group_by_length: the sampler needs the examples' lengths"):
        make_sampler(config, SIZES)


def test_the_trainer_divides_each_micro_batch_by_the_windows_share_with_the_token_reduction_only():
    from types import SimpleNamespace

    from mta_moe.training.trainer import token_normalizer

    grouped = LengthGroupedSampler(mixture(), length, window=4)
    _draws(grouped, 1)

    def normalizer(sampler, reduction, world, accum):
        fake = SimpleNamespace(sampler=sampler, world=world, cfg=SimpleNamespace(train=SimpleNamespace(loss_reduction=reduction)))
        return token_normalizer(fake, accum)

    assert normalizer(grouped, "token", 2, 3) == grouped.tokens_per_batch / 6
    assert normalizer(grouped, "sequence", 2, 3) is None
    assert normalizer(mixture(), "token", 1, 1) is None  # mixed batches: each batch's own count
