"""The layers' eager inference path: one internal op whose window arguments come packed
in one int64 tensor.

A small layer (an SE/CBAM descriptor on a 7x7 map, any layer at batch 1) costs less to
compute than torch's Python binding costs to convert its arguments: four ``int[]`` and a
``str`` take several microseconds, one tensor a fraction of one. So for a call that
autograd, tracing and dispatch modes cannot see (:func:`eager`), ``poolexport.functional``
hands the compiled CPU kernel (``custom_ops/torch/stable_ops.cc``,
``packed_window_kernel``) the window arguments it has already checked and packed once
per layer (:func:`pack_window`). Everything else (training, torch.compile, torch.export,
modes, CUDA, a torch without the compiled registration) calls the public ops, which stay
the only ones that are exported, traced or differentiated.

Layout, for rank r: ``[r, kernel_shape (r), strides (r), pads (2r), dilations (r),
ceil_mode, auto_pad code]``, auto_pad codes 0 NOTSET, 1 SAME_UPPER, 2 SAME_LOWER, 3 VALID.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._registry import LIB, compiled_cpu_kernels

AUTO_PAD_CODES = {"NOTSET": 0, "SAME_UPPER": 1, "SAME_LOWER": 2, "VALID": 3}
MODE_CODES = {"soft": 0, "expectation": 1, "sample": 2}  # 0 is SoftPool; 1, 2 StochasticPool's modes
_AUTO_PAD_NAMES = {v: k for k, v in AUTO_PAD_CODES.items()}

LIB.define("_window_pool_packed(Tensor X, Tensor window, float beta, int mode, int seed) -> Tensor")
LIB.define("_reference__window_pool_packed(Tensor X, Tensor window, float beta, int mode, int seed) -> Tensor")


def unpack_window(window: torch.Tensor) -> tuple:
    """The public ops' window arguments from a packed tensor (the inverse of pack_window)."""
    v = window.tolist()
    r = v[0]
    if not 1 <= r <= 3 or len(v) != 5 * r + 3:
        raise ValueError("_window_pool_packed: window must hold 5 * rank + 3 values for rank 1 to 3")
    kernel, strides = v[1:1 + r], v[1 + r:1 + 2 * r]
    pads, dilations = v[1 + 2 * r:1 + 4 * r], v[1 + 4 * r:1 + 5 * r]
    ceil_mode, code = bool(v[1 + 5 * r]), v[2 + 5 * r]
    return kernel, strides, pads, dilations, ceil_mode, _AUTO_PAD_NAMES.get(code, "?")


def _reference(X, window, beta, mode, seed):
    """The pure-torch twin, which the compiled kernel hands float64/bfloat16 and the
    reference_kernels() case to: the public ops' references on the unpacked arguments."""
    args = unpack_window(window)
    if mode == 0:
        return torch.ops.poolexport._reference_soft_pool(X, *args, beta)
    if mode in (1, 2):
        return torch.ops.poolexport._reference_stochastic_pool(X, *args, "sample" if mode == 2 else "expectation",
                                                               seed)
    raise ValueError(f"_window_pool_packed: mode must be 0 (soft), 1 (expectation) or 2 (sample), got {mode}")


LIB.impl("_reference__window_pool_packed", _reference, "CompositeExplicitAutograd")

# the op exists for the compiled kernel only: without it the layers call the public ops
AVAILABLE = compiled_cpu_kernels()[0]
window_pool_packed = torch.ops.poolexport._window_pool_packed.default._op if AVAILABLE else None


def pack_window(kernel_shape, strides, pads, dilations, ceil_mode: bool, auto_pad: str) -> Optional[torch.Tensor]:
    """Checked window arguments as the packed tensor, or None where the packed op is
    unavailable."""
    if not AVAILABLE:
        return None
    values = [len(kernel_shape), *kernel_shape, *strides, *pads, *dilations, int(ceil_mode), AUTO_PAD_CODES[auto_pad]]
    return torch.tensor(values, dtype=torch.int64)


_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._len_torch_function_stack


def eager(x: torch.Tensor) -> bool:
    """Whether a call on x may take the packed op: a CPU tensor that autograd will not
    track, with no dispatch or function mode that would see the internal op. The caller
    has already checked that x is a plain tensor outside torch.compile and tracing."""
    return (x.is_cpu and not (x.requires_grad and torch.is_grad_enabled())
            and not _dispatch_modes() and not _function_modes())
