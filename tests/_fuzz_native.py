"""Coverage-guided fuzz target (atheris) for the custom-op library's C ABI and ORT kernels.

Run by tests/test_fuzz_native.py in a process with the AddressSanitizer build of
``libpoolexport_ort.so`` (``POOLEXPORT_ORT_LIBRARY``) and libasan preloaded, as
tests/test_ort_asan.py does; standalone:

    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \\
    POOLEXPORT_ORT_LIBRARY=/path/to/asan/libpoolexport_ort.so ASAN_OPTIONS=detect_leaks=0 \\
    python tests/_fuzz_native.py -atheris_runs=2000 -seed=1

Each input is decoded by atheris' FuzzedDataProvider into one case: op (SoftPool,
StochasticPool expectation / sample; windowed or reduce), dtype (float32 / float16),
CPU path (POOLEXPORT_CPU_ISA, read by the library on every call), forward or backward,
the window attributes (1-3 spatial axes, kernel, strides, dilations, begin/end pads,
ceil_mode, auto_pad) or the 6 padded reduce dims and axis mask, beta, seed, thread count
and the values, with special floats (NaN, +-0, subnormals, float16 extremes, 1e30)
planted at chosen positions. The case runs through ``poolexport_torch_window`` /
``poolexport_torch_reduce`` and, for forwards, through the ORT kernel of a one-node
model; both are compared with a float64 NumPy oracle written from the ops' definitions:

* SoftPool: y = sum(softmax(beta * a) * a) over the window's valid (unpadded) positions;
  an empty window gives 0; a NaN in the window gives NaN. Beyond the tolerance, y must
  lie in [min a, max a] (a convex combination).
* StochasticPool expectation: y = sum(r^2) / sum(r), r = max(a, 0); 0 when sum(r) = 0;
  a NaN in the window gives NaN (stochastic_pool.h stochastic_r keeps it).
* StochasticPool sample: y is one of the window's positive values, or 0 when it has none;
  NaN when the window holds NaN (and no gradient).
* Backward (dY given): the analytic gradients scattered onto X's positions
  (soft: p_i (1 + beta (a_i - y)), expectation: [a_i > 0] (2 a_i - y) / sum(r)); for
  sample, each window's dY lands on one of its positive positions (dX sums to the dY of
  windows with a positive value and is 0 where a <= 0).
* The C ABI and the ORT kernel give the same bits for the same forward case.

Values with |x| > 1e30 (after rounding to the case's dtype, so float16 infinities too)
are replaced by 0: overflow there is being fixed separately.

Coverage: atheris instruments this script's Python (decoding and oracle), which is what
guides the mutations. libFuzzer's native edge coverage of the C++ kernels would need the
library built with clang's ``-fsanitize=fuzzer-no-link``; this project builds with gcc,
whose ``-fsanitize-coverage=trace-pc`` emits ``__sanitizer_cov_trace_pc`` callbacks that
atheris' libFuzzer does not consume (it reads clang's inline 8-bit counters / PC tables),
so the kernels are exercised under ASan but do not feed coverage back.

Exit status: 0 after ``-atheris_runs`` inputs; libFuzzer's non-zero status with a
traceback (oracle mismatch, unexpected ORT error) or an ASan report otherwise. A crash
input is written under ``-artifact_prefix``; replay it by passing its path.
"""
from __future__ import annotations

import ctypes
import os
import sys

import atheris

import numpy as np

def seed_corpus(path: str, count: int = 64, length: int = 512) -> None:
    """Random starting inputs (libFuzzer starts from an empty one and grows lengths slowly;
    a case needs a few hundred bytes to reach the kernels with real shapes)."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(20261124)
    for i in range(count):
        with open(os.path.join(path, f"seed{i:03d}"), "wb") as f:
            f.write(rng.integers(0, 256, length, dtype=np.uint8).tobytes())



if __name__ == "__main__" and sys.argv[1:2] == ["--seed-corpus"]:
    seed_corpus(sys.argv[2])
    sys.exit(0)

LIB_PATH = os.environ["POOLEXPORT_ORT_LIBRARY"]
EPS32 = float(np.finfo(np.float32).eps)
# |x| above: set to 0. Values up to the type's maximum are tested in test_finite_limits.py
# against an oracle formed around the window's maximum, which a plain float64 formula is
# not (its gradient loses ulp(x) at |x| ~ 2^64)
LIMIT = 1e30
ISA_ORDER = ["portable", "avx2", "avx512"]

lib = ctypes.CDLL(LIB_PATH)
_i64p = ctypes.POINTER(ctypes.c_int64)
_common = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, _i64p]
lib.poolexport_torch_window.argtypes = _common + [ctypes.c_float, ctypes.c_int64, ctypes.c_int]
lib.poolexport_torch_reduce.argtypes = _common + [ctypes.c_int32, ctypes.c_float, ctypes.c_int64, ctypes.c_int]
lib.poolexport_torch_window.restype = lib.poolexport_torch_reduce.restype = ctypes.c_int
lib.poolexport_cpu_isa.restype = ctypes.c_char_p
os.environ.pop("POOLEXPORT_CPU_ISA", None)
BEST_ISA = lib.poolexport_cpu_isa().decode()
ISAS = ISA_ORDER[: ISA_ORDER.index(BEST_ISA) + 1]

_sessions = None
STATS = {"window": 0, "reduce": 0, "backward": 0, "ort": 0, "nan": 0}


def _ort():
    global _sessions
    if _sessions is None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.register_custom_ops_library(LIB_PATH)
        so.log_severity_level = 4
        so.intra_op_num_threads = 1
        _sessions = (ort, so)
    return _sessions


SPECIALS = [0.0, -0.0, float("nan"), 1.4e-45, -1.4e-45, 1.1754944e-38, 6e-8, 65504.0, -65504.0, 1e30, -1e30,
            3e38, float("inf"), -float("inf"), 1.0, -1.0, 0.5, 1e-20, 1e4, -1e4]
BETAS = [1.0, 0.0, -1.0, 2.0, 0.5, 30.0, -30.0, 100.0, 1e-3, -0.25]
SCALES = [1.0, 1e-3, 100.0, 1e4, 1e-30, 1e20]


@atheris.instrument_func
def decode_values(fdp, shape, half, code):
    size = int(np.prod(shape, dtype=np.int64))
    rng = np.random.default_rng(fdp.ConsumeIntInRange(0, 2**32 - 1))
    kind = fdp.ConsumeIntInRange(0, 4)
    scale = SCALES[fdp.ConsumeIntInRange(0, len(SCALES) - 1)]
    if kind == 0:
        v = rng.standard_normal(size) * scale
    elif kind == 1:  # ties: few distinct values
        v = rng.integers(-2, 3, size).astype(np.float64) * scale
    elif kind == 2:  # all non-positive (stochastic windows summing to 0)
        v = -np.abs(rng.standard_normal(size)) * scale
    elif kind == 3:
        v = np.full(size, scale)
    else:
        v = rng.uniform(-1, 1, size) * scale
    for _ in range(fdp.ConsumeIntInRange(0, 6) if size else 0):
        where = fdp.ConsumeIntInRange(0, 3)
        pos = [0, size // 2, size - 1, None][where]
        if pos is None:
            pos = fdp.ConsumeIntInRange(0, size - 1)
        v[pos] = SPECIALS[fdp.ConsumeIntInRange(0, len(SPECIALS) - 1)] if fdp.ConsumeBool() else fdp.ConsumeFloat()
    with np.errstate(all="ignore"):
        x = v.astype(np.float16 if half else np.float32).reshape(shape)
        x[np.abs(x.astype(np.float64)) > LIMIT] = 0
    return x


def _axis_output(n, k, s, pb, pe, d, ceil, auto_pad):
    """ONNX AveragePool's output size and effective begin pad for one axis (None: invalid)."""
    span = (k - 1) * d + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-n // s)
        total = max((out - 1) * s + span - n, 0)
        return out, (total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    if auto_pad == "VALID":
        return ((n - span) // s + 1, 0) if span <= n else None
    if span > n + pb + pe:
        return None
    room = n + pb + pe - span
    if not ceil:
        return room // s + 1, pb
    out = -(-room // s) + 1
    if (out - 1) * s >= n + pb:  # a last window starting in the end padding is dropped
        out -= 1
    return out, pb


def _window_index(spatial, out, begin, k, s, d):
    """(index, valid): for each output position (row-major) and kernel position (row-major),
    the flat input index and whether it is inside the input."""
    idx = np.zeros((1, 1), np.int64)
    valid = np.ones((1, 1), bool)
    for n, o, b, kk, ss, dd in zip(spatial, out, begin, k, s, d):
        pos = np.arange(o)[:, None] * ss - b + np.arange(kk)[None, :] * dd  # (o, kk)
        ok = (pos >= 0) & (pos < n)
        idx = (idx[:, None, :, None] * n + np.clip(pos, 0, max(n - 1, 0))[None, :, None, :])
        valid = valid[:, None, :, None] & ok[None, :, None, :]
        shape2 = (idx.shape[0] * idx.shape[1], idx.shape[2] * idx.shape[3])
        idx, valid = idx.reshape(shape2), valid.reshape(shape2)
    return idx, valid


def _soft(w, valid, beta):
    """SoftPool over the last axis of w (float64), valid positions only: (y, p, tol-scale)."""
    with np.errstate(all="ignore"):
        z = np.where(valid, beta * w, -np.inf)
        m = np.max(np.where(np.isnan(z), -np.inf, z), axis=-1, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.where(valid, np.exp(z - m), 0.0)
        s = e.sum(-1, keepdims=True)
        p = e / np.where(s > 0, s, 1.0)
        y = np.where(s[..., 0] > 0, (p * np.where(valid, w, 0.0)).sum(-1), 0.0)
        y = np.where(np.isnan(np.where(valid, w, 0.0)).any(-1), np.nan, y)
    return y, p


def _expect(w, valid):
    with np.errstate(all="ignore"):
        r = np.where(valid & ~(w <= 0), w, 0.0)  # NaN kept
        s1 = r.sum(-1)
        y = np.where(s1 <= 0, 0.0, (r * r).sum(-1) / np.where(s1 > 0, s1, 1.0))
        y = np.where(np.isnan(s1), np.nan, y)
    return y, r, s1


def _assert_close(name, got, want, tol, case, windows=None):
    got = got.astype(np.float64)
    bad = ~((np.abs(got - want) <= tol) | (np.isnan(got) & np.isnan(want)) | np.isposinf(tol))  # inf: unchecked
    if bad.any():
        i = np.flatnonzero(bad.reshape(-1))[:5]
        first = "" if windows is None else f"; first window {windows[0][i[0]][windows[1][i[0]]].tolist()}"
        raise AssertionError(f"{name} mismatch {case}: at {i.tolist()} got {got.reshape(-1)[i].tolist()} "
                             f"want {want.reshape(-1)[i].tolist()} "
                             f"tol {np.broadcast_to(tol, want.shape).reshape(-1)[i].tolist()}{first}")


@atheris.instrument_func
def check_values(code, half, w, valid, y_got, beta, g, dx_got, scatter, case, group, x_flat=None):
    """group: rows per plane (windows that one shared shift may span); w: (M, K) float64 windows, valid (M, K) or (1, K); y_got (M,) the forward; g (M,)
    the upstream gradient and dx_got (the flat dX) for a backward, scatter(contrib (M, K))
    -> flat dX of the window contributions."""
    valid = np.broadcast_to(valid, w.shape)
    wv = np.where(valid, w, 0.0)
    n = valid.sum(-1)
    amax = np.abs(wv).max(-1, initial=0.0)
    h16 = 2.0**-10 if half else 0.0
    nan_win = np.isnan(wv).any(-1)
    if nan_win.any():
        STATS["nan"] += 1
    if code == 0:
        y, p = _soft(w, valid, beta)
        zmax = np.abs(beta) * amax
        delta = np.expm1(np.minimum(4 * EPS32 * zmax + 4e-7, 50.0))
        # the shared-shift kernel (soft_shared.inc) shifts a block of a plane's windows by one
        # maximum up to kSharedRange = 60 above the window's own, so its e * a may be
        # subnormal: absolute error up to (n + 1) 2^-149 / e_max (test_softpool_shared_shift_...)
        with np.errstate(all="ignore"):
            zw = np.where(valid & ~np.isnan(w), beta * w, -np.inf).max(-1, initial=-np.inf)
            zp = np.broadcast_to(zw.reshape(-1, group).max(-1, initial=-np.inf)[:, None], (zw.size // group, group))
            gap = np.clip(np.nan_to_num(zp.reshape(-1) - zw, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 60.0)
        sub = (n + 1) * 2.0**-149 * np.exp(gap) * (1 + 2 * amax)
        tol = (4 * delta + 8 * (n + 2) * EPS32) * amax + h16 * np.abs(y) + (2.0**-24 if half else 0.0) + sub + 1e-44
        if dx_got is None:
            _assert_close("SoftPool", y_got, y, tol, case, (w, valid))
            with np.errstate(invalid="ignore"):
                lo = np.where(valid, w, np.inf).min(-1, initial=np.inf)
                hi = np.where(valid, w, -np.inf).max(-1, initial=-np.inf)
            yg = y_got.astype(np.float64)
            ok = np.isnan(yg) & nan_win | (n == 0) & (yg == 0) | (yg >= lo - tol) & (yg <= hi + tol)
            assert ok.all(), f"SoftPool outside [min a, max a] {case}: {yg[~ok][:5]} {lo[~ok][:5]} {hi[~ok][:5]}"
        else:
            fin = ~nan_win
            contrib = g[:, None] * p * (1 + beta * (w - y[:, None]))
            # float32 rounding of beta * a and the sums; fast_exp clamps its argument at -87
            bound = np.abs(g[:, None]) * ((1 + np.abs(beta) * (np.abs(w) + np.abs(y[:, None])))
                                         * (p * (4 * delta[:, None] + 16 * (n[:, None] + 2) * EPS32) + 2e-38) + 1e-30)
            contrib = np.where(valid & fin[:, None], contrib, 0.0)
            bound = bound + np.abs(g[:, None]) * (1 + np.abs(beta) * (np.abs(w) + np.abs(y[:, None]))) * sub[:, None]
            bound = np.where(valid, bound, 0.0) + np.abs(contrib) * 2 * h16 + (2.0**-24 if half else 0.0)
            bound = np.where(fin[:, None], bound, np.inf)
            tol = scatter(bound) + 1e-37
            _assert_close("SoftPool backward", dx_got, scatter(contrib), tol, case)
    elif code == 1:
        y, r, s1 = _expect(w, valid)
        tol = 8 * (n + 2) * EPS32 * y + h16 * y + (n + 1) * 1.5e-45 / np.where(s1 > 0, s1, 1) * 2 + \
            (2.0**-24 if half else 0.0)
        if dx_got is None:
            _assert_close("StochasticPool expectation", y_got, y, tol, case, (w, valid))
        else:
            inv = np.where(s1 > 0, 1 / np.where(s1 > 0, s1, 1), 0.0)[:, None]
            live = valid & (w > 0) & ~nan_win[:, None]  # a window holding NaN passes no gradient
            contrib = np.where(live, g[:, None] * (2 * w - y[:, None]) * inv, 0.0)
            bound = np.where(live, np.abs(g[:, None]) * inv * ((2 * np.abs(w) + y[:, None]) * 16 * (n[:, None] + 2)
                                                                * EPS32 + tol[:, None]), 0.0)
            bound = bound + np.abs(contrib) * 2 * h16 + (2.0**-24 if half else 1e-37)
            _assert_close("StochasticPool expectation backward", dx_got, scatter(contrib), scatter(bound), case)
    else:
        pos = valid & (w > 0)
        if dx_got is None:
            yg = y_got.astype(np.float64)
            has = pos.any(-1)
            member = (pos & (w == yg[:, None])).any(-1)
            ok = np.where(nan_win, np.isnan(yg), np.where(has, member, yg == 0))
            assert ok.all(), f"StochasticPool sample picked a non-candidate {case}: {yg[~ok][:5]}"
        else:
            has = pos.any(-1) & ~nan_win  # a window holding NaN picks nothing
            want = float(np.where(has, g, 0.0).sum())
            got = dx_got.astype(np.float64)
            # dX is nonzero only where some window's positive value sits
            only_pos = scatter(pos.astype(np.float64)) > 0
            assert (got[~only_pos] == 0).all(), f"sample backward wrote to a non-positive position {case}"
            tol = np.abs(g).sum() * (8 * w.shape[0] * EPS32 + 4 * h16) + 1e-30
            assert abs(got.sum() - want) <= tol, f"sample backward sum {got.sum()} != {want} {case}"


def _same_bits(a, b, what, case):
    av, bv = a.reshape(-1), b.reshape(-1)
    eq = (av.view(np.uint16 if av.dtype == np.float16 else np.uint32)
          == bv.view(np.uint16 if bv.dtype == np.float16 else np.uint32)) | (np.isnan(av) & np.isnan(bv))
    assert eq.all(), f"{what}: C ABI and ORT kernel differ {case}: {av[~eq][:5]} vs {bv[~eq][:5]}"


def _run_ort(op, attrs, x):
    ort, so = _ort()
    from onnx import AttributeProto, TensorProto, helper

    elem = TensorProto.FLOAT16 if x.dtype == np.float16 else TensorProto.FLOAT
    node = helper.make_node(op, ["X"], ["Y"], domain="poolexport")
    for key, v in attrs.items():
        node.attribute.append(helper.make_attribute(key, v, attr_type=AttributeProto.INTS) if isinstance(v, list)
                              else helper.make_attribute(key, v))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", elem, None)],
                          [helper.make_tensor_value_info("Y", elem, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                          ir_version=10)
    STATS["ort"] += 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]


OPS = ["SoftPool", "StochasticPool", "StochasticPool"]
MODES = [None, "expectation", "sample"]
AUTO_PADS = ["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]


@atheris.instrument_func
def window_case(fdp, code, half, isa, backward, beta, seed, threads):
    k = fdp.ConsumeIntInRange(1, 3)
    N, C = fdp.ConsumeIntInRange(0, 2), fdp.ConsumeIntInRange(1, 3)
    spatial = [fdp.ConsumeIntInRange(0, 9) for _ in range(k)]
    kern = [fdp.ConsumeIntInRange(1, 4) for _ in range(k)]
    strides = [fdp.ConsumeIntInRange(1, 4) for _ in range(k)]
    dil = [fdp.ConsumeIntInRange(1, 3) for _ in range(k)]
    pads = [fdp.ConsumeIntInRange(0, 3) for _ in range(2 * k)]
    ceil = fdp.ConsumeBool()
    auto_pad = AUTO_PADS[fdp.ConsumeIntInRange(0, len(AUTO_PADS) - 1)]
    axes = [_axis_output(spatial[i], kern[i], strides[i], pads[i], pads[k + i], dil[i], ceil, auto_pad)
            for i in range(k)]
    if any(a is None for a in axes):
        return  # invalid for ONNX (test_ort_fuzz.py covers the kernels' rejections)
    out, begin = [a[0] for a in axes], [a[1] for a in axes]
    x = decode_values(fdp, [N, C, *spatial], half, code)
    lead = 3 - k
    pad1 = lambda v, f: [f] * lead + list(v)  # noqa: E731
    geom = [N, C] + pad1(spatial, 1) + pad1(out, 1) + pad1(kern, 1) + pad1(strides, 1) + pad1(dil, 1) + pad1(begin, 0)
    case = dict(op=OPS[code], mode=MODES[code], half=half, isa=isa, backward=backward, shape=x.shape, k=kern,
                s=strides, d=dil, pads=pads, ceil=ceil, auto_pad=auto_pad, beta=beta, seed=seed, threads=threads)
    idx, valid = _window_index(spatial, out, begin, kern, strides, dil)
    planes = x.reshape(N * C, int(np.prod(spatial))).astype(np.float64)
    w = planes[:, idx].reshape(-1, idx.shape[1]) if planes.shape[1] else np.zeros((N * C * idx.shape[0], idx.shape[1]))
    valid_m = np.broadcast_to(valid[None], (N * C,) + valid.shape).reshape(-1, idx.shape[1])
    dt = x.dtype
    xc = np.ascontiguousarray(x)
    g64 = (np.arange(N * C * int(np.prod(out))) % 7 - 3) * 0.5 + 0.25
    dy = g64.astype(dt).reshape([N, C, *out])
    res = np.full(x.shape if backward else [N, C, *out], np.float32(7.0), dt)
    rc = lib.poolexport_torch_window(code, int(half), xc.ctypes.data, dy.ctypes.data if backward else None,
                                     res.ctypes.data, (ctypes.c_int64 * 20)(*geom), beta, seed, threads)
    if os.environ.get("PX_FUZZ_DUMP"):  # replaying a crash input: keep the case for a closer look
        np.save(os.environ["PX_FUZZ_DUMP"], x)
        print("case", case, "geom", geom)
    assert rc == 0, f"poolexport_torch_window returned {rc} for {case}"
    STATS["window"] += 1
    flat_idx = (np.arange(N * C)[:, None, None] * planes.shape[1] + idx[None]).reshape(-1, idx.shape[1])

    def scatter(contrib):
        acc = np.zeros(x.size)
        np.add.at(acc, flat_idx[valid_m], np.asarray(contrib)[valid_m])
        return acc

    if backward:
        STATS["backward"] += 1
        check_values(code, half, w, valid_m, None, np.float32(beta), dy.astype(np.float64).reshape(-1),
                     res.reshape(-1), scatter, case, max(idx.shape[0], 1), x.reshape(-1))
        return
    check_values(code, half, w, valid_m, res.reshape(-1), np.float32(beta), None, None, None, case,
                 max(idx.shape[0], 1))
    if fdp.ConsumeBool():
        attrs = {"kernel_shape": kern, "strides": strides, "dilations": dil, "ceil_mode": int(ceil),
                 "auto_pad": auto_pad}
        if auto_pad == "NOTSET":
            attrs["pads"] = pads
        if code == 0:
            attrs["beta"] = float(beta)
        else:
            attrs["mode"], attrs["seed"] = MODES[code], seed
        y = _run_ort(OPS[code], attrs, xc)
        assert list(y.shape) == [N, C, *out], (y.shape, case)
        _same_bits(res, y, "window", case)


def _merged_layout(dims, mask):
    out, kinds = [], []
    for i, d in enumerate(dims):
        if d == 1:
            continue
        red = bool(mask >> i & 1)
        if out and kinds[-1] == red:
            out[-1] *= d
        else:
            out.append(d)
            kinds.append(red)
    lead = 6 - len(out)
    return [1] * lead + out, sum(1 << (lead + i) for i, r in enumerate(kinds) if r)


@atheris.instrument_func
def reduce_case(fdp, code, half, isa, backward, beta, seed, threads):
    dims = [fdp.ConsumeIntInRange(0, 5) if fdp.ConsumeProbability() < 0.3 else fdp.ConsumeIntInRange(1, 2)
            for _ in range(6)]
    if int(np.prod(dims)) > 4096:
        return
    mask = fdp.ConsumeIntInRange(0, 63)
    red = [i for i in range(6) if mask >> i & 1]
    kept = [i for i in range(6) if not mask >> i & 1]
    x = decode_values(fdp, dims, half, code)
    merged = fdp.ConsumeBool()
    out_shape = [dims[i] for i in kept]
    wlen = int(np.prod([dims[i] for i in red]))
    xt = x.astype(np.float64).transpose(kept + red)
    w = xt.reshape(int(np.prod(out_shape)), wlen)
    valid = np.ones((1, wlen), bool)
    case = dict(op="Reduce" + OPS[code], mode=MODES[code], half=half, isa=isa, backward=backward, dims=dims,
                mask=mask, beta=beta, merged=merged, seed=seed, threads=threads)
    dt = x.dtype
    n_out = int(np.prod(out_shape))
    dy = ((np.arange(n_out) % 5 - 2) * 0.75 + 0.5).astype(dt)
    res = np.full(x.shape if backward else out_shape, np.float32(7.0), dt)
    # the torch ops pass the merged layout (_native._reduce_geometry: size-1 axes dropped,
    # neighbours of one kind merged, left-padded with 1s), and ORT computes with it too;
    # any other layout of the same reduction is a valid ABI call as well
    abi_dims, abi_mask = _merged_layout(dims, mask) if merged else (dims, mask)
    rc = lib.poolexport_torch_reduce(code, int(half), np.ascontiguousarray(x).ctypes.data,
                                     dy.ctypes.data if backward else None, res.ctypes.data,
                                     (ctypes.c_int64 * 6)(*abi_dims), abi_mask, beta, seed, threads)
    assert rc == 0, f"poolexport_torch_reduce returned {rc} for {case}"
    STATS["reduce"] += 1
    flat = np.arange(x.size).reshape(dims).transpose(kept + red).reshape(n_out, wlen)

    def scatter(contrib):
        acc = np.zeros(x.size)
        np.add.at(acc, flat, np.broadcast_to(contrib, flat.shape))
        return acc

    if backward:
        STATS["backward"] += 1
        check_values(code, half, w, valid, None, np.float32(beta), dy.astype(np.float64), res.reshape(-1), scatter,
                     case, max(n_out, 1), x.reshape(-1))
        return
    check_values(code, half, w, valid, res.reshape(-1), np.float32(beta), None, None, None, case, max(n_out, 1))
    if merged and red and wlen > 0 and fdp.ConsumeBool():
        keep = fdp.ConsumeBool()
        attrs = {"axes": red, "keepdims": int(keep)}
        if code == 0:
            attrs["beta"] = float(beta)
        else:
            attrs["mode"], attrs["seed"] = MODES[code], seed
        y = _run_ort("Reduce" + OPS[code], attrs, np.ascontiguousarray(x))
        assert y.size == res.size, (y.shape, case)
        _same_bits(res, y, "reduce", case)


@atheris.instrument_func
def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    windowed = fdp.ConsumeBool()
    code = fdp.ConsumeIntInRange(0, 2)
    half = fdp.ConsumeBool()
    isa = ISAS[fdp.ConsumeIntInRange(0, len(ISAS) - 1)]
    os.environ["POOLEXPORT_CPU_ISA"] = isa
    backward = fdp.ConsumeProbability() > 0.7
    beta = BETAS[fdp.ConsumeIntInRange(0, len(BETAS) - 1)] if fdp.ConsumeBool() else \
        float(np.float32(fdp.ConsumeFloatInRange(-50.0, 50.0)))
    seed = fdp.ConsumeIntInRange(-(2**63), 2**63 - 1)
    threads = fdp.ConsumeIntInRange(1, 4)
    (window_case if windowed else reduce_case)(fdp, code, half, isa, backward, beta, seed, threads)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    import atexit

    asan = hasattr(ctypes.CDLL(None), "__asan_init")  # the sanitizer runtime is in this process
    atexit.register(lambda: print(f"fuzz-native stats {STATS} isas={ISAS} asan={asan}", flush=True))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
