"""MTA modeling: adapters (experts), the Task Weight Selector gate, stage-2 parts and the layer."""

from .accounting import format_parameter_counts, parameter_counts
from .adapters import BottleneckAdapter
from .backbones import SUPPORTED_MODEL_TYPES
from .gate import SequenceRouting, TaskWeightSelector, sequence_representation, softmax_t_bias
from .inject import MTAModel
from .layer import COMPONENT_PATTERNS, LayerRouting, MTALayer, component_of
from .routing_stats import RoutingSnapshot, RoutingStatistics

__all__ = [
    "BottleneckAdapter",
    "COMPONENT_PATTERNS",
    "LayerRouting",
    "MTALayer",
    "MTAModel",
    "RoutingSnapshot",
    "RoutingStatistics",
    "SUPPORTED_MODEL_TYPES",
    "SequenceRouting",
    "TaskWeightSelector",
    "component_of",
    "format_parameter_counts",
    "parameter_counts",
    "sequence_representation",
    "softmax_t_bias",
]
