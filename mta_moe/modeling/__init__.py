"""MTA modeling: adapters (experts), the Task Weight Selector gate, stage-2 parts and the layer."""
from .adapters import BottleneckAdapter
from .gate import SequenceRouting, TaskWeightSelector, sequence_representation, softmax_t_bias
from .layer import COMPONENT_PATTERNS, LayerRouting, MTALayer, component_of
from .routing_stats import RoutingSnapshot, RoutingStatistics

__all__ = [
    "BottleneckAdapter", "COMPONENT_PATTERNS", "LayerRouting", "MTALayer", "RoutingSnapshot", "RoutingStatistics",
    "SequenceRouting", "TaskWeightSelector", "component_of", "sequence_representation", "softmax_t_bias",
]
