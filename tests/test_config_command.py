"""``mta-moe config validate|show`` and ``--version``: the checks train runs, without training; the resolved config
with every default; unknown keys with the closest known one."""

import json
import subprocess
import sys

from test_training import REPO, tiny_config, write_config

from mta_moe import __version__
from mta_moe.cli import main


def test_validate_and_show(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.json", tiny_config(tmp_path / "run"))
    assert main(["config", "validate", str(cfg)]) == 0
    assert "c.json: ok (stage 1, 30 steps, 4 adapters" in capsys.readouterr().out
    assert main(["config", "show", str(cfg), "--train.steps", "7"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["mta"]["train"]["steps"] == 7 and shown["mta"]["always_on_adapters"] == 0  # defaults filled in
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert main(["config", "validate", str(cfg), "--mta.temprature", "0.5"]) == 2
    assert "error: " in capsys.readouterr().err
    broken = tiny_config(tmp_path / "run")
    broken["mta"]["train"]["stpes"] = 3
    assert main(["config", "validate", str(write_config(tmp_path / "b.json", broken))]) == 2
    assert "mta.train.stpes: unknown key (did you mean steps?)" in capsys.readouterr().err
    stage2 = tiny_config(tmp_path / "run2")
    stage2["mta"]["train"].update(stage=2, init_from=str(tmp_path / "run" / "export"))
    assert main(["config", "validate", str(write_config(tmp_path / "s2.json", stage2))]) == 0
    assert f"(stage 2, 30 steps, the layer of {tmp_path / 'run' / 'export'}, " in capsys.readouterr().out


def test_validate_checks_the_settings_that_name_tasks_against_the_data_and_writes_nothing(tmp_path, capsys):
    """As train does before it generates anything: the task names of the files and the suite's settings; a setting
    naming another task fails with its key; the data files are read, nothing is written."""
    rows = tmp_path / "own.jsonl"
    rows.write_text("".join(json.dumps({"input": f"x {i}", "target": "yes", "type": "classify", "task": "mine"}) + "\n" for i in range(3)))
    cfg = tiny_config(tmp_path / "run")
    cfg["mta"]["data"]["files"] = {"train": [str(rows)]}
    assert main(["config", "validate", str(write_config(tmp_path / "c.json", cfg))]) == 0
    assert "; 4 tasks)" in capsys.readouterr().out  # the suite's three and the file's one
    for key, value, message in [
        ("data.curriculum", '[{"start_step": 0, "tasks": ["mine", "theirs"]}]', "mta.data.curriculum[0].tasks: unknown task 'theirs'"),
        ("data.task_kinds", '{"theirs": "generation"}', "mta.data.task_kinds.theirs: unknown task"),
        ("train.baseline_scores", '{"theirs": 0.5}', "mta.train.baseline_scores.theirs: unknown task"),
    ]:
        assert main(["config", "validate", str(tmp_path / "c.json"), f"--{key}", value]) == 2
        assert message in capsys.readouterr().err, key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "own.jsonl"]  # no run dir, no generated suite


def test_version():
    run = subprocess.run([sys.executable, "-m", "mta_moe.cli", "--version"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == f"mta-moe {__version__}"


def test_config_errors_come_before_torch_and_deepspeed_are_imported(tmp_path):
    """A typo is reported by train, config, compare and affinity before torch, DeepSpeed, datasets or the trainer
    are imported (so at once: ~0.3 s here, against ~10 s for the imports)."""
    bad = tiny_config(tmp_path / "run")
    bad["mta"]["temprature"] = 0.5
    cfg = str(write_config(tmp_path / "bad.json", bad))
    script = f"""
import sys
from mta_moe.cli import main
for argv in (["train", "--deepspeed", {cfg!r}], ["config", "validate", {cfg!r}],
             ["compare", "--config", {cfg!r}, "--out", {str(tmp_path / "cmp")!r}],
             ["affinity", "--config", {cfg!r}, "--out", {str(tmp_path / "aff")!r}]):
    assert main(argv) == 2, argv
heavy = sorted(m for m in ("torch", "deepspeed", "datasets", "mta_moe.training.trainer") if m in sys.modules)
print("heavy:", heavy)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "heavy: []", run.stdout
    assert run.stderr.count("mta.temprature: unknown key (did you mean temperature?)") == 4, run.stderr
    assert not any((tmp_path / name).exists() for name in ("run", "cmp", "aff"))
