"""Slow, obvious references, written apart from the code under test.

Plain Python loops over output elements in float64 (NumPy only for storage), the ONNX
windowing rules re-derived from the ONNX/ONNX Runtime pooling definition, and Philox in
Python integers. Nothing here imports poolexport, so a shared bug cannot hide.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

M32 = 0xFFFFFFFF


# ------------------------------------------------------------------ windowing
def axis_out(n, k, s, d, b, e, ceil_mode, auto_pad):
    """(output size, begin pad) for one axis, per ONNX Runtime's pool_attributes.h."""
    span = d * (k - 1) + 1
    if auto_pad == "VALID":
        return (n - span) // s + 1, 0
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        o = math.ceil(n / s)
        total = max(0, (o - 1) * s + span - n)
        begin = total // 2 if auto_pad == "SAME_UPPER" else (total + 1) // 2
        return o, begin
    size = (n + b + e - span) / s + 1
    if not ceil_mode:
        return int(math.floor(size)), b
    o = int(math.ceil(size))
    if (o - 1) * s >= n + b:
        o -= 1
    return o, b


def ceil_drops(n, k, s, d, b, e):
    """Whether ceil_mode drops this axis' last window (it would start in the end padding)."""
    o = -(-(n + b + e - (d * (k - 1) + 1)) // s) + 1
    return (o - 1) * s >= n + b


def windows(shape, kernel, strides, pads, dilations, ceil_mode=False, auto_pad="NOTSET"):
    """Yield (output spatial index, [input spatial index of each valid window position])."""
    k = len(kernel)
    axes = [
        axis_out(shape[i], kernel[i], strides[i], dilations[i], pads[i], pads[k + i], ceil_mode, auto_pad)
        for i in range(k)
    ]
    out = [a[0] for a in axes]
    for o in itertools.product(*[range(v) for v in out]):
        positions = []
        for j in itertools.product(*[range(v) for v in kernel]):
            p = tuple(o[i] * strides[i] - axes[i][1] + j[i] * dilations[i] for i in range(k))
            if all(0 <= p[i] < shape[i] for i in range(k)):
                positions.append(p)
        yield o, positions


def out_shape(shape, kernel, strides, pads, dilations, ceil_mode=False, auto_pad="NOTSET"):
    k = len(kernel)
    return tuple(
        axis_out(shape[i], kernel[i], strides[i], dilations[i], pads[i], pads[k + i], ceil_mode, auto_pad)[0]
        for i in range(k)
    )


# ------------------------------------------------------------------ per-window math (float64)
def soft_window(vals, beta):
    if not vals:
        return 0.0
    z = [beta * v for v in vals]
    m = max(z)
    w = [math.exp(t - m) for t in z]
    return sum(wi * v for wi, v in zip(w, vals)) / sum(w)


def stochastic_expectation_window(vals):
    r = [max(v, 0.0) for v in vals]
    s1 = sum(r)
    return sum(v * v for v in r) / s1 if s1 > 0 else 0.0


def philox4x32_10(ctr, key):
    c = list(ctr)
    k0, k1 = key
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k1) & M32, p0 & M32]
    return c


def uniform(seed, element):
    s = seed & 0xFFFFFFFFFFFFFFFF
    r0 = philox4x32_10([element & M32, element >> 32, 0, 0], [s & M32, s >> 32])[0]
    return np.float32(r0 >> 8) * np.float32(2.0**-24)


def stochastic_sample_window(vals, seed, element):
    """The documented pick, with float32 sequential sums done by NumPy scalars."""
    r = [np.float32(max(v, 0.0)) for v in np.asarray(vals, dtype=np.float32)]
    total = np.float32(0)
    for v in r:
        total = np.float32(total + v)
    if not total > 0:
        return 0.0
    t = np.float32(uniform(seed, element) * total)
    cum = np.float32(0)
    for i, v in enumerate(r):
        cum = np.float32(cum + v)
        if cum > t:
            return float(vals[i])
    return float(vals[max(i for i, v in enumerate(r) if v > 0)])


def tie_windows(seed, count):
    """(x, picks): x (count, 2) float32 with row e = [u, 1 - u], u the uniform of element e.

    The sums are exact (total = 1, t = u), so cum_0 == t: the first cum > t is row e's
    second value; a pick by cum >= t would take the first.
    """
    u = np.array([uniform(seed, e) for e in range(count)], np.float32)
    assert np.all((u > 0) & (u != np.float32(0.5))), "pick another seed: a row without a tie"
    x = np.stack([u, np.float32(1) - u], axis=1)
    picks = np.array([stochastic_sample_window(list(x[e]), seed, e) for e in range(count)], np.float32)
    assert np.array_equal(picks, x[:, 1])
    return x, picks


def large_magnitude_input(shape, seed=0):
    """float64 values with |x| in [5e3, 3e4], both signs: exp(x) overflows float32 (and
    float16) unless a kernel subtracts the window maximum first."""
    g = np.random.default_rng(seed)
    return np.where(g.random(shape) < 0.5, -1.0, 1.0) * g.uniform(5e3, 3e4, shape)


# ------------------------------------------------------------------ whole ops
def pool(x, fn, kernel, strides=None, pads=None, dilations=None, ceil_mode=False, auto_pad="NOTSET"):
    """Apply ``fn(values, element_index)`` to every window of x (N, C, *spatial)."""
    x = np.asarray(x, dtype=np.float64)
    k = len(kernel)
    strides = strides or [1] * k
    pads = pads or [0] * (2 * k)
    dilations = dilations or [1] * k
    n, c, *spatial = x.shape
    oshape = out_shape(spatial, kernel, strides, pads, dilations, ceil_mode, auto_pad)
    y = np.zeros((n, c, *oshape))
    wins = list(windows(spatial, kernel, strides, pads, dilations, ceil_mode, auto_pad))
    element = 0
    for b in range(n):
        for ch in range(c):
            for o, positions in wins:
                y[(b, ch, *o)] = fn([x[(b, ch, *p)] for p in positions], element)
                element += 1
    return y


def reduce(x, fn, axes=None, keepdims=True):
    """Apply ``fn(values, element_index)`` over ``axes`` (row-major within the window)."""
    x = np.asarray(x, dtype=np.float64)
    r = x.ndim
    axes = sorted(a % r for a in (axes if axes else range(r)))
    kept = [i for i in range(r) if i not in axes]
    out = np.zeros([x.shape[i] for i in kept])
    for element, idx in enumerate(itertools.product(*[range(x.shape[i]) for i in kept])):
        vals = []
        for red in itertools.product(*[range(x.shape[i]) for i in axes]):
            full = [0] * r
            for i, v in zip(kept, idx):
                full[i] = v
            for i, v in zip(axes, red):
                full[i] = v
            vals.append(x[tuple(full)])
        out[idx] = fn(vals, element)
    if keepdims:
        out = out.reshape([1 if i in axes else x.shape[i] for i in range(r)])
    return out
