"""Bottleneck adapters on grouped GEMMs: a fixed-shape dispatch with no host synchronisation (ep_size 1).

The routes (sequence, adapter) are sorted by adapter on the device; the adapters' weights are stacked as
``[E, d, r]`` / ``[E, r, d]`` and the two bottleneck matmuls run as two ``torch._grouped_mm`` calls whose
group boundaries are a device tensor of token offsets. The routing weight is applied inside the r-wide
bottleneck and the combine is one out-of-place ``index_add``. Every shape depends only on the batch's
shape, never on how many sequences an adapter received, so no ``.item()``/``.tolist()`` is needed and
the layer can be compiled whole (``torch.compile(fullgraph=True)``) or captured in a CUDA graph.

Where the kernel is missing for the device and dtype (:func:`missing_kernel`: on CUDA bfloat16 from compute
capability 9.0; when compiling, its shape rules accept bfloat16 only) or the dimensions are not 16-byte aligned,
the caller takes the gathered-weight form of :mod:`.batched_adapters` or the per-adapter loop of :mod:`.dispatch`
(:func:`.dispatch.choose_form`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..logs import get_logger
from .adapters import ACTIVATION_FUNCTIONS, BottleneckAdapter

log = get_logger(__name__)
_PROBED: dict[tuple[str, torch.dtype], bool] = {}
# On CPU in eager mode, above this many bytes of gathered tokens the per-adapter loop is faster: glibc serves
# allocations over 32 MiB with mmap and unmaps them on free, so the few large buffers of this form are
# page-faulted in again every step, while the loop's per-adapter blocks stay in the heap (measured on 2 cores,
# d 768, E 8, k 2: 1.05x faster than the loop at 8k tokens (48 MiB), 0.63-0.79x at 32k tokens (192 MiB), and
# 1.06x at 32k with MALLOC_MMAP_MAX_=0; benchmarks/layer_dispatch.py).
CPU_EAGER_MAX_BYTES = 64 << 20
# the dtypes torch._grouped_mm (torch >= 2.9) has CPU kernels for
CPU_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def usable(experts: nn.ModuleList, hidden_states: Tensor, routes_per_sequence: int = 1) -> bool:
    """Whether :func:`grouped_gemm_mixture` should run these experts on ``hidden_states``: the kernel serves the
    device and dtype, the widths are aligned, and (CPU, eager) the gathered tokens fit :data:`CPU_EAGER_MAX_BYTES`."""
    if not hasattr(torch, "_grouped_mm") or not bottlenecks_like(experts, hidden_states):
        return False
    first, dtype = experts[0], hidden_states.dtype
    align = 16 // hidden_states.element_size()
    if first.down.in_features % align or first.down.out_features % align:
        return False
    gathered = hidden_states.numel() * hidden_states.element_size() * routes_per_sequence
    if not fits_cpu_eager(gathered, hidden_states.device):
        return False
    return kernel_supported(hidden_states.device, dtype)


def bottlenecks_like(experts: nn.ModuleList, hidden_states: Tensor) -> bool:
    """Bottleneck experts whose weights share the device and dtype of ``hidden_states`` (what both fixed-shape
    forms need)."""
    if len(experts) == 0 or not all(isinstance(e, BottleneckAdapter) for e in experts):
        return False
    weight = experts[0].down.weight
    return weight.dtype == hidden_states.dtype and weight.device == hidden_states.device


def fits_cpu_eager(nbytes: int, device: torch.device) -> bool:
    """False only on CPU in eager mode for buffers over :data:`CPU_EAGER_MAX_BYTES` (where the loop is faster)."""
    return device.type != "cpu" or torch.compiler.is_compiling() or nbytes <= CPU_EAGER_MAX_BYTES


def kernel_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` computes correct values and gradients on ``device`` in ``dtype``.

    When compiling, the kernel's shape rules (its meta function) take bfloat16 only. In eager mode, where
    :func:`missing_kernel` finds a kernel, it is probed once per (device type, dtype): a tiny product with an
    empty group, checked against per-group matmuls, forward and backward.
    """
    if torch.compiler.is_compiling():
        return dtype == torch.bfloat16
    key = (device.type, dtype)
    reason = None if key in _PROBED else missing_kernel(device, dtype)
    if reason is not None:
        log.info(f"grouped GEMMs unavailable on {device.type} in {dtype} ({reason}): the layer takes another form")
        _PROBED[key] = False
    if key not in _PROBED:
        # the first call may come from inference (no_grad), from inside an activation-checkpointed block (its
        # saved-tensor hooks) or under autocast: the probe runs apart from all three
        with (
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(_keep, _keep),
            torch.autocast(device.type, enabled=False),
        ):
            _PROBED[key] = _probe(device, dtype)
    return _PROBED[key]


def _keep(tensor: Tensor) -> Tensor:
    return tensor


def _probe(device: torch.device, dtype: torch.dtype) -> bool:
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(24, 16, generator=gen).to(device, dtype).requires_grad_(True)
    b = torch.randn(3, 16, 8, generator=gen).to(device, dtype).requires_grad_(True)
    grad = torch.randn(24, 8, generator=gen).to(device, dtype)
    ends = [8, 8, 24]  # the second group is empty
    result = _kernel_product(a, b, ends, grad)
    starts = [0, *ends[:-1]]
    ref = torch.cat([a[s:e] @ b[i] for i, (s, e) in enumerate(zip(starts, ends))])
    reference = (ref, *torch.autograd.grad(ref, (a, b), grad))
    tol = 1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    agree = all(torch.allclose(x.float(), y.float(), atol=tol, rtol=tol) for x, y in zip(result, reference))
    if not agree:
        log.warning(
            f"torch._grouped_mm disagrees with per-group matmuls on {device.type} in {dtype}: "
            "not used; the layer takes another form"
        )
    return agree


def missing_kernel(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``torch._grouped_mm`` has no host-sync-free kernel for ``device`` and ``dtype``; None where it has one."""
    if torch.torch_version.TorchVersion(torch.__version__) < "2.9":
        return f"torch {torch.__version__}: its grouped GEMMs need 2.9 or later"
    if device.type == "cpu":
        return None if dtype in CPU_KERNEL_DTYPES else f"no CPU kernel for {dtype}"
    if device.type != "cuda":
        return f"no kernel on {device.type}"
    if dtype != torch.bfloat16:
        return "its CUDA kernel takes bfloat16 only"
    if torch.cuda.get_device_capability(device) < (9, 0):
        return "below compute capability 9.0 torch loops over the groups with a host sync"
    return None


def _kernel_product(a: Tensor, b: Tensor, ends: list[int], grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``torch._grouped_mm(a, b)`` with groups ending at ``ends`` and its gradients for ``grad``."""
    try:
        out = torch._grouped_mm(a, b, offs=torch.tensor(ends, device=a.device, dtype=torch.int32))
        return (out, *torch.autograd.grad(out, (a, b), grad))
    except RuntimeError as exc:  # (NotImplementedError too) missing_kernel() found none missing, yet the call failed
        raise RuntimeError(
            f"torch._grouped_mm failed on {a.device.type} in {a.dtype} ({str(exc).splitlines()[0]}); "
            "set mta.dispatch to 'gathered_weights' or 'loop' to run without it"
        ) from exc


def route_counts(flat_indices: Tensor, num_experts: int) -> Tensor:
    """Routes per adapter [E] of the flattened [B·k] adapter choices, on the device (no host read)."""
    ones = torch.ones_like(flat_indices)
    return torch.zeros(num_experts, dtype=torch.long, device=flat_indices.device).scatter_add_(0, flat_indices, ones)


def up_bias_per_sequence(indices: Tensor, weights: Tensor, up_bias: Tensor) -> Tensor:
    """``Σ_j w_bj · b_up[i_bj]`` [B, d] for ``indices``/``weights`` [B, k] and stacked biases ``up_bias`` [E, d]."""
    dense = weights.new_zeros(indices.size(0), up_bias.size(0)).scatter(1, indices, weights).to(up_bias.dtype)
    return dense @ up_bias


def stacked_weights(experts: nn.ModuleList) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """The adapters' ``down`` as ``[E, d, r]``, its bias ``[E, r]``, ``up`` as ``[E, r, d]``, its bias ``[E, d]``.

    Each expert keeps its own parameters (DeepSpeed's expert layout, checkpoints, parameter groups); the
    stacks are built per forward (E·d·r elements each) and their backward hands each expert its slice.
    """
    down = torch.stack([e.down.weight for e in experts]).transpose(1, 2)
    up = torch.stack([e.up.weight for e in experts]).transpose(1, 2)
    has_bias = experts[0].down.bias is not None
    down_b = torch.stack([e.down.bias for e in experts]) if has_bias else None
    up_b = torch.stack([e.up.bias for e in experts]) if has_bias else None
    return down, down_b, up, up_b


def grouped_gemm_mixture(
    hidden_states: Tensor, indices: Tensor, weights: Tensor, experts: nn.ModuleList
) -> tuple[Tensor, Tensor]:
    """``Σ_j w_bj · A_{i_bj}(x_b)`` per sequence with ``indices``/``weights`` [B, k]; also tokens per expert [E]."""
    batch, seq_len, hidden = hidden_states.shape
    k, num_experts = indices.size(1), len(experts)
    flat = indices.reshape(-1)
    route_experts, order = torch.sort(flat, stable=True)
    sequences = order // k  # route i = (sequence i // k, choice i % k)
    route_weights = weights.reshape(-1).index_select(0, order)
    counts = route_counts(flat, num_experts)
    offsets = (counts.cumsum(0) * seq_len).to(torch.int32)
    down, down_b, up, up_b = stacked_weights(experts)
    routes = flat.numel()
    tokens = hidden_states.index_select(0, sequences).reshape(routes * seq_len, hidden)
    h = torch._grouped_mm(tokens, down, offs=offsets).view(routes, seq_len, -1)
    if down_b is not None:
        h = h + down_b.index_select(0, route_experts).unsqueeze(1)
    scale = route_weights.to(h.dtype).view(routes, 1, 1)
    h = ACTIVATION_FUNCTIONS[experts[0].activation](h) * scale
    out = torch._grouped_mm(h.reshape(routes * seq_len, -1), up, offs=offsets).view(routes, seq_len, hidden)
    if up_b is None:
        start = hidden_states.new_zeros(batch, seq_len, hidden)
    else:  # the up-projection biases once per sequence, the buffer the routes are added onto
        start = up_bias_per_sequence(indices, weights, up_b).unsqueeze(1).expand(batch, seq_len, hidden)
    return start.index_add(0, sequences, out), counts * seq_len
