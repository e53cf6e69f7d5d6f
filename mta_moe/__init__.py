"""mta_moe: Mixture-of-Task-Adapters (ALTER) on DeepSpeed MoE for small multi-task language models."""
from .config import ConfigError, MTAConfig, load_ds_config
from .modeling import LayerRouting, MTALayer, SequenceRouting, TaskWeightSelector

__version__ = "0.1.0"
__all__ = ["ConfigError", "LayerRouting", "MTAConfig", "MTALayer", "SequenceRouting", "TaskWeightSelector",
           "load_ds_config", "__version__"]
