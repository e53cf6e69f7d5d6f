"""``import mta_moe`` registers the ``mta_moe`` model type with transformers' Auto classes, so
``AutoConfig`` / ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification``
``.from_pretrained(export)`` return the MTA model (``MTAModel.from_pretrained``).

Importing transformers' Auto classes costs seconds (they pull in torch), and ``import mta_moe`` stays instant: when
transformers is already imported the registration happens at once, otherwise right after transformers imports its
Auto modules (an import hook that only watches those two modules)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any, Callable

from .hub_format import AUTO_CLASSES, MODEL_TYPE

CONFIG_MODULE = "transformers.models.auto.configuration_auto"
MODELING_MODULE = "transformers.models.auto.modeling_auto"
# keyword arguments the Auto classes pass on for hub downloads; an export is a local folder, so they do not apply
_HUB_KWARGS = {
    "cache_dir",
    "force_download",
    "local_files_only",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
    "adapter_kwargs",
    "code_revision",
    "_commit_hash",
    "_from_auto",
}
_classes: dict[str, Any] = {}


def export_config_class():
    """The PreTrainedConfig subclass for an export's config.json (built on first use: it needs transformers; the
    export's remote-code module imports it)."""
    if "config" not in _classes:
        from transformers import PreTrainedConfig

        class MTAExportConfig(PreTrainedConfig):
            """config.json of an mta_moe export: the marker; the backbone's own config is backbone_config.json."""

            model_type = MODEL_TYPE

        MTAExportConfig.__qualname__ = "MTAExportConfig"
        MTAExportConfig.__module__ = __name__
        _classes["config"] = MTAExportConfig
    return _classes["config"]


def loader_class(auto_name: str):
    """What ``auto_name`` calls ``from_pretrained`` on (the export's remote-code module imports it): loads the
    export with ``MTAModel.from_pretrained`` and checks that its backbone is a model of that Auto class (a T5 export
    through AutoModelForCausalLM is an error)."""
    if auto_name not in _classes:
        config_class = export_config_class()

        def from_pretrained(cls, path, *args, config=None, **kwargs):
            return _load(auto_name, path, args, kwargs)

        def register_for_auto_class(cls, auto_class=None):  # called by transformers on remote-code classes
            return None

        _classes[auto_name] = type(
            f"MTAModelFor{auto_name[len('AutoModelFor') :]}",
            (),
            {
                "config_class": config_class,
                "from_pretrained": classmethod(from_pretrained),
                "register_for_auto_class": classmethod(register_for_auto_class),
                "__doc__": f"{auto_name}.from_pretrained(export) -> mta_moe.MTAModel",
            },
        )
    return _classes[auto_name]


def auto_class_for(backbone_config: Any) -> str:
    """The name of the Auto class that loads an export of a backbone with this config (first of AUTO_CLASSES); a
    config of a sequence classifier (a per-task folder of an encoder with task heads): its Auto class."""
    import transformers

    if any(
        name.endswith("ForSequenceClassification") for name in getattr(backbone_config, "architectures", None) or []
    ):
        return "AutoModelForSequenceClassification"
    for name in AUTO_CLASSES:
        if type(backbone_config) in getattr(transformers, name)._model_mapping:
            return name
    return "AutoModel"


def _load(auto_name: str, path: Any, args: tuple, kwargs: dict[str, Any]):
    import transformers

    from .modeling import MTAModel

    extra = sorted(k for k, v in kwargs.items() if k not in _HUB_KWARGS | {"dtype", "torch_dtype"} and v is not None)
    if args or extra:
        raise ValueError(
            f"{auto_name}.from_pretrained({path}): an mta_moe export takes no "
            f"{extra[0] if extra else 'positional'} argument (dtype and torch_dtype only)"
        )
    model = MTAModel.from_pretrained(path)
    mapping = getattr(transformers, auto_name)._model_mapping
    backbone = model.base_model.config
    if type(backbone) not in mapping:
        fits = [name for name in AUTO_CLASSES if type(backbone) in getattr(transformers, name)._model_mapping]
        raise ValueError(
            f"{path}: the export's backbone is {type(model.base_model).__name__}; load it with "
            f"{' or '.join(fits) or 'mta_moe.MTAModel.from_pretrained'}, not {auto_name}"
        )
    dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
    if dtype is not None and dtype != "auto":
        import torch

        model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model


def _register_config(module: ModuleType) -> None:
    module.AutoConfig.register(MODEL_TYPE, export_config_class(), exist_ok=True)


def _register_models(module: ModuleType) -> None:
    for name in AUTO_CLASSES:
        getattr(module, name).register(export_config_class(), loader_class(name), exist_ok=True)


_HOOKS: dict[str, Callable[[ModuleType], None]] = {CONFIG_MODULE: _register_config, MODELING_MODULE: _register_models}


def _run(name: str, module: ModuleType) -> None:
    try:
        _HOOKS[name](module)
    except Exception as exc:  # a transformers release that changed its Auto API must not break transformers itself
        warnings.warn(
            f"mta_moe: could not register the {MODEL_TYPE} model type with transformers ({exc}); load "
            f"exports with mta_moe.MTAModel.from_pretrained",
            stacklevel=2,
        )


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds the watched modules through the other finders and runs their hook once they have executed."""

    def find_spec(self, name, path, target=None):
        if name not in _HOOKS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, name)
        return spec


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, name: str):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        _run(self.name, module)

    def __getattr__(self, attr: str) -> Any:  # get_source, get_filename, ... of the file loader
        return getattr(self.inner, attr)


def install() -> None:
    """Register now for the Auto modules already imported, and after import for the others (idempotent)."""
    pending = False
    for name in _HOOKS:
        module = sys.modules.get(name)
        if module is not None:
            _run(name, module)
        else:
            pending = True
    if pending and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
