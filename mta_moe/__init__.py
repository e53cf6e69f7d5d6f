"""mta_moe: Mixture-of-Task-Adapters (ALTER) on DeepSpeed MoE for small multi-task language models.

The names below load on first use, so ``import mta_moe`` (and ``mta-moe --help``) does not import DeepSpeed.
"""

from __future__ import annotations

import importlib
from typing import Any

from .auto_registration import install as _install_auto_registration

__version__ = "0.1.0"
_LAZY = {
    "ConfigError": "mta_moe.config",
    "MTAConfig": "mta_moe.config",
    "load_ds_config": "mta_moe.config_files",
    "LayerRouting": "mta_moe.modeling",
    "MTALayer": "mta_moe.modeling",
    "MTAModel": "mta_moe.modeling",
    "SequenceRouting": "mta_moe.modeling",
    "TaskWeightSelector": "mta_moe.modeling",
    "format_parameter_counts": "mta_moe.modeling",
    "parameter_counts": "mta_moe.modeling",
    "save_adapters": "mta_moe.modeling.adapter_files",
    "load_adapters": "mta_moe.modeling.adapter_files",
    "MergeError": "mta_moe.merging",
    "export_task": "mta_moe.merging",
    "fold_task": "mta_moe.merging",
}
__all__ = [*_LAZY, "__version__"]

_install_auto_registration()  # transformers' Auto classes load exports (mta_moe/auto_registration.py)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mta_moe' has no attribute {name!r}")
