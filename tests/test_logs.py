"""The library's messages go through `logging` from rank 0 only; DeepSpeed's monitor sections receive the
training records (the same values as metrics.jsonl) or are refused by name."""

import csv
import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
from test_training import REPO, tiny_config, train_losses, write_config

from mta_moe.config import ConfigError
from mta_moe.logs import configure_logging, get_logger
from mta_moe.training.run_config import build_run_config


@pytest.fixture
def cli_logging():
    logger = logging.getLogger("mta_moe")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    yield configure_logging("INFO")
    logger.handlers, logger.level, logger.propagate = saved


def test_rank_zero_prints_information_other_ranks_only_errors(cli_logging, capsys, monkeypatch):
    log = get_logger("mta_moe.training.trainer")
    monkeypatch.setenv("RANK", "0")
    log.info("step 5 validation: macro 0.5")
    log.warning("sentiment fell")
    out, err = capsys.readouterr()
    assert out == "step 5 validation: macro 0.5\n" and err == "warning: sentiment fell\n"
    monkeypatch.setenv("RANK", "1")
    log.info("step 5 validation: macro 0.5")
    log.warning("sentiment fell")
    log.error("rank lost")
    out, err = capsys.readouterr()
    assert out == "" and err == "error: [rank 1] rank lost\n"
    configure_logging("WARNING")  # a second call changes the level, adds no second handler
    assert sum(type(h).__name__ == "_TqdmHandler" for h in logging.getLogger("mta_moe").handlers) == 1
    monkeypatch.setenv("RANK", "0")
    log.info("hidden")
    assert capsys.readouterr().out == ""


def test_a_bad_log_level_is_one_error_line():
    run = subprocess.run(
        [sys.executable, "-m", "mta_moe.cli", "check-data", "x.jsonl"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MTA_MOE_LOG_LEVEL": "loud"},
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "error: MTA_MOE_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got 'loud'"


@pytest.mark.parametrize(
    "section,message",
    [
        ({"csv_monitor": "yes"}, "csv_monitor: expected an object"),
        ({"tensorboard": {"enabled": "true"}}, "tensorboard.enabled: expected true or false"),
        pytest.param(
            {"wandb": {"enabled": True}},
            "wandb.enabled: true needs the wandb package",
            marks=pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb installed"),
        ),
        pytest.param(
            {"comet": {"enabled": True}},
            "comet.enabled: true needs the comet_ml package",
            marks=pytest.mark.skipif(importlib.util.find_spec("comet_ml") is not None, reason="comet installed"),
        ),
    ],
)
def test_monitor_sections_are_checked(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        build_run_config({**tiny_config(tmp_path / "run"), **section}, "cfg.json")


def test_deepspeed_monitors_get_the_training_records(tmp_path):
    """csv_monitor without an output_path writes under the run's monitor/; tensorboard where it is told;
    MTA_MOE_LOG_LEVEL=WARNING silences the progress lines but not the records."""
    cfg = tiny_config(tmp_path / "run", steps=6, save_every=6, eval_every=6)
    cfg["csv_monitor"] = {"enabled": True, "job_name": "tiny"}
    cfg["tensorboard"] = {"enabled": True, "output_path": str(tmp_path / "tb") + "/", "job_name": "tiny"}
    run = subprocess.run(
        [sys.executable, "launchers/train.py", "--deepspeed", str(write_config(tmp_path / "c.json", cfg))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DS_ACCELERATOR": "cpu", "MTA_MOE_LOG_LEVEL": "WARNING"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 6 validation:" not in run.stdout and "engine:" not in run.stdout
    assert "final validation:" in run.stdout  # the command's own result line is not a log message
    folder = tmp_path / "run" / "monitor" / "tiny"
    with (folder / "train_loss.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["step", "loss"]
    assert {int(step): float(value) for step, value in rows[1:]} == train_losses(tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    macro = [r["scores"]["macro"] for r in records if r["kind"] == "validation"]
    with (folder / "validation_scores_macro.csv").open() as handle:
        assert [float(v) for _, v in list(csv.reader(handle))[1:]] == macro
    assert (folder / "train_task_loss_sentiment.csv").is_file()
    assert any((tmp_path / "tb" / "tiny").iterdir())  # DeepSpeed's TensorBoard monitor wrote its event file
