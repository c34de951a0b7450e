"""Independent oracles for tests/test_boundaries.py, written from the specifications (the
ONNX pooling rules, DOMAIN.md's SoftPool and stochastic pooling definitions, the pick rule
of poolexport/_philox.py and custom_ops/include/poolexport/stochastic_pool.h), not from
any of the project's implementations: NumPy only, float64 for values (with the float32
operations the spec fixes, for the sampled pick, done in float32 on purpose).

Windows are index arrays: ``windows(spatial, attrs)`` gives ``(out_shape, idx)`` where
``idx`` is (outputs, K) flat indices into one (n, c) plane, -1 for a padded position.
"""
from __future__ import annotations

import itertools

import numpy as np

EPS32 = 2.0 ** -24


# ---------------------------------------------------------------- ONNX windows
def axis_windows(n: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool) -> list[list[int]]:
    """Each output's input positions along one axis (-1 = padding), ONNX AveragePool rules
    (auto_pad NOTSET): floor or ceil output size, a ceil window starting in the end
    padding dropped."""
    span = (k - 1) * d + 1
    room = n + pb + pe - span
    assert room >= 0
    if ceil_mode:
        out = -(-room // s) + 1
        if (out - 1) * s >= n + pb:
            out -= 1
    else:
        out = room // s + 1
    res = []
    for o in range(out):
        start = o * s - pb
        res.append([i if 0 <= i < n else -1 for i in (start + j * d for j in range(k))])
    return res


def windows(spatial, attrs):
    """(out_shape, idx): idx (prod(out), prod(kernel)) flat plane indices, -1 = padding,
    in row-major kernel order (window order of the spec)."""
    rank = len(spatial)
    k = attrs["kernel_shape"]
    s = attrs.get("strides") or [1] * rank
    d = attrs.get("dilations") or [1] * rank
    p = attrs.get("pads") or [0] * (2 * rank)
    per_axis = [axis_windows(spatial[i], k[i], s[i], d[i], p[i], p[rank + i], bool(attrs.get("ceil_mode", 0)))
                for i in range(rank)]
    out_shape = tuple(len(a) for a in per_axis)
    strides = [int(np.prod(spatial[i + 1:])) for i in range(rank)]
    rows = []
    for o in itertools.product(*[range(len(a)) for a in per_axis]):
        taps = []
        for pos in itertools.product(*[per_axis[i][o[i]] for i in range(rank)]):
            taps.append(-1 if min(pos) < 0 else sum(q * st for q, st in zip(pos, strides)))
        rows.append(taps)
    return out_shape, np.asarray(rows, dtype=np.int64).reshape(len(rows), int(np.prod(k)))


def gather(x, idx):
    """x (N, C, *spatial) -> (N, C, O, K) float64 window values (NaN at padding) and the
    valid mask (O, K)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1).astype(np.float64)
    valid = idx >= 0
    vals = flat[:, :, np.where(valid, idx, 0)]
    return np.where(valid, vals, np.nan), valid


# ---------------------------------------------------------------- SoftPool
def soft_forward(x, attrs, beta, exp_arg_min=None):
    """SoftPool in float64: y = sum softmax(beta a) a over each window, the window maximum
    of beta*a subtracted. ``exp_arg_min``: the kernels' documented clamp of the exp
    argument (common.h fast_exp; None = the exact exp).

    Returns dict: y (N, C, *out), nonfinite (windows holding inf/NaN; their y is NaN here),
    bound (the float32 error scale of each finite window, see ``cond``), and the pieces
    the gradient oracle needs."""
    out_shape, idx = windows(x.shape[2:], attrs)
    vals, valid = gather(x, idx)
    b = float(np.float32(beta))
    nonfinite = np.any(valid & ~np.isfinite(np.where(valid, vals, 0.0)), axis=-1)
    nan_win = np.any(valid & np.isnan(np.where(valid, vals, 0.0)), axis=-1)
    a = np.where(valid & np.isfinite(vals), vals, 0.0)
    z = np.where(valid, b * a, -np.inf)
    m = np.max(z, axis=-1, keepdims=True)
    empty = ~np.any(valid, axis=-1)
    m = np.where(np.isfinite(m), m, 0.0)
    arg = z - m
    if exp_arg_min is not None:
        arg = np.maximum(arg, exp_arg_min)
    e = np.where(valid, np.exp(arg), 0.0)
    s = e.sum(-1, keepdims=True)
    p = e / np.where(s > 0, s, 1.0)
    y = (p * a).sum(-1)
    y = np.where(empty, 0.0, y)
    K = idx.shape[1]
    # float32 error scale of y: the sums (K roundings of terms up to p|a|) and the weights
    # (argument beta*a - shift rounded at |beta a| + |shift| + 64 (a block's shift lies up
    # to 60 above the window's), exp within a few ulp)
    zabs = np.abs(np.where(valid, z, 0.0))
    cond = (K + 4) * (p * np.abs(a)).sum(-1) + (p * np.abs(a - y[..., None]) * (zabs + np.abs(m) + 64 + K)).sum(-1)
    y = np.where(nonfinite, np.nan, y)
    amax = np.max(np.abs(a), axis=-1)
    n, c = x.shape[:2]
    return dict(y=y.reshape(n, c, *out_shape), nonfinite=nonfinite.reshape(n, c, *out_shape),
                nan=nan_win.reshape(n, c, *out_shape),
                cond=cond.reshape(n, c, *out_shape), amax=amax.reshape(n, c, *out_shape), p=p, a=a, z=z, m=m,
                idx=idx, valid=valid, yflat=y, condflat=cond, out_shape=out_shape)


def soft_backward(x, attrs, beta, g, exp_arg_min=None):
    """dL/dx = sum over windows of g_w p_wj (1 + beta (a_j - y_w)), float64, and its error
    scale per input element (all inputs finite)."""
    f = soft_forward(x, attrs, beta, exp_arg_min)
    b = float(np.float32(beta))
    n, c = x.shape[:2]
    gw = g.reshape(n, c, -1, 1).astype(np.float64)
    p, a, idx, valid = f["p"], f["a"], f["idx"], f["valid"]
    y = f["yflat"][..., None]
    K = idx.shape[1]
    term = gw * p * (1.0 + b * (a - y))
    zabs = np.abs(np.where(valid, f["z"], 0.0))
    err = np.abs(gw) * p * (np.abs(1.0 + b * (a - y)) * (zabs + np.abs(f["m"]) + 64 + 2 * K)
                            + abs(b) * (f["condflat"][..., None] + np.abs(a) + np.abs(y)))
    plane = int(np.prod(x.shape[2:]))
    grad = np.zeros((n, c, plane))
    scale = np.zeros((n, c, plane))
    mag = np.zeros((n, c, plane))
    flat_idx = np.where(valid, idx, 0)
    for kk in range(K):
        col = valid[:, kk]
        for i in range(n):
            for j in range(c):
                np.add.at(grad[i, j], flat_idx[col, kk], term[i, j, col, kk])
                np.add.at(scale[i, j], flat_idx[col, kk], err[i, j, col, kk])
                np.add.at(mag[i, j], flat_idx[col, kk], np.abs(term[i, j, col, kk]))
    scale += (K + 4) * mag  # the scatter's additions
    return grad.reshape(x.shape), scale.reshape(x.shape), f


# ---------------------------------------------------------------- stochastic pooling
def expectation_forward(x, attrs):
    """sum(r^2) / sum(r), r = max(a, 0); 0 where sum(r) is 0; float64, finite inputs."""
    out_shape, idx = windows(x.shape[2:], attrs)
    vals, valid = gather(x, idx)
    r = np.where(valid, np.maximum(np.nan_to_num(vals), 0.0), 0.0)
    s1, s2 = r.sum(-1), (r * r).sum(-1)
    y = np.where(s1 > 0, s2 / np.where(s1 > 0, s1, 1.0), 0.0)
    n, c = x.shape[:2]
    return y.reshape(n, c, *out_shape), (idx.shape[1] + 4) * y.reshape(n, c, *out_shape)


_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_U32 = np.uint64(0xFFFFFFFF)


def philox_word0(e: np.ndarray, seed: int) -> np.ndarray:
    """Philox4x32-10 first output word for counters (e lo, e hi, 0, 0), key (seed lo, hi)."""
    e = np.asarray(e, dtype=np.uint64)
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = s & 0xFFFFFFFF, s >> 32
    c0, c1 = e & _U32, e >> np.uint64(32)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0 = c0 * np.uint64(_M0)
        p1 = c2 * np.uint64(_M1)
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _U32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _U32)
    return c0


def uniforms(count: int, seed: int) -> np.ndarray:
    """u_e = (word0 >> 8) * 2^-24 as float32, for e = 0 .. count-1."""
    return ((philox_word0(np.arange(count), seed) >> np.uint64(8)).astype(np.float64) * 2.0 ** -24).astype(np.float32)


def sample_picks(x, attrs, seed):
    """The sampled pick of every window, from the spec: r_i = max(a_i, 0) in float32, window
    order; cum_i sequential float32 prefix sums; total = cum_last; t = float32(u * total);
    the first i with cum_i > t, else the last i with r_i > 0; total == 0: index -1, value 0.
    Returns (values float32 (N, C, *out), index (N*C*O,) into the window, idx)."""
    out_shape, idx = windows(x.shape[2:], attrs)
    n, c = x.shape[:2]
    flat = x.reshape(n * c, -1).astype(np.float32)
    O, K = idx.shape
    valid = idx >= 0
    vals = flat[:, np.where(valid, idx, 0)]  # (NC, O, K)
    vals = np.where(valid, vals, np.float32(0)).reshape(n * c * O, K)
    r = np.where(vals > 0, vals, np.float32(0)).astype(np.float32)
    cums = np.empty_like(r)
    cum = np.zeros(r.shape[0], np.float32)
    for j in range(K):
        cum = (cum + r[:, j]).astype(np.float32)
        cums[:, j] = cum
    total = cum
    u = uniforms(r.shape[0], seed)
    with np.errstate(invalid="ignore"):
        t = (u * total).astype(np.float32)
        above = cums > t[:, None]
    first = np.argmax(above, axis=1)
    pos = r > 0
    last = K - 1 - np.argmax(pos[:, ::-1], axis=1)
    pick = np.where(above.any(1), first, last)
    pick = np.where(total > 0, pick, -1)
    value = np.where(pick >= 0, vals[np.arange(len(pick)), np.maximum(pick, 0)], np.float32(0)).astype(np.float32)
    return value.reshape(n, c, *out_shape), pick, idx


def sample_grad(x, attrs, seed, g):
    """dL/dx of the sampled pick: g_w added at the picked element of each window."""
    _, pick, idx = sample_picks(x, attrs, seed)
    n, c = x.shape[:2]
    O = idx.shape[0]
    grad = np.zeros((n * c, int(np.prod(x.shape[2:]))))
    gw = g.reshape(n * c, O).astype(np.float64)
    pk = pick.reshape(n * c, O)
    for pl in range(n * c):
        for o in range(O):
            if pk[pl, o] >= 0:
                grad[pl, idx[o, pk[pl, o]]] += gw[pl, o]
    return grad.reshape(x.shape)
