"""The TensorRT plugins' shape, attribute and argument logic, without TensorRT.

References: poolexport/_window.py (the windowing definition), the torch custom ops'
output shapes, NumPy reshapes for the reduction layout, and NumPy's float32 bit view.
The symbolic path runs on a stand-in with exactly ShapeExpr's operator set (no reflected
operators, cdiv/max/min as functions), so a formula that TensorRT could not evaluate
fails here.
"""
import random

import numpy as np
import pytest
import torch

from poolexport import _window
from poolexport._philox import seed_key
from poolexport.ops import reduce_soft_pool, soft_pool, stochastic_pool
from poolexport.tensorrt import abi, shapes


class Sym:
    """Stand-in for tensorrt.plugin.ShapeExpr: + - * // < with the expression on the left."""

    def __init__(self, v):
        self.v = int(v)

    @staticmethod
    def _val(o):
        if isinstance(o, Sym):
            return o.v
        if isinstance(o, int):
            return o
        raise TypeError(f"unsupported operand {o!r}")

    def __add__(self, o):
        return Sym(self.v + self._val(o))

    def __sub__(self, o):
        return Sym(self.v - self._val(o))

    def __mul__(self, o):
        return Sym(self.v * self._val(o))

    def __floordiv__(self, o):
        return Sym(self.v // self._val(o))

    def __lt__(self, o):
        return Sym(int(self.v < self._val(o)))

    def __bool__(self):
        raise RuntimeError("symbolic value used in a Python branch")

    __radd__ = __rsub__ = __rmul__ = __rfloordiv__ = None


def _fn(f):
    def g(a, b):
        if isinstance(a, int) and isinstance(b, int):
            raise ValueError("Both arguments cannot be 'int's")  # as tensorrt.plugin does
        return Sym(f(Sym._val(a), Sym._val(b)))
    return g


SYM_OPS = shapes.SimpleNamespace(cdiv=_fn(lambda a, b: -(-a // b)), max=_fn(max), min=_fn(min),
                                 lt=lambda a, b: a < b, symbolic=True)


def _val(x):
    return x.v if isinstance(x, Sym) else x


def _random_window(rng, k):
    kernel = [rng.randint(1, 4) for _ in range(k)]
    strides = [rng.randint(1, 3) for _ in range(k)]
    dil = [rng.randint(1, 2) for _ in range(k)]
    pads = [rng.randint(0, kk - 1) for kk in kernel] * 2
    pads = [min(p, rng.randint(0, 2)) for p in pads]
    auto_pad = rng.choice(shapes.AUTO_PADS)
    ceil_mode = rng.randint(0, 1)
    spatial = [rng.randint(1, 9) for _ in range(k)]
    return kernel, strides, pads, dil, ceil_mode, auto_pad, spatial


def _cases(n, seed=0):
    rng = random.Random(seed)
    return [_random_window(rng, rng.randint(1, 3)) for _ in range(n)]


@pytest.mark.parametrize("case", _cases(400))
def test_window_output_matches_window_definition(case):
    kernel, strides, pads, dil, ceil_mode, auto_pad, spatial = case
    k = len(kernel)
    spec = _window.make_window_spec("SoftPool", k, kernel, strides, pads, dil, bool(ceil_mode), auto_pad)
    attrs = shapes.window_attrs("SoftPool", k + 2, kernel, strides, pads, dil, ceil_mode, auto_pad)
    try:
        expected = spec.resolve(spatial)
    except ValueError:
        with pytest.raises(ValueError, match="SoftPool: kernel_shape"):
            shapes.window_output(attrs, spatial)
        return
    out, begin = shapes.window_output(attrs, spatial)
    assert (tuple(out), tuple(begin)) == expected
    # the same formulas on symbolic sizes (what TensorRT evaluates at build time)
    sym_out, sym_begin = shapes.window_output(attrs, [Sym(s) for s in spatial], SYM_OPS)
    assert [_val(o) for o in sym_out] == list(expected[0])
    assert [_val(b) for b in sym_begin] == list(expected[1])


@pytest.mark.parametrize("case", _cases(40, seed=1))
def test_windowed_output_shape_matches_torch_ops(case):
    kernel, strides, pads, dil, ceil_mode, auto_pad, spatial = case
    k = len(kernel)
    x = torch.rand(2, 3, *spatial)
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dil, ceil_mode=ceil_mode,
                 auto_pad=auto_pad)
    try:
        y = soft_pool(x, kernel, strides, pads, dil, bool(ceil_mode), auto_pad, 1.0)
    except ValueError:
        with pytest.raises(ValueError):
            shapes.kernel_args("SoftPool", list(x.shape), attrs)
        return
    args, out_shape = shapes.kernel_args("SoftPool", list(x.shape), attrs)
    assert out_shape == list(y.shape)
    assert len(args) == len(abi.kernel_params("SoftPool")) - 2
    named = dict(zip(abi.kernel_params("SoftPool")[1:-1], args))
    lead = 3 - k
    assert [named[n] for n in ("in_d", "in_h", "in_w")] == [1] * lead + spatial
    assert [named[n] for n in ("out_d", "out_h", "out_w")] == [1] * lead + list(y.shape[2:])
    assert [named[n] for n in ("k_d", "k_h", "k_w")] == [1] * lead + kernel
    sargs, sshape = shapes.kernel_args("StochasticPool", [Sym(s) for s in x.shape],
                                       dict(attrs, mode="sample", seed=5), SYM_OPS)
    assert [_val(s) for s in sshape] == list(y.shape)
    z = stochastic_pool(x, kernel, strides, pads, dil, bool(ceil_mode), auto_pad, "sample", 5)
    assert list(z.shape) == list(y.shape)


def _reduce_cases(n, seed=2):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rank = rng.randint(1, 8)
        shape = [rng.randint(1, 3) for _ in range(rank)]
        axes = rng.sample(range(-rank, rank), rng.randint(0, rank)) if rng.random() < 0.9 else []
        axes = list({a % rank: a for a in axes}.values())  # no duplicates modulo rank
        out.append((shape, axes, rng.randint(0, 1)))
    return out


@pytest.mark.parametrize("case", _reduce_cases(150))
def test_reduce_layout_matches_definition_and_numpy(case):
    shape, axes, keepdims = case
    red, perm, kept_shape, out_shape = _window.reduce_layout(tuple(shape), axes, bool(keepdims), "ReduceSoftPool")
    assert shapes.reduce_axes("ReduceSoftPool", len(shape), axes) == red
    try:
        args, got_shape = shapes.kernel_args("ReduceSoftPool", shape, dict(axes=axes, keepdims=keepdims, beta=1.0))
    except ValueError as e:
        assert "alternate too often" in str(e) and len(shape) > 6
        return
    assert tuple(got_shape) == tuple(out_shape)
    rank, dims, mask = args[0], args[1:7], args[7]
    assert rank == len(shape)
    # the kernel's view (padded 6-D shape, reduced axes by mask) must give the same rows
    # (kept elements row-major) and the same window order as the definition's permutation
    x = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    m = int(np.prod(kept_shape))
    expected = x.transpose(perm).reshape(m, -1)
    x6 = x.reshape(dims)
    red6 = [i for i in range(6) if mask >> i & 1]
    kept6 = [i for i in range(6) if not mask >> i & 1]
    got = x6.transpose(kept6 + red6).reshape(m, -1)
    np.testing.assert_array_equal(got, expected)
    # symbolic sizes give the same arguments
    sargs, sshape = shapes.kernel_args("ReduceSoftPool", [Sym(s) for s in shape],
                                       dict(axes=axes, keepdims=keepdims, beta=1.0), SYM_OPS)
    assert [_val(a) for a in sargs] == args
    assert [_val(s) for s in sshape] == list(out_shape)


@pytest.mark.parametrize("case", _reduce_cases(20, seed=3))
def test_reduce_output_shape_matches_torch_op(case):
    shape, axes, keepdims = case
    x = torch.rand(*shape)
    y = reduce_soft_pool(x, axes, bool(keepdims), 1.0)
    _, out_shape = shapes.kernel_args("ReduceSoftPool", shape, dict(axes=axes, keepdims=keepdims, beta=1.0)) \
        if len(shape) <= 6 else (None, shapes.reduce_output_shape(shape, shapes.reduce_axes("R", len(shape), axes),
                                                                  bool(keepdims)))
    assert list(out_shape) == list(y.shape)


@pytest.mark.parametrize("beta", [0.0, 1.0, -2.5, 1e-3, 7.25, 3.4e38])
def test_beta_bits_are_float32_bit_pattern(beta):
    (bits,) = shapes.soft_args("SoftPool", beta)
    assert bits == int(np.array([beta], dtype=np.float32).view(np.int32)[0])


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**31, 2**32 + 7, -1, -(2**63), 2**63 - 1, 0x123456789ABCDEF])
def test_seed_words_are_twos_complement_halves(seed):
    sample, lo, hi = shapes.stochastic_args("StochasticPool", "sample", seed)
    k0, k1 = seed_key(seed)
    assert sample == 1
    assert np.array([lo, hi], dtype=np.int32).view(np.uint32).tolist() == [k0, k1]
    assert shapes.stochastic_args("StochasticPool", "expectation", seed)[0] == 0


@pytest.mark.parametrize(
    "op,shape,attrs,match",
    [
        ("SoftPool", [1, 2, 5, 5], dict(kernel_shape=[2]), "SoftPool: kernel_shape"),
        ("SoftPool", [1, 2], dict(kernel_shape=[]), "SoftPool: X"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[0]), "SoftPool: kernel_shape"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[2], strides=[0]), "SoftPool: strides"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[2], pads=[1]), "SoftPool: pads"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[2], pads=[-1, 0]), "SoftPool: pads"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[2], dilations=[0]), "SoftPool: dilations"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[2], auto_pad="SAME"), "SoftPool: auto_pad"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[2], ceil_mode=2), "SoftPool: ceil_mode"),
        ("SoftPool", [1, 2, 5], dict(kernel_shape=[2], beta="x"), "SoftPool: beta"),
        ("StochasticPool", [1, 2, 5], dict(kernel_shape=[2], mode="max"), "StochasticPool: mode"),
        ("StochasticPool", [1, 2, 5], dict(kernel_shape=[2], seed=2**64), "StochasticPool: seed"),
        ("ReduceSoftPool", [2, 3], dict(axes=[2]), "ReduceSoftPool: axes"),
        ("ReduceSoftPool", [2, 3], dict(axes=[1, -1]), "ReduceSoftPool: axes"),
        ("ReduceSoftPool", [2, 3], dict(keepdims=3), "ReduceSoftPool: keepdims"),
        ("ReduceStochasticPool", [1] * 7, dict(axes=[0, 2, 4, 6]), "ReduceStochasticPool: axes"),
        ("MaxPool", [1, 2, 5], {}, "MaxPool: not a poolexport op"),
    ],
)
def test_invalid_attributes_raise_naming_op_and_argument(op, shape, attrs, match):
    with pytest.raises(ValueError, match=match):
        shapes.kernel_args(op, shape, attrs)


@pytest.mark.parametrize("total,grid", [(0, 1), (1, 1), (256, 1), (257, 2), (256 * 65535, 65535), (10**9, 65535)])
def test_launch_grid_rule(total, grid):
    assert abi.launch_grid(total) == grid
    assert _val(abi.launch_grid(Sym(total), SYM_OPS.cdiv, SYM_OPS.min, SYM_OPS.max)) == grid


def test_numel_keeps_symbolic_factor_on_the_left():
    assert _val(shapes.numel([1, Sym(3), 2, Sym(5)])) == 30
    assert shapes.numel([]) == 1
    assert shapes.numel([2, 3]) == 6


@pytest.mark.parametrize("op,shape,attrs,total", [
    ("SoftPool", [2, 3, 8, 8], dict(kernel_shape=[2, 2], strides=[2, 2]), 2 * 3 * 4 * 4),  # a thread per output
    ("ReduceSoftPool", [2, 3, 5, 6], dict(axes=[1]), 2 * 5 * 6),  # innermost axis kept: a thread per output
    ("ReduceSoftPool", [2, 3, 4, 6], dict(axes=[2, 3]), 2 * 3 * 1),  # window 24 < 32
    ("ReduceSoftPool", [2, 3, 8, 6], dict(axes=[2, 3], keepdims=0), 2 * 3 * 32),  # window 48: a warp each
    ("ReduceStochasticPool", [2, 64, 112, 112], dict(axes=[2, 3]), 2 * 64 * 256),  # global pool: a block each
    ("ReduceStochasticPool", [2, 64, 112, 112], dict(axes=[2, 3], mode="sample"), 2 * 64),  # sequential picks
    ("ReduceStochasticPool", [4, 2000], dict(axes=[0, 1], keepdims=0), 256),  # one output
])
def test_launch_total_lanes_per_output(op, shape, attrs, total):
    """kernel_abi.h's rule: 32 lanes per output for windows of 32..1023 over the innermost
    axis, 256 from 1024, else (or in sample mode) one thread per output."""
    assert shapes.launch_total(op, shape, attrs) == total
    assert _val(shapes.launch_total(op, [Sym(s) for s in shape], attrs, SYM_OPS)) == total
