"""The Python mirror of ``custom_ops/include/poolexport/kernel_abi.h``.

Kernel names, parameter lists and the launch-grid rule, written once here and used by
the TensorRT AOT plugins, by the PTX signature check and by the GPU test that launches the
same PTX through CuPy. ``kernel_abi.h`` is the truth; ``tests/test_tensorrt_ptx.py``
checks this file against the ``.entry`` signatures nvcc emits from it.
"""
from __future__ import annotations

import struct

BLOCK = 256  # POOLEXPORT_BLOCK
MAX_GRID = 65535  # POOLEXPORT_MAX_GRID
MAX_REDUCE_RANK = 6  # d0..d5

WINDOW_PARAMS = (
    "N", "C", "in_d", "in_h", "in_w", "out_d", "out_h", "out_w", "k_d", "k_h", "k_w",
    "s_d", "s_h", "s_w", "dil_d", "dil_h", "dil_w", "pad_d", "pad_h", "pad_w",
)
REDUCE_PARAMS = ("rank", "d0", "d1", "d2", "d3", "d4", "d5", "reduce_mask")
SOFT_PARAMS = ("beta_bits",)
STOCHASTIC_PARAMS = ("sample", "seed_lo", "seed_hi")
# adaPool family: Beta's (or a mask's) shape in the 5-D view of its target (kernel_abi.h)
BETA_PARAMS = ("b_n", "b_c", "b_d", "b_h", "b_w")
UNPOOL_PARAMS = ("N", "C", "in_d", "in_h", "in_w", "out_d", "out_h", "out_w", "me_n", "me_c", "mm_n", "mm_c")

# op type (ONNX node = TensorRT plugin name) -> (kernel stem, int32 scalar parameters)
KERNELS = {
    "SoftPool": ("poolexport_soft_pool", WINDOW_PARAMS + SOFT_PARAMS),
    "StochasticPool": ("poolexport_stochastic_pool", WINDOW_PARAMS + STOCHASTIC_PARAMS),
    "ReduceSoftPool": ("poolexport_reduce_soft_pool", REDUCE_PARAMS + SOFT_PARAMS),
    "ReduceStochasticPool": ("poolexport_reduce_stochastic_pool", REDUCE_PARAMS + STOCHASTIC_PARAMS),
    "EdscwPool": ("poolexport_edscw_pool", WINDOW_PARAMS),
    "IdwPool": ("poolexport_idw_pool", WINDOW_PARAMS),
    "AdaPool": ("poolexport_ada_pool", WINDOW_PARAMS + BETA_PARAMS),
    "AdaUnpool": ("poolexport_ada_unpool", UNPOOL_PARAMS + BETA_PARAMS),
}
# input pointers in launch order (the ONNX node's inputs); every other op takes X alone
INPUTS = {"AdaPool": ("X", "Beta"), "AdaUnpool": ("X", "MaskEdscw", "MaskEm", "Beta")}
DTYPE_SUFFIX = {"float32": "f32", "float16": "f16"}


def kernel_name(op: str, dtype: str) -> str:
    """Entry point name, e.g. ``poolexport_soft_pool_f16``."""
    if op not in KERNELS:
        raise ValueError(f"{op}: not a poolexport op; expected one of {sorted(KERNELS)}")
    if dtype not in DTYPE_SUFFIX:
        raise ValueError(f"{op}: dtype must be float32 or float16, got {dtype!r}")
    return f"{KERNELS[op][0]}_{DTYPE_SUFFIX[dtype]}"


def kernel_inputs(op: str) -> tuple[str, ...]:
    """The entry point's input pointers, in order."""
    return INPUTS.get(op, ("X",))


def kernel_scalars(op: str) -> tuple[str, ...]:
    """The entry point's int32 scalar parameters (TensorRT's SymInt32 extra arguments)."""
    return KERNELS[op][1]


def kernel_params(op: str) -> tuple[str, ...]:
    """Full parameter list of the entry point: input pointers, int32 scalars, output pointer."""
    return kernel_inputs(op) + KERNELS[op][1] + ("Y",)


def all_kernel_names() -> list[str]:
    return [kernel_name(op, dt) for op in KERNELS for dt in DTYPE_SUFFIX]


def launch_grid(total, cdiv=None, minimum=None, maximum=None):
    """grid_x = min(cdiv(total, 256), 65535), at least 1; ``total`` counts threads wanted:
    the outputs, times ``reduce_lanes`` for the reductions (``shapes.launch_total``).

    The header says "no launch when total == 0"; TensorRT always launches an AOT kernel,
    so the grid is clamped to 1 (the kernels loop grid-stride over ``total`` elements, so
    one block over zero elements writes nothing). Works on ints and, given TensorRT's
    ``cdiv``/``min``/``max``, on symbolic expressions.
    """
    if cdiv is None:
        return max(min((int(total) + BLOCK - 1) // BLOCK, MAX_GRID), 1)
    return maximum(minimum(cdiv(total, BLOCK), MAX_GRID), 1)


def reduce_lanes(window, innermost_reduced: bool, sample: bool, floordiv=None, minimum=None):
    """Threads per output of a reduction (``reduce_lanes`` in reduce.h): 1, or for the soft
    and expectation modes over the innermost axis 32 (window >= 32) or 256 (>= 1024).

    Works on ints and, given ``//`` and TensorRT's ``min``, on a symbolic window size
    (1 + 31 * [window >= 32] + 224 * [window >= 1024], with [w >= n] = min(w // n, 1)).
    """
    if sample or not innermost_reduced:
        return 1
    if minimum is None:
        window = int(window)
        return 256 if window >= 1024 else (32 if window >= 32 else 1)
    return minimum(window // 32, 1) * 31 + minimum(window // 1024, 1) * 224 + 1


def to_int32(value: int) -> int:
    """Two's-complement reinterpretation of the low 32 bits as a signed int32."""
    value = int(value) & 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def float_bits(value: float) -> int:
    """float32 bit pattern of ``value`` as a signed int32 (the kernels' ``beta_bits``)."""
    return struct.unpack("<i", struct.pack("<f", float(value)))[0]


def seed_words(seed: int) -> tuple[int, int]:
    """(seed_lo, seed_hi): low and high 32 bits of the int64 seed, as signed int32."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return to_int32(s & 0xFFFFFFFF), to_int32(s >> 32)
