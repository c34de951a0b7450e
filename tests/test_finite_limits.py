"""Finite limits (issue 21): SoftPool (beta = 1 unless stated) and the StochasticPool
expectation stay finite and close to a float64 oracle for every finite input up to the
type's maximum, forward and backward, on every CPU path (each ISA this CPU has, and the
pure-torch reference), in the ONNX Runtime custom-op library and in the standard-op ONNX
forms (the ``portable`` file, the ``ort`` target's functions and the generic
decomposition) run in plain ONNX Runtime; float32 and float16.

The limits come from limits.h (kSoftScaleAbove, kMomentScaleAbove): inputs are drawn at
each limit's float32 neighbours, at the type maximum and at 8.6e37 (the issue's window),
with mixed signs, at the first/middle/last positions of rows, for row widths around every
SIMD lane width. The oracle is a float64 NumPy loop written here (nothing shared with the
kernels). Condition for beta != 1: beta * x finite for every x (tested with beta = 2,
0.5, -1 and 0).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

import _limits as L
from poolexport import ort as pxort
from poolexport.ops import _native
from test_cpu_isa import PATHS, RANK, best_path
from test_export_decomposition import one_node, shaped

F32 = float(np.finfo(np.float32).max)
F16 = float(np.finfo(np.float16).max)
SOFT_T = L.LIMITS["kSoftScaleAbove"]
MOMENT_T = L.LIMITS["kMomentScaleAbove"]


def near(t):
    f = np.float32(t)
    return [float(np.nextafter(f, np.float32(0))), float(f), float(np.nextafter(f, np.float32(np.inf)))]


SOFT_VALUES = [F32, 8.6e37] + near(SOFT_T)
MOMENT_VALUES = [F32] + near(MOMENT_T) + near(SOFT_T)
WIDTHS = sorted({w for lanes in L.LANES.values() for w in L.widths(lanes, (1, 2))})
# (kernel, stride, pads)
WINDOWS = [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (1, 1), (1, 1, 1, 1)), ((3, 3), (2, 2), (1, 1, 1, 1))]
TOL = {np.float32: (2e-5, 1e-6), np.float16: (2e-3, 1e-3)}


# ------------------------------------------------------------------ float64 oracle
def windows_of(shape, kernel, strides, pads):
    """[(out index, [flat input indices])] of a 2-D pool over an (N, C, H, W) tensor."""
    n, c, h, w = shape
    oh = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    out = []
    for p in range(n * c):
        for i in range(oh):
            for j in range(ow):
                idx = [p * h * w + y * w + x
                       for y in range(i * strides[0] - pads[0], i * strides[0] - pads[0] + kernel[0]) if 0 <= y < h
                       for x in range(j * strides[1] - pads[1], j * strides[1] - pads[1] + kernel[1]) if 0 <= x < w]
                out.append(idx)
    return (n, c, oh, ow), out


def soft64(a, beta):
    """y and dy/da in float64, written around c (the value at the maximum of beta * a):
    y = c + sum p (a - c), so a window of equal values gives a - y = 0 exactly (float64's
    own rounding of sum p * a would put a - y at an ulp of a, ~2^12 for a ~ 2^64)."""
    z = beta * a
    e = np.exp(z - z.max())
    p = e / e.sum()
    c = a[np.argmax(z)]
    d = float(np.sum(p * (a - c)))
    return c + d, p * (1 + beta * ((a - c) - d))


def moment64(a):
    r = np.maximum(a, 0)
    s1 = r.sum()
    if s1 == 0:
        return 0.0, np.zeros_like(a)
    y = float((r * r).sum() / s1)
    return y, (a > 0) * (2 * r - y) / s1


def oracle(x, kernel, strides, pads, op, beta=1.0, g=None):
    """(y, dx) in float64; dx for the upstream gradient g (ones when None)."""
    xf = x.astype(np.float64).ravel()
    oshape, wins = windows_of(x.shape, kernel, strides, pads)
    y = np.zeros(len(wins))
    dx = np.zeros_like(xf)
    gf = np.ones(len(wins)) if g is None else g.astype(np.float64).ravel()
    for o, idx in enumerate(wins):
        a = xf[idx]
        y[o], d = soft64(a, beta) if op == "soft" else moment64(a)
        np.add.at(dx, idx, gf[o] * d)
    return y.reshape(oshape), dx.reshape(x.shape)


def reduce_oracle(x, axes, op, beta=1.0):
    """Reduce form over ``axes`` (kept axes first), (y, dx) for g = 1."""
    keep = [a for a in range(x.ndim) if a not in axes]
    xt = np.transpose(x.astype(np.float64), keep + list(axes))
    rows = xt.reshape(-1, int(np.prod([x.shape[a] for a in axes])))
    ys, ds = zip(*[(soft64(r, beta) if op == "soft" else moment64(r)) for r in rows])
    y = np.array(ys).reshape([x.shape[a] for a in keep])
    dt = np.array(ds).reshape(xt.shape)
    dx = np.transpose(dt, np.argsort(keep + list(axes)))
    return y, dx


def check(got, want, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    assert np.all(np.isfinite(got)), f"{what}: not finite at {np.argwhere(~np.isfinite(got))[:4].tolist()}"
    rtol, atol = TOL[dtype]
    err = np.abs(got - want)
    bad = err > atol + rtol * np.abs(want)
    assert not bad.any(), f"{what}: {int(bad.sum())} off, worst got {got[bad][:3]} want {want[bad][:3]}"


# ------------------------------------------------------------------ inputs
def planted(dtype, width, v, pattern, seed=0):
    """(1, 2, 5, width): "all" = v everywhere with alternating signs on plane 1; "mixed" =
    standard normal with +v first in row 0, -v mid row 2, +v last in row 4, and +v -v +v
    across plane 1's row 1."""
    rng = np.random.default_rng(seed)
    if pattern == "all":
        x = np.full((1, 2, 5, width), v)
        x[0, 1] *= np.where((np.arange(5)[:, None] + np.arange(width)) % 2 == 0, 1, -1)
    else:
        x = rng.standard_normal((1, 2, 5, width))
        x[0, 0, 0, 0], x[0, 0, 2, width // 2], x[0, 0, 4, width - 1] = v, -v, v
        x[0, 1, 1, 0], x[0, 1, 1, width // 2], x[0, 1, 1, width - 1] = v, -v, v
    return x.astype(dtype)


def cases(values, dtype):
    for v in values:
        for pattern in ("all", "mixed"):
            for width in WIDTHS:
                yield planted(dtype, width, v, pattern, seed=width), f"v={v:.4g}/{pattern}/w={width}"


def fp16_values():
    return [F16, 60000.0, 1000.0]


# ------------------------------------------------------------------ torch ops (native paths and reference)
@pytest.fixture(params=PATHS + ["reference"])
def torch_path(request, monkeypatch):
    if request.param == "reference":
        with _native.reference_kernels():
            yield "reference"
        return
    if RANK[request.param] > RANK[best_path()]:
        pytest.skip(f"this CPU lacks the {request.param} path (it runs {best_path()})")
    monkeypatch.setenv("POOLEXPORT_CPU_ISA", request.param)
    yield request.param


def torch_window(op, xt, kernel, strides, pads, beta):
    args = (list(kernel), list(strides), list(pads), [1, 1], False, "NOTSET")
    if op == "soft":
        return torch.ops.poolexport.soft_pool(xt, *args, beta)
    return torch.ops.poolexport.stochastic_pool(xt, *args, "expectation", 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("op", ["soft", "expectation"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"k{w[0][0]}s{w[1][0]}")
def test_torch_windowed_forward_and_backward(torch_path, op, window, dtype):
    kernel, strides, pads = window
    values = fp16_values() if dtype == np.float16 else (SOFT_VALUES if op == "soft" else MOMENT_VALUES)
    for x, name in cases(values, dtype):
        xt = torch.from_numpy(x).requires_grad_(True)
        y = torch_window(op, xt, kernel, strides, pads, 1.0)
        (dx,) = torch.autograd.grad(y.sum(), xt)
        y64, dx64 = oracle(x, kernel, strides, pads, op)
        check(y.detach().numpy(), y64, dtype, f"{torch_path} {op} forward {name}")
        check(dx.numpy(), dx64, dtype, f"{torch_path} {op} backward {name}")


@pytest.mark.parametrize("beta", [2.0, 0.5, -1.0, 0.0])
def test_torch_soft_other_beta(torch_path, beta):
    """beta * x finite: values up to FLT_MAX / max(1, |beta|)."""
    kernel, strides, pads = WINDOWS[1]
    for v in [F32 / max(1.0, abs(beta)), 8.6e37 / max(1.0, abs(beta))] + near(SOFT_T):
        for pattern in ("all", "mixed"):
            x = planted(np.float32, 17, v, pattern)
            xt = torch.from_numpy(x).requires_grad_(True)
            y = torch_window("soft", xt, kernel, strides, pads, beta)
            (dx,) = torch.autograd.grad(y.sum(), xt)
            y64, dx64 = oracle(x, kernel, strides, pads, "soft", beta)
            check(y.detach().numpy(), y64, np.float32, f"beta={beta} forward v={v:.4g}/{pattern}")
            check(dx.numpy(), dx64, np.float32, f"beta={beta} backward v={v:.4g}/{pattern}")


# reduce forms: axes [2, 3] (innermost reduced: the segment path from 16 values), [1]
# (innermost kept: the inner path from 8), [3] of a narrow tensor (the shared math)
REDUCE_SHAPES = [((2, 3, 5, 17), [2, 3]), ((2, 5, 1, 9), [1]), ((2, 3, 4, 3), [3]), ((1, 2, 3, 33), [3])]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("op", ["soft", "expectation"])
def test_torch_reduce_forward_and_backward(torch_path, op, dtype):
    values = fp16_values() if dtype == np.float16 else (SOFT_VALUES if op == "soft" else MOMENT_VALUES)
    for shape, axes in REDUCE_SHAPES:
        for v in values:
            for where in (0, -1, None):  # +v first, last, or +-v everywhere
                rng = np.random.default_rng(1)
                x = rng.standard_normal(shape)
                flat = x.reshape(-1)
                if where is None:
                    flat[:] = v * np.where(np.arange(flat.size) % 3 == 0, -1, 1)
                else:
                    flat[where] = v
                    flat[flat.size // 2] = -v
                x = x.astype(dtype)
                xt = torch.from_numpy(x).requires_grad_(True)
                if op == "soft":
                    y = torch.ops.poolexport.reduce_soft_pool(xt, axes, False, 1.0)
                else:
                    y = torch.ops.poolexport.reduce_stochastic_pool(xt, axes, False, "expectation", 0)
                (dx,) = torch.autograd.grad(y.sum(), xt)
                y64, dx64 = reduce_oracle(x, axes, op)
                what = f"{torch_path} reduce {op} {shape} {axes} v={v:.4g} at {where}"
                check(y.detach().numpy(), y64, dtype, what + " forward")
                check(dx.numpy(), dx64, dtype, what + " backward")


# ------------------------------------------------------------------ ONNX Runtime: custom-op library and standard-op forms
def window_model(op, window, dtype, beta=1.0):
    kernel, strides, pads = window
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(pads)}
    if op == "soft":
        return one_node("SoftPool", dict(attrs, beta=beta), 4, dtype)
    return one_node("StochasticPool", dict(attrs, mode="expectation"), 4, dtype)


def plain_session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


ONNX_DTYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("op", ["soft", "expectation"])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"k{w[0][0]}s{w[1][0]}")
@pytest.mark.parametrize("runner", ["library", "portable", "ort-functions", "generic"])
def test_onnx_windowed_forward(runner, op, window, dtype, monkeypatch):
    kernel, strides, pads = window
    model = window_model(op, window, ONNX_DTYPES[dtype])
    if runner == "library":
        sessions = {}
        for isa in PATHS:
            if RANK[isa] <= RANK[best_path()]:
                monkeypatch.setenv("POOLEXPORT_CPU_ISA", isa)
                sessions[isa] = pxort.session(model.SerializeToString())
        # the ISA is read per call: run each session under its own cap below
    else:
        target = {"portable": "portable", "ort-functions": "ort", "generic": "generic"}[runner]
        sessions = {runner: plain_session(shaped(onnx.ModelProto.FromString(model.SerializeToString()), target))}
    values = fp16_values() if dtype == np.float16 else (SOFT_VALUES if op == "soft" else MOMENT_VALUES)
    for x, name in cases(values, dtype):
        y64, _ = oracle(x, kernel, strides, pads, op)
        for key, sess in sessions.items():
            if runner == "library":
                monkeypatch.setenv("POOLEXPORT_CPU_ISA", key)
            check(sess.run(None, {"X": x})[0], y64, dtype, f"{runner}/{key} {op} {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("op", ["soft", "expectation"])
@pytest.mark.parametrize("runner", ["library", "ort-functions"])
def test_onnx_reduce_forward(runner, op, dtype):
    values = fp16_values() if dtype == np.float16 else (SOFT_VALUES if op == "soft" else MOMENT_VALUES)
    for shape, axes in REDUCE_SHAPES:
        name = "ReduceSoftPool" if op == "soft" else "ReduceStochasticPool"
        attrs = {"axes": axes, "keepdims": 0}
        attrs.update({"beta": 1.0} if op == "soft" else {"mode": "expectation"})
        model = one_node(name, attrs, 4, ONNX_DTYPES[dtype], out_rank=4 - len(axes))
        sess = (pxort.session(model.SerializeToString()) if runner == "library"
                else plain_session(shaped(model, "ort")))
        for v in values:
            x = np.random.default_rng(2).standard_normal(shape)
            x.reshape(-1)[0], x.reshape(-1)[-1] = v, -v
            x = x.astype(dtype)
            y64, _ = reduce_oracle(x, axes, op)
            check(sess.run(None, {"X": x})[0], y64, dtype, f"{runner} {name} {shape} {axes} v={v:.4g}")


# ------------------------------------------------------------------ avg_pool3d, float16 on CPU
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_avg_pool3d_count_include_pad_float16(ceil_mode):
    """torch has no CPU float16 avg_pool3d kernel: the project's avg_pool3d computes in
    float32 and casts back (values up to float16's maximum stay finite)."""
    from poolexport import functional as PF

    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (1, 2, 5, 6, 7)) * F16
    x[0, 0, 0, 0, 0] = F16
    x16 = torch.from_numpy(x.astype(np.float16))
    y = PF.avg_pool3d(x16, 3, 2, 1, ceil_mode=ceil_mode, count_include_pad=True)
    assert y.dtype == torch.float16
    want = torch.nn.functional.avg_pool3d(x16.double(), 3, 2, 1, ceil_mode=ceil_mode, count_include_pad=True)
    check(y.numpy(), want.numpy(), np.float16, "avg_pool3d fp16")


@pytest.mark.parametrize("beta", [0.0, 0.5, -1.0])
@pytest.mark.parametrize("runner", ["library", "portable", "ort-functions", "generic"])
def test_onnx_soft_other_beta(runner, beta):
    """beta * x finite; beta = 0 weighs +FLT_MAX and -FLT_MAX alike (sums of +-inf without
    the scale)."""
    window = WINDOWS[1]
    model = window_model("soft", window, TensorProto.FLOAT, beta)
    if runner == "library":
        sess = pxort.session(model.SerializeToString())
    else:
        target = {"portable": "portable", "ort-functions": "ort", "generic": "generic"}[runner]
        sess = plain_session(shaped(model, target))
    for v in [F32 / max(1.0, abs(beta)), 8.6e37] + near(SOFT_T):
        for pattern in ("all", "mixed"):
            x = planted(np.float32, 17, v, pattern)
            y64, _ = oracle(x, *window, "soft", beta)
            check(sess.run(None, {"X": x})[0], y64, np.float32, f"{runner} beta={beta} v={v:.4g}/{pattern}")
