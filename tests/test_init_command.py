"""`mta-moe init`: configs for the user's own files, derived from the rows (tasks, types, one adapter per task,
budget and lengths), written both or neither, refused over existing files; bad rows named by file:line."""

import json
from pathlib import Path

import pytest

from mta_moe.cli import main
from mta_moe.training.init_command import EPOCHS, EPOCHS_PRETRAINED, MIN_STEPS, shipped_configs
from mta_moe.training.run_config import build_run_config

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "ds_configs"


def _write(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _rows(n: int, words: int = 5):
    text = " ".join(["word"] * words)
    out = []
    for i in range(n):
        out.append({"input": f"polarity: {text} {i}", "target": "yes" if i % 2 else "no", "task": "polarity", "type": "classify"})
        out.append({"input": f"copy: {text} {i}", "target": f"{text} {i}", "task": "copy", "type": "generate"})
        out.append({"input": f"flip: {text} {i}", "target": "no" if i % 2 else "yes", "task": "flip", "type": "classify"})
    return out


@pytest.fixture
def files(tmp_path):
    return {split: _write(tmp_path / f"{split}.jsonl", _rows(n)) for split, n in (("train", 800), ("validation", 20), ("test", 20))}


def _init(files, out, *extra):
    return main(["init", "--train", files["train"], "--validation", files["validation"], "--test", files["test"], "--out", str(out), *extra])


def test_configs_follow_the_data_and_validate(files, tmp_path, capsys):
    out = tmp_path / "cfg"
    assert _init(files, out) == 0
    s1 = json.loads((out / "stage1.json").read_text())
    s2 = json.loads((out / "stage2.json").read_text())
    mta = s1["mta"]
    assert mta["tasks"] == ["polarity", "copy", "flip"] and mta["num_experts"] == 3 and mta["route_by"] == "task"
    assert mta["task_types"] == ["classify", "generate"]
    assert mta["data"]["suite"] is None and mta["data"]["curriculum"] is None
    assert mta["data"]["files"] == {k: [str(Path(v).resolve())] for k, v in files.items()}
    # 2400 training rows, batch 32: 8 passes = 600 steps; validation every 600 / 5
    assert mta["train"]["steps"] == max(MIN_STEPS, EPOCHS * 2400 // 32) == 600
    assert mta["train"]["eval_every"] == mta["train"]["save_every"] == 150
    assert mta["train"]["output_dir"] == str(out / "stage1")
    # inputs are 7 words, targets up to 6: 2 pieces a word plus room, rounded up to 8
    assert mta["data"]["max_input_length"] == 32 and mta["data"]["max_target_length"] == 16
    assert s2["mta"]["train"]["init_from"] == str(out / "stage1" / "export")
    assert s2["mta"]["data"]["files"] == mta["data"]["files"] and s2["mta"]["data"]["suite"] is None
    # the rest is the shipped config's
    shipped = json.loads(shipped_configs()[0].read_text())
    assert mta["adapter_dim"] == shipped["mta"]["adapter_dim"] and mta["model"] == shipped["mta"]["model"]
    for cfg in (s1, s2):
        build_run_config(cfg)
    printed = capsys.readouterr().out
    assert f"mta-moe train --deepspeed {out / 'stage1.json'}" in printed and "one adapter each" in printed


def test_existing_configs_are_refused_and_kept(files, tmp_path, capsys):
    out = tmp_path / "cfg"
    assert _init(files, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "stage1.json").write_text("{}")
    before["stage1.json"] = b"{}"
    assert _init(files, out) == 2
    assert "stage1.json: already exists; pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _init(files, out, "--overwrite") == 0
    assert json.loads((out / "stage1.json").read_text())["mta"]["num_experts"] == 3


@pytest.mark.parametrize(
    "case, expected",
    [
        ("bad_row", "train.jsonl:line 2: not valid JSON"),
        ("two_types", "train.jsonl: task 'polarity' has rows of type 'classify' and 'generate'"),
        ("unseen_task", "validation.jsonl: task 'other' has no training rows"),
        ("from_alone", "--from and --from-stage2 go together"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, case, expected):
    extra = []
    if case == "bad_row":
        _write(Path(files["train"]), [_rows(1)[0], "{input: x"])
    elif case == "two_types":
        _write(Path(files["train"]), [_rows(1)[0], {**_rows(1)[0], "type": "generate"}])
    elif case == "unseen_task":
        _write(Path(files["validation"]), [{**_rows(1)[0], "task": "other"}])
    else:
        extra = ["--from", str(shipped_configs()[0])]
    out = tmp_path / "cfg"
    assert _init(files, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err, err
    assert not out.exists()


def test_an_encoder_template_fine_tunes_fewer_passes_and_refuses_generation_tasks_at_once(files, tmp_path, capsys):
    encoder = [str(REPO_CONFIGS / "encoder_stage1.json"), str(REPO_CONFIGS / "encoder_stage2.json")]
    out = tmp_path / "enc"
    assert _init(files, out, "--from", encoder[0], "--from-stage2", encoder[1]) == 2
    assert not out.exists() or not any(out.iterdir())  # nothing written
    assert capsys.readouterr().err.strip() == (
        "error: mta.model: bert is an encoder: it trains classification tasks, one head per task; copy (extraction) "
        "cannot be trained on it (leave them out with mta.data.tasks, or use a text-to-text backbone)"
    )
    only = {  # 4800 classification rows to train on, batch 32
        split: _write(tmp_path / f"{split}_c.jsonl", [r for r in _rows(n) if r["task"] != "copy"])
        for split, n in (("train", 2400), ("validation", 20), ("test", 20))
    }
    assert _init(only, out, "--from", encoder[0], "--from-stage2", encoder[1]) == 0
    s1 = json.loads((out / "stage1.json").read_text())
    # a pretrained backbone is fine-tuned: 4 passes (600 steps), not the 8 of a model trained from scratch
    assert s1["mta"]["train"]["steps"] == EPOCHS_PRETRAINED * 4800 // 32 == 600 and EPOCHS_PRETRAINED < EPOCHS
    assert s1["mta"]["tasks"] == ["polarity", "flip"] and s1["mta"]["model"]["backbone"].endswith("all-MiniLM-L6-v2")
    assert "fine-tuning the pretrained backbone" in capsys.readouterr().out
