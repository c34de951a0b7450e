"""The ONNX Runtime custom-op library against independent references.

One-node ONNX models per op (built with onnx.helper) run in ONNX Runtime with the
library registered, for every attribute set x dtype, and are compared with
* a float64 window-by-window reference written here (padding as NaN, output sizes from
  ONNX Runtime's own AveragePool on the same window),
* ONNX Runtime's AveragePool (SoftPool with beta = 0 is average pooling),
* the PyTorch ops (poolexport.ops): sampled picks bit for bit, values within tolerance,
* the model-local function fallback of the same file (when poolexport.onnx exists).
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import _reference as ref
import poolexport
import poolexport.ops  # noqa: F401  (registers torch.ops.poolexport)
from poolexport import ort as pxort

DTYPES = {"float32": (TensorProto.FLOAT, np.float32, torch.float32), "float16": (TensorProto.FLOAT16, np.float16, torch.float16)}
# kernels compute in float32 from the exact input values, then round once to the dtype
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float16": dict(rtol=2e-3, atol=2e-3)}


def one_node(op, elem, attrs, opset=18, in_name="X"):
    x = helper.make_tensor_value_info(in_name, elem, None)
    y = helper.make_tensor_value_info("Y", elem, None)
    domain = "" if op in ("AveragePool", "MaxPool") else "poolexport"
    node = helper.make_node(op, [in_name], ["Y"], domain=domain, **{k: v for k, v in attrs.items() if v is not None})
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("poolexport", 1)]
    return helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=opsets, ir_version=10)


def run_lib(model, x):
    return pxort.session(model.SerializeToString()).run(None, {"X": x})[0]


def run_plain(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]


# ----------------------------------------------------------------- float64 references
def window_geometry(shape, a):
    """Output sizes and begin pads from the ONNX spec, checked against ONNX Runtime's
    AveragePool output shape (which rejects pads >= kernel, so only then)."""
    k = len(a["kernel_shape"])
    strides = a.get("strides") or [1] * k
    dil = a.get("dilations") or [1] * k
    pads = a.get("pads") or [0] * (2 * k)
    auto = a.get("auto_pad", "NOTSET")
    out, begins = [], []
    for i in range(k):
        n, kk, s = shape[2 + i], a["kernel_shape"][i], strides[i]
        span = (kk - 1) * dil[i] + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-n // s))
        elif auto == "VALID":
            out.append((n - span) // s + 1)
        elif a.get("ceil_mode"):
            o = -(-(n + pads[i] + pads[k + i] - span) // s) + 1
            out.append(o - 1 if (o - 1) * s >= n + pads[i] else o)  # no window starting in the end padding
        else:
            out.append((n + pads[i] + pads[k + i] - span) // s + 1)
    if all(p < kk for p, kk in zip(pads, list(a["kernel_shape"]) * 2)):
        avg = one_node("AveragePool", TensorProto.FLOAT, {**a, "count_include_pad": 0}, opset=19)
        assert run_plain(avg, np.zeros(shape, np.float32)).shape[2:] == tuple(out)
    for i in range(k):
        span = (a["kernel_shape"][i] - 1) * dil[i] + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (out[i] - 1) * strides[i] + span - shape[2 + i])
            begins.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        elif auto == "VALID":
            begins.append(0)
        else:
            begins.append(pads[i])
    return out, begins, strides, dil


def windows64(x, out, begins, strides, dil, kernel):
    """(N, C, *out, K) float64 windows in row-major kernel order, NaN for padding."""
    x = x.astype(np.float64)
    n, c, *sp = x.shape
    res = np.full((n, c, *out, int(np.prod(kernel))), np.nan)
    for o in itertools.product(*[range(v) for v in out]):
        for j, kk in enumerate(itertools.product(*[range(v) for v in kernel])):
            pos = [o[i] * strides[i] - begins[i] + kk[i] * dil[i] for i in range(len(sp))]
            if all(0 <= p < s for p, s in zip(pos, sp)):
                res[(slice(None), slice(None), *o, j)] = x[(slice(None), slice(None), *pos)]
    return res


def soft64(w, beta):
    """SoftPool of rows with NaN = missing; empty rows give 0."""
    valid = ~np.isnan(w)
    z = np.where(valid, beta * np.nan_to_num(w), -np.inf)
    m = z.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(valid, np.exp(z - m), 0.0)
    s = e.sum(-1)
    return np.where(s > 0, (e * np.nan_to_num(w)).sum(-1) / np.where(s > 0, s, 1), 0.0)


def expectation64(w):
    r = np.maximum(np.nan_to_num(w), 0.0)
    s1, s2 = r.sum(-1), (r * r).sum(-1)
    return np.where(s1 > 0, s2 / np.where(s1 > 0, s1, 1), 0.0)


def torch_attrs(a, k):
    return dict(
        kernel_shape=list(a["kernel_shape"]), strides=list(a.get("strides") or []), pads=list(a.get("pads") or []),
        dilations=list(a.get("dilations") or []), ceil_mode=bool(a.get("ceil_mode", 0)), auto_pad=a.get("auto_pad", "NOTSET"),
    )


WINDOW_CASES = {
    "k2s2": ((2, 3, 10, 12), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "k3s2p1": ((2, 3, 11, 12), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "dil2_asym": ((1, 2, 12, 11), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 1, 1], dilations=[2, 3])),
    "ceil": ((2, 2, 11, 10), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "ceil_pad": ((1, 2, 9, 8), dict(kernel_shape=[2, 3], strides=[3, 2], pads=[1, 0, 1, 1], ceil_mode=1)),
    "same_upper": ((2, 2, 11, 10), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 3, 10, 13), dict(kernel_shape=[4, 2], strides=[3, 1], auto_pad="SAME_LOWER")),
    "valid": ((1, 3, 10, 13), dict(kernel_shape=[3, 3], strides=[1, 2], auto_pad="VALID")),
    "1d": ((2, 3, 17), dict(kernel_shape=[5], strides=[3], pads=[2, 1], ceil_mode=1)),
    "3d": ((1, 2, 5, 7, 6), dict(kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[1, 1, 1, 0, 1, 1])),
    "wide_row": ((1, 1, 3, 70), dict(kernel_shape=[1, 4], strides=[1, 3], pads=[0, 2, 0, 2])),
    # rows of >= 16 outputs at stride 2: the AVX2 row kernels' full blocks and masked edges
    "k2s2_wide": ((1, 2, 6, 45), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 1, 0, 0])),
    "k3s2p1_wide": ((1, 2, 7, 67), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "3d_k2s2_wide": ((1, 2, 4, 4, 40), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
    # ceil_mode windows that would start in the end padding are dropped (h 7 -> 4, w 35 -> 18;
    # d 5 -> 3; h 9 -> 5, w 7 -> 3): the 2-D split path, the fused 3-D k2 s2 kernel, stride 3
    "ceil_drop": ((1, 2, 7, 35), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "ceil_drop_3d": ((1, 1, 5, 5, 35), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2], pads=[1] * 6, ceil_mode=1)),
    "ceil_drop_s3": ((2, 2, 9, 7), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 1, 2, 1], ceil_mode=1)),
}


def _input(shape, dtype, scale=3.0, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal(shape) * scale).astype(DTYPES[dtype][1])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(WINDOW_CASES))
@pytest.mark.parametrize("beta", [1.0, 0.0, -0.7, 4.0])
def test_soft_pool_matches_float64_and_torch(case, dtype, beta):
    shape, a = WINDOW_CASES[case]
    elem, npdt, tdt = DTYPES[dtype]
    x = _input(shape, dtype)
    y = run_lib(one_node("SoftPool", elem, {**a, "beta": beta}), x)
    out, begins, strides, dil = window_geometry(shape, a)
    assert y.shape == (*shape[:2], *out) and y.dtype == npdt
    ref = soft64(windows64(x, out, begins, strides, dil, a["kernel_shape"]), beta)
    np.testing.assert_allclose(y.astype(np.float64), ref, **TOL[dtype])
    yt = torch.ops.poolexport.soft_pool(torch.from_numpy(x), **torch_attrs(a, len(shape) - 2), beta=beta)
    np.testing.assert_allclose(y.astype(np.float64), yt.double().numpy(), **TOL[dtype])


@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_soft_pool_beta0_is_ort_average_pool(case):
    shape, a = WINDOW_CASES[case]
    x = _input(shape, "float32")
    y = run_lib(one_node("SoftPool", TensorProto.FLOAT, {**a, "beta": 0.0}), x)
    avg = run_plain(one_node("AveragePool", TensorProto.FLOAT, {**a, "count_include_pad": 0}, opset=19), x)
    np.testing.assert_allclose(y, avg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["k2s2", "k3s2p1", "3d", "1d"])
def test_soft_pool_large_inputs_finite(case, dtype):
    shape, a = WINDOW_CASES[case]
    x = _input(shape, dtype, scale=1.0)
    x = (np.sign(x) * 1e4 * (0.5 + np.abs(x) % 0.5)).astype(DTYPES[dtype][1])  # |x| in [5e3, 1e4]
    y = run_lib(one_node("SoftPool", DTYPES[dtype][0], a), x)
    assert np.isfinite(y).all()
    out, begins, strides, dil = window_geometry(shape, a)
    ref = soft64(windows64(x, out, begins, strides, dil, a["kernel_shape"]), 1.0)
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=TOL[dtype]["rtol"], atol=1e-2)
    # at this scale the softmax weights are one-hot up to values within ~20 of the window
    # maximum: SoftPool is max pooling to within that
    mx = run_plain(one_node("MaxPool", TensorProto.FLOAT, a), x.astype(np.float32))
    assert np.all(y.astype(np.float32) <= mx + TOL[dtype]["rtol"] * np.abs(mx) + 1e-3)
    np.testing.assert_allclose(y.astype(np.float32), mx, atol=20 + TOL[dtype]["rtol"] * 1e4)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_stochastic_expectation(case, dtype):
    shape, a = WINDOW_CASES[case]
    elem, _, _ = DTYPES[dtype]
    x = _input(shape, dtype)
    y = run_lib(one_node("StochasticPool", elem, {**a, "mode": "expectation"}), x)
    out, begins, strides, dil = window_geometry(shape, a)
    ref = expectation64(windows64(x, out, begins, strides, dil, a["kernel_shape"]))
    np.testing.assert_allclose(y.astype(np.float64), ref, **TOL[dtype])
    yt = torch.ops.poolexport.stochastic_pool(torch.from_numpy(x), **torch_attrs(a, 0), mode="expectation", seed=0)
    np.testing.assert_allclose(y.astype(np.float64), yt.double().numpy(), **TOL[dtype])


@pytest.mark.parametrize("seed", [0, 7, -12345678901])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_stochastic_sample_picks_equal_torch(case, dtype, seed):
    shape, a = WINDOW_CASES[case]
    elem, _, _ = DTYPES[dtype]
    x = _input(shape, dtype, seed=abs(seed) % 97)
    y = run_lib(one_node("StochasticPool", elem, {**a, "mode": "sample", "seed": seed}), x)
    yt = torch.ops.poolexport.stochastic_pool(torch.from_numpy(x), **torch_attrs(a, 0), mode="sample", seed=seed)
    np.testing.assert_array_equal(y, yt.numpy())
    # independent of the torch op: every output is a positive member of its window, or 0
    out, begins, strides, dil = window_geometry(shape, a)
    w = windows64(x, out, begins, strides, dil, a["kernel_shape"])
    member = (w == y.astype(np.float64)[..., None]) & (w > 0)
    empty = ~(np.nan_to_num(w) > 0).any(-1)
    assert np.all(member.any(-1) | (empty & (y == 0)))


def test_ceil_drop_cases_drop_a_window():
    for name in ("ceil_drop", "ceil_drop_3d", "ceil_drop_s3"):
        shape, a = WINDOW_CASES[name]
        k, p = len(shape) - 2, a["pads"]
        assert all(ref.ceil_drops(shape[2 + i], a["kernel_shape"][i], a["strides"][i], 1, p[i], p[k + i]) for i in range(k))


@pytest.mark.parametrize("seed", [0, 31337, -(2**40) - 7])
def test_stochastic_sample_ties(seed):
    """Windows [u, 1 - u], u the uniform of their element: cum_0 == t exactly, so the
    first cum > t is the second value (a >= would pick the first)."""
    x, picks = ref.tie_windows(seed, 300)
    y = run_lib(one_node("StochasticPool", TensorProto.FLOAT, dict(kernel_shape=[2], strides=[2], mode="sample", seed=seed)),
                x[None])
    np.testing.assert_array_equal(y[0, :, 0], picks)
    y = run_lib(one_node("ReduceStochasticPool", TensorProto.FLOAT, dict(axes=[1], keepdims=0, mode="sample", seed=seed)), x)
    np.testing.assert_array_equal(y, picks)


# every CPU reduce path (chosen after neighbouring axes of the same kind are merged): one
# window per output through the shared header (merged inner axis kept but < 8, or reduced
# but < 16), a kept inner axis >= 8, contiguous reduced segments >= 16
LARGE_REDUCE = [((4, 6, 3), [1], 1), ((3, 4, 2, 3), [2, 3], 0), ((2, 16, 3, 9), [1], 1), ((2, 3, 4, 17), [3], 0)]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape,axes,keepdims", LARGE_REDUCE)
def test_reduce_large_magnitudes(shape, axes, keepdims, dtype):
    """|x| in [5e3, 3e4]: exp overflows unless the window maximum is subtracted first."""
    elem, npdt, _ = DTYPES[dtype]
    x = ref.large_magnitude_input(shape, seed=3).astype(npdt)
    attrs = {"axes": axes, "keepdims": keepdims}
    for beta in (1.0, 0.01, -0.5):
        y = run_lib(one_node("ReduceSoftPool", elem, {**attrs, "beta": beta}), x)
        beta32 = float(np.float32(beta))
        np.testing.assert_allclose(y.astype(np.float64), reduce64(x, axes, keepdims, lambda w: soft64(w, beta32)), **TOL[dtype])
    y = run_lib(one_node("ReduceStochasticPool", elem, {**attrs, "mode": "expectation"}), x)
    np.testing.assert_allclose(y.astype(np.float64), reduce64(x, axes, keepdims, expectation64), **TOL[dtype])
    y = run_lib(one_node("ReduceStochasticPool", elem, {**attrs, "mode": "sample", "seed": 5}), x)
    expected = ref.reduce(x.astype(np.float64), lambda v, e: ref.stochastic_sample_window(v, 5, e), axes, bool(keepdims))
    np.testing.assert_array_equal(y.astype(np.float64), expected)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["k3s2p1", "ceil_drop_s3", "3d"])
def test_stochastic_large_magnitudes(case, dtype):
    """|x| in [5e3, 3e4]: r^2 sums stay finite in float32, picks stay exact."""
    shape, a = WINDOW_CASES[case]
    elem, npdt, _ = DTYPES[dtype]
    x = ref.large_magnitude_input(shape, seed=4).astype(npdt)
    out, begins, strides, dil = window_geometry(shape, a)
    w = windows64(x, out, begins, strides, dil, a["kernel_shape"])
    y = run_lib(one_node("StochasticPool", elem, {**a, "mode": "expectation"}), x)
    np.testing.assert_allclose(y.astype(np.float64), expectation64(w), **TOL[dtype])
    y = run_lib(one_node("StochasticPool", elem, {**a, "mode": "sample", "seed": 8}), x)
    expected = ref.pool(x.astype(np.float64), lambda v, e: ref.stochastic_sample_window(v, 8, e), a["kernel_shape"],
                        a.get("strides"), a.get("pads"), a.get("dilations"), bool(a.get("ceil_mode")))
    assert expected.shape == y.shape
    np.testing.assert_array_equal(y.astype(np.float64), expected)


REDUCE_CASES = {
    "all": ((3, 4, 5), None, 1),
    "axis1": ((2, 5, 3, 4), [1], 1),
    "hw_nokeep": ((2, 3, 4, 5), [2, 3], 0),
    "neg": ((2, 3, 7), [-1], 0),
    "alternating": ((2, 3, 4, 2, 3), [0, 2, 4], 1),
    "rank1": ((9,), [0], 0),
    "size1_axes": ((1, 4, 1, 5), [0, 2], 1),
    "channels": ((2, 16, 5, 7), [1], 0),
    "channels_3d": ((1, 9, 2, 3, 4), [-4], 1),
    "global_hw": ((2, 3, 6, 7), [2, 3], 1),
    "global_split": ((2, 5, 3, 17), [0, 3], 0),
}


def reduce64(x, axes, keepdims, fn):
    r = x.ndim
    axes = list(range(r)) if not axes else sorted(a % r for a in axes)
    kept = [i for i in range(r) if i not in axes]
    t = np.transpose(x.astype(np.float64), kept + axes)
    rows = t.reshape(int(np.prod([x.shape[i] for i in kept])), -1)
    shape = [1 if i in axes else x.shape[i] for i in range(r)] if keepdims else [x.shape[i] for i in kept]
    return fn(rows).reshape(shape)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(REDUCE_CASES))
def test_reduce_ops(case, dtype):
    shape, axes, keepdims = REDUCE_CASES[case]
    elem, _, _ = DTYPES[dtype]
    x = _input(shape, dtype)
    attrs = {"axes": axes, "keepdims": keepdims}
    xt = torch.from_numpy(x)
    for beta in (1.0, 2.5):
        y = run_lib(one_node("ReduceSoftPool", elem, {**attrs, "beta": beta}), x)
        np.testing.assert_allclose(y.astype(np.float64), reduce64(x, axes, keepdims, lambda w: soft64(w, beta)), **TOL[dtype])
        yt = torch.ops.poolexport.reduce_soft_pool(xt, axes, bool(keepdims), beta)
        np.testing.assert_allclose(y.astype(np.float64), yt.double().numpy(), **TOL[dtype])
    y = run_lib(one_node("ReduceStochasticPool", elem, {**attrs, "mode": "expectation"}), x)
    np.testing.assert_allclose(y.astype(np.float64), reduce64(x, axes, keepdims, expectation64), **TOL[dtype])
    for seed in (0, 99):
        y = run_lib(one_node("ReduceStochasticPool", elem, {**attrs, "mode": "sample", "seed": seed}), x)
        yt = torch.ops.poolexport.reduce_stochastic_pool(xt, axes, bool(keepdims), "sample", seed)
        np.testing.assert_array_equal(y, yt.numpy())


def test_empty_tensors():
    x = np.zeros((0, 3, 8, 8), np.float32)
    y = run_lib(one_node("SoftPool", TensorProto.FLOAT, dict(kernel_shape=[2, 2], strides=[2, 2])), x)
    assert y.shape == (0, 3, 4, 4)
    y = run_lib(one_node("StochasticPool", TensorProto.FLOAT, dict(kernel_shape=[2, 2], mode="sample")), x)
    assert y.shape == (0, 3, 7, 7)
    y = run_lib(one_node("ReduceSoftPool", TensorProto.FLOAT, dict(axes=[1], keepdims=0)), x)
    assert y.shape == (0, 8, 8)
    # an empty window (all padding) outputs 0, like the torch op
    x = np.ones((1, 1, 2, 2), np.float32)
    a = dict(kernel_shape=[1, 1], strides=[3, 3], pads=[3, 3, 0, 0])
    y = run_lib(one_node("SoftPool", TensorProto.FLOAT, a), x)
    yt = torch.ops.poolexport.soft_pool(torch.from_numpy(x), [1, 1], [3, 3], [3, 3, 0, 0], [], False, "NOTSET", 1.0)
    np.testing.assert_array_equal(y, yt.numpy())
    assert (y == 0).any()


INVALID = [
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[2, 2], strides=[0, 1]), "strides"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[9, 2]), "larger than the padded input"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[3, 3], dilations=[4, 1]), "larger than the padded input"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[2, 2], strides=[2]), "strides must have 2"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[2, 2], pads=[1, 1]), "pads must have 4"),
    ("SoftPool", (1, 8, 8), dict(kernel_shape=[2, 2]), "rank"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[0, 2]), "kernel_shape"),
    ("SoftPool", (1, 1, 8, 8), dict(strides=[1, 1]), "kernel_shape is required"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[2, 2], pads=[-1, 0, 0, 0]), "pads"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[2, 2], auto_pad="SAME"), "auto_pad"),
    ("SoftPool", (1, 1, 8, 8), dict(kernel_shape=[2, 2], ceil_mode=2), "ceil_mode"),
    ("StochasticPool", (1, 1, 8, 8), dict(kernel_shape=[2, 2], mode="max"), "mode"),
    ("StochasticPool", (1, 1, 8, 8, 8, 8), dict(kernel_shape=[2, 2, 2, 2]), "kernel_shape"),
    ("ReduceSoftPool", (2, 3), dict(axes=[2]), "out of range"),
    ("ReduceSoftPool", (2, 3), dict(axes=[1, -1]), "duplicates"),
    ("ReduceStochasticPool", (2, 3), dict(mode="median"), "mode"),
    ("ReduceStochasticPool", (2, 3), dict(keepdims=3), "keepdims"),
]


@pytest.mark.parametrize("op,shape,attrs,needle", INVALID, ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(INVALID)])
def test_invalid_attributes_give_error_status(op, shape, attrs, needle):
    with pytest.raises(Exception) as err:
        run_lib(one_node(op, TensorProto.FLOAT, attrs), np.ones(shape, np.float32))
    msg = str(err.value)
    assert op in msg and needle in msg, msg


@pytest.mark.parametrize("groups", [5, 6, 7])
def test_reduce_alternating_groups_limit(groups):
    """At most 6 alternating groups of reduced and kept axes (the kernels' 6 padded axes):
    6 runs and matches float64, 7 is an error status, not a write past the 6 axes."""
    shape = (2, 3) * 4
    shape = shape[:groups]
    axes = list(range(0, groups, 2))  # reduced, kept, reduced, ...: `groups` groups
    x = _input(shape, "float32")
    model = one_node("ReduceSoftPool", TensorProto.FLOAT, {"axes": axes, "keepdims": 1})
    if groups > 6:
        with pytest.raises(Exception, match="at most 6"):
            run_lib(model, x)
        return
    y = run_lib(model, x)
    np.testing.assert_allclose(y.astype(np.float64), reduce64(x, axes, 1, lambda w: soft64(w, 1.0)), **TOL["float32"])


@pytest.mark.parametrize("op", ["SoftPool", "StochasticPool", "ReduceSoftPool", "ReduceStochasticPool"])
def test_domain_version_0_is_not_ours(op):
    """The library registers each op from poolexport domain version 1: a file that imports
    version 0 names no op of ours and must not run on our kernels."""
    attrs = {"kernel_shape": [2, 2]} if not op.startswith("Reduce") else {}
    model = one_node(op, TensorProto.FLOAT, attrs)
    del model.opset_import[1]
    model.opset_import.append(helper.make_opsetid("poolexport", 0))
    with pytest.raises(Exception, match="not a registered function/op"):
        run_lib(model, np.ones((1, 1, 4, 4), np.float32))


def test_unsupported_dtype_is_rejected():
    with pytest.raises(Exception, match="SoftPool"):
        run_lib(one_node("SoftPool", TensorProto.DOUBLE, dict(kernel_shape=[2, 2])), np.ones((1, 1, 4, 4)))


def test_library_path_and_session():
    path = poolexport.get_library_path()
    assert path.endswith(".so")
    so = pxort.session_options()
    sess = ort.InferenceSession(one_node("SoftPool", TensorProto.FLOAT, dict(kernel_shape=[2, 2])).SerializeToString(), so)
    assert sess.run(None, {"X": np.ones((1, 1, 3, 3), np.float32)})[0].shape == (1, 1, 2, 2)


# ----------------------------------------------------------------- local-function fallback
FALLBACK = [
    ("SoftPool", "k3s2p1", dict(beta=1.5)),
    ("SoftPool", "ceil", {}),
    ("SoftPool", "same_lower", {}),
    ("SoftPool", "3d", {}),
    ("StochasticPool", "dil2_asym", dict(mode="expectation")),
    ("StochasticPool", "1d", dict(mode="expectation")),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op,case,extra", FALLBACK)
def test_library_matches_local_function_fallback(op, case, extra, dtype):
    targets = pytest.importorskip("poolexport.onnx.targets", reason="poolexport.onnx (the export helper's decompositions) missing")
    shape, a = WINDOW_CASES[case]
    elem, _, _ = DTYPES[dtype]
    model = targets.apply_target(one_node(op, elem, {**a, **extra}), "ort")
    assert model.functions, "the ort target carries the local function"
    x = _input(shape, dtype)
    y_lib = run_lib(model, x)
    y_fn = run_plain(model, x)
    np.testing.assert_allclose(y_lib.astype(np.float64), y_fn.astype(np.float64), rtol=TOL[dtype]["rtol"] * 2, atol=TOL[dtype]["atol"] * 2)


@pytest.mark.parametrize("op,attrs", [("ReduceSoftPool", dict(axes=[1], keepdims=1)), ("ReduceStochasticPool", dict(axes=[2, 3], keepdims=0))])
def test_reduce_library_matches_local_function_fallback(op, attrs):
    targets = pytest.importorskip("poolexport.onnx.targets", reason="poolexport.onnx (the export helper's decompositions) missing")
    model = targets.apply_target(one_node(op, TensorProto.FLOAT, attrs), "ort")
    x = _input((2, 3, 4, 5), "float32")
    np.testing.assert_allclose(run_lib(model, x), run_plain(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", ["k3s2p1", "ceil_pad", "1d"])
def test_sampled_picks_match_local_function_fallback(case, dtype):
    targets = pytest.importorskip("poolexport.onnx.targets", reason="poolexport.onnx (the export helper's decompositions) missing")
    shape, a = WINDOW_CASES[case]
    elem, _, _ = DTYPES[dtype]
    try:
        model = targets.apply_target(one_node("StochasticPool", elem, {**a, "mode": "sample", "seed": 11}), "ort")
    except ValueError as e:  # an older decomposition that does not express the pick
        pytest.skip(f"the local function does not decompose mode='sample': {e}")
    x = _input(shape, dtype)
    np.testing.assert_array_equal(run_lib(model, x), run_plain(model, x))
