"""All-reduce for the small bookkeeping tensors (losses, counts, routing statistics) kept on the CPU.

NCCL reduces only CUDA tensors, gloo both: under NCCL the tensor travels to this rank's GPU and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> torch.Tensor:
    """Reduce ``tensor`` in place over ``group`` (default: all ranks) wherever it lives; returns it."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if tensor.device.type == "cpu" and dist.get_backend(group) == "nccl":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved, op=op, group=group)
        tensor.copy_(moved.cpu())
    else:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor
