"""A run's exports (``export/``, ``best/``, ``export_step<N>/``): the consolidated model, its tokenizer, the task
record (with the tokenizer's fingerprint) and the model card, written together or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from ..data.recipes import RECIPES
from ..data.tokenizer import FINGERPRINT_KEY, tokenizer_fingerprint
from ..merging.model_card import CardSource, model_card
from ..modeling.persistence import write_files_together, write_model_files
from .checkpoints import CheckpointError


def card_source(cfg) -> CardSource:
    """The card metadata a run config implies: its backbone when that is a hub id (not a local folder), the hub
    datasets of its recipes, and what its validation split is."""
    backbone = cfg.model.backbone
    base = backbone if backbone and not Path(backbone).exists() else None
    hub = sorted({RECIPES[r["name"]].hub_path for r in cfg.data.recipes if r.get("name") in RECIPES})
    data = cfg.data
    if data.suite is not None:
        what = f"the mta_moe {data.suite.get('name', 'bundled')} suite"
    elif data.files:
        what = "own data files"
    else:
        what = ", ".join(hub) or "recipes"
    return CardSource(base, hub, f"{what}, validation split")


def write_export(
    directory: Path,
    model,
    state: dict,
    tokenizer,
    registry,
    profiles: dict[str, Any],
    scores: dict[str, float] | None,
    step: int,
    source: CardSource | None = None,
) -> None:
    """Write one export of ``model`` (``state``: its gathered, ep-size-independent weights) into ``directory``;
    a failed write leaves the previous export there as it was (raises :class:`CheckpointError`)."""

    def write(folder: Path) -> None:
        write_model_files(model, folder, state)
        tokenizer.save_pretrained(folder)
        tasks = {**registry.to_dict(), "profiles": profiles, FINGERPRINT_KEY: tokenizer_fingerprint(tokenizer)}
        (folder / "tasks.json").write_text(json.dumps(tasks, indent=2) + "\n")
        card = model_card(model, registry.to_dict()["tasks"], profiles, scores, step, source)
        (folder / "README.md").write_text(card, encoding="utf-8")

    try:  # all files together
        write_files_together(directory, write)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(
            f"could not write {directory} ({str(exc).splitlines()[0]}); the previous export there is intact"
        ) from None
