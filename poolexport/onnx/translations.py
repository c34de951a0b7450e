"""Symbolic functions: torch ``poolexport::*`` ops -> ``poolexport`` ONNX nodes.

Both exporters give the same node with the same, fully explicit attributes (PyTorch's
"empty strides means strides = kernel" is resolved here, so the node never depends on a
default that differs between PyTorch and ONNX):

* ``torch.onnx.export(dynamo=True)``: :func:`custom_translation_table`, onnxscript
  functions that onnxscript resolves through the registered OpSchemas. They are also put
  in torch.onnx's default registry (:func:`register_with_torch_onnx`, run by
  ``import poolexport`` as soon as torch.onnx's exporter loads), so a plain
  ``torch.onnx.export(model, args, dynamo=True)`` needs no ``custom_translation_table``;
* ``torch.onnx.export(dynamo=False)`` (TorchScript): :func:`register_torchscript_symbolics`.
"""
from __future__ import annotations

import torch

from ..ops._windows import spec_from_attrs
from . import domain as D


def window_attributes(op: str, rank: int, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad) -> dict:
    """The torch op's window arguments as explicit ONNX attributes."""
    spec = spec_from_attrs(op, rank, list(kernel_shape), list(strides), list(pads), list(dilations),
                           bool(ceil_mode), str(auto_pad))
    return dict(kernel_shape=list(spec.kernel_shape), strides=list(spec.strides), pads=list(spec.pads),
                dilations=list(spec.dilations), ceil_mode=int(spec.ceil_mode), auto_pad=spec.auto_pad)


def reduce_axes(rank: int, axes) -> list[int]:
    """ReduceMean's meaning: None or empty = all axes; written explicitly and non-negative."""
    if axes is None or len(axes) == 0:
        return list(range(rank))
    return [int(a) % rank for a in axes]


# ------------------------------------------------------------------ dynamo / onnxscript
def custom_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    import onnxscript

    pe = onnxscript.values.Opset(D.DOMAIN, D.VERSION)

    def _rank(X) -> int:
        return len(X.shape)

    def soft_pool(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, beta):
        attrs = window_attributes(D.SOFT_POOL, _rank(X), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
        return pe.SoftPool(X, beta=float(beta), **attrs)

    def stochastic_pool(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed):
        attrs = window_attributes(D.STOCHASTIC_POOL, _rank(X), kernel_shape, strides, pads, dilations, ceil_mode,
                                  auto_pad)
        return pe.StochasticPool(X, mode=str(mode), seed=int(seed), **attrs)

    def reduce_soft_pool(X, axes, keepdims, beta):
        return pe.ReduceSoftPool(X, axes=reduce_axes(_rank(X), axes), keepdims=int(bool(keepdims)), beta=float(beta))

    def reduce_stochastic_pool(X, axes, keepdims, mode, seed):
        return pe.ReduceStochasticPool(X, axes=reduce_axes(_rank(X), axes), keepdims=int(bool(keepdims)),
                                       mode=str(mode), seed=int(seed))

    def edscw_pool(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad):
        attrs = window_attributes(D.EDSCW_POOL, _rank(X), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
        return pe.EdscwPool(X, **attrs)

    def idw_pool(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad):
        attrs = window_attributes(D.IDW_POOL, _rank(X), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
        return pe.IdwPool(X, **attrs)

    def ada_pool(X, Beta, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad):
        attrs = window_attributes(D.ADA_POOL, _rank(X), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
        return pe.AdaPool(X, Beta, **attrs)

    def ada_unpool(X, MaskEdscw, MaskEm, Beta):
        return pe.AdaUnpool(X, MaskEdscw, MaskEm, Beta)

    from ..ops import ada_pool as _ada  # noqa: F401  (registers the adaPool ops)
    from ..ops import ada_unpool as _ada_unpool  # noqa: F401  (registers ada_unpool)

    ops = torch.ops.poolexport
    return {
        ops.soft_pool.default: soft_pool,
        ops.stochastic_pool.default: stochastic_pool,
        ops.reduce_soft_pool.default: reduce_soft_pool,
        ops.reduce_stochastic_pool.default: reduce_stochastic_pool,
        ops.edscw_pool.default: edscw_pool,
        ops.idw_pool.default: idw_pool,
        ops.ada_pool.default: ada_pool,
        ops.ada_unpool.default: ada_unpool,
    }


# torch 2.13 has no public registry for default translations: ``torch.onnx.export``
# builds a fresh ``ONNXRegistry.from_torchlib()`` per call from the list
# ``_torchlib_registry._registry`` (what torchlib's own ``onnx_impl`` decorator appends to),
# then adds ``custom_translation_table``. Entries appended there are marked custom, exactly
# as ``custom_translation_table`` would mark them, so they win over nothing else and a
# caller's own table (inserted first) still wins over them.
TORCHLIB_REGISTRY_MODULE = "torch.onnx._internal.exporter._torchlib._torchlib_registry"


def register_with_torch_onnx(registry_module=None) -> bool:
    """Add the four ops to torch.onnx's default (dynamo) registry; idempotent. Returns
    False when this torch has no such registry (then pass :func:`custom_translation_table`)."""
    try:
        if registry_module is None:
            import importlib

            registry_module = importlib.import_module(TORCHLIB_REGISTRY_MODULE)
        from torch.onnx._internal.exporter import _registration

        entries = registry_module._registry
    except (ImportError, AttributeError):
        return False
    if getattr(registry_module, "_poolexport_registered", False):
        return True
    for op, fn in custom_translation_table().items():
        entries.append(_registration.OnnxDecompMeta(onnx_function=fn, fx_target=op, signature=None, is_custom=True))
    registry_module._poolexport_registered = True
    return True


# ------------------------------------------------------------------ TorchScript exporter
_REGISTERED: set[int] = set()


def register_torchscript_symbolics(opset: int = D.OPSET) -> None:
    """``register_custom_op_symbolic`` for the four ops (idempotent per opset)."""
    if opset in _REGISTERED:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    def _rank(X, op, axes=None) -> int:
        r = sh._get_tensor_rank(X)
        if r is None and axes and all(a >= 0 for a in axes):
            return max(axes) + 1  # enough to normalise non-negative axes
        if r is None:
            raise ValueError(f"{op}: the TorchScript exporter does not know the input rank here; give the axes as "
                             "non-negative numbers or use the dynamo exporter")
        return r

    def _typed(out, X, rank):
        # TorchScript does not propagate types through custom ops: state the rank so that
        # the symbolic functions of later ops know it
        try:
            out.setType(X.type().with_sizes([None] * rank))
        except Exception:
            pass
        return out

    def _window(op, g, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad):
        ks = sh._maybe_get_const(kernel_shape, "is")
        a = window_attributes(op, len(ks) + 2, ks, sh._maybe_get_const(strides, "is"),
                              sh._maybe_get_const(pads, "is"), sh._maybe_get_const(dilations, "is"),
                              sh._maybe_get_const(ceil_mode, "b"), sh._maybe_get_const(auto_pad, "s"))
        return dict(kernel_shape_i=a["kernel_shape"], strides_i=a["strides"], pads_i=a["pads"],
                    dilations_i=a["dilations"], ceil_mode_i=a["ceil_mode"], auto_pad_s=a["auto_pad"])

    def _axes(X, axes, op):
        axes = None if sh._is_none(axes) else sh._maybe_get_const(axes, "is")
        rank = _rank(X, op, axes)
        return reduce_axes(rank, axes), rank

    def _reduced_rank(rank, axes, keepdims):
        return rank if keepdims else rank - len(axes)

    def soft_pool(g, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, beta):
        a = _window(D.SOFT_POOL, g, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
        out = g.op(f"{D.DOMAIN}::{D.SOFT_POOL}", X, beta_f=float(sh._maybe_get_const(beta, "f")), **a)
        return _typed(out, X, len(a["kernel_shape_i"]) + 2)

    def stochastic_pool(g, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed):
        a = _window(D.STOCHASTIC_POOL, g, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
        out = g.op(f"{D.DOMAIN}::{D.STOCHASTIC_POOL}", X, mode_s=sh._maybe_get_const(mode, "s"),
                   seed_i=int(sh._maybe_get_const(seed, "i")), **a)
        return _typed(out, X, len(a["kernel_shape_i"]) + 2)

    def reduce_soft_pool(g, X, axes, keepdims, beta):
        ax, rank = _axes(X, axes, D.REDUCE_SOFT_POOL)
        kd = int(sh._maybe_get_const(keepdims, "b"))
        out = g.op(f"{D.DOMAIN}::{D.REDUCE_SOFT_POOL}", X, axes_i=ax, keepdims_i=kd,
                   beta_f=float(sh._maybe_get_const(beta, "f")))
        return _typed(out, X, _reduced_rank(rank, ax, kd))

    def reduce_stochastic_pool(g, X, axes, keepdims, mode, seed):
        ax, rank = _axes(X, axes, D.REDUCE_STOCHASTIC_POOL)
        kd = int(sh._maybe_get_const(keepdims, "b"))
        out = g.op(f"{D.DOMAIN}::{D.REDUCE_STOCHASTIC_POOL}", X, axes_i=ax, keepdims_i=kd,
                   mode_s=sh._maybe_get_const(mode, "s"), seed_i=int(sh._maybe_get_const(seed, "i")))
        return _typed(out, X, _reduced_rank(rank, ax, kd))

    for name, fn in (("soft_pool", soft_pool), ("stochastic_pool", stochastic_pool),
                     ("reduce_soft_pool", reduce_soft_pool), ("reduce_stochastic_pool", reduce_stochastic_pool)):
        register_custom_op_symbolic(f"poolexport::{name}", fn, opset)
    _REGISTERED.add(opset)
