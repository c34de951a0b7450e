"""Differential boundary harness (issue 21): the SoftPool and stochastic kernels at every
limit of custom_ops/include/poolexport/limits.h (read through tests/_limits.py), against
the independent float64 oracle of tests/_oracle.py, on every CPU path this machine has
(POOLEXPORT_CPU_ISA caps the path; the library reads it on every call, so one process
compares them) and every runtime present:

* ``ort-<path>``: the ONNX Runtime custom-op library (one-node model),
* ``torch-<path>``: the torch op on the library's native kernels (forward and backward),
* ``torch-reference``: the ops' pure-torch implementation (``reference_kernels()``).

Inputs are drawn around each limit: ranges of beta*x at SHARED_RANGE - 1, its float32
neighbours, SHARED_RANGE + 1 and on to twice the limit and past the exp clamp
(EXP_ARG_MIN); row widths lanes*k - 1, lanes*k, lanes*k + 1 for every lane width; output
rows per plane around SHARED_ROWS; outliers, inf, -inf and NaN at the first, an interior
and the last position of a row or of a window; beta in {0, small, 1, negative, large};
1-D/2-D/3-D windows with strides, pads, dilations and ceil_mode. Hypothesis runs
derandomized with explicit boundary examples, so CI sees the same cases every run.

Tolerances (float32; the kernels compute in float32 from float32 inputs):

* forward: |y - y64| <= RTOL * cond + FLOOR * max|a| per window, where cond (the float32
  error scale of that window, _oracle.soft_forward) is (K+4) sum p|a| plus
  sum p |a - y| (|beta a| + |shift| + 64 + K): the sums' roundings and the weights' (an
  exp argument rounded at its magnitude). For an ordinary window cond ~ K max|a|, i.e.
  about 1e-5 relative; for a window whose output is carried by weights of exp(-86) it is
  relative to that tiny output, which is what makes the exp clamp visible.
* backward: the same, per input element, summed over the windows that hold it
  (GRAD_RTOL on _oracle.soft_backward's scale: within 1e-5 of float64 relative to the
  gradient's own magnitude).
* the kernels clamp exp's argument at EXP_ARG_MIN (common.h, documented there): the
  oracle for the native runtimes applies the same clamp, the pure-torch reference is
  compared with the exact exp.
* sampled picks: bit for bit (values and, through the gradient, positions).
* a window holding NaN gives NaN (README: "NaN reaches exactly the windows that hold it"),
  and no window without inf/NaN may change: those are checked as above. A window holding
  +-inf (and no NaN) is not checked: its value is not specified, and the runtimes differ
  (native: -inf for [1, 2, -inf] at beta 1, NaN or the finite limit from the reference).

Run time: about 20 s on 2 shared cores (2026-12-03).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import _limits as L
from _cpu import cpu_paths
import _oracle as O
import poolexport.ops  # noqa: F401  (registers torch.ops.poolexport)
from poolexport import ort as pxort
from poolexport.ops import _native
from poolexport.ops._native import reference_kernels

RTOL = 1e-5          # float32 forward, on the window's error scale (see above)
GRAD_RTOL = 1e-5     # float32 backward, on the element's error scale
FLOOR = 1e-40        # times max|a|: float32's denormal steps next to weights >= exp(-87)

if not _native.available():  # pragma: no cover - the library is part of the build
    pytest.skip("the custom-op library is not built", allow_module_level=True)


# ------------------------------------------------------------------------ paths, runtimes
PATHS = cpu_paths()


@contextlib.contextmanager
def cpu_path(path):
    old = os.environ.get("POOLEXPORT_CPU_ISA")
    os.environ["POOLEXPORT_CPU_ISA"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("POOLEXPORT_CPU_ISA", None)
        else:
            os.environ["POOLEXPORT_CPU_ISA"] = old


_SESSIONS: dict = {}


def _full(attrs, rank):
    return dict(kernel_shape=list(attrs["kernel_shape"]), strides=list(attrs.get("strides") or [1] * rank),
                pads=list(attrs.get("pads") or [0] * (2 * rank)), dilations=list(attrs.get("dilations") or [1] * rank),
                ceil_mode=int(attrs.get("ceil_mode", 0)))


def ort_run(op, x, attrs, **extra):
    a = {**_full(attrs, x.ndim - 2), **extra}
    key = (op, repr(sorted(a.items())))
    if key not in _SESSIONS:
        import onnxruntime as ort

        xi = helper.make_tensor_value_info("X", TensorProto.FLOAT, None)
        yi = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
        node = helper.make_node(op, ["X"], ["Y"], domain="poolexport", **a)
        model = helper.make_model(helper.make_graph([node], "g", [xi], [yi]), ir_version=10,
                                  opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        _SESSIONS[key] = pxort.session(model.SerializeToString(), options=so)
    return _SESSIONS[key].run(None, {"X": x})[0]


def torch_soft(x, attrs, beta, g=None):
    a = _full(attrs, x.ndim - 2)
    t = torch.from_numpy(x.copy()).requires_grad_(g is not None)
    y = torch.ops.poolexport.soft_pool(t, a["kernel_shape"], a["strides"], a["pads"], a["dilations"],
                                       bool(a["ceil_mode"]), "NOTSET", float(beta))
    if g is None:
        return y.detach().numpy()
    y.backward(torch.from_numpy(g))
    return y.detach().numpy(), t.grad.numpy()


def torch_stochastic(x, attrs, mode, seed, g=None):
    a = _full(attrs, x.ndim - 2)
    t = torch.from_numpy(x.copy()).requires_grad_(g is not None)
    y = torch.ops.poolexport.stochastic_pool(t, a["kernel_shape"], a["strides"], a["pads"], a["dilations"],
                                             bool(a["ceil_mode"]), "NOTSET", mode, int(seed))
    if g is None:
        return y.detach().numpy()
    y.backward(torch.from_numpy(g))
    return y.detach().numpy(), t.grad.numpy()


def soft_runtimes(x, attrs, beta):
    """(name, native?, y) for every path and runtime."""
    for path in PATHS:
        with cpu_path(path):
            yield f"ort-{path}", True, ort_run("SoftPool", x, attrs, beta=float(beta))
            yield f"torch-{path}", True, torch_soft(x, attrs, beta)
    with reference_kernels():
        yield "torch-reference", False, torch_soft(x, attrs, beta)


# ------------------------------------------------------------------------ checks
def check_soft(name, got, want, what=""):
    y, nonfinite = want["y"], want["nonfinite"]
    assert got.shape == y.shape, f"{name}: shape {got.shape} != {y.shape}"
    bad_nan = want["nan"] & ~np.isnan(got)
    assert not bad_nan.any(), f"{name}{what}: no NaN at windows holding NaN: {np.argwhere(bad_nan)[:5]}"
    fin = ~nonfinite
    assert np.isfinite(got[fin]).all(), (f"{name}{what}: non-finite output at windows of finite inputs: "
                                         f"{np.argwhere(fin & ~np.isfinite(got))[:5]} "
                                         f"({int((fin & ~np.isfinite(got)).sum())} of {int(fin.sum())})")
    err = np.abs(got.astype(np.float64) - y)
    tol = RTOL * want["cond"] + FLOOR * want["amax"] + 1e-44
    over = fin & ~(err <= tol)
    if over.any():
        i = tuple(np.argwhere(over)[0])
        raise AssertionError(f"{name}{what}: at {i} got {got[i]!r}, float64 {y[i]!r} (|err| {err[i]:.3g} > tol "
                             f"{tol[i]:.3g}); {int(over.sum())} windows off")


def _values_desc(x):
    return f"x[min {np.nanmin(x) if np.isfinite(x).any() else 'nan'}, shape {x.shape}]"


# ------------------------------------------------------------------------ strategies
LANE_WIDTHS = sorted({w for lanes in set(L.LANES.values()) for w in L.widths(lanes)})
OUT_ROWS = sorted({max(1, r) for r in (1, L.SHARED_ROWS - 1, L.SHARED_ROWS, L.SHARED_ROWS + 1,
                                       2 * L.SHARED_ROWS, 2 * L.SHARED_ROWS + 1)})
# ranges of beta*x across a block: around the shared-shift limit, the backward's plane
# limit, the exp clamp, up to twice the limit (float32 exp underflows past ~87-104)
_CLAMP = -L.EXP_ARG_MIN
DELTAS = sorted({*L.around(L.SHARED_RANGE), *L.around(L.SOFT_SHIFT_RANGE), *L.around(_CLAMP), _CLAMP - 0.5,
                 _CLAMP + 0.5, 90.0, 95.0, 2.0 * L.SHARED_RANGE})
BETAS = [0.0, 1e-3, 0.25, 1.0, -1.0, -0.7, 8.0, 30.0]
SPECIALS = ["delta+", "delta-", "inf", "-inf", "nan"]
WHERE = ["row-first", "row-interior", "row-last", "window-first", "window-interior", "window-last"]


def _in_size(out, k, s, d, pb, pe, ceil_mode):
    """Smallest input size giving `out` outputs for that axis (ceil_mode off)."""
    return max(1, (out - 1) * s + (k - 1) * d + 1 - pb - pe)


@st.composite
def geometry(draw, max_rank=3):
    rank = draw(st.integers(1, max_rank))
    k, s, d, pb, pe, shape = [], [], [], [], [], []
    for ax in range(rank):
        last = ax == rank - 1
        kk = draw(st.integers(1, 4 if last else 3))
        ss = draw(st.integers(1, 3))
        dd = draw(st.sampled_from([1, 1, 2])) if kk > 1 else 1
        b_ = draw(st.integers(0, kk - 1))
        e_ = draw(st.integers(0, kk - 1))
        if last:
            if draw(st.booleans()):  # input row width at a lane boundary
                n = draw(st.sampled_from(LANE_WIDTHS))
            else:  # output row width at a lane boundary
                n = _in_size(draw(st.sampled_from(LANE_WIDTHS)), kk, ss, dd, b_, e_, False)
        elif ax == rank - 2:  # output rows per plane around SHARED_ROWS
            n = _in_size(draw(st.sampled_from(OUT_ROWS if rank == 2 else [1, 3, 5])), kk, ss, dd, b_, e_, False)
        else:
            n = _in_size(draw(st.integers(1, 3)), kk, ss, dd, b_, e_, False)
        n = max(n, (kk - 1) * dd + 1 - b_ - e_)
        k.append(kk), s.append(ss), d.append(dd), pb.append(b_), pe.append(e_), shape.append(n)
    attrs = dict(kernel_shape=k, strides=s, dilations=d, pads=pb + pe, ceil_mode=int(draw(st.booleans())))
    c = draw(st.integers(1, 2))
    return (1, c, *shape), attrs


def _special_value(kind, base, beta, delta):
    if kind == "inf":
        return np.inf
    if kind == "-inf":
        return -np.inf
    if kind == "nan":
        return np.nan
    sign = 1.0 if kind == "delta+" else -1.0
    return base + sign * delta / (beta if beta != 0.0 else 1.0)


def _position(where, shape, attrs, rng):
    """Flat index (in one plane) of a row's first/interior/last element or of a window's
    first/interior/last valid tap."""
    plane = int(np.prod(shape[2:]))
    w = shape[-1]
    if where.startswith("row"):
        row = int(rng.integers(plane // w))
        col = 0 if where == "row-first" else w - 1 if where == "row-last" else int(rng.integers(w))
        return row * w + col
    _, idx = O.windows(shape[2:], attrs)
    o = int(rng.integers(idx.shape[0]))
    taps = idx[o][idx[o] >= 0]
    if taps.size == 0:
        return int(rng.integers(plane))
    return int(taps[0] if where == "window-first" else taps[-1] if where == "window-last"
               else taps[int(rng.integers(taps.size))])


@st.composite
def soft_case(draw, finite=False, max_rank=3):
    shape, attrs = draw(geometry(max_rank))
    beta = draw(st.sampled_from(BETAS))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    base_kind = draw(st.sampled_from(["normal", "normal", "zeros", "constant", "wide"]))
    if base_kind == "normal":
        x = rng.standard_normal(shape) * draw(st.sampled_from([0.1, 1.0, 3.0]))
    elif base_kind == "zeros":
        x = np.zeros(shape)
    elif base_kind == "constant":
        x = np.full(shape, draw(st.sampled_from([-2.0, 0.5, 7.0])))
    else:  # a spread of beta*x near a limit across the whole plane
        lim = draw(st.sampled_from(DELTAS))
        x = rng.uniform(0, lim, shape) / (abs(beta) if beta else 1.0)
    kinds = SPECIALS[:2] if finite else SPECIALS
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(kinds))
        where = draw(st.sampled_from(WHERE))
        delta = draw(st.one_of(st.sampled_from(DELTAS), st.floats(L.SHARED_RANGE, 2 * L.SHARED_RANGE)))
        n = int(rng.integers(shape[0] * shape[1]))
        pos = _position(where, shape, attrs, rng)
        plane = x.reshape(shape[0] * shape[1], -1)[n]
        plane[pos] = _special_value(kind, plane[pos], beta, delta)
    x = x.astype(np.float32)
    return dict(x=x, attrs=attrs, beta=beta)


# ------------------------------------------------------------------------ explicit cases
def _case(shape, attrs, beta, fill, base=None, seed=0):
    x = (np.random.default_rng(seed).standard_normal(shape) * 0.5) if base is None else np.full(shape, base, float)
    fill(x)
    return dict(x=x.astype(np.float32), attrs=attrs, beta=beta)


def _set(index, value):
    def f(x):
        x[index] = value
    return f


K3S2P1 = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
K2S2 = dict(kernel_shape=[2, 2], strides=[2, 2])
EXPLICIT = {
    # one outlier 95 above its neighbours (a block range between the limit and 2x it)
    "outlier-95": _case((1, 1, 34, 40), K3S2P1, 1.0, _set((0, 0, 9, 13), 95.0)),
    "outlier-61": _case((1, 1, 34, 40), K3S2P1, 1.0, _set((0, 0, 9, 13), L.SHARED_RANGE + 1)),
    "outlier-95-beta-neg": _case((1, 1, 34, 40), K3S2P1, -1.0, _set((0, 0, 20, 3), -95.0)),
    # an outlier in the last columns of a 46-wide row (the range check's tail vectors)
    "tail-46": _case((1, 1, 16, 46), K2S2, 1.0, _set((0, 0, 3, 45), 95.0)),
    "tail-46-col-40": _case((1, 1, 16, 46), K2S2, 1.0, _set((0, 0, 5, 40), 95.0)),
    "tail-49": _case((1, 1, 16, 49), dict(kernel_shape=[1, 3], strides=[1, 1]), 1.0, _set((0, 0, 9, 48), 95.0)),
    # -inf with beta = 0: NaN in the windows that hold it, nowhere else
    "-inf-beta0": _case((1, 1, 16, 32), K2S2, 0.0, _set((0, 0, 5, 17), -np.inf)),
    "inf-first": _case((1, 1, 17, 33), K3S2P1, 1.0, _set((0, 0, 0, 0), np.inf)),
    "nan-last": _case((1, 1, 17, 33), K3S2P1, 1.0, _set((0, 0, 16, 32), np.nan)),
    # weights carried by exp(-86.5): zeros and one element 86.5 below (the exp clamp)
    "clamp-86.5": _case((1, 1, 4, 20), dict(kernel_shape=[1, 4], strides=[1, 2]), 1.0,
                        _set((0, 0, 1, 5), -(_CLAMP - 0.5)), base=0.0),
    "clamp-86.5-3d": _case((1, 1, 2, 4, 9), dict(kernel_shape=[2, 2, 2], strides=[1, 2, 2]), -1.0,
                           _set((0, 0, 1, 1, 4), _CLAMP - 0.5), base=0.0),
}


def _explicit(names):
    return [pytest.param(EXPLICIT[n], id=n) for n in names]


# ------------------------------------------------------------------------ SoftPool forward
def check_soft_forward(case):
    x, attrs, beta = case["x"], case["attrs"], case["beta"]
    native = O.soft_forward(x, attrs, beta, exp_arg_min=L.EXP_ARG_MIN)
    exact = O.soft_forward(x, attrs, beta)
    for name, is_native, got in soft_runtimes(x, attrs, beta):
        check_soft(name, got, native if is_native else exact, f" (beta {beta}, {attrs}, {_values_desc(x)})")


@pytest.mark.parametrize("case", _explicit(EXPLICIT))
def test_soft_forward_explicit_boundaries(case):
    check_soft_forward(case)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=soft_case())
def test_soft_forward_around_limits(case):
    check_soft_forward(case)


# ------------------------------------------------------------------------ SoftPool backward
def check_soft_backward(case):
    x, attrs, beta = case["x"], case["attrs"], case["beta"]
    out_shape, _ = O.windows(x.shape[2:], attrs)
    g = np.random.default_rng(7).uniform(-1.0, 1.0, (*x.shape[:2], *out_shape)).astype(np.float32)
    runs = []
    for path in PATHS:
        with cpu_path(path):
            runs.append((f"torch-{path}", True, torch_soft(x, attrs, beta, g)[1]))
    with reference_kernels():
        runs.append(("torch-reference", False, torch_soft(x, attrs, beta, g)[1]))
    want = {True: O.soft_backward(x, attrs, beta, g, exp_arg_min=L.EXP_ARG_MIN),
            False: O.soft_backward(x, attrs, beta, g)}
    for name, is_native, got in runs:
        grad, scale, f = want[is_native]
        err = np.abs(got.astype(np.float64) - grad)
        amax = float(np.max(np.abs(x))) if x.size else 0.0
        tol = GRAD_RTOL * scale + FLOOR * (1 + abs(beta) * amax) * float(np.max(np.abs(g), initial=0)) + 1e-44
        over = ~(err <= tol)
        if over.any():
            i = tuple(np.argwhere(over)[0])
            raise AssertionError(f"{name} dX (beta {beta}, {attrs}): at {i} got {got[i]!r}, float64 {grad[i]!r} "
                                 f"(|err| {err[i]:.3g} > tol {tol[i]:.3g}); {int(over.sum())} elements off")


BACKWARD_EXPLICIT = {
    # a plane range of 90 (the backward's one-shift limit is 60): windows 89 below the top
    "plane-range-90": _case((1, 1, 6, 12), dict(kernel_shape=[2, 2], strides=[1, 1]), 1.0,
                            _set((0, 0, 0, 0), 90.0)),
    "plane-range-61": _case((1, 1, 6, 12), dict(kernel_shape=[2, 2], strides=[1, 1]), 1.0,
                            _set((0, 0, 5, 11), L.SOFT_SHIFT_RANGE + 1)),
    "plane-range-120-neg": _case((1, 1, 5, 17), K3S2P1, -1.0, _set((0, 0, 2, 16), -120.0)),
    "clamp-86.5": EXPLICIT["clamp-86.5"],
    "clamp-86.5-3d": EXPLICIT["clamp-86.5-3d"],
}


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in BACKWARD_EXPLICIT.items()])
def test_soft_backward_explicit_boundaries(case):
    check_soft_backward(case)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=soft_case(finite=True))
def test_soft_backward_around_limits(case):
    check_soft_backward(case)


# ------------------------------------------------------------------------ stochastic pooling
@st.composite
def stochastic_case(draw):
    shape, attrs = draw(geometry(3))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 100.0]))
    if draw(st.booleans()):
        x = np.where(rng.random(shape) < 0.5, 0.0, x)  # zeros and negatives: windows that sum to 0
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(WHERE))
        kind = draw(st.sampled_from(["inf", "-inf", "big", "tiny"]))
        n = int(rng.integers(shape[0] * shape[1]))
        pos = _position(where, shape, attrs, rng)
        x.reshape(shape[0] * shape[1], -1)[n][pos] = {"inf": np.inf, "-inf": -np.inf, "big": 1e30,
                                                      "tiny": 1e-38}[kind]
    return dict(x=x.astype(np.float32), attrs=attrs, seed=draw(st.sampled_from([0, 1, 12345, -1, 2**40 + 3])))


def check_stochastic(case):
    x, attrs, seed = case["x"], case["attrs"], case["seed"]
    want, _, _ = O.sample_picks(x, attrs, seed)
    out_shape = want.shape[2:]
    g = np.random.default_rng(3).integers(1, 8, (*x.shape[:2], *out_shape)).astype(np.float32)
    want_grad = O.sample_grad(x, attrs, seed, g)
    runs = []
    for path in PATHS:
        with cpu_path(path):
            runs.append((f"ort-{path}", ort_run("StochasticPool", x, attrs, mode="sample", seed=int(seed)), None))
            runs.append((f"torch-{path}", *torch_stochastic(x, attrs, "sample", seed, g)))
    with reference_kernels():
        runs.append(("torch-reference", *torch_stochastic(x, attrs, "sample", seed, g)))
    for name, got, grad in runs:
        same = (got.view(np.uint32) == want.view(np.uint32))
        if not same.all():
            i = tuple(np.argwhere(~same)[0])
            raise AssertionError(f"{name}: sampled pick at {i} is {got[i]!r}, the spec's {want[i]!r} (seed {seed}, "
                                 f"{attrs})")
        if grad is not None:
            np.testing.assert_array_equal(grad.astype(np.float64), want_grad,
                                          err_msg=f"{name}: the gradient does not reach exactly the picked elements")
    finite = np.isfinite(x).all() and np.abs(x).max(initial=0) < 1e20
    if finite:  # expectation: float64 oracle (r^2 of 1e30 would overflow float32 anyway)
        y64, scale = O.expectation_forward(x, attrs)
        for path in PATHS:
            with cpu_path(path):
                for name, got in ((f"ort-{path}", ort_run("StochasticPool", x, attrs, mode="expectation", seed=0)),
                                  (f"torch-{path}", torch_stochastic(x, attrs, "expectation", 0))):
                    err = np.abs(got - y64)
                    # r^2 underflows in float32 below |r| ~ 1e-22 (4e-23: about sqrt of the smallest subnormal)
                    assert (err <= RTOL * scale + 4e-23).all(), f"{name} expectation: max err {err.max():.3g}"


STOCHASTIC_EXPLICIT = {
    # an inf inside a window: total = inf, t = inf, no cum exceeds it: the last positive r
    "inf-first-then-zeros": dict(x=np.float32([[[np.inf, 1, 2, 0, -1, 3, 0, 0]]]), attrs=dict(kernel_shape=[4],
                                 strides=[4]), seed=0),
    "inf-last": dict(x=np.float32([[[0, 1, 2, np.inf, 0, 0, 5, np.inf]]]), attrs=dict(kernel_shape=[4], strides=[1]),
                     seed=7),
    "inf-interior-2d": dict(x=np.pad(np.float32([[np.inf]]), ((3, 4), (5, 10)), constant_values=1.0)[None, None]
                            .astype(np.float32), attrs=dict(kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1]),
                            seed=3),
    "-inf-and-zeros": dict(x=np.float32([[[-np.inf, 0, 0, 2, -np.inf, 0, 0, 0]]]), attrs=dict(kernel_shape=[3],
                           strides=[1]), seed=11),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=n) for n, c in STOCHASTIC_EXPLICIT.items()])
def test_stochastic_explicit_boundaries(case):
    check_stochastic(case)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=stochastic_case())
def test_stochastic_around_limits(case):
    check_stochastic(case)


# ------------------------------------------------------------- which path a block takes
# The limits themselves: a block of output rows takes the shared shift exactly when its
# range of beta*x is <= SHARED_RANGE, blocks are SHARED_ROWS output rows, a backward
# plane takes one shift exactly when its range is <= SOFT_SHIFT_RANGE. Both paths are
# accurate there (every weight >= exp(-61) is a normal float), so a limit nudged by one
# changes no value beyond rounding; it changes which path runs, and the two paths round
# differently. The outputs of windows that do not hold the range-setting element tell
# the path apart: with the per-window path they equal, bit for bit, the same windows'
# outputs when the block's range is far past every limit.
def _block_input(R, beta, rows_out=None, w=40):
    """k2 s2 input whose block 0 (output rows 0 .. SHARED_ROWS-1) has the range R of
    beta*x, set by one element of input row 0 (only output row 0's windows hold it)."""
    rows_out = rows_out or 2 * L.SHARED_ROWS
    x = np.random.default_rng(5).uniform(0.0, 1.0, (1, 1, 2 * rows_out, w))
    x[0, 0, 0, 1] = 1.0  # the block's top: beta*x = beta
    x = x.astype(np.float32)
    lo = np.float32(1.0) - np.float32(R) / np.float32(beta)
    x[0, 0, 0, 0] = lo
    if beta > 0:
        assert np.float32(beta) * np.float32(1.0) - np.float32(beta) * lo == np.float32(R) or beta != 1.0
    return x


def _forward(x, path, beta=1.0):
    with cpu_path(path):
        return ort_run("SoftPool", x, K2S2, beta=float(beta))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("R", L.around(L.SHARED_RANGE))
def test_shared_range_limit_picks_the_path(path, R):
    far = _forward(_block_input(200.0, 1.0), path)  # block 0 on the per-window path
    got = _forward(_block_input(R, 1.0), path)
    # output rows 1 .. SHARED_ROWS-1: windows without the range-setting element
    rows = slice(1, L.SHARED_ROWS)
    per_window = np.array_equal(got[0, 0, rows].view(np.uint32), far[0, 0, rows].view(np.uint32))
    shared = R <= L.SHARED_RANGE
    assert per_window != shared, (f"{path}: a block of range {R!r} took the "
                                  f"{'per-window' if per_window else 'shared-shift'} path; the limit is "
                                  f"{L.SHARED_RANGE} (limits.h kSharedRange)")
    # and both are right
    check_soft(path, got, O.soft_forward(_block_input(R, 1.0), K2S2, 1.0, exp_arg_min=L.EXP_ARG_MIN))


@pytest.mark.parametrize("path", PATHS)
def test_shared_rows_is_the_block_height(path):
    """Block 0 is output rows 0 .. SHARED_ROWS-1: an outlier in row 0's windows sends
    exactly those rows to the per-window path; row SHARED_ROWS on stays bit-identical to
    the input without it, row SHARED_ROWS-1 does not (it rounds as the per-window path)."""
    plain = _forward(_block_input(1.0, 1.0), path)
    wide = _forward(_block_input(200.0, 1.0), path)
    n = L.SHARED_ROWS
    assert np.array_equal(wide[0, 0, n:].view(np.uint32), plain[0, 0, n:].view(np.uint32)), \
        f"{path}: output rows from {n} on changed with an outlier in block 0 (rows per block > {n}?)"
    assert not np.array_equal(wide[0, 0, n - 1].view(np.uint32), plain[0, 0, n - 1].view(np.uint32)), \
        f"{path}: output row {n - 1} did not leave the shared path with its block (rows per block < {n}?)"


def _plane_input(R):
    """A k2 s1 plane whose range of beta*x (beta 1) is R, set at element (0, 0)."""
    x = np.random.default_rng(9).uniform(0.0, 1.0, (1, 1, 8, 24))
    x[0, 0, 0, 1] = 1.0
    x = x.astype(np.float32)
    x[0, 0, 0, 0] = np.float32(1.0) - np.float32(R)
    return x


@pytest.mark.parametrize("R", L.around(L.SOFT_SHIFT_RANGE))
def test_backward_shift_range_limit_picks_the_path(R):
    attrs = dict(kernel_shape=[2, 2], strides=[1, 1])
    g = np.random.default_rng(2).uniform(-1, 1, (1, 1, 7, 23)).astype(np.float32)
    _, far = torch_soft(_plane_input(200.0), attrs, 1.0, g)
    x = _plane_input(R)
    _, got = torch_soft(x, attrs, 1.0, g)
    # input elements outside every window that holds (0, 0): rows >= 2 or columns >= 2
    away = np.ones(x.shape, bool)
    away[..., :2, :2] = False
    per_window = np.array_equal(got[away].view(np.uint32), far[away].view(np.uint32))
    assert per_window != (R <= L.SOFT_SHIFT_RANGE), (
        f"a plane of range {R!r} took the {'per-window' if per_window else 'one-shift'} backward path; the limit "
        f"is {L.SOFT_SHIFT_RANGE} (limits.h kSoftShiftRange)")
    grad, scale, _ = O.soft_backward(x, attrs, 1.0, g, exp_arg_min=L.EXP_ARG_MIN)
    assert (np.abs(got - grad) <= GRAD_RTOL * scale + 1e-40).all()


# ------------------------------------------------------------- NaN in stochastic windows
@pytest.mark.parametrize("mode", ["expectation", "sample"])
def test_stochastic_nan_window_same_on_every_runtime(mode):
    x = np.float32([[[1, 2, np.nan, 3, 4, 0, 5, 6]]])
    attrs = dict(kernel_shape=[3], strides=[1])
    native = torch_stochastic(x, attrs, mode, 5)
    with reference_kernels():
        ref = torch_stochastic(x, attrs, mode, 5)
    np.testing.assert_array_equal(native, ref)


# ------------------------------------------------------------- NaN in a row's first column
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("width", [max(L.LANES.values()) + 1])
def test_nan_in_first_column_stays_in_its_windows(path, width):
    x = (np.random.default_rng(1).standard_normal((1, 1, width)) * 0.05).astype(np.float32)
    x[0, 0, 0] = np.nan
    x[0, 0, 5] = 90.0  # beta*x range 90 > SHARED_RANGE
    attrs = dict(kernel_shape=[3])
    with cpu_path(path):
        got = ort_run("SoftPool", x, attrs, beta=1.0)
    check_soft(f"ort-{path}", got, O.soft_forward(x, attrs, 1.0, exp_arg_min=L.EXP_ARG_MIN), f" width {width}")


# ------------------------------------------------------------- NaN in stochastic windows, every form
# The rule (README "Finite limits", stochastic_pool.h): a window holding NaN outputs NaN in
# both modes (the sample picks nothing) and passes no gradient; every other window is
# unchanged. Checked on the native kernels through ORT and the torch op (every CPU path:
# the portable loops, the AVX2 row and separable moment kernels, the reduce inner/segment
# forms), the pure-torch reference, and the ONNX forms in plain ONNX Runtime (the ``ort``
# target's run-time fast form, the ``portable`` file's fast form and the generic
# decomposition), windowed and reduce, NaN at the first, an interior and the last
# position of a window.
ST_WIDTH = 21  # more than a vector of every path: the row kernels' SIMD bodies run
ST_CASES = {  # name: (attrs, NaN columns: first / interior / last of a window, and the row's ends)
    "k3s1": (dict(kernel_shape=[2, 3], strides=[1, 1]), [0, 9, ST_WIDTH - 1]),
    "k3s2": (dict(kernel_shape=[2, 3], strides=[1, 2]), [4, 7, 10, ST_WIDTH - 1]),
}


def _st_input(nan_cols, seed=3):
    x = np.random.default_rng(seed).uniform(-1.0, 2.0, (1, 2, 4, ST_WIDTH)).astype(np.float32)
    for j, col in enumerate(nan_cols):
        x[0, j % 2, (j * 2) % 4, col] = np.nan
    return x


def _st_windows(x, attrs):
    """(N, C, OH, OW, K) float64 windows of a 2-D pool without pads."""
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs["strides"]
    v = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return v.reshape(*v.shape[:4], kh * kw)


def _st_expect64(windows):
    r = np.where(windows <= 0, 0.0, windows)  # NaN kept
    s1 = r.sum(-1)
    with np.errstate(all="ignore"):
        return np.where(s1 <= 0, 0.0, (r * r).sum(-1) / np.where(s1 > 0, s1, 1.0))


def _plain_ort(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def _onnx_forms(op, attrs, rank, out_rank=None):
    """(name, model) of the ONNX forms of one node: the ort target (run-time fast form), the
    portable file (its fast form, or the generic form for sample) and the generic body."""
    from test_export_decomposition import one_node, shaped

    for target in ("ort", "portable", "generic"):
        yield f"onnx-{target}", shaped(one_node(op, attrs, rank, out_rank=out_rank), target)


def _check_nan_rule(name, got, want_nan, want, mode):
    assert got.shape == want_nan.shape, f"{name}: shape {got.shape} != {want_nan.shape}"
    assert np.array_equal(np.isnan(got), want_nan), (
        f"{name} ({mode}): NaN at {np.argwhere(np.isnan(got) & ~want_nan)[:5].tolist()} (no NaN in those windows), "
        f"finite at {np.argwhere(~np.isnan(got) & want_nan)[:5].tolist()} (windows holding NaN)")
    if mode == "sample":  # bit for bit with the reference's picks
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        ok = ~want_nan
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("case", sorted(ST_CASES))
@pytest.mark.parametrize("mode", ["expectation", "sample"])
def test_stochastic_nan_windowed_every_form(case, mode):
    attrs, cols = ST_CASES[case]
    x = _st_input(cols)
    seed = 7
    windows = _st_windows(x, attrs)
    want_nan = np.isnan(windows).any(-1)
    assert want_nan.any() and not want_nan.all()
    with reference_kernels():
        ref_y = torch_stochastic(x, attrs, mode, seed)
    want = _st_expect64(windows) if mode == "expectation" else ref_y
    _check_nan_rule("torch-reference", ref_y, want_nan, want, mode)
    for path in PATHS:
        with cpu_path(path):
            _check_nan_rule(f"ort-{path}", ort_run("StochasticPool", x, attrs, mode=mode, seed=seed), want_nan, want,
                            mode)
            _check_nan_rule(f"torch-{path}", torch_stochastic(x, attrs, mode, seed), want_nan, want, mode)
    a = {**_full(attrs, 2), "mode": mode, "seed": seed}
    for name, model in _onnx_forms("StochasticPool", a, 4):
        _check_nan_rule(name, _plain_ort(model, x), want_nan, want, mode)


@pytest.mark.parametrize("mode", ["expectation", "sample"])
def test_stochastic_nan_window_passes_no_gradient(mode):
    """Native backward (every path, both the plane and the per-window code) equals the
    reference's: 0 from each window holding NaN, the usual gradient elsewhere, no NaN."""
    attrs, cols = ST_CASES["k3s2"]
    x = _st_input(cols)
    g = np.random.default_rng(4).uniform(-1, 1, torch_stochastic(x, attrs, mode, 7).shape).astype(np.float32)
    with reference_kernels():
        _, want = torch_stochastic(x, attrs, mode, 7, g)
    assert np.isfinite(want).all()
    # an input whose only windows hold NaN gets 0: the NaN itself and its row neighbours here
    assert (want[np.isnan(x)] == 0).all()
    for path in PATHS:
        with cpu_path(path):
            _, got = torch_stochastic(x, attrs, mode, 7, g)
        assert np.isfinite(got).all(), f"torch-{path} ({mode}): non-finite gradient"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"torch-{path} ({mode})")


REDUCE_CASES = {  # name: (shape, axes, NaN positions (flat)): the inner (kept axis >= 8) and segment (reduced >= 16) forms
    "inner": ((2, 4, 3, 16), [1], [0, 16 * 3 + 5, 2 * 4 * 3 * 16 - 1]),
    "segments": ((2, 3, 2, 24), [3], [0, 24 * 2 + 11, 2 * 3 * 2 * 24 - 1]),
    "all-spatial": ((2, 3, 4, 5), [2, 3], [0, 20 + 7, 2 * 3 * 20 - 1]),
}


def _reduce_session_run(x, axes, mode, seed):
    import onnxruntime as ort

    node = helper.make_node("ReduceStochasticPool", ["X"], ["Y"], domain="poolexport", axes=axes, keepdims=0,
                            mode=mode, seed=seed)
    model = helper.make_model(helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                                                [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]),
                              ir_version=10, opset_imports=[helper.make_opsetid("", 18),
                                                            helper.make_opsetid("poolexport", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return pxort.session(model.SerializeToString(), options=so).run(None, {"X": x})[0]


@pytest.mark.parametrize("case", sorted(REDUCE_CASES))
@pytest.mark.parametrize("mode", ["expectation", "sample"])
def test_stochastic_nan_reduce_every_form(case, mode):
    shape, axes, nans = REDUCE_CASES[case]
    x = np.random.default_rng(5).uniform(-1.0, 2.0, shape).astype(np.float32)
    x.reshape(-1)[nans] = np.nan
    seed = 3
    kept = [d for d in range(x.ndim) if d not in axes]
    w = np.transpose(x.astype(np.float64), kept + axes)
    w = w.reshape(*w.shape[:len(kept)], -1)
    want_nan = np.isnan(w).any(-1)
    assert want_nan.any() and not want_nan.all()
    t = lambda: torch.from_numpy(x.copy())  # noqa: E731
    with reference_kernels():
        ref_y = torch.ops.poolexport.reduce_stochastic_pool(t(), axes, False, mode, seed).numpy()
    want = _st_expect64(w) if mode == "expectation" else ref_y
    _check_nan_rule("torch-reference", ref_y, want_nan, want, mode)
    for path in PATHS:
        with cpu_path(path):
            _check_nan_rule(f"ort-{path}", _reduce_session_run(x, axes, mode, seed), want_nan, want, mode)
            got = torch.ops.poolexport.reduce_stochastic_pool(t(), axes, False, mode, seed).numpy()
            _check_nan_rule(f"torch-{path}", got, want_nan, want, mode)
            tg = t().requires_grad_(True)
            torch.ops.poolexport.reduce_stochastic_pool(tg, axes, False, mode, seed).sum().backward()
            assert np.isfinite(tg.grad.numpy()).all(), f"torch-{path} reduce backward ({mode}): non-finite gradient"
            assert (tg.grad.numpy()[np.isnan(x)] == 0).all()
    a = dict(axes=axes, keepdims=0, mode=mode, seed=seed)
    for name, model in _onnx_forms("ReduceStochasticPool", a, 4, out_rank=4 - len(axes)):
        _check_nan_rule(name, _plain_ort(model, x), want_nan, want, mode)
