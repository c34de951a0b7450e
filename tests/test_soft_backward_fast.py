"""The CPU backward's shared-shift plane path (custom_ops/torch/cpu_backward.h) at its edges.

The path computes every window's c_w and y_w in blocks of kBackwardLanes (8) output
columns, then each input run's gradient from the windows holding it, also in blocks of 8,
letting a run's last block spill into padding. The geometries here put output widths and
run lengths at 8 - 1, 8, 8 + 1 (and 16 +- 1), odd and even widths, pads at either edge,
ceil_mode, strides above the window (inputs in no window), dilation, 1-D and 3-D, and NaN
at the first, middle and last position of a plane.

Reference: the gradient of each window written out in float64 from the definitions,
over the windows of tests/_reference.py (nothing of poolexport):
  SoftPool     p_j = softmax(beta a)_j, y = sum p_j a_j, dy/da_j = p_j (1 + beta (a_j - y))
  expectation  r = max(a, 0), y = sum r^2 / sum r, dy/da_j = [a_j > 0] (2 r_j - y) / sum r
With NaN in a window: SoftPool gives NaN to the window's NaN inputs and nothing to its
others; the expectation passes no gradient (the kernels' documented rule).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import _reference as ref
from _cpu import cpu_paths
from poolexport.ops import _native, soft_pool, stochastic_pool

pytestmark = pytest.mark.skipif(
    not _native.available(), reason="libpoolexport_ort.so with the torch C ABI is not built (pip install .)"
)


def oracle_grad(x, g, op, beta, kernel, strides, pads, dilations, ceil_mode):
    """float64 dX of the windowed op for upstream gradient g, window by window."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    n, c, *spatial = x.shape
    dx = np.zeros_like(x)
    wins = list(ref.windows(spatial, kernel, strides, pads, dilations, ceil_mode))
    for b in range(n):
        for ch in range(c):
            for o, positions in wins:
                if not positions:
                    continue
                a = np.array([x[(b, ch, *p)] for p in positions])
                gw = g[(b, ch, *o)]
                nan = np.isnan(a)
                if nan.any():
                    if op == "soft":  # NaN to the window's NaN inputs only
                        for p, isnan in zip(positions, nan):
                            if isnan:
                                dx[(b, ch, *p)] = math.nan
                    continue
                if op == "soft":
                    z = beta * a
                    w = np.exp(z - z.max())
                    pr = w / w.sum()
                    y = (pr * a).sum()
                    d = gw * pr * (1.0 + beta * (a - y))
                else:
                    r = np.maximum(a, 0.0)
                    s1 = r.sum()
                    if s1 <= 0:
                        continue
                    y = (r * r).sum() / s1
                    d = np.where(a > 0, gw * (2.0 * r - y) / s1, 0.0)
                for p, v in zip(positions, d):
                    dx[(b, ch, *p)] += v
    return dx


def native_grad(x, g, op, beta, kernel, strides, pads, dilations, ceil_mode):
    attrs = (list(kernel), list(strides), list(pads), list(dilations), ceil_mode, "NOTSET")
    if op == "soft":
        return torch.ops.poolexport.soft_pool_backward(g, x, *attrs, beta)
    return torch.ops.poolexport.stochastic_pool_backward(g, x, *attrs, "expectation", 0)


def forward(x, op, beta, kernel, strides, pads, dilations, ceil_mode):
    attrs = (list(kernel), list(strides), list(pads), list(dilations), ceil_mode, "NOTSET")
    return soft_pool(x, *attrs, beta) if op == "soft" else stochastic_pool(x, *attrs, "expectation", 0)


def check(x, op, beta, kernel, strides, pads, dilations, ceil_mode, seed=1):
    geom = (kernel, strides, pads, dilations, ceil_mode)
    y = forward(x, op, beta, *geom)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    got = native_grad(x, g, op, beta, *geom).double().numpy()
    want = oracle_grad(x.numpy(), g.numpy(), op, beta, *geom)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = ~np.isnan(want)
    err = np.abs(got[fin] - want[fin])
    scale = max(np.abs(want[fin]).max(initial=0.0), 1.0)
    assert err.max(initial=0.0) <= 1e-5 * scale, (err.max(), scale)
    return got, want


def _x(shape, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * scale
    # exact zeros exercise the expectation's r = 0 edge
    return torch.where(torch.rand(shape, generator=gen) < 0.1, torch.zeros_like(x), x)


OPS = [("soft", 1.0), ("soft", -0.7), ("expectation", 1.0)]


@pytest.fixture(params=["avx2", "portable"], autouse=True)
def isa(request, monkeypatch):
    """Both paths of the passes: AVX2 (where the CPU has it) and the portable C++."""
    if request.param not in cpu_paths():
        pytest.skip(f"this CPU lacks the {request.param} path")
    monkeypatch.setenv("POOLEXPORT_CPU_ISA", request.param)
    return request.param

# (W, kernel, stride, pads (begin, end) along W, ceil_mode): output widths 7, 8, 9, 15, 16,
# 17 and run lengths (input columns per stride phase) 7, 8, 9 around the 8-lane blocks
WIDTHS = [
    (14, 2, 2, (0, 0), False),   # ow 7, runs 7
    (16, 2, 2, (0, 0), False),   # ow 8, runs 8
    (18, 2, 2, (0, 0), False),   # ow 9, runs 9
    (15, 3, 2, (1, 1), False),   # ow 8, odd W, pads both sides
    (17, 3, 2, (1, 1), True),    # ow 9, ceil_mode
    (16, 3, 2, (1, 0), True),    # ow 8 with a window in the end padding dropped or kept
    (30, 3, 2, (1, 1), False),   # ow 15
    (31, 3, 2, (0, 2), False),   # ow 16, pads at the end only
    (34, 3, 2, (1, 1), False),   # ow 17
    (7, 3, 1, (1, 1), False),    # stride 1: one phase, runs 7
    (8, 3, 1, (1, 1), False),    # runs 8
    (9, 3, 1, (2, 2), True),     # runs 9 + pads
    (25, 3, 3, (0, 0), True),    # stride 3, ow 9
    (23, 4, 2, (2, 1), True),    # even kernel with pads
    (17, 2, 3, (0, 0), False),   # stride above the window: inputs in no window
]


@pytest.mark.parametrize("op,beta", OPS)
@pytest.mark.parametrize("w,k,s,pw,ceil", WIDTHS)
def test_widths_around_the_lane_blocks(op, beta, w, k, s, pw, ceil):
    x = _x((1, 2, 5, w), seed=w * 7 + k)
    check(x, op, beta, [3, k], [2, s], [1, pw[0], 1, pw[1]], [1, 1], ceil)


@pytest.mark.parametrize("op,beta", OPS)
@pytest.mark.parametrize("case", [
    # (spatial, kernel, strides, pads, dilations, ceil_mode)
    ((23,), [3], [2], [1, 0], [1], True),                                  # 1-D
    ((4, 5, 19), [3, 2, 3], [2, 1, 2], [1, 0, 1, 1, 1, 0], [1, 2, 1], True),  # 3-D, dilated rows
    ((6, 21), [2, 3], [2, 2], [0, 2, 1, 2], [2, 2], False),               # dilation 2 in W: taps in one phase
    ((5, 40), [3, 5], [1, 4], [1, 2, 1, 2], [1, 1], False),              # four phases, overlapping
    ((9, 9), [3, 3], [4, 4], [0, 0, 0, 0], [1, 1], False),               # rows and columns in no window
])
def test_geometries(op, beta, case):
    spatial, kernel, strides, pads, dilations, ceil = case
    check(_x((2, 2, *spatial), seed=len(spatial)), op, beta, kernel, strides, pads, dilations, ceil)


@pytest.mark.parametrize("op,beta", OPS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("w,k,s,pw", [(17, 3, 2, (1, 1)), (16, 2, 2, (0, 0)), (17, 2, 3, (0, 0)), (9, 3, 1, (1, 1))])
def test_nan_first_middle_last(op, beta, where, w, k, s, pw):
    x = _x((1, 2, 5, w), seed=3)
    flat = x.view(-1)
    plane = 5 * w
    at = {"first": 0, "middle": plane // 2 + 1, "last": plane - 1}[where]
    flat[at] = math.nan  # plane 0
    flat[plane + at] = math.nan  # plane 1 too: the next plane's path starts clean
    check(x, op, beta, [3, k], [2, s], [1, pw[0], 1, pw[1]], [1, 1], False)


@pytest.mark.parametrize("w,k,s,nan_at", [
    (11, 2, 3, (2, 8)),  # stride above the window: columns 2, 5, 8 in no window, their phase has no tap
    (8, 3, 2, (7,)),     # floor mode drops the last column: its phase has taps, whose windows end before it
    (20, 3, 2, (19,)),   # the same with 9 outputs per row (a second block of 8)
])
def test_nan_in_no_window_gets_zero(w, k, s, nan_at):
    x = _x((1, 1, 4, w), seed=5)
    for col in nan_at:
        x[0, 0, 1, col] = math.nan
    for op, beta in OPS:
        got, _ = check(x, op, beta, [2, k], [2, s], [0, 0, 0, 0], [1, 1], False)
        for col in nan_at:
            assert got[0, 0, 1, col] == 0.0


@pytest.mark.parametrize("op,beta", OPS)
def test_many_planes_reuse_the_scratch(op, beta):
    # planes of different ranges one after another on one thread: a plane through the
    # per-window path (wide range for SoftPool) between shift-path planes, and a NaN plane
    x = _x((3, 4, 6, 17), seed=11)
    x[0, 1] *= 40.0
    x[1, 2, 3, 5] = math.nan
    torch.set_num_threads(1)
    try:
        check(x, op, beta, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False)
    finally:
        torch.set_num_threads(2)


def test_float16_against_the_oracle():
    x = _x((1, 2, 5, 17), seed=2).half()
    for op, beta in OPS:
        geom = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False)
        y = forward(x, op, beta, *geom)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).half()
        got = native_grad(x, g, op, beta, *geom).double().numpy()
        want = oracle_grad(x.double().numpy(), g.double().numpy(), op, beta, *geom)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
