"""mta_moe: Mixture-of-Task-Adapters (ALTER) on DeepSpeed MoE for small multi-task language models."""
from .config import ConfigError, MTAConfig, load_ds_config
from .modeling import (LayerRouting, MTALayer, MTAModel, SequenceRouting, TaskWeightSelector,
                       format_parameter_counts, parameter_counts)

__version__ = "0.1.0"
__all__ = ["ConfigError", "LayerRouting", "MTAConfig", "MTALayer", "MTAModel", "SequenceRouting",
           "TaskWeightSelector", "format_parameter_counts", "load_ds_config", "parameter_counts", "__version__"]
