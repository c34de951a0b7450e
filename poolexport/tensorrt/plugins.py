"""TensorRT plugins of the poolexport ops: ahead-of-time Python plugins over the shared PTX.

Each op of the ``poolexport`` ONNX domain becomes plugin ``poolexport::<OpType>``, version
"1": TensorRT's ONNX parser looks a node up by its op type plus the attributes
``plugin_namespace`` ("poolexport") and ``plugin_version``, and passes the other attributes
as plugin fields of the same names.

The plugin layer only declares shapes, types and the kernel launch (``tensorrt.plugin``,
TensorRT >= 10.9):

* ``register``: the output TensorDesc (symbolic shape from ``shapes.py``, same dtype);
* ``autotune``: float32 -> float32 and float16 -> float16, linear format;
* ``aot_impl``: (kernel name, PTX, ``KernelLaunchParams``, ``SymIntExprs``). TensorRT
  launches the kernel with the input pointer, these int32 scalars, then the output pointer
  (``kernel_abi.h``), so engines run without Python (trtexec, Triton). Attributes are not
  serialized into an AOT engine: everything the kernel needs is in those scalars.

No ``impl`` (JIT) is defined, so plugin creation always takes the AOT path.

Deliberately no ``from __future__ import annotations``: tensorrt.plugin inspects the
annotations as objects (TensorDesc subclasses, ``numpy.typing.NDArray[...]`` for list
attributes, since lists are not a supported attribute type).
"""
from typing import List, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import abi, ptx, shapes
from ._import import import_tensorrt

NAMESPACE = "poolexport"
VERSION = "1"
Ints = npt.NDArray[np.int32]  # one object, so annotations compare equal across decorators

# attribute names in the order every decorated function declares them (= the op schema)
ATTRS = {
    "SoftPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "beta"),
    "StochasticPool": ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "mode", "seed"),
    "ReduceSoftPool": ("axes", "keepdims", "beta"),
    "ReduceStochasticPool": ("axes", "keepdims", "mode", "seed"),
}
_KINDS = {"kernel_shape": "ints", "strides": "ints", "pads": "ints", "dilations": "ints", "axes": "ints",
          "ceil_mode": "int", "keepdims": "int", "seed": "int", "auto_pad": "str", "mode": "str", "beta": "float"}

_registered = False


def _check_order(op: str, values: dict) -> dict:
    """Plain-Python attribute dict, verifying each value has its attribute's kind.

    TensorRT passes the attributes to ``aot_impl`` positionally in the order of the node's
    plugin fields; a node listing them in another order would shift them silently.
    """
    out = {}
    for name, v in values.items():
        kind = _KINDS[name]
        ok = (isinstance(v, np.ndarray) if kind == "ints" else isinstance(v, str) if kind == "str"
              else isinstance(v, (int, float, np.number)) and not isinstance(v, (str, np.ndarray)))
        if not ok:
            raise ValueError(
                f"{op}: attribute {name} received {type(v).__name__}; the ONNX node must list its attributes in "
                f"the op schema's order ({', '.join(ATTRS[op])}); poolexport.tensorrt.prepare_onnx does that"
            )
        out[name] = [int(x) for x in v.tolist()] if kind == "ints" else (float(v) if kind == "float" else v)
    return out


def _output_desc(trtp, op: str, X, attrs: dict):
    attrs = _check_order(op, attrs)
    dims = list(X.shape_expr)
    if dims and not any(d.is_fake for d in dims) and all(d.is_constant for d in dims):
        # a static input shape: check window spans now, with the integer rules
        shapes.kernel_args(op, [d.constant_value() for d in dims], attrs)
    _, out_shape = shapes.kernel_args(op, dims, attrs, shapes.trt_ops(trtp))
    return trtp.from_shape_expr(tuple(out_shape), dtype=X.dtype)


def _autotune(trtp):
    # "|" pairs the options: (FP32 in, FP32 out) or (FP16 in, FP16 out)
    return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16", "LINEAR")]


def _aot(trt, trtp, op: str, X, attrs: dict, outputs):
    ops = shapes.trt_ops(trtp)
    args, _ = shapes.kernel_args(op, list(X.shape_expr), _check_order(op, attrs), ops)
    total = shapes.numel(list(outputs[0].shape_expr))
    dtype = "float16" if X.dtype == trt.DataType.HALF else "float32"
    launch = trtp.KernelLaunchParams()
    # the one grid rule of kernel_abi.h (abi.launch_grid), evaluated symbolically
    launch.grid_x = abi.launch_grid(total) if isinstance(total, int) else abi.launch_grid(total, ops.cdiv, ops.min, ops.max)
    launch.block_x = abi.BLOCK
    launch.shared_mem = 0
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(a) for a in args])
    return abi.kernel_name(op, dtype), ptx.load_ptx(), launch, extra


def register_plugins() -> None:
    """Register the four plugins with TensorRT's plugin registry (idempotent)."""
    global _registered
    if _registered:
        return
    trt, trtp = import_tensorrt(plugin=True)
    ptx.load_ptx()  # fail now, with the reason, rather than inside an engine build
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
                  ceil_mode: int, auto_pad: str, beta: float) -> trtp.TensorDesc:
        return _output_desc(trtp, "SoftPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, beta=beta))

    @trtp.autotune("poolexport::SoftPool")
    def soft_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::SoftPool")
    def soft_pool_aot(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                      ceil_mode: int, auto_pad: str, beta: float, outputs: Descs, tactic: int) -> AOTResult:
        return _aot(trt, trtp, "SoftPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, beta=beta), outputs)

    # ---------------------------------------------------------------- StochasticPool
    @trtp.register("poolexport::StochasticPool")
    def stochastic_pool(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                        ceil_mode: int, auto_pad: str, mode: str, seed: int) -> trtp.TensorDesc:
        return _output_desc(trtp, "StochasticPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, mode=mode, seed=seed))

    @trtp.autotune("poolexport::StochasticPool")
    def stochastic_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::StochasticPool")
    def stochastic_pool_aot(X: trtp.TensorDesc, kernel_shape: Ints, strides: Ints, pads: Ints, dilations: Ints,
                            ceil_mode: int, auto_pad: str, mode: str, seed: int, outputs: Descs,
                            tactic: int) -> AOTResult:
        return _aot(trt, trtp, "StochasticPool", X, dict(
            kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
            auto_pad=auto_pad, mode=mode, seed=seed), outputs)

    # ---------------------------------------------------------------- ReduceSoftPool
    @trtp.register("poolexport::ReduceSoftPool")
    def reduce_soft_pool(X: trtp.TensorDesc, axes: Ints, keepdims: int, beta: float) -> trtp.TensorDesc:
        return _output_desc(trtp, "ReduceSoftPool", X, dict(axes=axes, keepdims=keepdims, beta=beta))

    @trtp.autotune("poolexport::ReduceSoftPool")
    def reduce_soft_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::ReduceSoftPool")
    def reduce_soft_pool_aot(X: trtp.TensorDesc, axes: Ints, keepdims: int, beta: float, outputs: Descs,
                             tactic: int) -> AOTResult:
        return _aot(trt, trtp, "ReduceSoftPool", X, dict(axes=axes, keepdims=keepdims, beta=beta), outputs)

    # ---------------------------------------------------------------- ReduceStochasticPool
    @trtp.register("poolexport::ReduceStochasticPool")
    def reduce_stochastic_pool(X: trtp.TensorDesc, axes: Ints, keepdims: int, mode: str,
                               seed: int) -> trtp.TensorDesc:
        return _output_desc(trtp, "ReduceStochasticPool", X, dict(axes=axes, keepdims=keepdims, mode=mode, seed=seed))

    @trtp.autotune("poolexport::ReduceStochasticPool")
    def reduce_stochastic_pool_autotune(X: trtp.TensorDesc, outputs: Descs) -> Combos:
        return _autotune(trtp)

    @trtp.aot_impl("poolexport::ReduceStochasticPool")
    def reduce_stochastic_pool_aot(X: trtp.TensorDesc, axes: Ints, keepdims: int, mode: str, seed: int,
                                   outputs: Descs, tactic: int) -> AOTResult:
        return _aot(trt, trtp, "ReduceStochasticPool", X, dict(axes=axes, keepdims=keepdims, mode=mode, seed=seed),
                    outputs)
