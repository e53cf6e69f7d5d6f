"""Misspelt top-level DeepSpeed keys are refused by name (DeepSpeed itself ignores them), against a list that
this test recomputes from the installed DeepSpeed, and nested DeepSpeed errors come back as one line."""

import importlib
import os

import pytest
from test_training import tiny_config

from mta_moe.config import ConfigError
from mta_moe.deepspeed_keys import KNOWN_TOP_LEVEL
from mta_moe.training.run_config import build_run_config

CONSTANT_MODULES = [
    "deepspeed.runtime.constants",
    "deepspeed.profiling.constants",
    "deepspeed.runtime.activation_checkpointing.config",
    "deepspeed.autotuning.constants",
    "deepspeed.runtime.data_pipeline.constants",
    "deepspeed.runtime.swap_tensor.constants",
    "deepspeed.runtime.zero.config",
    "deepspeed.comm.constants",
    "deepspeed.runtime.compiler",
]


def _deepspeed_keys() -> set[str]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.config import DeepSpeedConfig

    class Recorder(dict):  # the keys DeepSpeedConfig looks up
        seen: set = set()

        def get(self, key, *default):
            Recorder.seen.add(key)
            return super().get(key, *default)

        def __getitem__(self, key):
            Recorder.seen.add(key)
            return super().__getitem__(key)

        def __contains__(self, key):
            Recorder.seen.add(key)
            return super().__contains__(key)

    DeepSpeedConfig(Recorder({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}))
    names = set(Recorder.seen)
    for module in CONSTANT_MODULES:
        for key, value in vars(importlib.import_module(module)).items():
            if key.isupper() and isinstance(value, str) and value.replace("_", "").isalnum() and value.islower():
                names.add(value)
    return names


def test_the_list_is_the_installed_deepspeeds():
    assert KNOWN_TOP_LEVEL == _deepspeed_keys()


@pytest.mark.parametrize(
    "key,hint",
    [
        ("gradient_clipingg", "did you mean gradient_clipping?"),
        ("gradient_accumulation_stepz", "did you mean gradient_accumulation_steps"),
        ("epochs", "Our own keys go under mta."),
    ],
)
def test_a_misspelt_top_level_key_is_refused_by_name(tmp_path, key, hint):
    cfg = tiny_config(tmp_path)
    cfg[key] = 2
    with pytest.raises(ConfigError, match=f": {key}: unknown DeepSpeed key .*{hint}"):
        build_run_config(cfg)
    del cfg[key]
    build_run_config({**cfg, "wall_clock_breakdown": False, "tensorboard": {"enabled": False}})  # real keys pass
