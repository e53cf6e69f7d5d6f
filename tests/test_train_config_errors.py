"""A wrong training config is refused before anything runs, naming the key: unknown keys, values outside their
choices, DeepSpeed settings the MoE layer cannot run, overrides, and the launcher's one-line errors."""

import pytest
from test_training import launch, tiny_config, write_config

from mta_moe.config import ConfigError
from mta_moe.training.run_config import build_run_config, load_run_config


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: c["mta"].update(kk=1), "mta.kk: unknown key"),
        (lambda c: c["mta"]["train"].update(epochs=1), "mta.train.epochs: unknown key"),
        (lambda c: c["zero_optimization"].update(stage=3), "zero_optimization.stage: 3 is refused by DeepSpeed for MoE"),
        (lambda c: c["mta"]["train"].update(stage=2, init_from=None), "mta.train.init_from: stage 2 starts from"),
        (lambda c: c["mta"]["model"].update(backbone="t5-small"), "mta.model: set exactly one of backbone"),
        (lambda c: c.update(optimizer={"type": "Adam"}), "optimizer: leave it out"),
        (lambda c: c["mta"]["train"].update(loss_reduction="median"), "mta.train.loss_reduction: must be one of"),
        (lambda c: c["mta"]["train"].update(task_weights={"answer": -1}), "mta.train.task_weights.answer: must be a"),
        (lambda c: c["mta"]["train"].update(warn_margin="x"), "mta.train.warn_margin: must be a number"),
        (lambda c: c["mta"]["data"].update(task_kinds={"answer": "qa"}), "mta.data.task_kinds.answer: must be one of"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, change, message):
    cfg = tiny_config(tmp_path)
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        build_run_config(cfg)


def test_overrides(tmp_path):
    path = write_config(tmp_path / "cfg.json", tiny_config(tmp_path))
    cfg = load_run_config(path, ["--mta.k", "3", "--train.steps=9", "--data.sampling", '{"strategy": "uniform"}', "--train_micro_batch_size_per_gpu", "2"])
    assert (cfg.mta.k, cfg.train.steps, cfg.data.sampling.strategy, cfg.ds["train_micro_batch_size_per_gpu"]) == (3, 9, "uniform", 2)
    with pytest.raises(ConfigError, match=r"override --trian_steps: unknown DeepSpeed key"):
        load_run_config(path, ["--trian_steps", "3"])
    with pytest.raises(ConfigError, match=r"mta.train.stepz: unknown key"):
        load_run_config(path, ["--train.stepz", "3"])


@pytest.mark.slow
def test_launcher_errors_are_one_line_and_non_zero(tmp_path):
    cfg = tiny_config(tmp_path / "run", stage=2, init_from=str(tmp_path / "missing"))
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg.json", cfg))])
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: mta.train.init_from: {tmp_path / 'missing'} is not a stage-1 export (no mta_config.json); run stage 1 first or point to its export/ directory"
    )
    cfg = tiny_config(tmp_path / "fresh")
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg1.json", cfg)), "--resume"])
    assert run.returncode == 2 and "error: --resume: no checkpoint to resume from" in run.stderr
    cfg = tiny_config(tmp_path / "run3", stage=2, init_from=str(tmp_path / "missing"), trainable=[{"pattern": "*adapterz*"}])
    assert build_run_config(cfg).train.trainable == [{"pattern": "*adapterz*"}]
    # task names are checked against the data once it is loaded
    cfg = tiny_config(tmp_path / "run4", task_weights={"zzz": 2.0})
    run = launch(["--deepspeed", str(write_config(tmp_path / "cfg4.json", cfg))])
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith(
        "error: mta.train.task_weights.zzz: unknown task; tasks in the data: ['answer', 'fact_entail', 'sentiment']"
    )
