"""``--resume`` continues the run that wrote the checkpoint, not another one: the resolved config and the data
files' contents are compared with what the run started with, before anything in the run directory is written.

A change that alters the trajectory (learning rate, schedule length, seeds, the data, the suite, any layer or
DeepSpeed key that acts in training) is refused with the keys named; ``--resume-with-changes KEY,...`` accepts the
named ones on purpose (they are logged; ``data_files`` accepts changed data files). Keys that only change what is
observed or when the run stops may change freely: ``RESUME_FREE``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..config import ConfigError
from ..files import write_text_atomically

DATA_HASHES = "data_sha256.json"
RESUME_FREE = frozenset(
    {
        "mta.train.output_dir",
        "mta.train.stop_at_step",
        "mta.train.log_every",
        "mta.train.save_every",
        "mta.train.eval_every",
        "mta.train.eval_batch_size",
        "mta.train.max_new_tokens",
        "mta.train.distributed_timeout_s",
        "mta.train.export_steps",
        "mta.train.early_stopping",
        "mta.train.warn_margin",
        "mta.train.skip_nonfinite_batches",
        "mta.train.activation_checkpointing",
        "mta.track_routing",
        "steps_per_print",
        "wall_clock_breakdown",
        "tensorboard",
        "csv_monitor",
        "wandb",
        "comet",
    }
)


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"mta.train.lr": 0.001, ...}``: the leaves of a resolved config (lists and the suite kept whole)."""
    if not isinstance(node, Mapping) or prefix in ("mta.data.suite.", "mta.model.from_scratch."):
        return {prefix[:-1]: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}{key}."))
    return out


def changed_keys(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose resolved values differ (a key one side lacks counts), free keys left out."""
    before, after = flat(previous), flat(current)
    keys = sorted(k for k in set(before) | set(after) if before.get(k, _MISSING) != after.get(k, _MISSING))
    return [k for k in keys if k not in RESUME_FREE and k.split(".")[0] not in RESUME_FREE]


_MISSING = object()


def file_hashes(paths: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each data file's bytes."""
    out = {}
    for path in sorted(set(paths)):
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        out[path] = sha.hexdigest()
    return out


def data_paths(cfg) -> list[str]:
    """The files a run's data comes from: ``mta.data.files`` and the recipes' local ``data_files``."""
    paths = [p for split in cfg.data.files.values() for p in split]
    paths += [p for recipe in cfg.data.recipes for p in recipe.get("data_files", {}).values()]
    return [p for p in paths if Path(p).is_file()]


def record_data(out: Path, cfg) -> None:
    """At a fresh start: the data files' hashes, for later resumes to compare."""
    write_text_atomically(out / DATA_HASHES, json.dumps(file_hashes(data_paths(cfg)), indent=1) + "\n")


def check_resume(out: Path, cfg, accepted: Iterable[str] = ()) -> list[str]:
    """Refuse (ConfigError) a resume whose resolved config or data files differ from the run's, except the keys in
    ``accepted``; returns the accepted keys that did change."""
    accepted = set(accepted)
    previous_file = out / "run_config.json"
    if not previous_file.is_file():
        raise ConfigError(
            f"--resume: {previous_file} is missing, so the run's settings cannot be compared; start "
            "again without --resume"
        )
    changed = changed_keys(json.loads(previous_file.read_text()), cfg.to_json())
    hashes_file = out / DATA_HASHES
    if hashes_file.is_file():
        before, now = json.loads(hashes_file.read_text()), file_hashes(data_paths(cfg))
        changed += [f"data file {p}" for p in sorted(set(before) | set(now)) if before.get(p) != now.get(p)]
    refused = [k for k in changed if k not in accepted and not (k.startswith("data file") and "data_files" in accepted)]
    if refused:
        raise ConfigError(
            f"--resume: this run changes {', '.join(refused[:6])}"
            f"{' and more' if len(refused) > 6 else ''} since it started, which changes what it trains; "
            "resume with the run's own settings, start a new run, or accept named keys with "
            f"--resume-with-changes {','.join(_names(refused))}"
        )
    return [k for k in changed if k not in refused]


def _names(keys: list[str]) -> list[str]:
    """The names ``--resume-with-changes`` takes for these changes (``data_files`` for changed data files)."""
    names = [k for k in keys if not k.startswith("data file")]
    return names + (["data_files"] if len(names) < len(keys) else [])
