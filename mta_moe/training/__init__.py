"""Training utilities: optimizer parameter groups for DeepSpeed MoE engines."""
from .param_groups import optimizer_param_groups

__all__ = ["optimizer_param_groups"]
