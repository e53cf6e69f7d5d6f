"""mta_moe: Mixture-of-Task-Adapters (ALTER) on DeepSpeed MoE for small multi-task language models."""
from .config import ConfigError, MTAConfig, load_ds_config
from .modeling import (LayerRouting, MTALayer, MTAModel, SequenceRouting, TaskWeightSelector,
                       format_parameter_counts, parameter_counts)

__version__ = "0.1.0"
__all__ = ["ConfigError", "LayerRouting", "MTAConfig", "MTALayer", "MTAModel", "format_parameter_counts",
           "parameter_counts", "SequenceRouting", "TaskWeightSelector",
           "load_ds_config", "__version__"]
