"""The fast reduce forms over one contiguous run (global pooling over H x W), at the limits
they branch on (limits.h): plane sizes around every lane width and kReduceUnroll vectors
(+- 1), around kReduceLanePlaneSoft / kReduceLanePlaneMoments (small planes reduced one
plane per vector lane, in groups of a lane width of planes: plane counts around each lane
width, and a plane's bits independent of its neighbours), around kReduceChunk (a plane
walked in chunks) and plane counts around
kReduceSplitPlanes (threads sharing a plane's chunks); SoftPool planes whose range of
beta * x lies around kSharedRange (the unclamped exp) and around -kExpArgMin (the clamp);
max |x| around kSoftScaleAbove (the shared math's scaled path); NaN and +-inf at the first,
middle and last element of a plane. Every CPU path this machine has, float32 and float16,
through ONNX Runtime and the torch op.

References: the float64 oracle of tests/_oracle.py (written from the definitions); for
planes holding inf, where the definition gives no number, the generic per-output path of
the same library (a layout the fast form does not take), which is what these planes gave
before the fast form existed. The torch op's eval output must equal the ONNX Runtime
kernel's bit for bit, and a plane's output must not depend on the thread count or on how
many planes share the call (the chunking is fixed by the plane size alone).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import _limits as L
import _oracle as O
from poolexport import ort as pxort
from test_boundaries import FLOOR, PATHS, RTOL, check_soft, cpu_path

CHUNK = L.LIMITS["kReduceChunk"]
SPLIT = L.LIMITS["kReduceSplitPlanes"]
UNROLL = L.LIMITS["kReduceUnroll"]
SOFT_T = L.LIMITS["kSoftScaleAbove"]
# planes of at most this many elements go one plane per vector lane (per op)
LANE_PLANE = {"soft": L.LIMITS["kReduceLanePlaneSoft"], "expectation": L.LIMITS["kReduceLanePlaneMoments"]}

# plane sizes: every lane width and kReduceUnroll vectors of it, +- 1; the chunk, +- 1
LANE_SIZES = sorted({w for lanes in set(L.LANES.values()) for w in L.widths(lanes, (1, UNROLL, UNROLL + 1))} | {1, 2})
# the same tails on planes just above the one-plane-per-lane form (the vector loops over a plane)
WIDE_BASE = {op: (limit // (2 * UNROLL * 16) + 1) * 2 * UNROLL * 16 for op, limit in LANE_PLANE.items()}
CHUNK_SIZES = [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1]
DTYPES = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}
OPS = {"soft": ("ReduceSoftPool", {}), "expectation": ("ReduceStochasticPool", {"mode": "expectation"})}

_SESSIONS: dict = {}


def ort_reduce(op, x, axes=(2, 3), threads=1, beta=None):
    name, extra = OPS[op]
    elem = DTYPES["fp16" if x.dtype == np.float16 else "fp32"][1]
    attrs = {"axes": list(axes), "keepdims": 0, **extra}
    if beta is not None:
        attrs["beta"] = float(beta)
    key = (op, elem, tuple(axes), threads, beta)
    if key not in _SESSIONS:
        import onnxruntime as ort

        node = helper.make_node(name, ["X"], ["Y"], domain="poolexport", **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", elem, None)],
                                  [helper.make_tensor_value_info("Y", elem, None)])
        model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18),
                                                                       helper.make_opsetid("poolexport", 1)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        _SESSIONS[key] = pxort.session(model.SerializeToString(), options=so)
    return _SESSIONS[key].run(None, {"X": x})[0]


def torch_reduce(op, x, axes=(2, 3), beta=1.0):
    t = torch.from_numpy(x.copy())
    with torch.no_grad():
        if op == "soft":
            return torch.ops.poolexport.reduce_soft_pool(t, list(axes), False, float(beta)).numpy()
        return torch.ops.poolexport.reduce_stochastic_pool(t, list(axes), False, "expectation", 0).numpy()


def generic_reduce(op, x, beta=None):
    """The same planes through the generic per-output path (the shared math of soft_pool.h /
    stochastic_pool.h): a kept trailing axis of 2 makes the window non-contiguous."""
    x2 = np.stack([x, x], axis=-1)
    return ort_reduce(op, x2, axes=(2, 3), beta=beta)[..., 0]


def check(op, x, got, what, beta=1.0):
    """got (N, C) against the float64 oracle: the NaN rule and the error bounds of
    test_boundaries (SoftPool: the window's error scale, exp clamped at kExpArgMin)."""
    n, c, h, w = x.shape
    x32 = x.astype(np.float32)
    if op == "soft":
        want = O.soft_forward(x32, dict(kernel_shape=[h, w]), beta, exp_arg_min=L.EXP_ARG_MIN)
        want = {k: (v.reshape(n, c) if isinstance(v, np.ndarray) and v.shape == (n, c, 1, 1) else v)
                for k, v in want.items()}
        if x.dtype == np.float16:  # the output's own rounding
            want["cond"] = want["cond"] + 2.0 ** -11 / RTOL * np.abs(np.nan_to_num(want["y"]))
        check_soft(what, got.astype(np.float64), want)
        return
    nan = np.isnan(x32).reshape(n, c, -1).any(-1)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN at {np.argwhere(np.isnan(got) != nan)[:4].tolist()}"
    y64, scale = O.expectation_forward(np.where(np.isnan(x32), 0, x32), dict(kernel_shape=[h, w]))
    y64, scale = y64.reshape(n, c), scale.reshape(n, c)
    if x.dtype == np.float16:
        scale = scale + 2.0 ** -11 / RTOL * y64
    err = np.abs(got.astype(np.float64) - y64)
    bad = ~nan & ~(err <= RTOL * scale + 4e-23)
    assert not bad.any(), f"{what}: at {np.argwhere(bad)[0].tolist()} got {got[bad][:3]}, float64 {y64[bad][:3]}"


def check_every_runtime(op, x, what, beta=1.0):
    """ORT (1 and 2 threads) and the torch op on every CPU path: the oracle, and the
    runtimes bit for bit with each other."""
    for path in PATHS:
        with cpu_path(path):
            got = ort_reduce(op, x, beta=None if op != "soft" else beta)
            check(op, x, got, f"ort-{path} {op} {what}", beta)
            np.testing.assert_array_equal(ort_reduce(op, x, threads=2, beta=None if op != "soft" else beta), got,
                                          err_msg=f"ort-{path} {op} {what}: 2 threads differ from 1")
            np.testing.assert_array_equal(torch_reduce(op, x, beta=beta), got,
                                          err_msg=f"torch-{path} {op} {what}: not the ORT kernel's bits")


def planes(count, size, dtype, seed=0, scale=3.0, hw=None):
    h, w = hw or (1, size)
    return (np.random.default_rng(seed).standard_normal((1, count, h, w)) * scale).astype(dtype)


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_plane_sizes_around_lane_widths(op, dtype):
    for size in LANE_SIZES:
        check_every_runtime(op, planes(3, size, DTYPES[dtype][0], seed=size), f"plane of {size}")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_plane_sizes_around_lane_widths_above_the_lane_form(op, dtype):
    """The vector loops over one plane (their tails and unrolled steps), on planes too large
    for the one-plane-per-lane form."""
    for size in [WIDE_BASE[op] + w for w in LANE_SIZES]:
        check_every_runtime(op, planes(3, size, DTYPES[dtype][0], seed=size), f"plane of {size}")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_plane_sizes_around_the_lane_form(op, dtype):
    """Plane sizes kReduceLanePlaneSoft / kReduceLanePlaneMoments - 1, itself, + 1 (one plane
    per lane up to it, the vector loops over a plane past it), for both ops at both limits,
    in groups of planes one short of, at and one past each lane width."""
    for size in sorted({v for limit in LANE_PLANE.values() for v in (limit - 1, limit, limit + 1)}):
        for count in (L.LANES["avx2"] + 1, L.LANES["avx512"] - 1):
            check_every_runtime(op, planes(count, size, DTYPES[dtype][0], seed=size + count), f"{count} planes of {size}")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_plane_counts_around_lane_widths(op, dtype):
    """One plane per lane: plane counts around every lane width (a last, partial group of
    planes), 7 x 7 planes (a transposed block and a gathered tail) and planes of exactly
    two lane widths (no tail)."""
    counts = sorted({c for lanes in set(L.LANES.values()) for c in (1, lanes - 1, lanes, lanes + 1, 2 * lanes + 1)})
    for size, hw in ((49, (7, 7)), (2 * L.LANES["avx512"], (1, 2 * L.LANES["avx512"]))):
        for count in counts:
            x = planes(count, size, DTYPES[dtype][0], seed=count, hw=hw)
            check_every_runtime(op, x, f"{count} planes of {hw}")


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_plane_does_not_depend_on_its_neighbours(op):
    """One plane per lane: a plane's output bits are the same alone and in any lane of a
    group whose other planes are wide (range of beta * x past kSharedRange and the clamp),
    hold NaN, +inf or huge values (the shared math's planes), on every path."""
    size, lanes = 49, max(L.LANES.values())
    target = planes(1, size, np.float32, seed=5)[0, 0, 0]
    odd = [np.full(size, np.nan, np.float32), np.full(size, np.inf, np.float32), planes(1, size, np.float32, seed=6)[0, 0, 0]]
    odd[0][1:] = 1.0
    odd[1][:-1] = 0.5
    odd[2][3] = -200.0  # wide: range 200 > kSharedRange, past the clamp
    huge = planes(1, size, np.float32, seed=7)[0, 0, 0]
    huge[size // 2] = np.float32(4 * SOFT_T)
    odd.append(huge)
    for path in PATHS:
        with cpu_path(path):
            alone = ort_reduce(op, target[None, None, None, :])[0, 0]
            for at in (0, lanes // 2, lanes - 1, lanes):
                rows = [odd[(q + at) % len(odd)] for q in range(lanes + 2)]
                rows[at] = target
                x = np.stack(rows)[None, :, None, :]
                got = ort_reduce(op, x)[0, at]
                assert got.tobytes() == alone.tobytes(), f"ort-{path} {op}: lane {at} gives {got!r}, alone {alone!r}"
                assert torch_reduce(op, x)[0, at].tobytes() == alone.tobytes(), f"torch-{path} {op}: lane {at}"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_plane_sizes_around_the_chunk(op, dtype):
    for size in CHUNK_SIZES:
        check_every_runtime(op, planes(2, size, DTYPES[dtype][0], seed=size), f"plane of {size}")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_usual_global_pool_shapes(op, dtype):
    """SE-style descriptors: many small planes (several float16 conversion batches and
    work chunks per thread), a few large ones (threads share their chunks), and more than
    kReduceSplitPlanes large ones (whole planes per thread, in runs)."""
    for shape in [(2, 300, 7, 7), (2, 3, 14, 14), (1, 3, 56, 56), (1, SPLIT + 1, 56, 56)]:
        x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(DTYPES[dtype][0])
        check_every_runtime(op, x, f"{shape}")


# ------------------------------------------------------------------ sharing a plane's chunks
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_plane_counts_around_the_split(op, dtype):
    """Planes of three chunks, SPLIT - 1 (threads share each plane's chunks), SPLIT and
    SPLIT + 1 of them (whole planes per thread): the oracle, and each plane's bits the same
    in every call (the chunk order, not the thread or the split, fixes the sums)."""
    size = 2 * CHUNK + 3
    base = planes(3, size, DTYPES[dtype][0], seed=11)
    first = {}
    for count in (SPLIT - 1, SPLIT, SPLIT + 1):
        x = base[:, np.arange(count) % 3]
        check_every_runtime(op, x, f"{count} planes of {size}")
        for path in PATHS:
            with cpu_path(path):
                got = ort_reduce(op, x)[0]
            for q in range(3):
                first.setdefault((path, q), got[q])
                np.testing.assert_array_equal(got[q::3], np.full_like(got[q::3], first[(path, q)]),
                                              err_msg=f"ort-{path} {op}: plane {q} differs with {count} planes")


# ------------------------------------------------------------------ SoftPool's branches
@pytest.mark.parametrize("rest", ["noise", "zeros"])
@pytest.mark.parametrize("size", [LANE_SIZES[-1], CHUNK + 1, 2 * CHUNK + 1])
def test_soft_range_around_the_unclamped_exp_and_the_clamp(size, rest):
    """beta * x spanning exactly around kSharedRange (exp without clamp up to it) and around
    -kExpArgMin (weights clamped at exp(kExpArgMin) past it): the plane's maximum of beta * x
    is 0, its low end -span at the first, middle or last element; the other elements within
    [-1.2, 0] ("noise") or 0 ("zeros": the low element's weight alone moves the output);
    beta 1, 2, -1 (the shift from the smallest x)."""
    for beta in (1.0, 2.0, -1.0):
        for span in L.around(L.SHARED_RANGE) + L.around(-L.EXP_ARG_MIN):
            x = np.zeros((1, 3, 1, size), np.float32)
            if rest == "noise":
                x = (-np.abs(planes(3, size, np.float32, seed=int(span) + size, scale=0.3)) / beta).astype(np.float32)
            for q, at in enumerate((0, size // 2, size - 1)):
                x[0, q, 0, at] = np.float32(-span / beta)
                x[0, q, 0, (at + 1) % size] = np.float32(0.0)
            check_every_runtime("soft", x, f"range {span} beta {beta} size {size} {rest}", beta=beta)


@pytest.mark.parametrize("beta", [0.0, 0.5, -2.0])
def test_soft_other_beta(beta):
    for size in (49, CHUNK + 1, 2 * CHUNK + 1):
        check_every_runtime("soft", planes(SPLIT + 1, size, np.float32, seed=size), f"beta {beta} size {size}", beta=beta)


@pytest.mark.parametrize("size", [LANE_SIZES[-1], 2 * CHUNK + 1])
def test_soft_max_abs_around_the_scaled_path(size):
    """max |x| just below, at and above kSoftScaleAbove (the shared math's scaled path
    above), and up to float32's maximum (where x - c would overflow unscaled), at the
    first, middle and last element, with either sign; the last plane holds +v and -v."""
    for v in L.around(SOFT_T)[1:4] + [8.6e37, float(np.finfo(np.float32).max)]:
        for sign in (1.0, -1.0):
            x = planes(4, size, np.float32, seed=size)
            for q, at in enumerate((0, size // 2, size - 1)):
                x[0, q, 0, at] = np.float32(sign * v)
            x[0, 3, 0, 0], x[0, 3, 0, size - 1] = np.float32(sign * v), np.float32(-sign * v)
            check_every_runtime("soft", x, f"max |x| {v} sign {sign} size {size}")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_expectation_overflow_takes_the_scaled_path(dtype):
    """Expectation planes whose sum(r^2) overflows float32 (max r around and past
    kMomentScaleAbove, up to float's maximum) at the first, middle or last element: the
    shared math's scaled path, on planes of the one-plane-per-lane form and past it
    (float16: its largest value, whose square float32 still holds)."""
    big = [float(np.finfo(DTYPES[dtype][0]).max)] if dtype == "fp16" else \
        L.around(L.LIMITS["kMomentScaleAbove"])[1:4] + [3.0e19, 1.0e30, float(np.finfo(np.float32).max)]
    for size in sorted({L.LANES["avx2"] + 1, LANE_PLANE["expectation"], LANE_PLANE["expectation"] + 1, 49}):
        for v in big:
            x = np.abs(planes(4, size, DTYPES[dtype][0], seed=size))
            for q, at in enumerate((0, size // 2, size - 1)):
                x[0, q, 0, at] = v
                x[0, q, 0, (at + 1) % size] = v
            check_every_runtime("expectation", x, f"max r {v} size {size}")


# ------------------------------------------------------------------ NaN and inf
POSITIONS = {"first": lambda n: 0, "middle": lambda n: n // 2, "last": lambda n: n - 1}
# one plane per lane (a gathered tail; the largest such planes of each op), vector loops, chunks
NONFINITE_SIZES = sorted({L.LANES["avx2"] + 1, L.LANES["avx512"] * UNROLL + 1, *LANE_PLANE.values(),
                          *(v + 1 for v in LANE_PLANE.values()), CHUNK + 1})


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("count", [2, SPLIT])  # planes of several chunks: split, and whole planes
def test_nan_gives_nan_and_only_there(op, dtype, count):
    for size in NONFINITE_SIZES:
        x = planes(count, size, DTYPES[dtype][0], seed=size)
        x[0, 0, 0, 0] = np.nan
        x[0, 0, 0, size - 1] = np.nan  # a plane holding NaN at both ends
        x[0, 1, 0, size // 2] = np.nan
        check_every_runtime(op, x, f"NaN in {count} planes of {size}")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_inf_as_the_shared_math(op, dtype):
    """A plane holding +inf or -inf (first, middle, last element; also both): the same
    output as the generic per-output path (SoftPool: every such plane; the expectation:
    +inf, while -inf counts as 0 there and its plane is checked against the oracle), on
    every path, in ORT and torch."""
    for size in NONFINITE_SIZES + [2 * CHUNK + 1]:
        for where, pos in POSITIONS.items():
            x = planes(4, size, DTYPES[dtype][0], seed=size)
            at = pos(size)
            x[0, 0, 0, at] = np.inf
            x[0, 1, 0, at] = -np.inf
            x[0, 2, 0, at], x[0, 2, 0, (at + 1) % size] = np.inf, -np.inf
            same = [0, 1, 2] if op == "soft" else [0, 2]
            for path in PATHS:
                with cpu_path(path):
                    got, want = ort_reduce(op, x), generic_reduce(op, x)
                    np.testing.assert_array_equal(got[:, same], want[:, same],
                                                  err_msg=f"ort-{path} {op} inf at {where} of {size}")
                    np.testing.assert_array_equal(torch_reduce(op, x), got,
                                                  err_msg=f"torch-{path} {op} inf at {where} of {size}")
                    finite = [1, 3] if op != "soft" else [3]  # -inf is r = 0 for the expectation
                    check(op, x[:, finite], got[:, finite], f"ort-{path} {op} beside inf at {where}, size {size}")


# SoftPool reduces the planes of one work item in a run: a lane group's sums beside the next
# group's transpose, a whole plane's sums beside the next plane's extremes (reduce_plane.inc).
# 7 x 7 in groups (a gathered tail), the largest lane-form planes, one-chunk planes, planes of
# a chunk + 1 and two chunks + 1 (whole planes: at least kReduceSplitPlanes of them)
RUN_SIZES = [49, LANE_PLANE["soft"], LANE_PLANE["soft"] + 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("where", sorted(POSITIONS))
def test_soft_run_with_a_plane_for_the_shared_math(where, dtype):
    """A plane for the shared math (holding +inf) first, in the middle or last of a run of
    fast planes, a wide plane (an exponent past the clamp) early in the run, and the run's
    last group or plane partly filled: each plane gives its bits
    alone, the +inf plane the generic path's, the others the float64 oracle's, on every path,
    in ORT (1 and 2 threads) and torch."""
    for size in RUN_SIZES:
        lanes = max(L.LANES.values())
        count = 3 * lanes + 5 if size <= LANE_PLANE["soft"] else SPLIT + 1
        x = planes(count, size, DTYPES[dtype][0], seed=size + count)
        at = POSITIONS[where](count)
        x[0, at, 0, size // 3] = np.inf
        wide = 1 if at != 1 else 2  # in the first group or plane: its exps take the clamp
        x[0, wide, 0, size // 2] = -130.0  # u near -190: an unclamped 2^k would wrap its exponent
        fast = [q for q in range(count) if q != at]
        for path in PATHS:
            with cpu_path(path):
                got = ort_reduce("soft", x)
                what = f"ort-{path} {count} planes of {size}, +inf plane {where}"
                for q in range(count):
                    alone = ort_reduce("soft", x[:, q:q + 1])
                    assert got[0, q].tobytes() == alone[0, 0].tobytes(), f"{what}: plane {q} {got[0, q]!r}, alone {alone[0, 0]!r}"
                np.testing.assert_array_equal(got[:, at], generic_reduce("soft", x[:, at:at + 1])[:, 0], err_msg=what)
                check("soft", x[:, fast], got[:, fast], what)
                np.testing.assert_array_equal(ort_reduce("soft", x, threads=2), got, err_msg=f"{what}: 2 threads")
                np.testing.assert_array_equal(torch_reduce("soft", x), got, err_msg=f"torch-{path}: {what}")


def test_all_nan_plane():
    for size in (LANE_SIZES[-1], 2 * CHUNK + 1):
        x = np.full((1, 2, 1, size), np.nan, np.float32)
        x[0, 1] = 1.0
        for path in PATHS:
            with cpu_path(path):
                for op in OPS:
                    got = ort_reduce(op, x)
                    assert np.isnan(got[0, 0]) and got[0, 1] == 1.0, f"ort-{path} {op}: {got}"
                    np.testing.assert_array_equal(torch_reduce(op, x), got)


def test_equal_values_give_that_value():
    """y = c + sum e (x - c) / sum e: a plane of one value gives it exactly (SoftPool)."""
    for size in LANE_SIZES + CHUNK_SIZES:
        x = np.full((1, 3, 1, size), 0.1, np.float32)
        x[0, 1] = -7.3e5
        x[0, 2] = 3.0e18
        for path in PATHS:
            with cpu_path(path):
                np.testing.assert_array_equal(ort_reduce("soft", x), x[:, :, 0, 0], err_msg=f"{path} size {size}")


# ------------------------------------------------------------------ base-2 weights
# The reduce forms weigh e = 2^u, u = b2 (x - c), b2 = beta * log2(e) rounded to float32
# (cpu_reduce_plane.h). A plane whose smallest u is at least NARROW_MIN takes the exp without
# clamp; u is clamped at ARG_MIN_2 (exp's kExpArgMin in base 2); a beta whose b2 overflows
# takes the shared math. All three as float32 computes them.
LOG2E = np.float32(1.44269504088896341)
NARROW_MIN = np.float32(-np.float32(L.SHARED_RANGE) * LOG2E)
ARG_MIN_2 = np.float32(np.float32(L.EXP_ARG_MIN) * LOG2E)
LANE_ITEMS = L.LIMITS["kReduceLaneItems"]


def _u(beta, d):
    """u as the kernels compute it for x - c = d (float32 throughout)."""
    return np.float32(np.float32(np.float32(beta) * LOG2E) * np.float32(d))


def _steps_around(beta, limit):
    """x - c values whose u lies just above, on (where float32 has one) and just below
    limit: the float32 neighbours of limit / b2 that straddle it."""
    d = np.float32(limit / (np.float32(beta) * LOG2E))
    ds, up, down = [d], d, d
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        ds += [up, down]
    above = max((v for v in ds if _u(beta, v) < limit), key=lambda v: _u(beta, v))
    on = [v for v in ds if _u(beta, v) == limit]
    below = min((v for v in ds if _u(beta, v) > limit), key=lambda v: _u(beta, v))
    return [above] + on[:1] + [below]


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("beta", [1.0, 2.0, -1.0, 0.3])
def test_soft_exponent_around_the_narrow_limit(beta, dtype):
    """Planes whose smallest exponent u lies one float32 step past, on, and one step inside
    the unclamped exp's limit (the low element first, middle or last; the maximum 0 next to
    it), in groups with ordinary planes: the oracle, torch == ORT, 1 == 2 threads."""
    if dtype == "fp16":  # float16 cannot hold the float32 steps: the limit +- a float16 step
        span = float(-NARROW_MIN / (np.float32(beta) * LOG2E))
        values = [np.float16(s * np.sign(-beta)) for s in (span * (1 - 2 ** -10), span, span * (1 + 2 ** -10))]
    else:
        values = [np.float32(v) for v in _steps_around(beta, NARROW_MIN)]
    for size in (49, CHUNK + 1):
        x = (-np.abs(planes(6, size, np.float32, seed=size, scale=0.3)) / beta).astype(DTYPES[dtype][0])
        for q, at in enumerate((0, size // 2, size - 1)):
            for k, v in enumerate(values[:2]):
                x[0, 2 * q + k, 0, at] = v
                x[0, 2 * q + k, 0, (at + 1) % size] = 0.0
        x2 = x.copy()
        x2[0, :3, 0, 0] = values[-1]
        check_every_runtime("soft", np.concatenate([x, x2], 1), f"narrow limit beta {beta} size {size}", beta=beta)


@pytest.mark.parametrize("beta", [1.0, -1.0, 0.3])
def test_soft_exponent_around_the_clamp(beta):
    """One element whose u is one float32 step above, on, or one step below the clamp
    ARG_MIN_2 (the rest 0, so that its weight alone moves the output), first, middle or
    last, in the lane form and the vector loops."""
    for size in (49, CHUNK + 1):
        x = np.zeros((1, 9, 1, size), np.float32)
        for k, v in enumerate(_steps_around(beta, ARG_MIN_2)):
            for q, at in enumerate((0, size // 2, size - 1)):
                x[0, 3 * k + q, 0, at] = np.float32(v)
        check_every_runtime("soft", x, f"clamp beta {beta} size {size}", beta=beta)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_soft_beta_around_the_exponent_factor_overflow(sign):
    """beta one float32 step below, at and above the largest whose b2 = beta * log2(e) is
    finite (above: the shared math), on planes whose shift c is 0 (so beta * c stays finite):
    the oracle (weights of x != c are 0 there), torch == ORT."""
    big = np.float32(np.finfo(np.float32).max / LOG2E)
    with np.errstate(over="ignore"):
        while np.isfinite(np.float32(np.nextafter(big, np.float32(np.inf)) * LOG2E)):
            big = np.nextafter(big, np.float32(np.inf))
        while not np.isfinite(np.float32(big * LOG2E)):
            big = np.nextafter(big, np.float32(0))
    for b in (np.nextafter(big, np.float32(0)), big, np.nextafter(big, np.float32(np.inf))):
        for size in (49, CHUNK + 1):
            x = (-np.abs(planes(4, size, np.float32, seed=size)) * sign).astype(np.float32)
            for q, at in enumerate((0, size // 2, size - 1)):
                x[0, q, 0, at] = 0.0
            x[0, 3] = 0.0
            check_every_runtime("soft", x, f"beta {sign * b} size {size}", beta=float(sign * b))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_group_counts_around_the_item_minimum(op, dtype):
    """Groups of a lane width of planes handed out in at least kReduceLaneItems items: one
    group fewer, as many, one more (and twice as many, +-1) for every lane width: the oracle,
    and the same bits on 1 and 2 threads and in torch."""
    for lanes in sorted(set(L.LANES.values())):
        for groups in (LANE_ITEMS - 1, LANE_ITEMS, LANE_ITEMS + 1, 2 * LANE_ITEMS - 1, 2 * LANE_ITEMS + 1):
            x = planes(groups * lanes, 49, DTYPES[dtype][0], seed=groups, hw=(7, 7))
            check_every_runtime(op, x, f"{groups} groups of {lanes} planes")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_group_counts_around_one_item(op, dtype):
    """Calls of at most kReduceLaneOneItem units of cost run as one item (the calling thread),
    larger ones are split: the largest group count that fits, -1 and +1, +2, for every lane
    width (a group's cost: lanes * (4 P + 1) for SoftPool, lanes * (P + 1) for the
    expectation): the oracle, and the same bits on 1 and 2 threads and in torch."""
    per_plane = (4 if op == "soft" else 1) * 49 + 1
    for lanes in sorted(set(L.LANES.values())):
        fit = L.LIMITS["kReduceLaneOneItem"] // (lanes * per_plane)
        for groups in (fit - 1, fit, fit + 1, fit + 2):
            x = planes(groups * lanes, 49, DTYPES[dtype][0], seed=groups, hw=(7, 7))
            check_every_runtime(op, x, f"{groups} groups of {lanes} planes")


@pytest.mark.parametrize("size", [2 * CHUNK, 2 * CHUNK + 1, 2 * CHUNK + 15, 2 * CHUNK + 16, 2 * CHUNK + 17])
def test_fp16_whole_planes_converted_with_their_extremes(size):
    """float16 planes of several chunks, one thread per plane (SPLIT of them), converted and
    ranged in one pass: vector steps +- 1 at the tail, NaN at the last element of one plane,
    +inf first in another, the maximum in the tail of a third: the oracle / the shared math,
    torch == ORT."""
    x = planes(SPLIT, size, np.float16, seed=size)
    x[0, 1, 0, size - 1] = np.nan
    x[0, 3, 0, size - 1] = np.float16(40.0)
    check_every_runtime("soft", x, f"fp16 {SPLIT} planes of {size}")
    x[0, 2, 0, 0] = np.inf
    for path in PATHS:
        with cpu_path(path):
            got = ort_reduce("soft", x)
            np.testing.assert_array_equal(got[:, 2], generic_reduce("soft", x)[:, 2], err_msg=f"ort-{path} +inf")
            np.testing.assert_array_equal(torch_reduce("soft", x), got, err_msg=f"torch-{path} +inf")


@pytest.mark.parametrize("size", [49, CHUNK + 1])
@pytest.mark.parametrize("beta", [1.0, -1.0])
def test_soft_weight_accuracy_against_float64(beta, size):
    """A plane of zeros but one element -d (the rest's weight 1, its own 2^u): its output
    d w / (size - 1 + w) moves with the weight's relative error alone, which must stay
    within 4e-7 (1 + |u|) of float64's exp (the polynomial's 1.6e-7 plus u's float32
    roundings, which grow with |u|), over d whose 2^f sweeps its interval (unclamped), a
    few up to the clamp and two past it (weight exp(kExpArgMin); wide planes: the clamped
    exp)."""
    d = np.concatenate([np.linspace(0.01, 3.0, 97), [20.0, 50.0, 70.0, 86.0, 100.0, 140.0]]).astype(np.float32)
    x = np.zeros((1, len(d), 1, size), np.float32)
    x[0, :, 0, size // 2] = -d * np.float32(np.sign(beta))
    v = x[0, :, 0, size // 2].astype(np.float64)
    w = np.exp(np.maximum(beta * v, L.EXP_ARG_MIN))  # past the clamp: exp(kExpArgMin)
    want = v * w / (size - 1 + w)
    u = np.abs(_u(beta, d).astype(np.float64))
    for path in PATHS:
        with cpu_path(path):
            got = ort_reduce("soft", x, beta=beta)[0].astype(np.float64)
            rel = np.abs(got - want) / np.abs(want)
            bad = ~(rel <= 4e-7 * (1 + u))
            assert not bad.any(), f"{path} beta {beta} size {size}: d {d[bad][:3]} relative error {rel[bad][:3]}"
            np.testing.assert_array_equal(torch_reduce("soft", x, beta=beta)[0], got.astype(np.float32),
                                          err_msg=f"torch-{path}: not the ORT kernel's bits")
