"""What makes a checkpoint safe to resume from: a manifest of every file it holds, a ``latest`` that moves only
after the manifest is written, and the id of the run that wrote it.

A save is: DeepSpeed writes the tag's files; rank 0 writes ``manifest.json`` (size and SHA-256 of every file,
the step, the run id); then ``latest`` is replaced atomically. A process killed anywhere in between leaves
``latest`` on the previous complete checkpoint. ``--resume`` checks, before any data is prepared or any file
is unpickled, that ``latest`` names a tag with a manifest, that every listed file is there unchanged, that
the manifest's run id is this output directory's (``run_id``, written when the run started), and that the
manifest carries a valid HMAC-SHA256 signature made with this user's key (``checkpoint_key_path``: created on
first use outside any run directory, readable by the user only). DeepSpeed then loads the files with
``torch.load(weights_only=False)``, which can run code from a file someone else wrote: a file replaced in a
copied run directory needs a new manifest, and a new manifest needs the key, so a checkpoint from elsewhere (or
edited) is refused unless ``--trust-checkpoint`` is given.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import uuid
from pathlib import Path

from ..files import write_text_atomically

LATEST = "latest"
MANIFEST = "manifest.json"
RUN_ID = "run_id"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from; the message names the file and what is wrong."""


# bytes per parameter a run writes at once: a checkpoint (fp32 weights + Adam's two moments) and two exports
BYTES_PER_PARAMETER = 4 * 3 + 4 * 2


def check_output_dir(out: Path) -> None:
    """At start: ``out`` exists as a writable directory or can be created (raises CheckpointError)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"mta.train.output_dir: {out} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"mta.train.output_dir: {existing} is not writable by this user")


def check_free_space(out: Path, parameters: int) -> None:
    """At start: room for one checkpoint and the exports of a model of ``parameters`` (raises CheckpointError)."""
    existing = out if out.exists() else next(p for p in out.parents if p.exists())
    free, needed = shutil.disk_usage(existing).free, parameters * BYTES_PER_PARAMETER
    if free < needed:
        raise CheckpointError(
            f"mta.train.output_dir: {existing} has {free / 2**20:.0f} MiB free; a checkpoint and "
            f"the exports of this model ({parameters:,} parameters) need about "
            f"{needed / 2**20:.0f} MiB"
        )


def new_run_id(out: Path) -> str:
    """A fresh id for a run started (not resumed) in ``out``, written to ``out/run_id``."""
    run_id = uuid.uuid4().hex
    write_text_atomically(out / RUN_ID, run_id + "\n")
    return run_id


def read_run_id(out: Path) -> str | None:
    path = out / RUN_ID
    return path.read_text().strip() if path.is_file() else None


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def latest_tag(checkpoints: Path) -> str | None:
    """The tag ``checkpoints/latest`` names, or None when there is none."""
    latest = checkpoints / LATEST
    return latest.read_text().strip() if latest.is_file() else None


def checkpoint_key_path() -> Path:
    """Where this user's checkpoint-signing key lives: ``$MTA_MOE_CHECKPOINT_KEY``, else
    ``$XDG_CONFIG_HOME/mta_moe/checkpoint.key`` (``~/.config`` by default)."""
    if os.environ.get("MTA_MOE_CHECKPOINT_KEY"):
        return Path(os.environ["MTA_MOE_CHECKPOINT_KEY"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "mta_moe" / "checkpoint.key"


def _key(create: bool) -> bytes | None:
    path = checkpoint_key_path()
    if path.is_file():
        return path.read_bytes()
    if not create:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"cannot create the checkpoint-signing key {path} ({exc.strerror}); set "
            "MTA_MOE_CHECKPOINT_KEY to a writable path"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(32))
    return path.read_bytes()


def _signature(manifest: dict, key: bytes) -> str:
    body = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True).encode("utf-8")
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def commit(checkpoints: Path, tag: str, step: int, run_id: str) -> None:
    """After DeepSpeed wrote ``checkpoints/tag``: its signed manifest, then ``latest`` (rank 0, every rank's files
    on a shared file system)."""
    folder = checkpoints / tag
    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"tag": tag, "step": step, "run_id": run_id, "files": files}
    manifest["signature"] = _signature(manifest, _key(create=True))
    write_text_atomically(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    write_text_atomically(checkpoints / LATEST, tag)


def verify(out: Path, checkpoints: Path, trust: bool = False) -> str:
    """The tag ``--resume`` loads, after checking it as the module docstring says; raises CheckpointError."""
    latest, tag = checkpoints / LATEST, latest_tag(checkpoints)
    if tag is None:
        raise CheckpointError(f"--resume: no checkpoint to resume from ({latest} is missing)")
    folder = checkpoints / tag
    if not tag or not folder.is_dir():
        raise CheckpointError(
            f"--resume: {latest} names {tag!r}, but {folder} is missing; point {latest} at "
            f"an existing tag or start again without --resume"
        )
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        if trust:
            return tag
        raise CheckpointError(
            f"--resume: {manifest_path} is missing, so {folder} was not written by mta_moe "
            "(or by a version before manifests); pass --trust-checkpoint to load it anyway "
            "(DeepSpeed unpickles its files: trust only checkpoints you wrote)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"--resume: {manifest_path} is not a checkpoint manifest ({exc})") from None
    if not files:
        raise CheckpointError(
            f"--resume: {manifest_path} lists no files; a checkpoint holds at least the model "
            "states — restore the manifest or point latest at an earlier tag"
        )
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(
                f"--resume: {path} is missing (listed in {manifest_path}); the checkpoint is "
                "incomplete — restore the file or point latest at an earlier tag"
            )
        size = path.stat().st_size
        if size != expected["bytes"] or _digest(path) != expected["sha256"]:
            raise CheckpointError(
                f"--resume: {path} changed since it was saved ({size} bytes, {expected['bytes']} "
                "written; SHA-256 differs): truncated or replaced — restore it or point latest "
                "at an earlier tag"
            )
    key = _key(create=False)
    signed = key is not None and hmac.compare_digest(str(manifest.get("signature", "")), _signature(manifest, key))
    if not signed and not trust:
        where = (
            "it has no signature: written by an mta_moe from before checkpoints were signed, or not by mta_moe"
            if "signature" not in manifest
            else "written elsewhere, or edited since"
        )
        raise CheckpointError(
            f"--resume: {manifest_path} is not signed with this user's key "
            f"({checkpoint_key_path()}): {where}; DeepSpeed unpickles checkpoint files, so pass "
            "--trust-checkpoint only if you trust where it came from"
        )
    own = read_run_id(out)
    if manifest.get("run_id") != own and not trust:
        raise CheckpointError(
            f"--resume: {folder} was written by run {manifest.get('run_id')}, not by this output "
            f"directory's run ({own or f'no {out / RUN_ID}'}); DeepSpeed unpickles checkpoint "
            "files, so pass --trust-checkpoint only if you trust where it came from"
        )
    return tag
