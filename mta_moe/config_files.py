"""Reading config files: a DeepSpeed JSON (or Hjson, as DeepSpeed reads its own) with an ``"mta"`` section; a key
given twice is refused by name; a missing file or a syntax error names the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import RUN_SECTIONS, ConfigError, MTAConfig


def load_ds_config(path: str | Path) -> tuple[dict[str, Any], MTAConfig]:
    """Read a DeepSpeed JSON; return (the DeepSpeed keys, the validated layer keys of the ``"mta"`` section).

    The section's ``model`` / ``data`` / ``train`` subsections are validated by
    :func:`mta_moe.training.run_config.load_run_config`, which reads the whole run."""
    path = Path(path)
    raw = read_config_file(path)
    mta = dict(raw.pop("mta", {}))
    for section in RUN_SECTIONS:  # the run's model / data / train settings: see mta_moe.training.run_config
        mta.pop(section, None)
    try:
        return raw, MTAConfig.from_dict(mta)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """A DeepSpeed config file as a dict. Plain JSON, or Hjson as DeepSpeed reads its own (comments allowed); a
    key given twice in one object is refused by name (JSON would silently keep the last); a missing file or a
    syntax error is a ConfigError naming the file and line."""
    if not path.is_file():
        raise ConfigError(f"{path}: DeepSpeed config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as exc:
        raw = _read_hjson(path, text, exc)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: key {exc.args[0]!r} appears twice in one object; keep one") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    return raw


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_hjson(path: Path, text: str, json_error: json.JSONDecodeError) -> Any:
    """Not JSON: Hjson (JSON with comments and the like), which DeepSpeed accepts too."""
    import hjson

    try:
        return hjson.loads(text, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: key {exc.args[0]!r} appears twice in one object; keep one") from None
    except hjson.HjsonDecodeError:  # neither: the JSON error names the line a JSON writer expects
        raise ConfigError(f"{path}: line {json_error.lineno}: not valid JSON or Hjson ({json_error.msg})") from None
