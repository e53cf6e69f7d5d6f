"""A run directory belongs to one run: a lock for the run's life, and no new run over another run's files.

``claim`` (rank 0, before anything is written): a directory locked by a live process is refused (two runs in one
directory would interleave metrics and overwrite each other's checkpoints); a lock left by a process that is gone
(killed, crashed) on this host is stale and taken over. Without ``--resume``, a directory that holds another run
(its run id, checkpoints, exports or config) is refused unless ``--overwrite`` asks to replace it, in which case
its files are removed before the new run writes anything. The lock file (``.lock``: pid, host, start time) is
removed when the run ends, also on an error.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK = ".lock"
# what a run leaves in its directory: any of them means the directory holds a run
RUN_FILES = ("run_id", "run_config.json", "metrics.jsonl", "checkpoints", "export", "best")


class RunDirError(RuntimeError):
    """The output directory is in use or holds another run; the message says which and what to do."""


@dataclass
class RunDirLock:
    """The lock a run holds on its directory; ``release`` removes it (once)."""

    path: Path
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.path.unlink(missing_ok=True)
            self.released = True


def held_run(out: Path) -> str | None:
    """What run ``out`` holds (a one-line description), or None when it holds none."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if not found:
        return None
    run_id = (out / "run_id").read_text().strip() if (out / "run_id").is_file() else "of unknown id"
    latest = out / "checkpoints" / "latest"
    step = f", checkpoints up to {latest.read_text().strip()}" if latest.is_file() else ""
    return f"run {run_id} ({', '.join(found)}{step})"


def in_use(out: Path) -> str | None:
    """Why ``out`` is in use by a live run (None when no live process holds its lock)."""
    path = out / LOCK
    if not path.is_file():
        return None
    try:
        _refuse_or_clear(path, remove_stale=False)
    except RunDirError as exc:
        return str(exc)
    return None


def claim(out: Path, resume: bool, overwrite: bool) -> RunDirLock:
    """Lock ``out`` for this run (see the module docstring); raises :class:`RunDirError` naming the directory."""
    if resume and overwrite:
        raise RunDirError("--resume continues the run in mta.train.output_dir and --overwrite replaces it: pass one")
    out.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(out / LOCK)
    try:
        held = held_run(out)
        if held and not resume and not overwrite:
            raise RunDirError(
                f"mta.train.output_dir: {out} holds {held}; continue it with --resume, train into "
                "another directory, or pass --overwrite to replace it"
            )
        if held and overwrite:
            for child in out.iterdir():
                if child.name != LOCK:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def _take_lock(path: Path) -> RunDirLock:
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _refuse_or_clear(path)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(record + "\n")
        return RunDirLock(path)
    raise RunDirError(f"{path}: another run took the lock at the same moment; start again")


def _refuse_or_clear(path: Path, remove_stale: bool = True) -> None:
    """A lock held by a live process is refused; one whose process is gone from this host is removed (with
    ``remove_stale``)."""
    try:
        holder = json.loads(path.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        raise RunDirError(f"{path}: a lock that cannot be read; if no run uses {path.parent}, delete it") from None
    if host != socket.gethostname():
        raise RunDirError(
            f"{path.parent} is in use by pid {pid} on host {host} (lock {path}); if that run is over, "
            "delete the lock file"
        )
    if _alive(pid):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        raise RunDirError(
            f"{path.parent} is in use by a run of pid {pid} on this host since {started}; wait for "
            "it to end or train into another directory"
        )
    if remove_stale:
        path.unlink(missing_ok=True)  # stale: its process is gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
