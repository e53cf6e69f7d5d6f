"""Save and load MTA models: backbone config + MTA settings + safetensors weights; no launcher needed."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import MTAConfig
from ..hub_format import MODEL_TYPE, REMOTE_CODE_FILE, auto_map, remote_code_source
from .layer import MTALayer

if TYPE_CHECKING:  # the model builds itself from these files (MTAModel.from_pretrained); no import back
    from .inject import MTAModel

MTA_CONFIG_FILE = "mta_config.json"
BACKBONE_CONFIG_FILE = "backbone_config.json"  # the transformers config of the backbone (format 2)
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 2  # 1: the backbone's config was config.json, which let AutoModel load random weights
READABLE_VERSIONS = (1, 2)
_EXPERT_KEY = re.compile(r"(.*\.deepspeed_moe\.experts\.deepspeed_experts\.)(\d+)(\..*)")


def save_mta_model(model: MTAModel, directory: str | Path, state: dict | None = None) -> Path:
    """Write ``backbone_config.json``, ``mta_config.json``, ``model.safetensors`` and a ``config.json`` of model
    type ``mta_moe`` (so ``transformers.AutoModel*.from_pretrained`` refuses the folder instead of loading a
    backbone with random weights); all files appear together.

    ``state``: a full (all-adapters) state dict from :func:`gathered_state` when the model is expert-parallel;
    the files then describe an ep_size-1 model, loadable at any ep size.
    """
    return write_files_together(directory, lambda tmp: write_model_files(model, tmp, state))


def write_model_files(model: MTAModel, folder: Path, state: dict | None = None) -> None:
    """The files of :func:`save_mta_model`, written straight into ``folder`` (for a caller that already writes
    into a temporary folder of its own)."""
    if state is None:
        if any(layer.ep_size > 1 for layer in model.mta_layers.values()):
            raise ValueError(
                "save_pretrained needs every adapter in this process (ep_size 1); with expert "
                "parallelism pass the state from gathered_state()"
            )
        state = unique_state(model)
    model.base_model.config.save_pretrained(folder)
    (folder / "config.json").replace(folder / BACKBONE_CONFIG_FILE)
    (folder / "config.json").write_text(json.dumps(export_marker(type(model.base_model).__name__), indent=2) + "\n")
    (folder / REMOTE_CODE_FILE).write_text(remote_code_source())
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": type(model.base_model).__name__,
        "stage": model.stage,
        "mta": model.mta_config.replace(ep_size=1).to_dict(),
    }
    (folder / MTA_CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def write_files_together(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary folder beside ``directory``; then every file moves in, so a reader never
    sees some new files beside old ones (and a failed write leaves ``directory`` as it was)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write(tmp)
        directory.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            f.replace(directory / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def export_marker(architecture: str) -> dict[str, Any]:
    """``config.json`` of an export: a model type no transformers release knows, and how to load the folder."""
    return {
        "model_type": MODEL_TYPE,
        "architectures": ["MTAModel"],
        "backbone_architecture": architecture,
        "mta_moe_format_version": FORMAT_VERSION,
        "auto_map": auto_map(),
        "how_to_load": "pip install mta_moe; import mta_moe, then the Auto class of the backbone (e.g. "
        "AutoModelForSeq2SeqLM.from_pretrained(this_directory); without the import, pass "
        "trust_remote_code=True) or "
        "mta_moe.MTAModel.from_pretrained(this_directory); the backbone's "
        f"own config is {BACKBONE_CONFIG_FILE}",
    }


def gathered_state(model: MTAModel) -> dict | None:
    """All ranks call this; rank 0 gets the full state dict with adapters under their *global* ids
    (the layout of an ep_size-1 model), the other ranks ``None``."""
    import torch.distributed as dist

    prefixes = {
        f"{name}.deepspeed_moe.experts.deepspeed_experts.": module.global_expert_ids()
        for name, module in model.named_modules()
        if isinstance(module, MTALayer)
    }
    state = unique_state(model)
    experts, shared = {}, {}
    for key, value in state.items():
        m = _EXPERT_KEY.match(key)
        if m:
            experts[f"{m.group(1)}{prefixes[m.group(1)][int(m.group(2))]}{m.group(3)}"] = value
        else:
            shared[key] = value
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {**shared, **experts}
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, experts)
    if dist.get_rank() != 0:
        return None
    for part in parts:
        shared.update(part)
    return shared


def unique_state(model: MTAModel, include: Callable[[str], bool] | None = None, copy: bool = True) -> dict:
    """The state dict (the entries whose name ``include`` accepts) with tied parameters once; ``copy``: each
    tensor cloned out contiguously (under ZeRO the parameters are views into one flat buffer, which safetensors
    refuses to write)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    unique = {name for name, _ in model.named_parameters()}
    return {
        k: v.detach().clone().contiguous() if copy else v
        for k, v in model.state_dict().items()
        if (k not in every or k in unique) and (include is None or include(k))
    }


@dataclass
class SavedModel:
    """A saved MTA model as read from disk, before a model is built from it."""

    directory: Path
    stage: int
    mta: MTAConfig
    model_cls: type
    base_config: Any
    state: dict


def _read_meta(directory: Path) -> dict[str, Any]:
    for name in (MTA_CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name}: missing; not a saved MTA model directory")
    meta = json.loads((directory / MTA_CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{directory / MTA_CONFIG_FILE}: format_version {meta.get('format_version')!r}, "
            f"expected one of {list(READABLE_VERSIONS)}"
        )
    backbone = _backbone_config_path(directory, meta["format_version"])
    if not backbone.is_file():
        raise FileNotFoundError(f"{backbone}: missing; not a saved MTA model directory")
    return meta


def _backbone_config_path(directory: Path, version: int) -> Path:
    return directory / ("config.json" if version == 1 else BACKBONE_CONFIG_FILE)


def read_saved_config(directory: str | Path) -> tuple[int, MTAConfig]:
    """(stage, layer config) of a saved MTA model, without reading its weights."""
    meta = _read_meta(Path(directory))
    return meta["stage"], MTAConfig.from_dict(meta["mta"])


def read_saved_model(directory: str | Path) -> SavedModel:
    """Read and check a saved MTA model directory (configs + full ep_size-1 state dict)."""
    directory = Path(directory)
    meta = _read_meta(directory)
    arch = meta["architecture"]
    model_cls = getattr(transformers, arch, None)
    if model_cls is None:
        raise ValueError(f"{directory / MTA_CONFIG_FILE}: architecture {arch!r} is not a transformers class")
    backbone_config = transformers.AutoConfig.from_pretrained(
        str(_backbone_config_path(directory, meta["format_version"]))
    )
    return SavedModel(
        directory,
        meta["stage"],
        MTAConfig.from_dict(meta["mta"]),
        model_cls,
        backbone_config,
        read_weights(directory / WEIGHTS_FILE),
    )


def read_weights(path: Path) -> dict:
    """A safetensors file's tensors; a missing, truncated or altered file is a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the export is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(
            f"{path}: not a readable safetensors file ({exc}); the file is damaged — export the model again"
        ) from None


def load_saved_state(
    model: MTAModel, saved: SavedModel, state: dict, allow_missing: Callable[[MTAModel, str], bool] | None = None
) -> MTAModel:
    """Load ``state`` (a full, all-adapters state dict) into ``model``, built for ``saved``'s backbone and stage
    (its ep_size decides which adapters this rank keeps); ``allow_missing`` names keys that may be absent (left at
    their initial values). Shapes or keys that do not fit are a ValueError naming the files."""
    state = _local_experts_only(model, state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit (e.g. an edited num_experts or adapter_dim)
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise ValueError(
            f"{saved.directory / WEIGHTS_FILE}: weights do not fit the model that "
            f"{saved.directory / MTA_CONFIG_FILE} describes ({first})"
        ) from None
    missing = [k for k in _untied(model, missing, state) if allow_missing is None or not allow_missing(model, k)]
    if missing or unexpected:
        raise ValueError(
            f"{saved.directory / WEIGHTS_FILE}: weights do not match the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


def _untied(model: MTAModel, missing: list[str], state: dict) -> list[str]:
    """The missing keys that are not the same tensor as a loaded key (tied embeddings are saved once)."""
    names_by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_param.setdefault(id(param), []).append(name)
    aliases = {name: names for names in names_by_param.values() for name in names}
    return [k for k in missing if not any(other in state for other in aliases.get(k, ()) if other != k)]


def _local_experts_only(model: MTAModel, state: dict) -> dict:
    """Map a full (all-experts) state dict onto this rank's local expert ids."""
    # "<layer path>.deepspeed_moe.experts.deepspeed_experts." -> {global id: local id}
    local = {
        f"{name}.deepspeed_moe.experts.deepspeed_experts.": {g: i for i, g in enumerate(module.global_expert_ids())}
        for name, module in model.named_modules()
        if isinstance(module, MTALayer)
    }
    out = {}
    for key, value in state.items():
        m = _EXPERT_KEY.match(key)
        if not m:
            out[key] = value
            continue
        ids = local.get(m.group(1), {})
        if int(m.group(2)) in ids:
            out[f"{m.group(1)}{ids[int(m.group(2))]}{m.group(3)}"] = value
    return out
