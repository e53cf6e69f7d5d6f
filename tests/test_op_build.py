"""A DeepSpeed op build killed mid-way leaves a lock on which every later start waits: runs name it first."""

import logging
import os
import time

from mta_moe.training import op_build


def _lock(path, age_s):
    path.parent.mkdir(parents=True)
    path.write_text("")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_only_old_deepspeed_build_locks_are_stale(tmp_path):
    dead = _lock(tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", op_build.STALE_AFTER_S + 60)
    flat = _lock(tmp_path / "deepspeed_fused_adam" / "lock", op_build.STALE_AFTER_S + 60)  # TORCH_EXTENSIONS_DIR layout
    _lock(tmp_path / "py311_cpu" / "deepspeed_cpu_adam" / "lock", 30)  # a build running now
    _lock(tmp_path / "py311_cpu" / "someone_elses_op" / "lock", op_build.STALE_AFTER_S + 60)
    assert op_build.stale_build_locks(tmp_path) == [dead, flat]


def test_the_warning_names_the_file_and_the_fix(tmp_path, caplog, monkeypatch):
    dead = _lock(tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", 3 * 3600)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert op_build.extensions_root() == tmp_path
    with caplog.at_level(logging.WARNING, logger="mta_moe"):
        assert op_build.warn_stale_build_locks() == [dead]
    (message,) = [r.getMessage() for r in caplog.records]
    assert str(dead) in message and "180 min old" in message and "delete it" in message


def test_the_tests_build_the_op_into_their_own_cache():
    root = op_build.extensions_root()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(root)
    assert (root / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file()
    assert not op_build.stale_build_locks(root, older_than_s=0)
