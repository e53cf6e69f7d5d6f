"""The README's "Train on your own data" commands, run exactly as printed, on a small generated file set: `init`
writes the configs, `train` trains stage 1 and writes its export, `export --all` writes one stock model per task,
and each stock model predicts on its task's test rows exactly what the MTA export predicts."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("polarity", "copy", "flip")


def readme_own_data_commands() -> list[str]:
    """The command lines of the first code block under the README's own-data heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "README: no code block under 'Train on your own data'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _rows(n: int, offset: int):
    out = []
    for i in range(offset, offset + n):
        words = f"tok{i % 7} tok{(i * 3) % 5} item{i % 11}"
        label = "yes" if i % 2 else "no"
        out += [
            {"input": f"polarity: {words}", "target": label, "task": "polarity", "type": "classify"},
            {"input": f"copy: {words}", "target": words, "task": "copy", "type": "generate"},
            {"input": f"flip: {words}", "target": "no" if label == "yes" else "yes", "task": "flip", "type": "classify"},
        ]
    return out


def _mta_moe() -> list[str]:
    script = Path(sys.executable).parent / "mta-moe"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mta_moe.cli"]


@pytest.mark.slow
def test_readme_own_data_commands_train_and_export(tmp_path):
    commands = readme_own_data_commands()
    assert [c.split()[:2] for c in commands] == [["mta-moe", "init"], ["mta-moe", "train"], ["mta-moe", "export"]]
    for split, n, offset in (("train", 40, 0), ("validation", 8, 100), ("test", 8, 200)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n, offset)))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    for command in commands:
        argv = _mta_moe() + shlex.split(command)[1:]
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"{command}\n{run.stderr[-3000:]}"

    per_task = tmp_path / "runs" / "mine" / "per_task"
    assert sorted(p.name for p in per_task.iterdir() if p.is_dir()) == sorted(TASKS)
    mta_scores = tmp_path / "mta.json"
    _evaluate(tmp_path, env, tmp_path / "runs" / "mine" / "stage1" / "export", mta_scores, "mta.jsonl")
    mta_predictions = _predictions(tmp_path / "mta.jsonl")
    for task in TASKS:
        folder = per_task / task
        assert json.loads((folder / "config.json").read_text())["model_type"] == "t5"
        _evaluate(tmp_path, env, folder, tmp_path / f"{task}.json", f"{task}.jsonl")
        stock = _predictions(tmp_path / f"{task}.jsonl")
        assert len(stock) == 8 and stock == {k: v for k, v in mta_predictions.items() if k[0] == task}, task


def _evaluate(cwd: Path, env: dict, model: Path, out: Path, predictions: str) -> None:
    argv = _mta_moe() + ["evaluate", "--model", str(model), "--data", "test.jsonl", "--out", str(out), "--predictions", predictions, "--device", "cpu"]
    run = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _predictions(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["task"], r["input"]): r["prediction"] for r in rows}
