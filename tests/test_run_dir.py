"""A run directory belongs to one run: a new run into a used directory is refused with nothing written, a live
run's lock refuses a second run, a dead run's lock is taken over, --overwrite replaces on purpose, and task names
never leave their folder."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
from test_training import launch, tiny_config, write_config

from mta_moe.names import child_path, name_problem
from mta_moe.training.run_dir import LOCK, RunDirError, claim, held_run, in_use


def _lock(folder, pid):
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_claim_refuses_a_held_directory_and_a_live_lock_and_takes_over_a_dead_one(tmp_path):
    lock = claim(tmp_path / "run", resume=False, overwrite=False)  # empty: claimed
    assert (tmp_path / "run" / LOCK).is_file() and in_use(tmp_path / "run")
    with pytest.raises(RunDirError, match=f"in use by a run of pid {os.getpid()}"):
        claim(tmp_path / "run", resume=True, overwrite=False)
    lock.release()
    assert not (tmp_path / "run" / LOCK).exists() and in_use(tmp_path / "run") is None
    (tmp_path / "run" / "run_id").write_text("abc\n")
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step40")
    assert held_run(tmp_path / "run") == "run abc (run_id, checkpoints, checkpoints up to step40)"
    with pytest.raises(RunDirError, match=r"holds run abc .*--resume.*--overwrite"):
        claim(tmp_path / "run", resume=False, overwrite=False)
    assert not (tmp_path / "run" / LOCK).exists()  # a refused claim leaves no lock
    _lock(tmp_path / "run", _dead_pid())  # killed without releasing: stale
    claim(tmp_path / "run", resume=True, overwrite=False).release()
    claim(tmp_path / "run", resume=False, overwrite=True).release()  # replaced: the old run's files are gone
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
    _lock(tmp_path / "run", os.getpid())
    (tmp_path / "run" / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(RunDirError, match="in use by pid 1 on host elsewhere"):
        claim(tmp_path / "run", resume=True, overwrite=False)
    with pytest.raises(RunDirError, match="pass one"):
        claim(tmp_path / "other", resume=True, overwrite=True)


def test_names_never_leave_their_folder(tmp_path):
    assert name_problem("sentiment") is None and name_problem("qa_v2.1+x") is None and name_problem("情感") is None
    for bad in ("../x", "a/b", ".hidden", "a..b", "", "x" * 65, "a\\b", 3):
        assert name_problem(bad) is not None, bad
        with pytest.raises(ValueError, match="cannot name a folder inside"):
            child_path(tmp_path, bad)
    assert child_path(tmp_path, "ok") == tmp_path / "ok"


def _tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_a_new_run_into_a_used_directory_is_refused_and_overwrite_replaces_it(tmp_path):
    cfg = write_config(tmp_path / "cfg.json", tiny_config(tmp_path / "run", steps=4, save_every=2, eval_every=4))
    assert launch(["--deepspeed", str(cfg)]).returncode == 0
    before = _tree(tmp_path / "run")
    second = launch(["--deepspeed", str(cfg)])
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2 and len(errors) == 1 and "--overwrite to replace it" in errors[0]
    assert _tree(tmp_path / "run") == before  # byte for byte: nothing written, nothing removed
    run_id = (tmp_path / "run" / "run_id").read_text()
    third = launch(["--deepspeed", str(cfg), "--overwrite"])
    assert third.returncode == 0, third.stderr[-2000:]
    assert (tmp_path / "run" / "run_id").read_text() != run_id and not (tmp_path / "run" / LOCK).exists()


def test_resume_refuses_changed_settings_and_data_unless_named(tmp_path):
    from mta_moe.config import ConfigError
    from mta_moe.training.resume_check import check_resume, record_data
    from mta_moe.training.run_config import build_run_config

    data = tmp_path / "train.jsonl"
    data.write_text('{"input": "a", "target": "b", "type": "classify", "task": "t"}\n')

    def config(**train):
        cfg = tiny_config(tmp_path / "run", **train)
        cfg["mta"]["data"].update(suite=None, files={"train": [str(data)]}, curriculum=None)
        return build_run_config(cfg)

    started = config()
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.json").write_text(json.dumps(started.to_json()))
    record_data(out, started)
    assert check_resume(out, config(stop_at_step=5, log_every=7)) == []  # observation and stopping keys are free
    with pytest.raises(
        ConfigError,
        match=r"--resume: this run changes mta.train.lr, mta.train.seed since it "
        r"started.*--resume-with-changes mta.train.lr,mta.train.seed",
    ):
        check_resume(out, config(lr=0.5, seed=3))
    assert check_resume(out, config(lr=0.5), ["mta.train.lr"]) == ["mta.train.lr"]
    data.write_text('{"input": "a", "target": "c", "type": "classify", "task": "t"}\n')  # same path, new rows
    with pytest.raises(ConfigError, match=f"changes data file {data}.*--resume-with-changes data_files"):
        check_resume(out, started)
    assert check_resume(out, started, ["data_files"]) == [f"data file {data}"]
    changed = build_run_config({**started.to_json(), "gradient_clipping": 0.3})
    with pytest.raises(ConfigError, match="changes gradient_clipping"):
        check_resume(out, changed)
