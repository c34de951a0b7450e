"""TensorRT plugins of the poolexport ops: ahead-of-time Python plugins over the shared PTX.

Each op of the ``poolexport`` ONNX domain becomes plugin ``poolexport::<OpType>``, version
"1": TensorRT's ONNX parser looks a node up by its op type plus the attributes
``plugin_namespace`` ("poolexport") and ``plugin_version``, and passes the node's other
attributes as plugin fields of the same names.

The plugin layer only declares shapes, types and the kernel launch (``tensorrt.plugin``,
TensorRT >= 10.9):

* ``register``: the output TensorDesc (symbolic shape from ``shapes.py``, same dtype);
* ``autotune``: float32 -> float32 and float16 -> float16, linear format;
* ``aot_impl``: (kernel name, PTX, ``KernelLaunchParams``, ``SymIntExprs``). TensorRT
  launches the kernel with the input pointer, these int32 scalars, then the output pointer
  (``kernel_abi.h``), so engines run without Python (trtexec, Triton). Attributes are not
  serialized into an AOT engine: everything the kernel needs is in those scalars.

No ``impl`` (JIT) is defined, so plugin creation always takes the AOT path.

The fields arrive as the ONNX parser makes them (onnx-tensorrt ``onnxOpImporters.cpp``,
``loadFields``/``copyField``): STRING as CHAR bytes with a trailing NUL, INT narrowed to
one int32, INTS as int32, FLOAT as float32. Hence:

* every numeric attribute is annotated as a numpy array: tensorrt.plugin 10.x converts a
  scalar annotation with ``int(ndarray)``, which numpy >= 2.4 rejects;
* strings lose the NUL here;
* the 64-bit ``seed`` of the op contract travels as two int32 fields, ``seed_lo`` and
  ``seed_hi`` (``prepare_onnx`` splits it), since an INT attribute keeps only 32 bits.

Deliberately no ``from __future__ import annotations``: tensorrt.plugin inspects the
annotations as objects (TensorDesc subclasses, ``numpy.typing.NDArray[...]``).
"""
from typing import List, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import abi, ptx, shapes
from ._import import import_tensorrt

NAMESPACE = "poolexport"
VERSION = "1"
# one object each, so annotations compare equal across decorators
Ints = npt.NDArray[np.int32]
Floats = npt.NDArray[np.float32]

# plugin fields in the order every decorated function declares them: the op schema's,
# with seed split into its two 32-bit words
ATTRS = {
    "SoftPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "beta"),
    "StochasticPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "mode", "seed_lo",
                       "seed_hi"),
    "ReduceSoftPool": ("axes", "keepdims", "beta"),
    "ReduceStochasticPool": ("axes", "keepdims", "mode", "seed_lo", "seed_hi"),
    "EdscwPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"),
    "IdwPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"),
    "AdaPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"),
    "AdaUnpool": (),
}
_KINDS = {"kernel_shape": "ints", "strides": "ints", "pads": "ints", "dilations": "ints", "axes": "ints",
          "ceil_mode": "int", "keepdims": "int", "seed_lo": "int", "seed_hi": "int", "auto_pad": "str", "mode": "str",
          "beta": "float"}

_registered = False


def join_seed(seed_lo: int, seed_hi: int) -> int:
    """The int64 seed from its two int32 words (the inverse of ``abi.seed_words``)."""
    s = (int(seed_hi) & 0xFFFFFFFF) << 32 | (int(seed_lo) & 0xFFFFFFFF)
    return s - (1 << 64) if s >= (1 << 63) else s


def _plain(op: str, values: dict) -> dict:
    """The fields as plain Python values, each checked against its attribute's kind, with
    ``seed_lo``/``seed_hi`` joined into ``seed`` (the argument ``shapes.kernel_args`` takes).

    TensorRT passes the attributes to ``aot_impl`` by position, in the order of the fields
    it was given. The ONNX parser builds them by walking this plugin's field names (the
    registration order), never the node's attribute order, so a parsed node always
    matches; a field collection built by hand in another order would shift them.
    """
    out = {}
    for name, v in values.items():
        kind = _KINDS[name]
        ok = isinstance(v, str) if kind == "str" else (isinstance(v, np.ndarray) and (kind == "ints" or v.size == 1))
        if not ok:
            raise ValueError(
                f"{op}: field {name} received {type(v).__name__} {v!r}; the plugin fields must follow the order "
                f"{', '.join(ATTRS[op])} (TensorRT's ONNX parser does; poolexport.tensorrt.prepare_onnx writes them)"
            )
        if kind == "str":
            out[name] = v.rstrip("\0")  # the parser's copyField appends a NUL and counts it
        elif kind == "ints":
            out[name] = [int(x) for x in v.tolist()]
        else:
            out[name] = v.item() if kind == "float" else int(v.item())
    if "seed_lo" in out:
        out["seed"] = join_seed(out.pop("seed_lo"), out.pop("seed_hi"))
    return out


def _static(dims) -> bool:
    return not any(d.is_fake for d in dims) and all(d.is_constant for d in dims)


def _output_desc(trtp, op: str, X, attrs: dict):
    """X: the input TensorDesc, or the tuple of every input's (X first)."""
    inputs = X if isinstance(X, tuple) else (X,)
    attrs = _plain(op, attrs)
    dims = [list(t.shape_expr) for t in inputs]
    if dims[0] and all(_static(d) for d in dims):  # (a rank-0 Beta is static too)
        # static input shapes: check window spans and broadcasts now, with the integer rules
        ints = [[d.constant_value() for d in ds] for ds in dims]
        shapes.kernel_args(op, ints[0], attrs, others=ints[1:])
    _, out_shape = shapes.kernel_args(op, dims[0], attrs, shapes.trt_ops(trtp), dims[1:])
    return trtp.from_shape_expr(tuple(out_shape), dtype=inputs[0].dtype)


def _autotune(trtp, tensors: int = 2):
    # "|" pairs the options: every input and the output FP32, or every one FP16
    return [trtp.AutoTuneCombination(", ".join(["FP32|FP16"] * tensors), "LINEAR")]


def _aot(trt, trtp, op: str, X, attrs: dict, outputs):
    inputs = X if isinstance(X, tuple) else (X,)
    X = inputs[0]
    ops = shapes.trt_ops(trtp)
    attrs = _plain(op, attrs)
    others = [list(t.shape_expr) for t in inputs[1:]]
    args, _ = shapes.kernel_args(op, list(X.shape_expr), attrs, ops, others)
    total = shapes.launch_total(op, list(X.shape_expr), attrs, ops, others)
    dtype = "float16" if X.dtype == trt.DataType.HALF else "float32"
    launch = trtp.KernelLaunchParams()
    # the one grid rule of kernel_abi.h (abi.launch_grid), evaluated symbolically
    launch.grid_x = abi.launch_grid(total) if isinstance(total, int) else abi.launch_grid(total, ops.cdiv, ops.min, ops.max)
    launch.block_x = abi.BLOCK
    launch.shared_mem = 0
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(a) for a in args])
    return abi.kernel_name(op, dtype), ptx.load_ptx(), launch, extra


def register_plugins() -> None:
    """Register the plugins with TensorRT's plugin registry (idempotent)."""
    global _registered
    if _registered:
        return
    trt, trtp = import_tensorrt(plugin=True)
    ptx.check_driver(ptx.load_ptx())  # fail now, with the reason, rather than inside an engine build
    _define(trt, trtp)
    _registered = True


def _define(trt, trtp):
    # Signatures as tensorrt.plugin validates them (_validate.py, 10.9 and 11.4): register
    # (tensors, attributes) -> TensorDesc; autotune (tensors, [attributes], outputs);
    # aot_impl (tensors, attributes in registration order, outputs, tactic) -> 4-tuple.
    # aot_impl takes every attribute because TensorRT passes all of them positionally.
    AOTResult = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]
    Descs = Tuple[trtp.TensorDesc]
    Combos = List[trtp.AutoTuneCombination]

    # ---------------------------------------------------------------- SoftPool
    @trtp.register("poolexport::SoftPool")
    def soft_pool(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                  ceil_mode: Ints, auto_pad: str, beta: Floats) -> trtp.TensorDesc:
        return _output_desc(trtp, "SoftPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, beta=beta))

    @trtp.autotune("poolexport::SoftPool")
    def soft_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::SoftPool")
    def soft_pool_aot(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                      ceil_mode: Ints, auto_pad: str, beta: Floats, outputs: Descs, tactic: int) -> AOTResult:
        return _aot(trt, trtp, "SoftPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, beta=beta), outputs)

    # ---------------------------------------------------------------- StochasticPool
    @trtp.register("poolexport::StochasticPool")
    def stochastic_pool(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                        ceil_mode: Ints, auto_pad: str, mode: str, seed_lo: Ints, seed_hi: Ints) -> trtp.TensorDesc:
        return _output_desc(trtp, "StochasticPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, mode=mode, seed_lo=seed_lo, seed_hi=seed_hi))

    @trtp.autotune("poolexport::StochasticPool")
    def stochastic_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::StochasticPool")
    def stochastic_pool_aot(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                            ceil_mode: Ints, auto_pad: str, mode: str, seed_lo: Ints, seed_hi: Ints, outputs: Descs,
                            tactic: int) -> AOTResult:
        return _aot(trt, trtp, "StochasticPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, mode=mode, seed_lo=seed_lo, seed_hi=seed_hi), outputs)

    # ---------------------------------------------------------------- ReduceSoftPool
    @trtp.register("poolexport::ReduceSoftPool")
    def reduce_soft_pool(X: trtp.TensorDesc, axes: Ints, keepdims: Ints, beta: Floats) -> trtp.TensorDesc:
        return _output_desc(trtp, "ReduceSoftPool", X, dict(axes=axes, keepdims=keepdims, beta=beta))

    @trtp.autotune("poolexport::ReduceSoftPool")
    def reduce_soft_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::ReduceSoftPool")
    def reduce_soft_pool_aot(X: trtp.TensorDesc, axes: Ints, keepdims: Ints, beta: Floats, outputs: Descs,
                             tactic: int) -> AOTResult:
        return _aot(trt, trtp, "ReduceSoftPool", X, dict(axes=axes, keepdims=keepdims, beta=beta), outputs)

    # ---------------------------------------------------------------- ReduceStochasticPool
    @trtp.register("poolexport::ReduceStochasticPool")
    def reduce_stochastic_pool(X: trtp.TensorDesc, axes: Ints, keepdims: Ints, mode: str, seed_lo: Ints,
                               seed_hi: Ints) -> trtp.TensorDesc:
        return _output_desc(trtp, "ReduceStochasticPool", X, dict(axes=axes, keepdims=keepdims, mode=mode,
                                                                  seed_lo=seed_lo, seed_hi=seed_hi))

    @trtp.autotune("poolexport::ReduceStochasticPool")
    def reduce_stochastic_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::ReduceStochasticPool")
    def reduce_stochastic_pool_aot(X: trtp.TensorDesc, axes: Ints, keepdims: Ints, mode: str, seed_lo: Ints,
                                   seed_hi: Ints, outputs: Descs, tactic: int) -> AOTResult:
        return _aot(trt, trtp, "ReduceStochasticPool", X, dict(axes=axes, keepdims=keepdims, mode=mode,
                                                               seed_lo=seed_lo, seed_hi=seed_hi), outputs)

    # ---------------------------------------------------------------- adaPool family
    # EdscwPool and IdwPool: X and the window attributes; AdaPool adds its Beta input
    # (broadcast to the output); AdaUnpool has four inputs and no attribute.
    for op in ("EdscwPool", "IdwPool"):
        _define_ada_window(trt, trtp, op, AOTResult, Descs, Combos)

    @trtp.register("poolexport::AdaPool")
    def ada_pool(X: trtp.TensorDesc, Beta: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints,
                 dilations: Ints, ceil_mode: Ints, auto_pad: str) -> trtp.TensorDesc:
        return _output_desc(trtp, "AdaPool", (X, Beta), dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad))

    @trtp.autotune("poolexport::AdaPool")
    def ada_pool_autotune(X: trtp.TensorDesc, Beta: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp, 3)

    @trtp.aot_impl("poolexport::AdaPool")
    def ada_pool_aot(X: trtp.TensorDesc, Beta: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints,
                     dilations: Ints, ceil_mode: Ints, auto_pad: str, outputs: Descs, tactic: int) -> AOTResult:
        return _aot(trt, trtp, "AdaPool", (X, Beta), dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad), outputs)

    @trtp.register("poolexport::AdaUnpool")
    def ada_unpool(X: trtp.TensorDesc, MaskEdscw: trtp.TensorDesc, MaskEm: trtp.TensorDesc,
                   Beta: trtp.TensorDesc) -> trtp.TensorDesc:
        return _output_desc(trtp, "AdaUnpool", (X, MaskEdscw, MaskEm, Beta), {})

    @trtp.autotune("poolexport::AdaUnpool")
    def ada_unpool_autotune(X: trtp.TensorDesc, MaskEdscw: trtp.TensorDesc, MaskEm: trtp.TensorDesc,
                            Beta: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp, 5)

    @trtp.aot_impl("poolexport::AdaUnpool")
    def ada_unpool_aot(X: trtp.TensorDesc, MaskEdscw: trtp.TensorDesc, MaskEm: trtp.TensorDesc,
                       Beta: trtp.TensorDesc, outputs: Descs, tactic: int) -> AOTResult:
        return _aot(trt, trtp, "AdaUnpool", (X, MaskEdscw, MaskEm, Beta), {}, outputs)


def _define_ada_window(trt, trtp, op, AOTResult, Descs, Combos):
    """EdscwPool / IdwPool: one input, the window attributes."""
    @trtp.register(f"poolexport::{op}")
    def register(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                 ceil_mode: Ints, auto_pad: str) -> trtp.TensorDesc:
        return _output_desc(trtp, op, X, dict(kernel_shape=kernel_shape, strides=strides, pads=pads,
                                              dilations=dilations, ceil_mode=ceil_mode, auto_pad=auto_pad))

    @trtp.autotune(f"poolexport::{op}")
    def autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl(f"poolexport::{op}")
    def aot(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints, ceil_mode: Ints,
            auto_pad: str, outputs: Descs, tactic: int) -> AOTResult:
        return _aot(trt, trtp, op, X, dict(kernel_shape=kernel_shape, strides=strides, pads=pads,
                                           dilations=dilations, ceil_mode=ceil_mode, auto_pad=auto_pad), outputs)
