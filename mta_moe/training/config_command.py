"""``mta-moe config validate FILE`` / ``mta-moe config show FILE``: the checks ``train`` runs on a config before it
starts (keys, values, the data settings that name tasks), or the resolved config with every default, without
training anything. ``mta-moe config schema`` / ``docs [--write DIR]``: the reference of every key, generated from
the typed sections."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def config_command(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Exit 0 with ``ok``/the resolved JSON, or 2 with one ``error:`` line naming the key."""
    from ..config import ConfigError
    from .run_config import load_run_config

    if args.action in ("schema", "docs"):
        return _reference(args)
    if not args.file:
        print(f"error: config {args.action}: give the config FILE", file=sys.stderr)
        return 2
    try:
        cfg = load_run_config(args.file, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "show":
        print(json.dumps(cfg.to_json(), indent=2))
        return 0
    try:
        names = _task_names_checked(cfg)
    except (ConfigError, ValueError) as exc:  # ConfigError, or the data files' DataError
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    if cfg.train.init_from:  # a run from an export (stage 2, continuation) takes the layer from it
        layer = f"the layer of {cfg.train.init_from}"
    else:
        layer = f"{cfg.mta.num_experts} adapters" + (
            f", {cfg.mta.always_on_adapters} always-on" if cfg.mta.always_on_adapters else ""
        )
    checked = f"{len(names)} tasks" if names is not None else "task names checked when training loads the data"
    print(
        f"{args.file}: ok (stage {cfg.train.stage}, {cfg.train.steps} steps, {layer}, "
        f"output {cfg.train.output_dir}; {checked})"
    )
    return 0


def _task_names_checked(cfg) -> list[str] | None:
    """The settings that name tasks, checked against the training data's tasks as ``train`` checks them before it
    generates anything (data files read, nothing written). None: not checked here, for a run from an export
    (its task types are the export's) or with recipes from the hub."""
    if cfg.train.init_from:
        return None
    from ..data.pipeline import check_task_settings

    return check_task_settings(cfg.data, cfg.mta.task_types, cfg.check_task_names)


def _reference(args: argparse.Namespace) -> int:
    from . import config_reference

    if args.action == "schema":
        print(json.dumps(config_reference.json_schema(), indent=2, ensure_ascii=False))
        return 0
    if args.write:
        changed = config_reference.write_docs(args.write)
        print(f"{len(changed)} file(s) rewritten" + "".join(f"\n  {path}" for path in changed))
        return 0
    for section in config_reference.SECTIONS:
        print(f"### {section}\n\n{config_reference.key_table(section)}\n")
    return 0
