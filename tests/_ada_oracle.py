"""Float64 oracles for the adaPool family (Stergiou and Poppe, "AdaPool: Exponential
Adaptive Pooling for Information-Retaining Downsampling", IEEE TIP 2022), written from the
definitions, NumPy only, and a re-typed copy of the adaPool repository's own per-window
math (alexandrosstergiou/adaPool, pytorch/CUDA/adapool_cuda_kernel.cu) to compare with.

Definitions (one window a_1..a_n of valid positions, m = mean(a)):

* DSC(a, m) = 2 |a m| / (a^2 + m^2), and DSC(0, 0) = 1 (identical values);
* eDSCW: w_i = exp(DSC(a_i, m)) / sum_j exp(DSC(a_j, m)), y = sum_i w_i a_i;
* IDW: w_i = (1 / |a_i - m|) / sum_j (1 / |a_j - m|), y = sum_i w_i a_i; where some
  a_i equals m the limit is taken: y = m;
* eM: SoftPool with beta = 1 (tests/_oracle.soft_forward);
* adaPool: y = b * eDSCW + (1 - b) * eM, b the learned mask broadcast over the output;
* an all-padding window outputs 0.

The gradients are the exact derivatives (the weights' derivatives included), by the
closed forms below, not by differentiating code.
"""
from __future__ import annotations

import numpy as np

from _oracle import gather, soft_backward, soft_forward, windows


def _windows(x, attrs):
    out_shape, idx = windows(x.shape[2:], attrs)
    vals, valid = gather(x, idx)
    return out_shape, idx, np.where(valid, vals, 0.0), valid


def _mean(a, valid):
    n = valid.sum(-1, keepdims=True)
    return a.sum(-1, keepdims=True) / np.maximum(n, 1), n


def dsc(a, m):
    """2|a m| / (a^2 + m^2), 1 at a = m = 0; evaluated on a / q, m / q (q = max(|a|, |m|)),
    which is the same number and never overflows."""
    q = np.maximum(np.abs(a), np.abs(m))
    safe = np.where(q > 0, q, 1.0)
    u, v = a / safe, m / safe
    return np.where(q > 0, 2.0 * np.abs(u * v) / (u * u + v * v), 1.0)


def dsc_partials(a, m):
    """(dDSC/da, dDSC/dm); 0 where a * m = 0 (the |.| kink: its mean subgradient)."""
    q = np.maximum(np.abs(a), np.abs(m))
    safe = np.where(q > 0, q, 1.0)
    u, v = a / safe, m / safe
    s = np.sign(u) * np.sign(v)
    den = (u * u + v * v) ** 2
    den = np.where(den > 0, den, 1.0)
    da = s * 2.0 * v * (v * v - u * u) / den / safe
    dm = s * 2.0 * u * (u * u - v * v) / den / safe
    return da, dm


def _scatter(x, idx, valid, term):
    n, c = x.shape[:2]
    plane = int(np.prod(x.shape[2:]))
    grad = np.zeros((n, c, plane))
    flat = np.where(valid, idx, 0)
    for kk in range(idx.shape[1]):
        col = valid[:, kk]
        for i in range(n):
            for j in range(c):
                np.add.at(grad[i, j], flat[col, kk], term[i, j, col, kk])
    return grad.reshape(x.shape)


# ---------------------------------------------------------------- eDSCW
def edscw_forward(x, attrs, with_parts=False):
    out_shape, idx, a, valid = _windows(x, attrs)
    m, n = _mean(a, valid)
    d = dsc(a, m)
    e = np.where(valid, np.exp(d), 0.0)
    s = e.sum(-1, keepdims=True)
    w = e / np.where(s > 0, s, 1.0)
    y = (w * a).sum(-1)
    y = y.reshape(x.shape[0], x.shape[1], *out_shape)
    if with_parts:
        return y, dict(idx=idx, a=a, valid=valid, m=m, n=n, w=w, yflat=(w * a).sum(-1, keepdims=True))
    return y


def edscw_backward(x, attrs, g):
    """dy/da_j = w_j (1 + (a_j - y) dDSC/da(a_j, m)) + (1/n) sum_i w_i (a_i - y) dDSC/dm(a_i, m)."""
    _, p = edscw_forward(x, attrs, with_parts=True)
    a, valid, m, n, w, y = p["a"], p["valid"], p["m"], p["n"], p["w"], p["yflat"]
    da, dm = dsc_partials(a, m)
    t = np.where(valid, w * (a - y) * dm, 0.0).sum(-1, keepdims=True) / np.maximum(n, 1)
    gw = g.reshape(x.shape[0], x.shape[1], -1, 1).astype(np.float64)
    term = np.where(valid, gw * (w * (1.0 + (a - y) * da) + t), 0.0)
    return _scatter(x, p["idx"], valid, term)


# ---------------------------------------------------------------- IDW
def idw_forward(x, attrs, with_parts=False):
    out_shape, idx, a, valid = _windows(x, attrs)
    m, n = _mean(a, valid)
    dist = np.where(valid, np.abs(a - m), np.inf)
    hit = (dist == 0).any(-1, keepdims=True)  # some value equals the mean: the limit y = m
    inv = np.where(valid & (dist > 0), 1.0 / np.where(dist > 0, dist, 1.0), 0.0)
    s = inv.sum(-1, keepdims=True)
    w = inv / np.where(s > 0, s, 1.0)
    y = np.where(hit, m, (w * a).sum(-1, keepdims=True))
    y = np.where(n > 0, y, 0.0)
    yflat = y
    y = y[..., 0].reshape(x.shape[0], x.shape[1], *out_shape)
    if with_parts:
        return y, dict(idx=idx, a=a, valid=valid, m=m, n=n, w=w, hit=hit, yflat=yflat)
    return y


def idw_backward(x, attrs, g):
    """dy/da_j = w_j (1 - (a_j - y) / (a_j - m)) + (1/n) sum_i w_i (a_i - y) / (a_i - m);
    where some a_i equals m (y = m, not differentiable) the gradient of the mean, 1/n."""
    _, p = idw_forward(x, attrs, with_parts=True)
    a, valid, m, n, w, y, hit = p["a"], p["valid"], p["m"], p["n"], p["w"], p["yflat"], p["hit"]
    diff = a - m
    r = np.where(valid & (diff != 0), (a - y) / np.where(diff != 0, diff, 1.0), 0.0)
    t = (w * r).sum(-1, keepdims=True) / np.maximum(n, 1)
    gw = g.reshape(x.shape[0], x.shape[1], -1, 1).astype(np.float64)
    local = np.where(hit, 1.0 / np.maximum(n, 1), w * (1.0 - r) + t)
    term = np.where(valid, gw * local, 0.0)
    return _scatter(x, p["idx"], valid, term)


# ---------------------------------------------------------------- eM and adaPool
def em_forward(x, attrs):
    return soft_forward(x, attrs, 1.0)["y"]


def em_backward(x, attrs, g):
    return soft_backward(x, attrs, 1.0, g)[0]


def ada_forward(x, beta, attrs):
    e, s = edscw_forward(x, attrs), em_forward(x, attrs)
    b = np.broadcast_to(np.asarray(beta, np.float64), e.shape)
    return b * e + (1.0 - b) * s


def ada_backward(x, beta, attrs, g):
    """(dL/dx, dL/dbeta): beta * eDSCW' + (1 - beta) * eM', and (eDSCW - eM) * g summed
    over beta's broadcast axes."""
    e, s = edscw_forward(x, attrs), em_forward(x, attrs)
    beta = np.asarray(beta, np.float64)
    b = np.broadcast_to(beta, e.shape)
    g = np.asarray(g, np.float64)
    dx = edscw_backward(x, attrs, b * g) + em_backward(x, attrs, (1.0 - b) * g)
    db = (e - s) * g
    lead = db.ndim - beta.ndim
    db = db.sum(axis=tuple(range(lead))) if lead else db
    axes = tuple(i for i, k in enumerate(beta.shape) if k == 1 and db.shape[i] != 1)
    return dx, db.sum(axis=axes, keepdims=True) if axes else db


# ------------------------------------------------- the repository's formula, re-typed
# adapool_cuda_kernel.cu (Ada_EDSCW_Pool*dForward, IDW_Pool*dForward, Ada_EM_Pool*dForward)
# per window: no padding, every position valid; its clamp(n, lower, upper) =
# max(lower, min(|n|, upper)) * sgn(n) with CUDA's fmin/fmax (NaN loses) and sgn(NaN) = 0;
# the Python wrappers (pytorch/adaPool/idea.py) then apply torch.nan_to_num.
def _repo_clamp(v, lower, upper):
    sgn = (v > 0).astype(v.dtype) - (v < 0).astype(v.dtype)
    return np.fmax(lower, np.fmin(np.abs(v), upper)) * sgn


def _nan_to_num(v):
    info = np.finfo(v.dtype)
    return np.nan_to_num(v, nan=0.0, posinf=info.max, neginf=info.min)


def repo_window(kind, window, dtype=np.float64):
    """One window's output by the repository's arithmetic in ``dtype`` (kind: 'edscw',
    'idw', 'em'), accumulation order and clamps as in the kernel, then nan_to_num."""
    a = np.asarray(window, dtype)
    info = np.finfo(dtype)
    upper, lower, zero = dtype(info.max), dtype(info.tiny), dtype(0)
    with np.errstate(all="ignore"):
        act_sum = dtype(0)
        for v in a:
            act_sum = dtype(act_sum + v)
        avg = dtype(act_sum / dtype(len(a)))
        if kind == "edscw":
            wt = [np.exp(dtype(2) * np.abs(v * avg) / (v ** 2 + avg ** 2)) for v in a]
        elif kind == "idw":
            wt = [dtype(1) / np.sqrt((v - avg) ** 2) for v in a]
        else:
            wt = [np.exp(v) for v in a]
        s = dtype(0)
        for t in wt:
            s = dtype(s + t)
        s = _repo_clamp(np.asarray(s, dtype), lower, upper)
        out = np.asarray(0, dtype)
        for v, t in zip(a, wt):
            out = _repo_clamp(np.asarray(out + v * (t / s), dtype), zero, upper)
    return _nan_to_num(np.asarray(out, dtype))[()]


def repo_pool(kind, x, kernel, dtype=np.float64):
    """The repository's op (stride = kernel, no padding) over (N, C, *spatial)."""
    attrs = dict(kernel_shape=list(kernel), strides=list(kernel))
    out_shape, idx, a, valid = _windows(x, attrs)
    n, c = x.shape[:2]
    y = np.empty((n, c, idx.shape[0]), dtype)
    for i in range(n):
        for j in range(c):
            for o in range(idx.shape[0]):
                y[i, j, o] = repo_window(kind, a[i, j, o][valid[o]], dtype)
    return y.reshape(n, c, *out_shape)


def repo_ada(x, beta, kernel, dtype=np.float64):
    """idea.py adapool*d(native=False): beta * eDSCW + (1 - beta) * eM (beta unclamped),
    then nan_to_num."""
    b = np.asarray(beta, dtype)
    with np.errstate(all="ignore"):
        return _nan_to_num(b * repo_pool("edscw", x, kernel, dtype) + (1 - b) * repo_pool("em", x, kernel, dtype))


def repo_window_grad(kind, window):
    """The repository's backward kernels (Ada_EDSCW/EM/IDW_Pool*dBackward) for one window:
    d out / d a_j = w_j, the weights held constant (their derivative is left out)."""
    a = np.asarray(window, np.float64)
    avg = a.mean()
    if kind == "edscw":
        e = np.exp(dsc(a, avg))
    elif kind == "em":
        e = np.exp(a - a.max())
    else:
        e = 1.0 / np.abs(a - avg)
    return e / e.sum()


def idw_condition(x, attrs):
    """Per output: max |a| / min |a_i - m| over the window (inf where some a_i = m): how
    much a float32 rounding of the mean can move IDW's weights."""
    _, p = idw_forward(x, attrs, with_parts=True)
    a, valid, m = p["a"], p["valid"], p["m"]
    dist = np.where(valid, np.abs(a - m), np.inf).min(-1)
    amax = np.where(valid, np.abs(a), 0.0).max(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(amax > 0, amax / dist, 0.0)
    return cond.reshape(x.shape[0], x.shape[1], -1)
