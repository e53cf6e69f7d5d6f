"""Adapter-only files: the MTA weights and settings without the backbone, loaded on top of the user's backbone.

``save_adapters`` writes ``mta_adapters.json`` (settings, stage, the backbone's name and a SHA-256 of its
weights) and ``adapters.safetensors`` (adapters, selector, stage-2 parts: 2·d·r·E numbers per bottleneck layer
plus biases). ``load_adapters`` loads the named backbone (a local directory or a hub id) with its stock class,
injects the MTA layers and loads the adapters; it refuses a backbone whose weights are not the ones the adapters
were trained with, because the adapters alone would then compute a different model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from ..config import MTAConfig
from .inject import MTAModel
from .layer import component_of
from .persistence import read_saved_model, read_weights, unique_state, write_files_together

ADAPTER_CONFIG_FILE = "mta_adapters.json"
ADAPTER_WEIGHTS_FILE = "adapters.safetensors"
ADAPTER_FORMAT_VERSION = 1


def backbone_state(model: MTAModel) -> dict[str, torch.Tensor]:
    """The backbone's own tensors (the frozen base FFNs included), tied ones once."""
    return unique_state(model, lambda name: component_of(name) == "backbone", copy=False)


def backbone_fingerprint(model: MTAModel) -> str:
    """SHA-256 over the backbone's tensor names, dtypes, shapes and bytes (sorted by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone_state(model).items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def adapter_state(model: MTAModel) -> dict[str, torch.Tensor]:
    """Everything that is not the backbone: adapters, selector, shared adapters, gate network."""
    if any(layer.ep_size > 1 for layer in model.mta_layers.values()):
        raise ValueError("save_adapters needs every adapter in this process: load the export with ep_size 1")
    return unique_state(model, lambda name: component_of(name) != "backbone")


def save_adapters(model: MTAModel, directory: str | Path, backbone: str) -> Path:
    """Write the adapter-only files of ``model`` into ``directory``; all files appear together.

    Args:
        model: the MTA model (its backbone's fingerprint is saved, so a wrong backbone is refused at load).
        directory: where the files go.
        backbone: what they load on top of (a hub id or a path the user will have).

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    meta = {
        "format_version": ADAPTER_FORMAT_VERSION,
        "backbone": backbone,
        "architecture": type(model.base_model).__name__,
        "stage": model.stage,
        "mta": model.mta_config.replace(ep_size=1).to_dict(),
        "backbone_sha256": backbone_fingerprint(model),
    }
    state = adapter_state(model)

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    return write_files_together(directory, write)


def read_adapter_meta(directory: str | Path) -> dict:
    directory = Path(directory)
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name}: missing; not an adapter-only directory (save_adapters)")
    meta = json.loads((directory / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise ValueError(
            f"{directory / ADAPTER_CONFIG_FILE}: format_version {meta.get('format_version')!r}, "
            f"expected {ADAPTER_FORMAT_VERSION}"
        )
    return meta


def load_adapters(directory: str | Path, backbone: str | None = None) -> MTAModel:
    """The MTA model: a backbone with the saved adapters on top.

    Args:
        directory: written by :func:`save_adapters`.
        backbone: a hub id or directory; default: the name saved with the adapters.

    Returns:
        The :class:`MTAModel`; a backbone whose weights differ from the one saved with the adapters is a
        ValueError.
    """
    directory = Path(directory)
    meta = read_adapter_meta(directory)
    name = backbone or meta["backbone"]
    model_cls = getattr(transformers, meta["architecture"], None)
    if model_cls is None:
        raise ValueError(
            f"{directory / ADAPTER_CONFIG_FILE}: architecture {meta['architecture']!r} is not a transformers class"
        )
    model = MTAModel(model_cls.from_pretrained(name), MTAConfig.from_dict(meta["mta"]))
    check_backbone(model, meta, name, directory)
    if meta["stage"] == 2:
        model.enable_stage2()
    missing, unexpected = model.load_state_dict(read_weights(directory / ADAPTER_WEIGHTS_FILE), strict=False)
    missing = [k for k in missing if component_of(k) != "backbone"]
    if missing or unexpected:
        raise ValueError(
            f"{directory / ADAPTER_WEIGHTS_FILE}: adapters do not match the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval()


def check_backbone(model: MTAModel, meta: dict, name: str, directory: Path) -> None:
    """Refuse a backbone whose weights differ from those the adapters were saved with."""
    found = backbone_fingerprint(model)
    if found != meta["backbone_sha256"]:
        raise ValueError(
            f"{name}: its weights are not the backbone the adapters in {directory} were saved with "
            f"(sha256 {found[:12]}… vs {meta['backbone_sha256'][:12]}…); adapters alone only "
            "reproduce the model on that backbone: use the full export"
        )


def save_adapters_command(args, _=()) -> int:
    """``mta-moe save-adapters``: the adapter-only files of an export, after checking that the named backbone
    really is the export's backbone (stage 1 trains the backbone unless told otherwise)."""
    import sys

    try:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not getattr(args, "overwrite", False):
            raise ValueError(f"--out {out}: exists and is not an empty directory; pass --overwrite to replace it")
        saved = read_saved_model(args.model)  # read once: the model is built from it
        model = MTAModel.from_saved(saved, saved.mta.replace(ep_size=1))
        base = saved.model_cls.from_pretrained(args.backbone)
        if backbone_fingerprint(MTAModel(base, model.mta_config)) != backbone_fingerprint(model):
            raise ValueError(
                f"{args.model}: its backbone weights are not {args.backbone}'s (a stage 1 that trains the "
                "backbone changes them), so adapters alone would not reproduce it; share the full export"
            )
        out = save_adapters(model, args.out, args.backbone)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = (out / ADAPTER_WEIGHTS_FILE).stat().st_size
    print(f"{out}: {size / 1024:.0f} KB of adapters for {args.backbone}")
    return 0
