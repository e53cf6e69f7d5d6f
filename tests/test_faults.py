"""Faults with real processes and signals: kill -9 anywhere (inside a checkpoint write too) and resume to the
uninterrupted run's export bit for bit, damaged or foreign checkpoints refused before anything loads, a rank
that dies or stalls ends the run within the process-group timeout, non-finite batches skipped or stopping the
run, and a full disk failing a checkpoint write without touching the previous one."""

import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import free_port, kill_tree
from test_training import REPO, launch, tiny_config, train_losses, write_config

from mta_moe.training.checkpoints import CheckpointError, verify

FAULTY = REPO / "tests" / "workers" / "faulty_train.py"
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _torchrun(script_args, env=None, nproc=2, until=None, timeout=300):
    """Start ``torchrun script_args`` in its own session; ``until(proc)`` returning True kills the session."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *script_args,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = time.monotonic()
    try:
        while proc.poll() is None:
            if until is not None and until(proc):
                kill_tree(proc.pid)  # kill -9 of the launcher and every rank, as a lost node would
                break
            if time.monotonic() - started > timeout:
                kill_tree(proc.pid)
                raise AssertionError(f"{script_args} did not finish within {timeout} s")
            time.sleep(0.01)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    return proc.returncode, out, err, time.monotonic() - started


def _logged_step(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}") and '"kind": "train"' in line]
    return max(steps, default=0)


def _ep_config(out: Path) -> dict:
    cfg = tiny_config(out, steps=40, save_every=5, eval_every=40)
    cfg["mta"].update(ep_size=2, route_by="task")
    return cfg


@pytest.mark.slow
@pytest.mark.distributed
def test_kill_9_anywhere_then_resume_reproduces_the_uninterrupted_export(tmp_path):
    reference = tmp_path / "reference"
    code, _, err, _ = _torchrun(["launchers/train.py", "--deepspeed", str(write_config(tmp_path / "ref.json", _ep_config(reference)))])
    assert code == 0, err[-3000:]
    expected = (reference / "export" / "model.safetensors").read_bytes()
    draw = random.Random(20261123)
    kill_steps = sorted(draw.sample(range(2, 30), 2))  # at random steps (seeded: the failure message names them)
    for case in [f"step{s}" for s in kill_steps] + ["in_commit"]:
        run = tmp_path / case
        cfg = write_config(tmp_path / f"{case}.json", _ep_config(run))
        if case == "in_commit":  # DeepSpeed has written step10's files; its manifest and latest are not yet
            env = {**ENV, "MTA_TEST_FAULT": "kill_in_commit:step10"}
            code, *_ = _torchrun([str(FAULTY), "train", "--deepspeed", str(cfg)], env=env)
            partial = run / "checkpoints" / "step10"
            assert partial.is_dir() and any(partial.iterdir()) and not (partial / "manifest.json").exists()
            assert (run / "checkpoints" / "latest").read_text() == "step5"
        else:
            step = int(case[4:])
            code, *_ = _torchrun(["launchers/train.py", "--deepspeed", str(cfg)], until=lambda proc: _logged_step(run) >= step)
        assert code != 0 and not (run / "export").exists(), case
        code, _, err, _ = _torchrun(["launchers/train.py", "--deepspeed", str(cfg), "--resume"])
        assert code == 0, f"{case} (kill steps {kill_steps}): {err[-3000:]}"
        assert (run / "export" / "model.safetensors").read_bytes() == expected, f"{case}: export differs"
        assert train_losses(run)[40] == train_losses(reference)[40]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 3 of 6 (checkpoint step3), as a time-limited job leaves it."""
    root = tmp_path_factory.mktemp("stopped")
    cfg = write_config(root / "cfg.json", tiny_config(root / "run", steps=6, save_every=3, eval_every=6))
    run = launch(["--deepspeed", str(cfg), "--train.stop_at_step", "3"])
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def _copy(stopped_run, tmp_path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    cfg = json.loads((stopped_run / "cfg.json").read_text())
    cfg["mta"]["train"]["output_dir"] = str(run)
    return run, write_config(tmp_path / "cfg.json", cfg)


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            lambda ck: (ck / "step3" / "mp_rank_00_model_states.pt").write_bytes((ck / "step3" / "mp_rank_00_model_states.pt").read_bytes()[:1000]),
            "mp_rank_00_model_states.pt changed since",
        ),
        (lambda ck: next((ck / "step3").glob("*optim_states.pt")).unlink(), "optim_states.pt is missing (listed in"),
        (lambda ck: (ck / "latest").write_text("step9"), "names 'step9', but"),
        (lambda ck: (ck / "latest").unlink(), "no checkpoint to resume from"),
        (lambda ck: (ck / "step3" / "manifest.json").unlink(), "manifest.json is missing, so"),
        (lambda ck: (ck / "step3" / "manifest.json").write_text('{"files": {}}'), "lists no files"),
        (lambda ck: (ck / "step3" / "manifest.json").write_text(""), "is not a checkpoint manifest"),
        (lambda ck: (ck.parent / "run_id").write_text("someone-else\n"), "was written by run"),
    ],
)
def test_a_damaged_or_foreign_checkpoint_is_refused_before_anything_loads(stopped_run, tmp_path, damage, message):
    run, cfg = _copy(stopped_run, tmp_path)
    damage(run / "checkpoints")
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        verify(run, run / "checkpoints")
    result = launch(["--deepspeed", str(cfg), "--resume"])
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --resume: ")
    assert message in result.stderr
    assert _snapshot(run) == before  # nothing written, nothing damaged


@pytest.mark.slow
def test_trust_checkpoint_resumes_a_foreign_one_and_the_run_matches(stopped_run, tmp_path):
    run, cfg = _copy(stopped_run, tmp_path)
    (run / "run_id").unlink()  # e.g. the checkpoints were copied into a fresh directory
    assert launch(["--deepspeed", str(cfg), "--resume"]).returncode == 2
    result = launch(["--deepspeed", str(cfg), "--resume", "--trust-checkpoint"])
    assert result.returncode == 0, result.stderr[-3000:]
    reference = tmp_path / "whole"
    whole = launch(["--deepspeed", str(write_config(tmp_path / "whole.json", tiny_config(reference, steps=6, save_every=3, eval_every=6)))])
    assert whole.returncode == 0
    assert train_losses(run) == train_losses(reference)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("fault", ["die_rank:1:4", "stall_rank:1:4"])
def test_a_rank_that_dies_or_stalls_ends_the_run_within_the_timeout(tmp_path, fault):
    cfg = tiny_config(tmp_path / "run", steps=12, save_every=12, eval_every=12, distributed_timeout_s=20)
    env = {**ENV, "MTA_TEST_FAULT": fault}
    code, _, err, elapsed = _torchrun([str(FAULTY), "train", "--deepspeed", str(write_config(tmp_path / "c.json", cfg))], env=env, timeout=240)
    assert code != 0
    assert elapsed < 180, f"{fault}: the run took {elapsed:.0f} s to end"
    assert _logged_step(tmp_path / "run") == 3  # it got as far as the fault


@pytest.mark.slow
def test_nonfinite_batches_are_skipped_up_to_the_limit_then_stop_the_run(tmp_path):
    cfg = tiny_config(tmp_path / "run", steps=6, save_every=3, eval_every=6, skip_nonfinite_batches=2)
    env = {**ENV, "MTA_TEST_FAULT": "nan_loss:2,4"}
    run = subprocess.run(
        [sys.executable, str(FAULTY), "train", "--deepspeed", str(write_config(tmp_path / "c.json", cfg))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [(r["step"], r["skipped"]) for r in records if r["kind"] == "skipped_batch"]
    assert skipped == [(2, 1), (3, 2)]  # the 2nd and 4th batches drawn: steps 2 and 3 were retried
    assert sorted(train_losses(tmp_path / "run")) == list(range(1, 7))
    assert "non-finite loss on a batch of tasks" in run.stderr
    cfg = tiny_config(tmp_path / "strict", steps=6, save_every=3, eval_every=6, skip_nonfinite_batches=1)
    strict = subprocess.run(
        [sys.executable, str(FAULTY), "train", "--deepspeed", str(write_config(tmp_path / "s.json", cfg))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert strict.returncode == 3
    assert "2 batches with a non-finite loss, more than mta.train.skip_nonfinite_batches (1) allows" in strict.stderr
    assert not (tmp_path / "strict" / "export").exists()


def test_a_full_disk_fails_the_write_and_keeps_the_previous_checkpoint(stopped_run, tmp_path):
    run, cfg = _copy(stopped_run, tmp_path)
    before = _snapshot(run / "checkpoints")

    def small_files():  # writes past 64 KB fail with EFBIG, as on a full disk (a checkpoint file is larger)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run(
        [sys.executable, "launchers/train.py", "--deepspeed", str(cfg), "--resume"],
        cwd=REPO,
        env={**ENV},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write ") and "File too large" in last  # best/ at step 6 comes first
    assert not (run / "best").exists() and not (run / "export").exists()  # no half-written model left
    assert (run / "checkpoints" / "latest").read_text() == "step3"
    assert {k: v for k, v in _snapshot(run / "checkpoints").items() if k.startswith("step3")} == {k: v for k, v in before.items() if k.startswith("step3")}
    verify(run, run / "checkpoints")  # the previous checkpoint still resumes


def test_an_output_directory_that_cannot_hold_the_run_is_refused_at_start(tmp_path, monkeypatch):
    from mta_moe.training import checkpoints

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match=f"{blocker / 'run'} cannot be created: {blocker} is a file"):
        checkpoints.check_output_dir(blocker / "run")
    checkpoints.check_output_dir(tmp_path / "new" / "run")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(CheckpointError, match="is not writable"):
            checkpoints.check_output_dir(locked / "run")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(
        CheckpointError,
        match=r"has 1 MiB free; a checkpoint and the exports of this model "
        r"\(1,000,000 parameters\) need about 19 MiB",
    ):
        checkpoints.check_free_space(tmp_path, 1_000_000)
    checkpoints.check_free_space(tmp_path, 10_000)
    result = launch(["--deepspeed", str(write_config(tmp_path / "c.json", tiny_config(blocker / "run")))])
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: mta.train.output_dir: ") and blocker.read_text() == "x"


@pytest.mark.slow
def test_sigterm_saves_at_the_step_boundary_and_the_resume_is_bit_identical(tmp_path):
    """A scheduler's SIGTERM mid-run: the run saves the step it is on (not the last save_every step), exits with
    128 + 15, and a resume logs the uninterrupted run's losses bit for bit."""
    whole = tmp_path / "whole"
    assert launch(["--deepspeed", str(write_config(tmp_path / "whole.json", tiny_config(whole, steps=30, save_every=30, eval_every=30)))]).returncode == 0
    cut = tmp_path / "cut"
    cfg = write_config(tmp_path / "cut.json", tiny_config(cut, steps=30, save_every=30, eval_every=30))
    proc = subprocess.Popen(
        [sys.executable, "launchers/train.py", "--deepspeed", str(cfg)], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while _logged_step(cut) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    tag = (cut / "checkpoints" / "latest").read_text().strip()
    stopped = int(tag.removeprefix("step"))
    assert 5 <= stopped < 30 and f"stopped by SIGTERM at step {stopped}" in err
    assert not (cut / ".lock").exists()  # the directory is free again
    resumed = launch(["--deepspeed", str(cfg), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train_losses(cut) == train_losses(whole)


class _Marker:
    """Unpickling this object touches a marker file: what a crafted checkpoint could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.slow
def test_a_crafted_pickle_in_a_copied_run_directory_never_executes(stopped_run, tmp_path):
    """Someone with write access to a copied run directory swaps in a crafted checkpoint file and rewrites the
    manifest's hashes to match: without this user's signing key the manifest's signature no longer checks, so the
    plain --resume stops before DeepSpeed unpickles anything."""
    import torch

    from mta_moe.training.checkpoints import _digest

    run, cfg = _copy(stopped_run, tmp_path)
    marker = tmp_path / "executed"
    states = run / "checkpoints" / "step3" / "mp_rank_00_model_states.pt"
    torch.save({"module": _Marker(marker)}, states)
    manifest_path = run / "checkpoints" / "step3" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["mp_rank_00_model_states.pt"] = {"bytes": states.stat().st_size, "sha256": _digest(states)}
    manifest_path.write_text(json.dumps(manifest))
    result = launch(["--deepspeed", str(cfg), "--resume"])
    assert result.returncode == 2 and "is not signed with this user's key" in result.stderr
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="not signed .*: written elsewhere, or edited since"):
        verify(run, run / "checkpoints")
    del manifest["signature"]  # a manifest of a release from before signing: named as such, still refused
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="it has no signature: written by an mta_moe from before checkpoints"):
        verify(run, run / "checkpoints")
    assert verify(run, run / "checkpoints", trust=True) == "step3"
    assert not marker.exists()
