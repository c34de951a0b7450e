"""Float64 oracle for adaUnpool (Stergiou and Poppe, IEEE TIP 2022; repository
alexandrosstergiou/adaPool, ``pytorch/adaPool/idea.py: adaunpool``), NumPy only, written from
the definition with explicit loops over the output positions, and a re-typed copy of the
repository's formula (pure torch there too: it has a CPU path) to compare with.

Definition (X: N x C x I1..Ik pooled, masks N|1 x C|1 x O1..Ok, Beta broadcast to X):

    Y = A(X Beta) clip(MaskEdscw, 0, 1) + A(X (1 - Beta)) clip(MaskEm, 0, 1)

A = area interpolation: output o along an axis of I -> O averages the input cells
floor(o I / O) .. ceil((o + 1) I / O) - 1 (adaptive average pooling).

The gradients are the closed forms, summed over the same explicit cell lists.
"""
from __future__ import annotations

import itertools

import numpy as np


def boxes(i_size: int, o_size: int):
    """[(start, end)] per output index, integer arithmetic."""
    return [((o * i_size) // o_size, -((-(o + 1) * i_size) // o_size)) for o in range(o_size)]


def cells(in_shape, out_shape):
    """Yield (output position, [input positions], weight 1 / count)."""
    per_axis = [boxes(i, o) for i, o in zip(in_shape, out_shape)]
    for pos in itertools.product(*[range(o) for o in out_shape]):
        ranges = [range(*per_axis[d][p]) for d, p in enumerate(pos)]
        members = list(itertools.product(*ranges))
        yield pos, members, 1.0 / len(members)


def _full(t, shape):
    return np.broadcast_to(np.asarray(t, np.float64), shape)


def clip01(m):
    return np.where(np.isnan(m), m, np.minimum(np.maximum(m, 0.0), 1.0))


def area(v, out_shape):
    """A(v): (N, C, *I) -> (N, C, *O), by the cell lists."""
    y = np.zeros(v.shape[:2] + tuple(out_shape))
    for pos, members, w in cells(v.shape[2:], out_shape):
        y[(..., *pos)] = sum(v[(..., *c)] for c in members) * w
    return y


def forward(x, me, mm, beta):
    """The definition: A(X Beta) clip(Me) + A(X (1 - Beta)) clip(Mm), float64."""
    x = np.asarray(x, np.float64)
    b = _full(beta, x.shape)
    out = tuple(np.shape(me)[2:])
    shape = x.shape[:2] + out
    return area(x * b, out) * _full(clip01(me), shape) + area(x * (1.0 - b), out) * _full(clip01(mm), shape)


def forward_per_cell(x, me, mm, beta):
    """The same sum written per cell, sum_c w X_c (Beta_c m_e + (1 - Beta_c) m_m): the form
    the op defines for non-finite inputs (an inf cell gives +-inf unless its weight t is 0)."""
    x = np.asarray(x, np.float64)
    b = _full(beta, x.shape)
    out = tuple(np.shape(me)[2:])
    shape = x.shape[:2] + out
    e, m = _full(clip01(me), shape), _full(clip01(mm), shape)
    y = np.zeros(shape)
    with np.errstate(invalid="ignore", over="ignore"):
        for pos, members, w in cells(x.shape[2:], out):
            o = (..., *pos)
            y[o] = sum(x[(..., *c)] * (b[(..., *c)] * e[o] + (1.0 - b[(..., *c)]) * m[o]) * w for c in members)
    return y


def _sum_to(t, shape):
    """Sum t (broadcast result) down to ``shape`` (numpy broadcasting reversed)."""
    lead = t.ndim - len(shape)
    t = t.sum(axis=tuple(range(lead))) if lead else t
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and t.shape[i] != 1)
    return t.sum(axis=axes, keepdims=True) if axes else t


def gradients(x, me, mm, beta, g):
    """(dX, dMe, dMm, dBeta) of sum(g * forward(...)), exact, clip's derivative 1 on [0, 1]."""
    x = np.asarray(x, np.float64)
    b = _full(beta, x.shape)
    out = tuple(np.shape(me)[2:])
    shape = x.shape[:2] + out
    e, m = _full(clip01(me), shape), _full(clip01(mm), shape)
    dx, dbeta_full = np.zeros(x.shape), np.zeros(x.shape)
    a_e, a_m = np.zeros(shape), np.zeros(shape)
    for pos, members, w in cells(x.shape[2:], out):
        o = (..., *pos)
        for c in members:
            i = (..., *c)
            dx[i] += g[o] * w * (b[i] * e[o] + (1.0 - b[i]) * m[o])
            dbeta_full[i] += g[o] * w * x[i] * (e[o] - m[o])
            a_e[o] += w * x[i] * b[i]
            a_m[o] += w * x[i] * (1.0 - b[i])
    me_full, mm_full = _full(me, shape), _full(mm, shape)
    d_me = np.where((me_full >= 0) & (me_full <= 1), g * a_e, 0.0)
    d_mm = np.where((mm_full >= 0) & (mm_full <= 1), g * a_m, 0.0)
    return dx, _sum_to(d_me, np.shape(me)), _sum_to(d_mm, np.shape(mm)), _sum_to(dbeta_full, np.shape(beta))


# ---------------------------------------------------------------- the repository's formula
def repo_adaunpool(x, mask, interpolate=True):
    """adaPool's ``adaunpool`` re-typed (torch tensors in, torch out): masks of shape (N, *O)
    without a channel axis; a tuple (mask_edscw, mask_em, beta) from adapool's default path
    or one mask from its native path."""
    import torch
    import torch.nn.functional as F

    if interpolate:
        if isinstance(mask, tuple):
            e, m = torch.clamp(mask[0], 0.0, 1.0), torch.clamp(mask[1], 0.0, 1.0)
            x1 = F.interpolate(x * mask[2], size=mask[0].shape[1:], mode="area").transpose(0, 1)
            x2 = F.interpolate(x * (1.0 - mask[2]), size=mask[1].shape[1:], mode="area").transpose(0, 1)
            return (x1 * e.unsqueeze(0) + x2 * m.unsqueeze(0)).transpose(0, 1)
        m = torch.clamp(mask, 0.0, 1.0)
        up = F.interpolate(x, size=mask.shape[1:], mode="area").transpose(0, 1)
        return (up * m.unsqueeze(0) + up * (1.0 - m.unsqueeze(0))).transpose(0, 1)
    if isinstance(mask, tuple):
        e, m = torch.clamp(mask[0], 0.0, 1.0), torch.clamp(mask[1], 0.0, 1.0)
        return (x.transpose(0, 1) * e.unsqueeze(0) + x.transpose(0, 1) * m.unsqueeze(0)).transpose(0, 1)
    m = torch.clamp(mask, 0.0, 1.0)
    return (x.transpose(0, 1) * m.unsqueeze(0) + x.transpose(0, 1) * (1.0 - m.unsqueeze(0))).transpose(0, 1)
