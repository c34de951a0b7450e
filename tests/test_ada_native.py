"""The adaPool family's native torch kernels on CPU (EdscwPool, IdwPool, AdaPool): the forward
against the ONNX Runtime kernel (the same code: the same bits), the backward (dX, and
AdaPool's dBeta) against the float64 oracles of tests/_ada_oracle.py (closed forms written
from the definitions), and the plumbing: the reference twins for other dtypes and for
reference_kernels(), fake kernels, torch.compile, and the ctypes path (a child process with
POOLEXPORT_TORCH_REGISTRATION=python) against the compiled one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import _ada_oracle as O
from poolexport import ort as pxort
from poolexport.onnx import domain as D
from poolexport.ops import _native, _registry
from poolexport.ops import ada_pool as A

pytestmark = pytest.mark.skipif(not _native.ada_available(), reason="the custom-op library lacks the adaPool kernels")

KINDS = {"edscw": D.EDSCW_POOL, "idw": D.IDW_POOL, "ada": D.ADA_POOL}
OPS = {"edscw": A.edscw_pool, "idw": A.idw_pool, "ada": A.ada_pool}

# (input shape, explicit attributes): 1/2/3-D, padding, ceil_mode, dilation, k2s2, k3s2p1
CASES = {
    "1d-k3s2p1": ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "1d-ceil": ((1, 2, 9), dict(kernel_shape=[2], strides=[2], ceil_mode=1)),
    "2d-k2s2": ((2, 3, 8, 10), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "2d-k3s2p1": ((2, 3, 9, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d-k3s2p1-ceil": ((2, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "2d-dilated": ((1, 3, 9, 9), dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1])),
    "2d-long-rows": ((1, 2, 3, 71), dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 0, 1])),
    "3d-k2s2": ((1, 2, 5, 6, 5), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
    "3d-padded": ((1, 1, 5, 5, 6), dict(kernel_shape=[3, 2, 3], strides=[1, 2, 2], pads=[1, 0, 1, 1, 1, 0])),
}


def _full(a):
    k = len(a["kernel_shape"])
    return dict(kernel_shape=list(a["kernel_shape"]), strides=list(a.get("strides") or [1] * k),
                pads=list(a.get("pads") or [0] * (2 * k)), dilations=list(a.get("dilations") or [1] * k),
                ceil_mode=int(a.get("ceil_mode", 0)))


def _args(a):
    f = _full(a)
    return (f["kernel_shape"], f["strides"], f["pads"], f["dilations"], bool(f["ceil_mode"]), "NOTSET")


def _out_shape(x, a):
    return tuple(A.edscw_pool(torch.zeros(x.shape[:2] + x.shape[2:], dtype=torch.float64), *_args(a)).shape)


def _x(shape, seed, scale=2.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def _beta(shape, seed=1, low=-0.25, high=1.25):
    return np.random.default_rng(seed).uniform(low, high, shape)


def _ort(kind, a, x, beta):
    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.FLOAT16
    names = ["X"] + (["Beta"] if kind == "ada" else [])
    inputs = [helper.make_tensor_value_info(n, elem, None) for n in names]
    node = helper.make_node(KINDS[kind], names, ["Y"], domain=D.DOMAIN, auto_pad="NOTSET", **_full(a))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", D.OPSET), helper.make_opsetid(D.DOMAIN, 1)],
                              ir_version=10)
    feeds = {"X": x} if beta is None else {"X": x, "Beta": beta}
    return pxort.session(model.SerializeToString()).run(None, feeds)[0]


def _call(kind, x, beta, a):
    return OPS[kind](x, *_args(a)) if kind != "ada" else A.ada_pool(x, beta, *_args(a))


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint16)


def _grads(kind, x, beta, a, g):
    """(dX, dBeta or None) of the torch op at x (, beta) for the incoming gradient g."""
    xt = x.clone().requires_grad_()
    if kind != "ada":
        (dx,) = torch.autograd.grad(_call(kind, xt, None, a), xt, g)
        return dx, None
    bt = beta.clone().requires_grad_()
    return torch.autograd.grad(A.ada_pool(xt, bt, *_args(a)), (xt, bt), g)


def _oracle_grads(kind, x, beta, a, g):
    oa = _full(a)
    if kind == "ada":
        return O.ada_backward(x, beta, oa, g)
    return (O.edscw_backward if kind == "edscw" else O.idw_backward)(x, oa, g), None


def _compiled() -> bool:
    return _registry.compiled_cpu_kernels()[0]


# ---------------------------------------------------------------- forward == ONNX Runtime
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_forward_equals_ort_kernel_bit_for_bit(case, kind, dtype):
    shape, a = CASES[case]
    x = _x(shape, seed=3).astype(dtype)
    beta = _beta(_out_shape(x, a)[2:]).astype(dtype) if kind == "ada" else None
    got = _call(kind, torch.from_numpy(x), None if beta is None else torch.from_numpy(beta), a).numpy()
    want = _ort(kind, a, x, beta)
    assert got.dtype == dtype
    np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_nonfinite_equals_ort(where, value, kind):
    shape, a = CASES["2d-k3s2p1"]
    x = _x(shape, seed=5).astype(np.float32)
    col = {"first": 0, "middle": shape[-1] // 2, "last": shape[-1] - 1}[where]
    x[0, 1, 4, col] = value
    beta = _beta(_out_shape(x, a)[2:], low=0.0, high=1.0).astype(np.float32) if kind == "ada" else None
    got = _call(kind, torch.from_numpy(x), None if beta is None else torch.from_numpy(beta), a).numpy()
    np.testing.assert_array_equal(_bits(got), _bits(_ort(kind, a, x, beta)))


# ---------------------------------------------------------------- gradients vs float64
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradients_within_1e5_of_float64(case, kind):
    shape, a = CASES[case]
    x32 = _x(shape, seed=13).astype(np.float32)
    x = x32.astype(np.float64)
    out = _out_shape(x, a)
    g = np.random.default_rng(5).standard_normal(out)
    beta = _beta(out[2:]).astype(np.float32).astype(np.float64) if kind == "ada" else None
    dx, db = _grads(kind, torch.from_numpy(x32), None if beta is None else torch.tensor(beta, dtype=torch.float32), a,
                    torch.tensor(g, dtype=torch.float32))
    want_dx, want_db = _oracle_grads(kind, x, beta, a, g)
    atol = 1e-5
    if kind == "idw":  # the mean's float32 rounding moves IDW's weights by ~eps * condition^2
        cond = O.idw_condition(x, _full(a))
        atol = max(atol, 1e-5 * float(np.nanmax(np.where(np.isfinite(cond), cond, 0.0))) ** 2 / 100)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-5, atol=atol)
    if kind == "ada":
        np.testing.assert_allclose(db.numpy(), want_db, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_float16_gradients_from_float32_math(kind):
    # float16 X: the windows' math (and dBeta's eDSCW - eM) in float32, rounded once at the
    # end: within a float16 rounding of the float64 oracle at the rounded input
    shape, a = CASES["2d-k3s2p1"]
    x16 = _x(shape, seed=17).astype(np.float16)
    x = x16.astype(np.float64)
    out = _out_shape(x, a)
    g16 = np.random.default_rng(6).standard_normal(out).astype(np.float16)
    beta16 = _beta(out[2:]).astype(np.float16) if kind == "ada" else None
    dx, db = _grads(kind, torch.from_numpy(x16), None if beta16 is None else torch.from_numpy(beta16), a,
                    torch.from_numpy(g16))
    assert dx.dtype == torch.float16
    want_dx, want_db = _oracle_grads(kind, x, None if beta16 is None else beta16.astype(np.float64), a,
                                     g16.astype(np.float64))
    tol = 2.0**-10 * (np.abs(want_dx) + 1e-3 * np.abs(want_dx).max()) + 2e-4
    if kind == "idw":
        cond = O.idw_condition(x, _full(a))
        tol = tol + 2.0**-23 * float(np.nanmax(np.where(np.isfinite(cond), cond, 0.0))) ** 2
    assert np.all(np.abs(dx.numpy().astype(np.float64) - want_dx) <= tol)
    if kind == "ada":
        # summed over N and C in float32/double, rounded to float16 once
        np.testing.assert_allclose(db.numpy().astype(np.float64), want_db, rtol=2.0**-10, atol=2e-3)


@pytest.mark.parametrize("beta_shape", ["scalar", "one", "per-channel", "per-position", "full", "per-row"])
def test_beta_broadcast_forms(beta_shape):
    shape, a = CASES["2d-k3s2p1"]
    x32 = _x(shape, seed=19).astype(np.float32)
    out = _out_shape(x32, a)
    bshape = {"scalar": (), "one": (1,), "per-channel": (out[1], 1, 1), "per-position": out[2:], "full": out,
              "per-row": (out[2], 1)}[beta_shape]
    beta = _beta(bshape, seed=2).astype(np.float32)
    g = np.random.default_rng(7).standard_normal(out)
    xt = torch.from_numpy(x32)
    np.testing.assert_array_equal(_bits(A.ada_pool(xt, torch.from_numpy(beta), *_args(a)).numpy()),
                                  _bits(_ort("ada", a, x32, beta)))
    dx, db = _grads("ada", xt, torch.from_numpy(beta), a, torch.tensor(g, dtype=torch.float32))
    assert db.shape == beta.shape
    want_dx, want_db = O.ada_backward(x32.astype(np.float64), beta.astype(np.float64), _full(a), g)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db.numpy(), want_db, rtol=1e-5, atol=1e-5)


def test_beta_that_does_not_broadcast_is_refused():
    x = torch.randn(1, 2, 6, 6)
    for beta in (torch.ones(4, 4), torch.ones(2, 1, 1, 3, 3)):
        with pytest.raises(ValueError, match="broadcast"):
            A.ada_pool(x, beta, [2, 2], [2, 2], [], [], False, "NOTSET")
        with pytest.raises(ValueError, match="broadcast"):
            A.ada_pool_backward(torch.ones(1, 2, 3, 3), x, beta, [2, 2], [2, 2], [], [], False, "NOTSET")


# ---------------------------------------------------------------- boundaries
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the oracle's own NaN windows
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradient_nonfinite_reaches_only_its_windows(where, value, kind):
    # inf / NaN at a window's first, middle or last position: the gradient of every input
    # sharing a window with it is NaN (the oracle's own arithmetic), every other one is the
    # oracle's; k3 s1 p1 puts the value at each position of some window
    a = dict(kernel_shape=[1, 3], strides=[1, 3], pads=[0, 0, 0, 0])
    x = _x((1, 2, 2, 12), seed=23).astype(np.float32)
    col = {"first": 3, "middle": 4, "last": 5}[where]
    x[0, 1, 1, col] = value
    out = _out_shape(x, a)
    g = np.random.default_rng(8).standard_normal(out)
    beta = _beta(out[2:], low=0.0, high=1.0).astype(np.float32) if kind == "ada" else None
    dx, db = _grads(kind, torch.from_numpy(x), None if beta is None else torch.from_numpy(beta), a,
                    torch.tensor(g, dtype=torch.float32))
    dx = dx.numpy()
    bad = np.zeros(x.shape, bool)
    bad[0, 1, 1, 3:6] = True
    assert np.isnan(dx[bad]).all()
    clean = x.copy()
    clean[0, 1, 1, 3:6] = 0.0
    want_dx, want_db = _oracle_grads(kind, clean.astype(np.float64), None if beta is None else beta.astype(np.float64),
                                     a, g)
    np.testing.assert_allclose(dx[~bad], want_dx[~bad], rtol=1e-5, atol=1e-5)
    if kind == "ada":  # dBeta: NaN exactly at the window holding the value
        assert np.isnan(db.numpy()[1, 1]) and np.isfinite(np.delete(db.numpy().reshape(-1), 1 * out[3] + 1)).all()


LIMIT = 2.0**64  # limits.h kSoftScaleAbove: windows with a larger max |a| sum scaled values


@pytest.mark.parametrize("top", [np.nextafter(np.float32(LIMIT), np.float32(0)), np.float32(LIMIT),
                                 np.nextafter(np.float32(LIMIT), np.float32(np.inf))],
                         ids=["limit-1ulp", "limit", "limit+1ulp"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gradient_at_the_scale_limit(top, kind):
    # windows whose max |a| sits at kSoftScaleAbove and one float32 step either side: the
    # unscaled and scaled paths both give the oracle's gradient (relative to the window's size)
    shape, a = CASES["2d-k3s2p1"]
    x = (_x(shape, seed=29) * float(top) / 4).astype(np.float32)
    x[:, :, 4, 5] = top
    x[:, 1, 2, 2] = -top
    x64 = x.astype(np.float64)
    out = _out_shape(x, a)
    g = np.random.default_rng(9).standard_normal(out)
    beta = _beta(out[2:], low=0.0, high=1.0).astype(np.float32) if kind == "ada" else None
    dx, db = _grads(kind, torch.from_numpy(x), None if beta is None else torch.from_numpy(beta), a,
                    torch.tensor(g, dtype=torch.float32))
    want_dx, want_db = _oracle_grads(kind, x64, None if beta is None else beta.astype(np.float64), a, g)
    assert np.isfinite(dx.numpy()).all()
    atol = 1e-5
    if kind == "idw":
        cond = O.idw_condition(x64, _full(a))
        atol = max(atol, 1e-5 * float(np.nanmax(np.where(np.isfinite(cond), cond, 0.0))) ** 2 / 100)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-5, atol=atol)
    if kind == "ada":
        np.testing.assert_allclose(db.numpy(), want_db, rtol=1e-5, atol=1e-5 * float(top))


@pytest.mark.parametrize("kind", list(KINDS))
def test_all_padding_windows(kind):
    # pads as wide as the kernel: the corner windows hold padding only, output 0 and give
    # no gradient (nor a dBeta term)
    a = dict(kernel_shape=[2, 2], strides=[2, 2], pads=[2, 2, 2, 2])
    x = _x((1, 2, 4, 4), seed=31).astype(np.float32)
    out = _out_shape(x, a)
    beta = _beta(out[2:]).astype(np.float32) if kind == "ada" else None
    y = _call(kind, torch.from_numpy(x), None if beta is None else torch.from_numpy(beta), a).numpy()
    np.testing.assert_array_equal(_bits(y), _bits(_ort(kind, a, x, beta)))
    assert (y[..., 0, :] == 0).all() and (y[..., :, -1] == 0).all()
    g = np.random.default_rng(10).standard_normal(out)
    dx, db = _grads(kind, torch.from_numpy(x), None if beta is None else torch.from_numpy(beta), a,
                    torch.tensor(g, dtype=torch.float32))
    want_dx, want_db = _oracle_grads(kind, x.astype(np.float64), None if beta is None else beta.astype(np.float64), a, g)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-5, atol=1e-5)
    if kind == "ada":
        assert (db.numpy()[0, :] == 0).all()
        np.testing.assert_allclose(db.numpy(), want_db, rtol=1e-5, atol=1e-5)


def test_idw_hit_windows_take_the_means_gradient():
    # a window holding its own mean (y = m): every valid input gets g / n
    a = dict(kernel_shape=[3], strides=[3], pads=[0, 1])
    x = np.array([[[1.0, 2.0, 3.0, -4.0, 0.5, 5.0, 5.0, 5.0, 5.0, 6.0, 2.0]]], np.float32)  # last window: 2 valid
    g = np.array([[[1.5, -2.0, 0.25, 3.0]]])
    dx, _ = _grads("idw", torch.from_numpy(x), None, a, torch.tensor(g, dtype=torch.float32))
    want = np.array([[[0.5, 0.5, 0.5, -2 / 3, -2 / 3, -2 / 3, 1 / 12, 1 / 12, 1 / 12, 1.5, 1.5]]])
    np.testing.assert_allclose(dx.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(dx.numpy(), O.idw_backward(x.astype(np.float64), _full(a), g), rtol=1e-6)


def test_non_contiguous_inputs_equal_contiguous():
    shape, a = CASES["2d-k3s2p1"]
    x = torch.from_numpy(_x((shape[0], shape[2], shape[3], shape[1]), seed=37).astype(np.float32)).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    out = _out_shape(x, a)
    beta = torch.rand(out[1], 1, 1).expand(out[1], *out[2:])  # stride-0 axes
    g = torch.randn(out[0], out[1], out[3], out[2]).transpose(2, 3)
    assert not beta.is_contiguous() and not g.is_contiguous()
    for kind in KINDS:
        b = beta if kind == "ada" else None
        torch.testing.assert_close(_call(kind, x, b, a), _call(kind, x.contiguous(), None if b is None else b.contiguous(),
                                                               a), rtol=0, atol=0)
        got = _grads(kind, x, b, a, g)
        want = _grads(kind, x.contiguous(), None if b is None else b.contiguous(), a, g.contiguous())
        for u, v in zip(got, want):
            if v is not None:
                torch.testing.assert_close(u, v, rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_bits_for_any_thread_count(kind):
    # one plane per work item: each plane's gradient (and dBeta's sum) in a fixed order
    shape, a = (3, 5, 23, 37), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x = torch.from_numpy(_x(shape, seed=41).astype(np.float32))
    out = _out_shape(x, a)
    beta = torch.rand(out[1], 1, 1) if kind == "ada" else None  # per channel: each plane reads its own
    g = torch.randn(out)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(_grads(kind, x, beta, a, g))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for u, v in zip(other, results[0]):
            if v is not None:
                assert torch.equal(u, v)


# ---------------------------------------------------------------- plumbing
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_take_the_reference(dtype):
    shape, a = CASES["2d-k3s2p1"]
    x = torch.randn(shape, dtype=dtype)
    beta = torch.rand(5, 6, dtype=dtype)
    for kind in KINDS:
        name = OPS[kind]._schema.name.split("::")[1]
        extra = (beta,) if kind == "ada" else ()
        got = OPS[kind](x, *extra, *_args(a))
        ref = getattr(torch.ops.poolexport, f"_reference_{name}").default(x, *extra, *_args(a))
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_beta_of_another_dtype_takes_the_reference():
    shape, a = CASES["2d-k3s2p1"]
    x, beta = torch.randn(shape), torch.rand(5, 6, dtype=torch.float64)
    got = A.ada_pool(x, beta, *_args(a))
    torch.testing.assert_close(got, torch.ops.poolexport._reference_ada_pool.default(x, beta, *_args(a)), rtol=0, atol=0)


def test_reference_kernels_reach_the_new_ops():
    # float16: the native kernel rounds once at the end, the reference in float32 steps
    # from a float16 Beta blend; equality with the twin proves which one ran
    shape, a = CASES["2d-k3s2p1"]
    torch.manual_seed(3)
    x = (torch.randn(shape) * 3).half()
    beta = torch.rand(5, 6).half()
    for kind in KINDS:
        extra = (beta,) if kind == "ada" else ()
        name = OPS[kind]._schema.name.split("::")[1]
        twin = getattr(torch.ops.poolexport, f"_reference_{name}").default
        with _native.reference_kernels():
            inside = OPS[kind](x, *extra, *_args(a))
            g = torch.randn_like(inside.float()).half()
            dinside = getattr(torch.ops.poolexport, f"{name}_backward").default(g, x, *extra, *_args(a))
        torch.testing.assert_close(inside, twin(x, *extra, *_args(a)), rtol=0, atol=0)
        ref_back = getattr(torch.ops.poolexport, f"_reference_{name}_backward").default(g, x, *extra, *_args(a))
        for u, v in zip(dinside if kind == "ada" else (dinside,), ref_back if kind == "ada" else (ref_back,)):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_reference_environment_variable_in_a_child():
    code = textwrap.dedent("""
        import torch
        from poolexport.ops import ada_pool as A
        x = torch.randn(1, 2, 6, 7).half()
        b = torch.rand(3, 3).half()
        args = ([2, 3], [2, 2], [0, 0, 0, 1], [1, 1], False, "NOTSET")
        assert torch.equal(A.ada_pool(x, b, *args), torch.ops.poolexport._reference_ada_pool.default(x, b, *args))
        assert torch.equal(A.edscw_pool(x, *args), torch.ops.poolexport._reference_edscw_pool.default(x, *args))
    """)
    env = dict(os.environ, POOLEXPORT_TORCH_KERNELS="reference")
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]


@pytest.mark.skipif(not _compiled(), reason="compiled registration unavailable")
def test_compiled_kernels_are_the_ones_dispatched():
    for name in ("edscw_pool", "idw_pool", "ada_pool", "ada_pool_backward"):
        table = torch._C._dispatch_dump(f"poolexport::{name}")
        cpu_lines = [line for line in table.splitlines() if line.startswith("CPU:")]
        assert cpu_lines and "stable_ops.cc" in cpu_lines[0], table


_CHILD = textwrap.dedent("""
    import json, sys, torch
    from poolexport.ops import _registry, ada_pool as A
    assert not _registry.compiled_cpu_kernels()[0]
    torch.manual_seed(0)
    out = []
    args = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], True, "NOTSET")
    for dtype in (torch.float32, torch.float16):
        x = (torch.randn(2, 5, 9, 11) * 2).to(dtype)
        beta = torch.rand(5, 1, 1).to(dtype)
        g = torch.randn(2, 5, 5, 6).to(dtype)
        for name in ("edscw_pool", "idw_pool", "ada_pool"):
            extra = (beta,) if name == "ada_pool" else ()
            y = getattr(A, name)(x, *extra, *args)
            d = getattr(torch.ops.poolexport, name + "_backward").default(g, x, *extra, *args)
            d = list(d) if name == "ada_pool" else [d]
            out.append([y.float().flatten().tolist()] + [t.float().flatten().tolist() for t in d])
    print(json.dumps(out))
""")


@pytest.mark.skipif(not _compiled(), reason="compiled registration unavailable")
def test_compiled_equals_ctypes_path_bit_for_bit():
    env = dict(os.environ, **{_registry.REGISTRATION_ENV: "python"})
    child = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    expected = json.loads(child.stdout)
    got = json.loads(subprocess.run([sys.executable, "-c", _CHILD.replace("assert not", "assert")],
                                    capture_output=True, text=True, timeout=300, env=dict(os.environ)).stdout)
    assert len(got) == len(expected) == 6
    for e, g in zip(expected, got):
        for u, v in zip(e, g):
            np.testing.assert_array_equal(np.array(u), np.array(v))


def test_fake_tensors_and_torch_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET")
    with FakeTensorMode():
        x, beta, g = torch.empty(2, 3, 9, 11), torch.empty(3, 1, 1), torch.empty(2, 3, 5, 6)
        assert A.ada_pool(x, beta, *args).shape == (2, 3, 5, 6)
        dx, db = A.ada_pool_backward(g, x, beta, *args)
        assert dx.shape == x.shape and db.shape == beta.shape
        assert A.idw_pool_backward(g, x, *args).shape == x.shape

    def f(x, beta):
        return (A.ada_pool(x, beta, *args) + A.edscw_pool(x, *args) * A.idw_pool(x, *args)).sum()

    x = torch.randn(2, 3, 9, 11, requires_grad=True)
    beta = torch.rand(3, 1, 1, requires_grad=True)
    want = torch.autograd.grad(f(x, beta), (x, beta))
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, beta), (x, beta))
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_opcheck():
    args = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET")
    x = torch.randn(1, 2, 7, 8, requires_grad=True)
    beta = torch.rand(4, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.poolexport.ada_pool.default, (x, beta, *args))
    torch.library.opcheck(torch.ops.poolexport.edscw_pool.default, (x, *args))
