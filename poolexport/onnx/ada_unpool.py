"""AdaUnpool in the ``poolexport`` ONNX domain: OpSchema, shape inference and the
standard-op decomposition (a model-local function).

AdaUnpool(X, MaskEdscw, MaskEm, Beta) -> Y, the torch op ``poolexport::ada_unpool``:
Y = A(X Beta) clip(MaskEdscw, 0, 1) + A(X (1 - Beta)) clip(MaskEm, 0, 1), A area
interpolation from X's spatial shape to the masks' (every axis at least X's).

The decomposition is rank-generic: X, Beta (expanded to X) and the masks are reshaped to
N x C x D x H x W (missing spatial axes of size 1, which interpolate to themselves); along
each axis output o reads at most two cells, lo = floor(o I / O) and hi = ceil((o + 1) I / O) - 1,
so the eight lo/hi corners are Gathers, and each corner adds w X_c t_c with
t_c = Beta_c m_e + (1 - Beta_c) m_m (kept between the masks where Beta is in [0, 1]) and w a
product of 1 and 1/2: no sum can exceed the largest |X| of the cells, and a corner that is
not a cell is dropped with Where (never multiplied by 0, which would turn an inf into NaN).
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, defs, helper

from . import domain as D

DOC = ("adaUnpool (adaPool, Stergiou and Poppe, IEEE TIP 2022): Y = A(X * Beta) * clip(MaskEdscw, 0, 1) + "
       "A(X * (1 - Beta)) * clip(MaskEm, 0, 1). X is N x C x I1..Ik (k = 1, 2 or 3); each mask is "
       "(N or 1) x (C or 1) x O1..Ok with the same O and every O_d >= I_d; Beta broadcasts to X numpy-style; "
       "Y is N x C x O1..Ok. A is area interpolation (adaptive average pooling): output o along an axis "
       "averages the input cells floor(o I / O) .. ceil((o + 1) I / O) - 1. clip keeps NaN.")


def _infer(ctx) -> None:
    """Y = N x C (from X) x O (from the masks' spatial axes, the first one that knows each)."""
    elem, x = D._input_dims(ctx, 0)
    if elem is None:
        return
    _, me = D._input_dims(ctx, 1)
    _, mm = D._input_dims(ctx, 2)
    if x is None and me is None and mm is None:
        return D._set_output(ctx, elem, None)
    rank = len(next(s for s in (x, me, mm) if s is not None))
    for s in (x, me, mm):
        if s is not None and len(s) != rank:
            raise ValueError(f"poolexport: AdaUnpool's X and masks must have one rank, got {rank} and {len(s)}")
    if rank not in (3, 4, 5):
        raise ValueError(f"poolexport: AdaUnpool needs rank 3, 4 or 5 tensors, got rank {rank}")
    out = list(x[:2]) if x is not None else [None, None]
    for d in range(2, rank):
        known = [s[d] for s in (me, mm) if s is not None and s[d] is not None]
        ints = [v for v in known if isinstance(v, int)]
        if len(set(ints)) > 1:
            raise ValueError(f"poolexport: AdaUnpool's masks differ on spatial axis {d}: {ints}")
        if ints and x is not None and isinstance(x[d], int) and ints[0] < x[d]:
            raise ValueError(f"poolexport: AdaUnpool's masks ({ints[0]}) are smaller than X ({x[d]}) on axis {d}")
        out.append(ints[0] if ints else (known[0] if known else None))
    D._set_output(ctx, elem, out)


def schema() -> defs.OpSchema:
    s = defs.OpSchema(
        D.ADA_UNPOOL, D.DOMAIN, D.VERSION, DOC,
        inputs=[defs.OpSchema.FormalParameter("X", "T", "Pooled tensor N x C x I1..Ik."),
                defs.OpSchema.FormalParameter("MaskEdscw", "T", "eDSCW mask (N|1) x (C|1) x O1..Ok."),
                defs.OpSchema.FormalParameter("MaskEm", "T", "eM mask, the shape of MaskEdscw up to N|1, C|1."),
                defs.OpSchema.FormalParameter("Beta", "T", "Blend mask, broadcast to X.")],
        outputs=[defs.OpSchema.FormalParameter("Y", "T", "Upsampled tensor N x C x O1..Ok.")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16 tensors.")],
        attributes=[],
    )
    s.set_type_and_shape_inference_function(_infer)
    return s


# ------------------------------------------------------------------ decomposition
def ada_unpool_function(opset: int = D.OPSET) -> onnx.FunctionProto:
    from .decompositions import _Body

    b = _Body("adaunpool")
    f32 = TensorProto.FLOAT
    zero, one = b.const(0.0, np.float32), b.const(1.0, np.float32)
    half = b.const(0.5, np.float32)
    i0, i1, i2 = b.const([0]), b.const([1]), b.const([2])
    big = b.const([1 << 62])
    s0, s1 = b.const(0), b.const(1)

    def clip(m):
        mf = b.op("Cast", m, to=f32)
        clipped = b.op("Min", b.op("Max", mf, zero), one)
        return b.op("Where", b.op("IsNaN", mf), mf, clipped)

    def as_5d(t, shape):
        """t reshaped to N x C x 1..1 x spatial (5 axes)."""
        rank = b.op("Size", shape)
        ones = b.op("Expand", b.const([1]), b.op("Sub", b.const([5]), b.op("Reshape", rank, i1)))
        full = b.op("Concat", b.op("Slice", shape, i0, i2), ones, b.op("Slice", shape, i2, big), axis=0)
        return b.op("Reshape", t, full)

    x_shape = b.op("Shape", "X")
    m_shape = b.op("Shape", "MaskEdscw")
    x5 = as_5d(b.op("Cast", "X", to=f32), x_shape)
    beta5 = as_5d(b.op("Expand", b.op("Cast", "Beta", to=f32), x_shape), x_shape)
    me5, mm5 = as_5d(clip("MaskEdscw"), m_shape), as_5d(clip("MaskEm"), b.op("Shape", "MaskEm"))
    # X and Beta gathered together: stacked on a new leading axis
    xb = b.op("Concat", b.op("Unsqueeze", x5, i0), b.op("Unsqueeze", beta5, i0), axis=0)  # 2 x N x C x D x H x W
    in5, out5 = b.op("Shape", x5), b.op("Shape", me5)

    axes = []
    for d in range(3):  # spatial axis d of the 5-D view: tensor axis 3 + d of xb, 2 + d of Y
        i_size = b.op("Slice", in5, b.const([2 + d]), b.const([3 + d]))
        o_size = b.op("Slice", out5, b.const([2 + d]), b.const([3 + d]))
        o = b.op("Range", b.op("Squeeze", b.const([0]), i0), b.op("Squeeze", o_size, i0), b.op("Squeeze", i1, i0))
        lo = b.op("Div", b.op("Mul", o, i_size), o_size)  # int64 Div truncates: floor for o, sizes >= 0
        hi = b.op("Sub", b.op("Div", b.op("Sub", b.op("Add", b.op("Mul", b.op("Add", o, i1), i_size), o_size), i1),
                              o_size), i1)
        two = b.op("Greater", hi, lo)
        # shaped to broadcast along Y's axis 2 + d
        shape = [1, 1, 1, 1, 1]
        shape[2 + d] = -1
        sh = b.const(shape)
        w = b.op("Reshape", b.op("Where", two, half, one), sh)
        axes.append((lo, hi, b.op("Reshape", two, sh), w))

    # per output, shared by the corners: the masks' bounds, their difference, and that
    # neither is NaN (a runtime's Min/Max might drop a NaN; clip keeps it in m_e, m_m)
    t_lo, t_hi = b.op("Min", me5, mm5), b.op("Max", me5, mm5)
    diff = b.op("Sub", me5, mm5)
    masks_ok = b.op("Not", b.op("IsNaN", diff))

    def corner_sum(body, k: int) -> str:
        """The sum over the 2^k lo/hi corners of the last k axes (the others have size 1)."""
        y = None
        for bits in itertools.product((0, 1), repeat=k):
            g, valid, w = xb, None, None
            for d, bit in zip(range(3 - k, 3), bits):
                lo, hi, two, wd = axes[d]
                g = body.op("Gather", g, hi if bit else lo, axis=3 + d)
                if bit:
                    valid = two if valid is None else body.op("And", valid, two)
                w = wd if w is None else body.op("Mul", w, wd)
            xc, bc = body.op("Gather", g, s0, axis=0), body.op("Gather", g, s1, axis=0)
            t = body.op("Add", mm5, body.op("Mul", bc, diff))  # Beta m_e + (1 - Beta) m_m
            inside = body.op("And", body.op("GreaterOrEqual", bc, zero), body.op("LessOrEqual", bc, one))
            kept = body.op("Min", body.op("Max", t, t_lo), t_hi)
            t = body.op("Where", body.op("And", inside, masks_ok), kept, t)
            term = body.op("Mul", body.op("Mul", xc, t), w)
            if valid is not None:
                term = body.op("Where", valid, term, zero)
            y = term if y is None else body.op("Add", y, term)
        return y

    # all 8 corners for every rank (a size-1 axis only drops its hi corners): one If per
    # rank would halve a 2-D input's work, but OpenVINO refuses the nested If
    y = corner_sum(b, 3)
    out_shape = b.op("Concat", b.op("Slice", x_shape, i0, i2), b.op("Slice", m_shape, i2, big), axis=0)
    y = b.op("Reshape", y, out_shape)
    b.nodes.append(helper.make_node("CastLike", [y, "X"], ["Y"]))
    return helper.make_function(D.DOMAIN, D.ADA_UNPOOL, ["X", "MaskEdscw", "MaskEm", "Beta"], ["Y"], b.nodes,
                                [helper.make_opsetid("", opset)])
