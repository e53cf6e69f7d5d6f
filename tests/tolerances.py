"""Tolerances set from the dtype and the computation, not from one CPU.

Two computations that are equal in exact arithmetic agree in floating point only up to the rounding of the sums
they do, and how a CPU's kernels order those sums depends on its instruction set, its BLAS path (MKL takes other
code on AMD than on Intel) and, in PyTorch, even on whether a weight requires grad. So comparisons between two
*different* computations (another model object, another shape, checkpointed vs plain backward) use these
helpers; ``torch.equal`` is kept for the same computation repeated (resume, frozen parameters, a parameter whose
routing weight is exactly zero).
"""

import torch

# unit roundoff per dtype, times a margin for the depth of the networks the tests build (a few blocks, sums over
# at most a few thousand terms): errors of u·sqrt(n) per sum, compounding over ~10 layers
_EPS_MARGIN = 100


def scaled_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for two fp computations of one tensor that differ only in summation order."""
    return torch.finfo(dtype).eps * _EPS_MARGIN


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rtol: float | None = None) -> None:
    """max |actual - expected| <= rtol * max |expected|: elementwise relative checks fail on entries that cancel
    to near zero (a gradient element of 1e-9 in a tensor of norm 1 carries the whole tensor's rounding)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    rtol = scaled_tolerance(expected.dtype) if rtol is None else rtol
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= rtol * max(scale, torch.finfo(expected.dtype).tiny), f"max error {error:.3g} above {rtol:.3g} x scale {scale:.3g}"
