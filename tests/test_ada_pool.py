"""The adaPool family (EdscwPool, IdwPool, AdaPool) against the float64 oracle
(tests/_ada_oracle.py, written from the definitions), on every CPU runtime: the torch ops,
ONNX Runtime with the custom-op library, ONNX Runtime without it (the standard-op
decomposition inlined), the ONNX reference evaluator and OpenVINO where installed; and the
oracle against the adaPool repository's own per-window formula, re-typed from
pytorch/CUDA/adapool_cuda_kernel.cu (the repository has no CPU code path: its Python
wrappers assert x.is_cuda), with each case where they differ listed and tested.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import _ada_oracle as O
import _limits as L
from _cpu import cpu_paths
from poolexport import ort as pxort
from poolexport.onnx import decompositions
from poolexport.onnx import domain as D
from poolexport.ops import ada_pool as A

KINDS = {"edscw": D.EDSCW_POOL, "idw": D.IDW_POOL, "ada": D.ADA_POOL}
ORACLE = {"edscw": O.edscw_forward, "idw": O.idw_forward}

# (input shape, ONNX attributes): 1/2/3-D, pads, dilations, ceil_mode, auto_pad, overlaps
CASES = [
    ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ((1, 2, 9), dict(kernel_shape=[2], strides=[2], ceil_mode=1)),
    ((2, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ((1, 3, 9, 9), dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1])),
    ((1, 2, 6, 7), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 2, 6, 7), dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
    ((1, 2, 5, 6, 5), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
    ((1, 1, 5, 5, 6), dict(kernel_shape=[3, 2, 3], strides=[1, 2, 2], pads=[1, 0, 1, 1, 1, 0])),
]
IDS = [f"{len(s) - 2}d-{i}" for i, (s, _) in enumerate(CASES)]


def _attrs(a):
    full = dict(strides=[], pads=[], dilations=[], ceil_mode=0, auto_pad="NOTSET")
    full.update(a)
    return full


def _torch_args(a):
    a = _attrs(a)
    return (a["kernel_shape"], list(a["strides"]), list(a["pads"]), list(a["dilations"]), bool(a["ceil_mode"]),
            a["auto_pad"])


def _oracle_attrs(a, shape):
    """The oracle takes explicit pads: resolve auto_pad SAME_* here (ONNX rule)."""
    a = _attrs(a)
    k = len(a["kernel_shape"])
    st = a["strides"] or [1] * k
    if a["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
        pb, pe = [], []
        for n, kk, s in zip(shape[2:], a["kernel_shape"], st):
            out = -(-n // s)
            total = max(0, (out - 1) * s + kk - n)
            lo = total // 2 if a["auto_pad"] == "SAME_UPPER" else total - total // 2
            pb.append(lo)
            pe.append(total - lo)
        return dict(kernel_shape=a["kernel_shape"], strides=st, pads=pb + pe, dilations=a["dilations"], ceil_mode=0)
    return dict(kernel_shape=a["kernel_shape"], strides=st, pads=a["pads"], dilations=a["dilations"],
                ceil_mode=a["ceil_mode"])


def _x(shape, seed=0, scale=2.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _oracle(kind, x, beta, a):
    oa = _oracle_attrs(a, x.shape)
    return O.ada_forward(x, beta, oa) if kind == "ada" else ORACLE[kind](x, oa)


def _beta_for(y_shape, seed=1):
    # the repository's beta: one value per output position, shared over N and C
    return np.random.default_rng(seed).uniform(-0.25, 1.25, y_shape[2:])


def _tol(kind, x, a, dtype):
    """Absolute tolerance per output: float32/float16 rounding of the inputs and the math,
    scaled by the window's magnitude; IDW's weights move with the mean's rounding in
    proportion to max|a| / min|a - m| (its condition)."""
    eps = {np.float32: 2.0**-23, np.float16: 2.0**-10, np.float64: 2.0**-52}[dtype]
    amax = np.abs(x).max()
    tol = 64 * eps * amax * np.ones(1)
    if kind == "idw":
        cond = O.idw_condition(x.astype(np.float64), _oracle_attrs(a, x.shape))
        tol = 64 * eps * amax * (1 + np.where(np.isfinite(cond), cond, 0.0)).reshape(-1)
    return tol


def _close(got, want, tol):
    err = np.abs(np.asarray(got, np.float64).reshape(-1) - want.reshape(-1))
    assert np.all(err <= np.broadcast_to(tol, err.shape)), f"max err {err.max():.3e}, tol {np.min(tol):.3e}"


# ---------------------------------------------------------------- the repository's formula
REPO_CASES = [((2, 3, 12), (2,)), ((2, 2, 6, 8), (2, 2)), ((1, 2, 9, 9), (3, 3)), ((1, 2, 4, 6, 4), (2, 2, 2))]


@pytest.mark.parametrize("shape,kernel", REPO_CASES)
@pytest.mark.parametrize("kind", ["edscw", "idw", "em"])
def test_oracle_matches_repository_formula(shape, kernel, kind):
    x = _x(shape, seed=len(shape) + len(kind))
    attrs = dict(kernel_shape=list(kernel), strides=list(kernel))
    ours = {"edscw": O.edscw_forward, "idw": O.idw_forward, "em": O.em_forward}[kind](x, attrs)
    repo = O.repo_pool(kind, x, kernel)
    np.testing.assert_allclose(ours, repo, rtol=1e-12, atol=1e-12 * np.abs(x).max())


@pytest.mark.parametrize("shape,kernel", REPO_CASES)
def test_ada_matches_repository_formula_unclamped_beta(shape, kernel):
    # the repository's default path (adapool*d(native=False)) blends with beta as given
    x = _x(shape, seed=3)
    y = O.edscw_forward(x, dict(kernel_shape=list(kernel), strides=list(kernel)))
    beta = np.random.default_rng(4).uniform(-0.5, 1.5, y.shape[2:])
    ours = O.ada_forward(x, beta, dict(kernel_shape=list(kernel), strides=list(kernel)))
    np.testing.assert_allclose(ours, O.repo_ada(x, beta, kernel), rtol=1e-12, atol=1e-12 * np.abs(x).max())


# Where the repository's arithmetic is not the definition (its value after nan_to_num,
# then ours); each listed in the notes.
DIFFERING = [
    # eM: exp overflows without a shift (float64 above ~709.78, float32 above ~88.72)
    ("em", [800.0, 0.0], np.float64, 800.0),
    ("em", [100.0, 0.0], np.float32, 100.0),
    # eM: every exp underflows to 0, 0/0
    ("em", [-800.0, -801.0], np.float64, (-800.0 - 801.0 * np.exp(-1.0)) / (1.0 + np.exp(-1.0))),
    # IDW: a value equal to the window mean divides by 0 (the limit is the mean)
    ("idw", [1.0, 3.0, 2.0], np.float64, 2.0),
    ("idw", [5.0, 5.0], np.float64, 5.0),
    ("idw", [7.0], np.float64, 7.0),
    # eDSCW in float32: a^2 + m^2 overflows above ~1.8e19
    ("edscw", [3e19, 1e19], np.float32, None),
]


@pytest.mark.parametrize("kind,window,dtype,expected", DIFFERING)
def test_listed_differences_from_repository(kind, window, dtype, expected):
    x = np.asarray(window, np.float64).reshape(1, 1, -1)
    attrs = dict(kernel_shape=[len(window)], strides=[len(window)])
    ours = {"edscw": O.edscw_forward, "idw": O.idw_forward, "em": O.em_forward}[kind](x, attrs).item()
    if expected is not None:
        assert ours == pytest.approx(expected, rel=1e-12)
    repo = O.repo_window(kind, window, dtype)
    assert abs(float(repo) - ours) > 1e-3 * max(1.0, abs(ours)), (repo, ours)
    # and the op (float32 kernels where the repository is float32) gives ours
    t = torch.tensor(x, dtype=torch.float32 if dtype == np.float32 else torch.float64)
    if kind == "em":
        return
    op = A.edscw_pool if kind == "edscw" else A.idw_pool
    got = op(t, [len(window)], [len(window)], [], [], False, "NOTSET").item()
    assert got == pytest.approx(ours, rel=1e-6)


@pytest.mark.parametrize("kind", ["edscw", "idw"])
def test_repository_backward_leaves_out_the_weights_derivative(kind):
    # its backward kernels give d out / d a_j = w_j; ours is the derivative (gradcheck below)
    window = np.array([0.3, -1.2, 2.0, 0.7])
    x = torch.tensor(window.reshape(1, 1, 4), requires_grad=True)
    op = A.edscw_pool if kind == "edscw" else A.idw_pool
    op(x, [4], [4], [], [], False, "NOTSET").sum().backward()
    exact = x.grad.numpy().reshape(-1)
    oracle = (O.edscw_backward if kind == "edscw" else O.idw_backward)(
        window.reshape(1, 1, 4), dict(kernel_shape=[4], strides=[4]), np.ones((1, 1, 1))).reshape(-1)
    np.testing.assert_allclose(exact, oracle, rtol=1e-12, atol=1e-14)
    assert np.abs(exact - O.repo_window_grad(kind, window)).max() > 1e-2


# ---------------------------------------------------------------- torch ops
@pytest.mark.parametrize("shape,a", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_op_matches_oracle(shape, a, kind, dtype):
    x = _x(shape, seed=7)
    args = _torch_args(a)
    xt = torch.tensor(x, dtype=dtype)
    if kind == "ada":
        yshape = A.edscw_pool(xt, *args).shape
        beta = _beta_for(yshape)
        got = A.ada_pool(xt, torch.tensor(beta, dtype=dtype), *args)
    else:
        beta = None
        got = (A.edscw_pool if kind == "edscw" else A.idw_pool)(xt, *args)
    want = _oracle(kind, x.astype(np.float32).astype(np.float64) if dtype == torch.float32 else x, beta, a)
    assert got.shape == want.shape
    if dtype == torch.float64:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12 * np.abs(x).max())
    else:
        _close(got.numpy(), want, _tol(kind, x, a, np.float32))


@pytest.mark.parametrize("shape,a", CASES[:3] + CASES[6:7], ids=IDS[:3] + IDS[6:7])
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_gradcheck_float64(shape, a, kind):
    x = torch.tensor(_x(shape, seed=11), requires_grad=True)
    args = _torch_args(a)
    if kind == "ada":
        beta = torch.tensor(_beta_for(A.edscw_pool(x.detach(), *args).shape), requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, b: A.ada_pool(t, b, *args), (x, beta))
    else:
        op = A.edscw_pool if kind == "edscw" else A.idw_pool
        assert torch.autograd.gradcheck(lambda t: op(t, *args), (x,))


@pytest.mark.parametrize("shape,a", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_float32_gradients_within_1e5_of_float64(shape, a, kind):
    x64 = _x(shape, seed=13)
    x32 = x64.astype(np.float32).astype(np.float64)
    args = _torch_args(a)
    oa = _oracle_attrs(a, shape)
    xt = torch.tensor(x32, dtype=torch.float32, requires_grad=True)
    y = A.edscw_pool(xt.detach(), *args)
    g = np.random.default_rng(5).standard_normal(y.shape)
    if kind == "ada":
        beta = _beta_for(y.shape)
        bt = torch.tensor(beta, dtype=torch.float32, requires_grad=True)
        A.ada_pool(xt, bt, *args).backward(torch.tensor(g, dtype=torch.float32))
        dx, db = O.ada_backward(x32, beta.astype(np.float32).astype(np.float64), oa, g)
        np.testing.assert_allclose(bt.grad.numpy(), db, rtol=1e-5, atol=1e-5)
    else:
        op = A.edscw_pool if kind == "edscw" else A.idw_pool
        op(xt, *args).backward(torch.tensor(g, dtype=torch.float32))
        dx = (O.edscw_backward if kind == "edscw" else O.idw_backward)(x32, oa, g)
    atol = 1e-5
    if kind == "idw":  # the mean's rounding moves the weights by ~eps * condition^2
        cond = O.idw_condition(x32, oa)
        atol = max(atol, 1e-5 * float(np.nanmax(np.where(np.isfinite(cond), cond, 0.0))) ** 2 / 100)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-5, atol=atol)


def test_beta_must_broadcast():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="broadcast"):
        A.ada_pool(x, torch.ones(4, 4), [2, 2], [2, 2], [], [], False, "NOTSET")


# ---------------------------------------------------------------- ONNX runtimes
def _model(kind, a, elem, with_function):
    op = KINDS[kind]
    inputs = [helper.make_tensor_value_info("X", elem, None)]
    names = ["X"]
    if kind == "ada":
        inputs.append(helper.make_tensor_value_info("Beta", elem, None))
        names.append("Beta")
    full, k = _attrs(a), len(a["kernel_shape"])  # explicit, as the exporters write them
    full["strides"] = full["strides"] or [1] * k
    full["dilations"] = full["dilations"] or [1] * k
    full["pads"] = full["pads"] or [0] * (2 * k)
    node = helper.make_node(op, names, ["Y"], domain=D.DOMAIN, **full)
    graph = helper.make_graph([node], op, inputs, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", D.OPSET), helper.make_opsetid(D.DOMAIN, 1)],
                              ir_version=10)
    if with_function:
        model.functions.extend(decompositions.functions([op]))
    return model


def _feeds(kind, x, a, dtype, beta_range=(-0.25, 1.25)):
    feeds = {"X": x.astype(dtype)}
    beta = None
    if kind == "ada":
        yshape = A.edscw_pool(torch.tensor(x), *_torch_args(a)).shape
        beta = np.random.default_rng(1).uniform(*beta_range, yshape[2:]).astype(dtype)
        feeds["Beta"] = beta
    return feeds, beta


RUNTIMES = ["ort-library", "ort-decomposition", "reference-evaluator"]


def _run(runtime, kind, a, feeds, elem):
    if runtime == "torch":
        x, args = torch.tensor(feeds["X"]), _torch_args(a)
        if kind == "ada":
            return A.ada_pool(x, torch.tensor(feeds["Beta"]), *args).numpy()
        return (A.edscw_pool if kind == "edscw" else A.idw_pool)(x, *args).numpy()
    if runtime == "ort-library":
        return pxort.session(_model(kind, a, elem, False).SerializeToString()).run(None, feeds)[0]
    model = _model(kind, a, elem, True)
    if runtime == "ort-decomposition":
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)[0]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("shape,a", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_onnx_runtimes_match_oracle(runtime, shape, a, kind):
    x = _x(shape, seed=17)
    feeds, beta = _feeds(kind, x, a, np.float32)
    got = _run(runtime, kind, a, feeds, TensorProto.FLOAT)
    want = _oracle(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
    assert got.shape == want.shape
    _close(got, want, _tol(kind, x, a, np.float32))


@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_float16(kind):
    shape, a = CASES[2]
    x = _x(shape, seed=19).astype(np.float16).astype(np.float64)
    feeds, beta = _feeds(kind, x, a, np.float16)
    got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT16)
    assert got.dtype == np.float16
    want = _oracle(kind, x, None if beta is None else beta.astype(np.float64), a)
    # one float16 rounding of the float32 result (and of Beta)
    _close(got, want, _tol(kind, x, a, np.float32) + 2.0**-10 * (np.abs(want).reshape(-1) + np.abs(x).max()))


@pytest.mark.parametrize("runtime", ["torch"] + RUNTIMES)
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
@pytest.mark.parametrize("scale", [1e-30, 1e10, 2.0**64 * 0.75, 2.0**64 * 1.5, 1e30, 3e38])
def test_finite_for_large_and_small_inputs(runtime, kind, scale):
    # either side of kSoftScaleAbove = 2^64 and up to float32's max: every output finite
    # (AdaPool with Beta in [0, 1]: outside it the blend itself may exceed float32)
    shape, a = CASES[2]
    x = np.clip(_x(shape, seed=23, scale=1.0) * scale, -3.4e38, 3.4e38)
    feeds, beta = _feeds(kind, x.astype(np.float32).astype(np.float64), a, np.float32, beta_range=(0.0, 1.0))
    got = _run(runtime, kind, a, feeds, TensorProto.FLOAT)
    assert np.all(np.isfinite(got))
    want = _oracle(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
    _close(got, want, _tol(kind, feeds["X"].astype(np.float64), a, np.float32) * 4)


@pytest.mark.parametrize("runtime", ["torch"] + RUNTIMES)
@pytest.mark.parametrize("a", [dict(kernel_shape=[2, 2], strides=[2, 2]),  # interior windows only
                               dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])])  # and borders
def test_idw_constant_window_is_its_value(runtime, a):
    x = np.full((1, 1, 4, 4), 3.5)
    got = _run(runtime, "idw", a, {"X": x.astype(np.float32)}, TensorProto.FLOAT)
    np.testing.assert_array_equal(got, np.full((1, 1, 2, 2), 3.5, np.float32))


def test_ort_library_refuses_beta_that_does_not_broadcast():
    a = dict(kernel_shape=[2, 2], strides=[2, 2])
    sess = pxort.session(_model("ada", a, TensorProto.FLOAT, False).SerializeToString())
    with pytest.raises(Exception, match="does not broadcast"):
        sess.run(None, {"X": np.ones((1, 1, 4, 4), np.float32), "Beta": np.ones((3,), np.float32)})


@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_shape_inference(kind):
    model = _model(kind, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), TensorProto.FLOAT, False)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 9, 10]))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 5, 5]


@pytest.mark.parametrize("runtime", ["torch"] + RUNTIMES)
@pytest.mark.parametrize("beta_shape", [(), (1,), (3, 1, 1), (2, 1, 4, 1), (1, 3, 1, 5), (2, 3, 4, 5)])
def test_ada_beta_broadcasts(runtime, beta_shape):
    shape, a = (2, 3, 7, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # Y: 2 x 3 x 4 x 5
    x = _x(shape, seed=29)
    beta = np.random.default_rng(31).uniform(0.0, 1.0, beta_shape)
    feeds = {"X": x.astype(np.float32), "Beta": beta.astype(np.float32)}
    got = _run(runtime, "ada", a, feeds, TensorProto.FLOAT)
    want = _oracle("ada", feeds["X"].astype(np.float64), feeds["Beta"].astype(np.float64), a)
    assert got.shape == want.shape == (2, 3, 4, 5)
    _close(got, want, _tol("ada", x, a, np.float32))


@pytest.mark.parametrize("beta_shape", [(1,), (3, 1, 1), (2, 1, 4, 5)])
def test_ada_gradcheck_broadcast_beta(beta_shape):
    x = torch.tensor(_x((2, 3, 7, 9), seed=37), requires_grad=True)
    beta = torch.tensor(np.random.default_rng(41).uniform(0, 1, beta_shape), requires_grad=True)
    args = _torch_args(dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    assert torch.autograd.gradcheck(lambda t, b: A.ada_pool(t, b, *args), (x, beta))


# ---------------------------------------------------------------- parity rows (exported files)
def _parity_net(kind, dims):
    import poolexport.nn as pnn

    conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[dims - 1](3, 4, 3, padding=1)
    cls = getattr(pnn, {"edscw": "EdscwPool", "idw": "IdwPool", "ada": "AdaPool"}[kind] + f"{dims}d")
    pool = cls(3, 2, 1) if kind != "ada" else cls(3, 2, 1, beta_shape=(4,) * dims)
    if kind == "ada":
        with torch.no_grad():
            pool.beta.uniform_(0, 1)
    return torch.nn.Sequential(conv, pool)


@pytest.mark.parametrize("dims,target", [(1, "ort"), (2, "ort"), (3, "ort"), (2, "portable")])
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_parity_of_exported_file(kind, dims, target):
    from poolexport.onnx.export import export_model
    from poolexport.parity import check_parity

    torch.manual_seed(dims)
    net = _parity_net(kind, dims)
    shape = (2, 3) + (8,) * dims
    model = export_model(net, torch.randn(shape), target=target, dynamic=())
    ops = {n.op_type for n in model.graph.node}
    assert (KINDS[kind] in ops) == (target == "ort")
    report = check_parity(model, net, [shape], runtimes=("torch", "onnxruntime", "onnxruntime-fallback", "reference",
                                                          "openvino"))
    for r in report.results:
        assert r.status in ("pass", "skip"), (r.runtime, r.status, r.reason, r.max_abs)
    assert any(r.runtime == "onnxruntime" and r.status == "pass" for r in report.results)


def test_exported_program_runs_in_float64_for_the_parity_reference():
    """torch.export of an AdaPool must not bake the input's dtype into the program (an
    unconditional beta cast did): parity's reference runs the program in float64."""
    from poolexport.parity import reference_outputs

    torch.manual_seed(0)
    net = _parity_net("ada", 2).eval()
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(net, (x,)).module()
    info = {}
    ref = reference_outputs(program, [x.numpy()], info)[0]
    assert info["reference"] == "float64"
    with torch.no_grad():
        expected = net.double()(x.double()).numpy()
    np.testing.assert_allclose(ref, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- modules, factory, replace_pools
def test_modules_factory_and_replace_pools():
    import poolexport.nn as pnn

    m = pnn.AdaPool2d(2)
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    m(x).sum().backward()
    assert m.beta.shape == (1, 1) and m.beta.grad is not None and x.grad is not None
    assert isinstance(pnn.create_pool("edscw", "window", dims=1, kernel_size=2), pnn.EdscwPool1d)
    assert isinstance(pnn.create_pool("idw", "window", dims=3, kernel_size=2), pnn.IdwPool3d)
    with pytest.raises(ValueError, match="only a window form"):
        pnn.create_pool("ada", "global")
    net = torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.AvgPool2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1))
    assert pnn.replace_pools(net, "ada") == ["0", "1"]
    assert isinstance(net[0], pnn.AdaPool2d) and isinstance(net[2], torch.nn.AdaptiveAvgPool2d)
    # torch-style arguments: stride defaults to the kernel, padding as in nn.AvgPool2d
    y = pnn.EdscwPool2d(3, 2, 1)(x.detach())
    want = A.edscw_pool(x.detach(), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET")
    torch.testing.assert_close(y, want)
    with pytest.raises(ValueError, match="beta_shape"):
        pnn.AdaPool2d(2, beta_shape=(3,))


# ---------------------------------------------------------------- the vectorised CPU kernel
# ada_rows.inc runs each output row in vectors of W columns (16 portable / AVX-512, 8 AVX2):
# widths around W and 2W, each path pinned with POOLEXPORT_CPU_ISA (read on every call),
# border vectors (padding, masked) and interior ones, stride 1 (plain phases), 2 (vector
# split) and 3 (scalar split).
ADA_LIMITS = L.read(Path(__file__).resolve().parents[1] / "custom_ops" / "ort" / "ada_kernels.h")
# out_w -> (input width, attributes): every width reachable in each geometry
ROW_GEOMETRIES = {
    "k3s2p1": (lambda o: 2 * o - 1, dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 1])),
    "k2s1d2": (lambda o: o + 2, dict(kernel_shape=[2, 2], strides=[1, 1], dilations=[1, 2])),
    "k3s3p1": (lambda o: 3 * o - 2, dict(kernel_shape=[1, 3], strides=[1, 3], pads=[0, 1, 0, 1])),
}


@contextlib.contextmanager
def _cpu_path(path):  # (tests/test_boundaries.py's cpu_path)
    old = os.environ.get("POOLEXPORT_CPU_ISA")
    os.environ["POOLEXPORT_CPU_ISA"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("POOLEXPORT_CPU_ISA", None)
        else:
            os.environ["POOLEXPORT_CPU_ISA"] = old


def _widths(path):
    w = L.LANES[path]
    return sorted({w - 1, w, w + 1, 2 * w - 1, 2 * w, 2 * w + 1})


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("geometry", list(ROW_GEOMETRIES))
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_row_kernel_lane_widths(path, geometry, kind):
    in_w, a = ROW_GEOMETRIES[geometry]
    for out_w in _widths(path):
        x = _x((2, 2, 3, in_w(out_w)), seed=out_w)
        feeds, beta = _feeds(kind, x, a, np.float32)
        with _cpu_path(path):
            got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT)
        assert got.shape[-1] == out_w
        want = _oracle(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
        _close(got, want, _tol(kind, x, a, np.float32))


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_row_kernel_float16(path, kind):
    # float16 rows converted once per input row, results rounded once
    in_w, a = ROW_GEOMETRIES["k3s2p1"]
    w = L.LANES[path]
    x = _x((1, 3, 4, in_w(w + 1)), seed=5).astype(np.float16).astype(np.float64)
    feeds, beta = _feeds(kind, x, a, np.float16)
    with _cpu_path(path):
        got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT16)
    want = _oracle(kind, x, None if beta is None else beta.astype(np.float64), a)
    _close(got, want, _tol(kind, x, a, np.float32) + 2.0**-10 * (np.abs(want).reshape(-1) + np.abs(x).max()))


def _nan_where(kind, x, beta, a):
    """The oracle's outputs, NaN where the window holds inf or NaN (the oracle's own
    arithmetic gives NaN there: inf - inf, inf / inf)."""
    with np.errstate(all="ignore"):
        want = _oracle(kind, x, beta, a)
    return want


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_row_kernel_nonfinite(path, value, where, kind):
    # inf / NaN at the row's first, middle or last column (first / a middle / the last
    # vector): the windows holding it give NaN, as the float64 oracle does; every other
    # window keeps its value
    in_w, a = ROW_GEOMETRIES["k3s2p1"]
    out_w = 2 * L.LANES[path] + 1
    x = _x((1, 2, 3, in_w(out_w)), seed=29)
    col = {"first": 0, "middle": x.shape[-1] // 2, "last": x.shape[-1] - 1}[where]
    x[0, 1, 1, col] = value
    feeds, beta = _feeds(kind, x, a, np.float32, beta_range=(0.0, 1.0))
    with _cpu_path(path):
        got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT).astype(np.float64)
    want = _nan_where(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want).reshape(-1)
    tol = np.broadcast_to(_tol(kind, np.nan_to_num(x, nan=0, posinf=0, neginf=0), a, np.float32), finite.shape)
    _close(got.reshape(-1)[finite], want.reshape(-1)[finite], tol[finite])


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("kind", ["edscw", "ada"])
def test_ort_dsc_denominator_floor(path, kind):
    # windows [q, -q, t, t]: m = t / 2, so DSC(t, m) = 0.8 is taken on u = t / q, v = m / q of
    # about t / q; the floor kAdaDscDenMin added to u^2 + v^2 sits at t / q ~ its square
    # root (limit - 1, limit, limit + 1 as powers of 2) and is harmless there; where a
    # larger floor would bite (t / q ~ 2^-11) the result is the oracle's
    root = int(round(-np.log2(ADA_LIMITS["kAdaDscDenMin"]) / 2))
    q = 3.0
    rows = []
    for e in [root - 1, root, root + 1, 10, 11, 12]:
        t = q * 2.0**-e
        rows.append([q, -q, t, t])
    x = np.array(rows, np.float64).reshape(1, 1, len(rows), 4)
    a = dict(kernel_shape=[1, 4], strides=[1, 4])
    feeds, beta = _feeds(kind, x, a, np.float32, beta_range=(0.0, 1.0))
    with _cpu_path(path):
        got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT)
    want = _oracle(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
    err = np.abs(got.reshape(-1).astype(np.float64) - want.reshape(-1))
    assert np.all(err <= 64 * 2.0**-23 * q), err  # the stated tolerance (64 eps max|x|)
    # and on the t-sized part itself (q - q cancels: y is a mix of t-sized terms)
    t = x[0, 0, 3:, 2]
    assert np.all(err[3:] <= 1e-4 * t), err[3:] / t


@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_per_window_path_buffer(kind):
    # windows with max |x| above kSoftScaleAbove take the per-window path, which gathers a
    # window of up to kAdaWindowBuffer values once (more: visited in place)
    limit = ADA_LIMITS["kAdaWindowBuffer"]
    for k in (limit - 1, limit, limit + 1):
        x = _x((1, 2, 1, 2 * k + 3), seed=k, scale=1.0) * 2.0**70
        a = dict(kernel_shape=[1, k], strides=[1, k], pads=[0, 1, 0, 1])
        feeds, beta = _feeds(kind, x.astype(np.float32).astype(np.float64), a, np.float32, beta_range=(0.0, 1.0))
        got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT)
        want = _oracle(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
        _close(got, want, _tol(kind, feeds["X"].astype(np.float64), a, np.float32))


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_row_kernel_huge_lanes_mixed(path, kind):
    # one window per vector above kSoftScaleAbove (and one at it): that vector goes to the
    # per-window path, its neighbours stay on the vector path; all match the oracle
    in_w, a = ROW_GEOMETRIES["k2s1d2"]
    w = L.LANES[path]
    x = _x((1, 1, 2, in_w(2 * w + 1)), seed=31)
    x[0, 0, 0, 3] = 2.0**64 * 1.5
    x[0, 0, 1, w + 3] = 2.0**64
    feeds, beta = _feeds(kind, x.astype(np.float32).astype(np.float64), a, np.float32, beta_range=(0.0, 1.0))
    with _cpu_path(path):
        got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT)
    want = _oracle(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
    # each window on its own scale (the huge ones would hide every other error)
    xf = feeds["X"].astype(np.float64)
    per_window = np.array([_tol(kind, xf[..., c:c + 3 + 2], a, np.float32).max() for c in range(want.shape[-1])])
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= np.maximum(per_window, 64 * 2.0**-23 * np.abs(want))), err.max()


def test_ort_idw_zero_windows_take_the_mean():
    # windows of zeros (ReLU maps: every distance 0) next to windows with values: y = m
    # where some value equals the mean, on every path, interior and border vectors
    for path in cpu_paths():
        x = np.zeros((1, 1, 3, 2 * L.LANES[path] + 5))
        x[0, 0, :, ::6] = np.array([1.0, 3.0, 2.0])[:, None]
        a = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[0, 1, 0, 1])
        with _cpu_path(path):
            got = _run("ort-library", "idw", a, {"X": x.astype(np.float32)}, TensorProto.FLOAT)
        want = _oracle("idw", x, None, a)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", cpu_paths())
def test_ort_idw_border_window_with_zero_mean(path):
    # a border window [pad, 2, -1, -1]: mean exactly 0, no value equal to it, so y = -0.4
    # (weights 1/2, 1, 1); padding's distance |0 - m| = 0 must not count as a value at the mean
    w = L.LANES[path]
    x = _x((1, 1, 2, 3 * w + 4), seed=37)
    x[..., :3] = [2.0, -1.0, -1.0]
    a = dict(kernel_shape=[1, 4], strides=[1, 3], pads=[0, 1, 0, 1])
    with _cpu_path(path):
        got = _run("ort-library", "idw", a, {"X": x.astype(np.float32)}, TensorProto.FLOAT)
    want = _oracle("idw", x.astype(np.float32).astype(np.float64), None, a)
    assert want[0, 0, 0, 0] == pytest.approx(-0.4)
    _close(got, want, _tol("idw", x, a, np.float32))


@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_same_bits_for_any_thread_count(kind):
    # rows are split over ORT's threads; each row's result must not depend on the split
    # (nor on the rows a thread kept from its previous output row)
    shape, a = (3, 5, 23, 37), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    feeds, _ = _feeds(kind, _x(shape, seed=41), a, np.float32)
    outs = []
    for threads in (1, 2, 4):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sess = pxort.session(_model(kind, a, TensorProto.FLOAT, False).SerializeToString(), options=options)
        outs.append(sess.run(None, feeds)[0])
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])


# ------------------------------------------------ eDSCW's exp on [-1, 0] and the packed rows
def _exp_unit(path, t):
    """The library's exp_unit (eDSCW's exp(DSC - 1), no range reduction) on path."""
    import ctypes

    lib = ctypes.CDLL(pxort.get_library_path())
    lib.poolexport_ada_exp_unit.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    t = np.ascontiguousarray(t, np.float32)
    out = np.full(t.size + 1, np.float32(7.0))  # a sentinel past the end
    with _cpu_path(path):
        lib.poolexport_ada_exp_unit(t.ctypes.data, out.ctypes.data, t.size)
    assert out[-1] == 7.0
    return out[:-1]


def _ulps(t, got):
    want = np.exp(t.astype(np.float64))
    ulp = np.ldexp(1.0, np.frexp(want)[1] - 24)  # want = m 2^e, m in [0.5, 1): ulp 2^(e-24)
    return np.abs(got.astype(np.float64) - want) / ulp


@pytest.mark.parametrize("path", cpu_paths())
def test_exp_unit_within_2_ulp_of_float64(path):
    # every 61st float32 of eDSCW's argument range [kAdaExpUnitMin, kAdaExpUnitMax] (about 17
    # million), its ends and one float past each end: within the shared exp's 2 ulp
    # (tests/test_cpu_isa.py; measured 1.5 ulp on the AVX paths, 1.8 on the portable one)
    lo, hi = np.float32(ADA_LIMITS["kAdaExpUnitMin"]), np.float32(ADA_LIMITS["kAdaExpUnitMax"])
    neg = np.arange(np.float32(-0.0).view(np.uint32), lo.view(np.uint32) + 1, 61, dtype=np.uint32).view(np.float32)
    pos = np.arange(0, hi.view(np.uint32) + 1, 61, dtype=np.uint32).view(np.float32)
    ends = [lo, hi, np.float32(0.0), np.float32(-0.0), np.float32(-2.0**-149), np.float32(2.0**-149)]
    ends += [np.nextafter(e, np.float32(d)) for e in (lo, hi) for d in (-np.inf, np.inf)]
    t = np.concatenate([neg, pos, np.array(ends, np.float32)])
    ulps = _ulps(t, _exp_unit(path, t))
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= 2.0, f"{path}: {ulps[worst]:.2f} ulp at t = {t[worst]!r}"
    assert _exp_unit(path, np.float32([0.0, -0.0]))[0] == 1.0
    # vector tails: lengths W - 1, W, W + 1 (and 2W +- 1) give the same values, nothing past n written
    w = L.LANES[path]
    for n in (w - 1, w, w + 1, 2 * w - 1, 2 * w + 1):
        np.testing.assert_array_equal(_exp_unit(path, t[:n]), _exp_unit(path, t[: 2 * w + 2])[:n])


# windows that neither overlap nor pad along the width and cover the row (in_w = s * out_w)
# run kAdaPackedOutputs // out_w output rows side by side as one row: out_w around half that
# limit and the limit (packs of 2, 1), around the lane widths (packs whose total is a
# multiple of W, or one off), a row count that is not a multiple of the pack (the last rows
# alone), packs that cross planes, padding rows (rows without every window row: alone),
# stride 3 (the scalar split), a dilated window, a column left over (in_w = s * out_w + 1:
# packs, never read); and the near misses that must not pack: a left padding column with
# in_w = s * out_w, ceil mode's partial last window
PACK_GEOMETRIES = {
    "k2s2": (lambda o: 2 * o, dict(kernel_shape=[2, 2], strides=[2, 2])),
    "k2s3d2": (lambda o: 3 * o, dict(kernel_shape=[2, 2], strides=[2, 3], dilations=[1, 2])),
    "k2s2ph1": (lambda o: 2 * o, dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 1, 0])),
    "k2s2odd": (lambda o: 2 * o + 1, dict(kernel_shape=[2, 2], strides=[2, 2])),
    "k2s2pw1": (lambda o: 2 * o, dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 1, 0, 0])),
    "k2s2ceil": (lambda o: 2 * o - 1, dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
}


def _pack_widths():
    p = int(ADA_LIMITS["kAdaPackedOutputs"])
    return sorted({1, 7, 8, 9, 15, 16, 17, p // 2 - 1, p // 2, p // 2 + 1, p - 1, p, p + 1})


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("geometry", list(PACK_GEOMETRIES))
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_packed_rows(path, geometry, kind):
    in_w, a = PACK_GEOMETRIES[geometry]
    for out_w in _pack_widths():
        if in_w(out_w) < a["kernel_shape"][-1]:  # ceil mode's width 1: no window fits
            continue
        x = _x((1, 3, 10, in_w(out_w)), seed=out_w)  # 3 planes of 5 output rows (4 with padding rows)
        feeds, beta = _feeds(kind, x, a, np.float32)
        with _cpu_path(path):
            got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT)
        assert got.shape[-1] == out_w
        want = _oracle(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
        _close(got, want, _tol(kind, x, a, np.float32))


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_packed_rows_float16_and_full_beta(path, kind):
    # float16 rows converted side by side; a Beta of Y's full shape (each packed row its own)
    _, a = PACK_GEOMETRIES["k2s2"]
    x = _x((2, 2, 14, 2 * 15), seed=43).astype(np.float16).astype(np.float64)
    feeds = {"X": x.astype(np.float16)}
    beta = None
    if kind == "ada":
        beta = np.random.default_rng(2).uniform(-0.25, 1.25, (2, 2, 7, 15)).astype(np.float16)
        feeds["Beta"] = beta
    with _cpu_path(path):
        got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT16)
    want = _oracle(kind, x, None if beta is None else beta.astype(np.float64), a)
    _close(got, want, _tol(kind, x, a, np.float32) + 2.0**-10 * (np.abs(want).reshape(-1) + np.abs(x).max()))


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_packed_rows_nonfinite(path, value, where, kind):
    # inf / NaN in the first, a middle or the last row of a pack (8 rows of 16), at that row's
    # first, middle or last column: NaN exactly where the oracle has it, the rest unchanged
    _, a = PACK_GEOMETRIES["k2s2"]
    x = _x((1, 2, 16, 32), seed=47)
    row, col = {"first": (0, 0), "middle": (9, 16), "last": (15, 31)}[where]
    x[0, 1, row, col] = value
    feeds, beta = _feeds(kind, x, a, np.float32, beta_range=(0.0, 1.0))
    with _cpu_path(path):
        got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT).astype(np.float64)
    want = _nan_where(kind, feeds["X"].astype(np.float64), None if beta is None else beta.astype(np.float64), a)
    assert np.isnan(want).sum() == 1
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want).reshape(-1)
    tol = np.broadcast_to(_tol(kind, np.nan_to_num(x, nan=0, posinf=0, neginf=0), a, np.float32), finite.shape)
    _close(got.reshape(-1)[finite], want.reshape(-1)[finite], tol[finite])


@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_packed_same_bits_for_any_thread_count(kind):
    # packs start wherever a thread's range does (and its last rows run alone): the bits
    # must not depend on it
    shape, a = (3, 5, 26, 36), dict(kernel_shape=[2, 2], strides=[2, 2])
    feeds, _ = _feeds(kind, _x(shape, seed=53), a, np.float32)
    outs = []
    for threads in (1, 2, 3, 4):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sess = pxort.session(_model(kind, a, TensorProto.FLOAT, False).SerializeToString(), options=options)
        outs.append(sess.run(None, feeds)[0])
    for other in outs[1:]:
        np.testing.assert_array_equal(other, outs[0])


# ---------------------------------------------------------------- Beta rows and float16 output rows
# AdaPool reads a Beta row that is contiguous along the width as one block (float16: the
# vector conversion, whose tail past its last whole vector is converted one by one), any
# other layout value by value; float16 outputs are converted in whole vectors of 8 and the
# row's count copied. Widths around 8 and the lane widths, every Beta layout.
FP16_ROW_WIDTHS = [1, 7, 8, 9, 15, 16, 17, 31, 33]
ROW_GEOMETRIES_FP16 = {
    "k2s2": (lambda ow: 2 * ow, dict(kernel_shape=[2, 2], strides=[2, 2])),  # packed rows (eDSCW, IDW)
    "k3s2p1": (lambda ow: 2 * ow - 1, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
}
# Beta shapes for Y (2, 2, 3, out_w), "W" standing for out_w: contiguous rows (one per output
# row, or one row for all), broadcast along the width, one value per plane, a full Beta
BETA_LAYOUTS = {"rows": (3, "W"), "one-row": (1, "W"), "per-row-value": (3, 1), "per-plane": (2, 2, 1, 1),
                "full": (2, 2, 3, "W")}


def _beta_shape(layout, out_w):
    return tuple(out_w if d == "W" else d for d in BETA_LAYOUTS[layout])


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("geometry", list(ROW_GEOMETRIES_FP16))
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_float16_rows_of_any_width(path, geometry, kind):
    in_w, a = ROW_GEOMETRIES_FP16[geometry]
    for out_w in FP16_ROW_WIDTHS:
        x = _x((2, 2, 6, in_w(out_w)), seed=60 + out_w).astype(np.float16).astype(np.float64)
        feeds, beta = _feeds(kind, x, a, np.float16)
        with _cpu_path(path):
            got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT16)
        assert got.dtype == np.float16 and got.shape[-1] == out_w
        want = _oracle(kind, x, None if beta is None else beta.astype(np.float64), a)
        _close(got, want, _tol(kind, x, a, np.float32) + 2.0**-10 * (np.abs(want).reshape(-1) + np.abs(x).max()))


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", list(BETA_LAYOUTS))
@pytest.mark.parametrize("geometry", list(ROW_GEOMETRIES_FP16))
def test_ort_ada_beta_layouts(path, dtype, layout, geometry):
    in_w, a = ROW_GEOMETRIES_FP16[geometry]
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    for out_w in FP16_ROW_WIDTHS:
        x = _x((2, 2, 6, in_w(out_w)), seed=80 + out_w).astype(dtype).astype(np.float64)
        # Beta's ends 0 and 1 and both sides of them, each at least once in the larger rows
        beta = np.random.default_rng(out_w).uniform(-0.25, 1.25, _beta_shape(layout, out_w))
        flat = beta.reshape(-1)
        flat[:6] = [0.0, 1.0, -2.0**-10, 1 + 2.0**-10, 0.5, 2.0][:flat.size]
        beta = beta.astype(dtype)
        with _cpu_path(path):
            got = _run("ort-library", "ada", a, {"X": x.astype(dtype), "Beta": beta}, elem)
        want = _oracle("ada", x, beta.astype(np.float64), a)
        assert got.shape == want.shape
        eps = 2.0**-10 if dtype == np.float16 else 0.0
        _close(got, want, _tol("ada", x, a, np.float32) + eps * (np.abs(want).reshape(-1) + np.abs(x).max()))


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("out_w", [16, 17])  # the last column: in a whole vector / the scalar tail
def test_ort_ada_beta_nan_in_a_row(path, dtype, where, out_w):
    # a NaN Beta value gives NaN at its outputs only, wherever the row conversion puts it
    _, a = ROW_GEOMETRIES_FP16["k3s2p1"]
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    x = _x((2, 2, 6, 2 * out_w - 1), seed=91).astype(dtype).astype(np.float64)
    beta = np.random.default_rng(5).uniform(0.0, 1.0, (3, out_w))
    col = {"first": 0, "middle": out_w // 2, "last": out_w - 1}[where]
    beta[1, col] = np.nan
    beta = beta.astype(dtype)
    with _cpu_path(path):
        got = _run("ort-library", "ada", a, {"X": x.astype(dtype), "Beta": beta}, elem).astype(np.float64)
    want = _oracle("ada", x, beta.astype(np.float64), a)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(want).sum() == 4  # N x C
    finite = np.isfinite(want).reshape(-1)
    eps = 2.0**-10 if dtype == np.float16 else 0.0
    tol = _tol("ada", x, a, np.float32) + eps * (np.abs(want).reshape(-1) + np.abs(x).max())
    _close(got.reshape(-1)[finite], want.reshape(-1)[finite], np.broadcast_to(tol, finite.shape)[finite])


@pytest.mark.parametrize("path", cpu_paths())
@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("kind", ["edscw", "idw", "ada"])
def test_ort_unused_last_column_nonfinite(path, value, kind):
    # floor mode leaves the last column of an odd width unread by every window; the lanes past
    # the row's outputs may read it (their results are dropped): every output stays finite
    # and matches the oracle, which never sees that column
    a = dict(kernel_shape=[2, 2], strides=[2, 2])
    for out_w in (15, 16, 17, 31, 33):
        x = _x((1, 2, 4, 2 * out_w + 1), seed=100 + out_w)
        x[..., -1] = value
        feeds, beta = _feeds(kind, x, a, np.float32, beta_range=(0.0, 1.0))
        with _cpu_path(path):
            got = _run("ort-library", kind, a, feeds, TensorProto.FLOAT)
        clean = x[..., :-1]
        want = _oracle(kind, clean.astype(np.float32).astype(np.float64), None if beta is None else beta.astype(np.float64), a)
        assert np.isfinite(got).all()
        _close(got, want, _tol(kind, clean, a, np.float32))
