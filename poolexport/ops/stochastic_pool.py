"""Stochastic pooling as torch.library custom ops (Zeiler and Fergus, ICLR 2013).

With r = max(a, 0) over a window's valid positions and p_i = r_i / sum(r):

* ``mode="sample"`` picks one a_i with probability p_i, using the counter-based
  generator of ``poolexport._philox`` keyed by ``seed`` and the output element's index,
  so every backend makes the same picks. The gradient flows to the picked element.
* ``mode="expectation"`` (inference) returns sum(p_i * a_i) = sum(r^2) / sum(r), with
  gradient [a_j > 0] * (2 r_j - y) / sum(r).

A window whose r sums to 0 (all zero, negative or padding) outputs 0 with zero gradient.
A window holding NaN outputs NaN in both modes (r keeps the NaN, so sum(r) is NaN; the
sample picks nothing) and passes no gradient to any of its elements; windows without NaN
are unaffected. Every runtime (native kernels, CUDA, ONNX forms) follows this rule.

The functions below are the pure-torch reference (any device, any float dtype); on CPU
float32/float16 the ops run the library's native kernels instead (``_native.py``).

Each op also has a ``tensor_seed`` overload whose seed is a one-element int64 tensor, read
inside the kernel: under torch.compile a seed drawn per training step
(:func:`draw_seed`, ``poolexport::_draw_seed``) stays a tensor in the graph, so the graph
neither breaks nor specialises on the value. Same seed, same picks as the int overload.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._philox import uniform_for_elements
from . import _native
from ._windows import pool_backward, pool_forward, reduce_backward, reduce_forward, reduce_layout, spec_from_attrs
from ._registry import LIB, REDUCE_ARGS, WINDOW_ARGS, define_pair
from .soft_pool import _check_input, _input_like_fake, _reduced_fake, _windowed_fake

OP = "StochasticPool"
REDUCE_OP = "ReduceStochasticPool"
MODES = ("expectation", "sample")


def _check_mode(op: str, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")


def _code(mode: str) -> int:
    return _native.SAMPLE if mode == "sample" else _native.EXPECTATION


def sample_positions(r: torch.Tensor, seed: int) -> torch.Tensor:
    """Index of the picked position in each row of r (M, K), float32; -1 if sum(r) == 0
    or is NaN (a NaN in the row).

    Sequential float32 prefix sums, exactly as the C++/CUDA kernels compute them (a
    vectorised cumsum could reassociate and change a pick).
    """
    m, k = r.shape
    u = uniform_for_elements(seed, m, r.device)
    cums = torch.empty_like(r)
    cum = torch.zeros(m, dtype=torch.float32, device=r.device)
    for j in range(k):
        cum = cum + r[:, j]
        cums[:, j] = cum
    total = cum
    t = u * total
    above = cums > t[:, None]
    # argmax of a bool row is its first True; rows with none fall back to the last r_i > 0
    first_above = above.to(torch.uint8).argmax(dim=1)
    positive = r > 0
    last_positive = k - 1 - positive.flip(1).to(torch.uint8).argmax(dim=1)
    pick = torch.where(above.any(dim=1), first_above, last_positive)
    return torch.where(total > 0, pick, torch.full_like(pick, -1))


def _rows(windows: torch.Tensor) -> torch.Tensor:
    return windows.reshape(-1, windows.shape[-1])


SCALE_ABOVE = 2.0**48  # limits.h kMomentScaleAbove: windows with a larger max r sum r * 2^-80


def _scaled(r: torch.Tensor):
    """r * k and k per window (stochastic_pool.h): k = 2^-80 where max r > SCALE_ABOVE."""
    rmax = r.amax(-1, keepdim=True)
    k = torch.where(rmax > SCALE_ABOVE, torch.full_like(rmax, 2.0**-80), torch.ones_like(rmax))
    return r * k, k, rmax


def _r(windows):
    """r = max(a, 0) with NaN kept (clamp_min propagates NaN; stochastic_pool.h stochastic_r)."""
    return windows.clamp_min(0)


def stochastic_windows(windows, mode, seed):
    """windows (..., K) with padding as 0 -> (...). A window holding NaN gives NaN."""
    r = _r(windows)
    if mode == "expectation":
        rk, k, rmax = _scaled(r)
        s1 = rk.sum(-1, keepdim=True)
        s2 = (rk * rk).sum(-1, keepdim=True)
        none = s1 <= 0  # not for a NaN s1: its ratio stays NaN
        y = torch.minimum(s2 / torch.where(none, torch.ones_like(s1), s1), rmax * k) / k
        return torch.where(none, torch.zeros_like(y), y).squeeze(-1)
    rows = _rows(r.to(torch.float32))
    pick = sample_positions(rows, seed)
    picked = _rows(windows).gather(1, pick.clamp_min(0)[:, None])[:, 0]
    nan = rows.isnan().any(dim=1)
    picked = torch.where(pick >= 0, picked, torch.where(nan, torch.full_like(picked, float("nan")),
                                                        torch.zeros_like(picked)))
    return picked.reshape(windows.shape[:-1])


def stochastic_windows_backward(grad, windows, mode, seed):
    """A window holding NaN (s1 NaN, no pick) passes no gradient."""
    r = _r(windows)
    if mode == "expectation":
        rk, k, rmax = _scaled(r)
        s1 = rk.sum(-1, keepdim=True)
        s2 = (rk * rk).sum(-1, keepdim=True)
        safe = torch.where(s1 > 0, s1, torch.ones_like(s1))
        y = torch.minimum(s2 / safe, rmax * k)  # y * k
        g = (windows > 0) * (2 * rk - y) / safe
        return grad.unsqueeze(-1) * torch.where(s1 > 0, g, torch.zeros_like(g))
    pick = sample_positions(_rows(r.to(torch.float32)), seed)
    onehot = torch.zeros_like(_rows(windows))
    hit = pick >= 0
    onehot[hit, pick[hit]] = 1
    return grad.unsqueeze(-1) * onehot.reshape(windows.shape)


# ---------------------------------------------------------------- windowed form
def stochastic_pool_reference(
    X: torch.Tensor,
    kernel_shape: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    auto_pad: str,
    mode: str,
    seed: int,
) -> torch.Tensor:
    _check_input(OP, X)
    _check_mode(OP, mode)
    attrs = (kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return pool_forward(OP, X, attrs, lambda windows, valid: stochastic_windows(windows, mode, seed))


def stochastic_pool_backward_reference(
    grad: torch.Tensor,
    X: torch.Tensor,
    kernel_shape: list[int],
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    ceil_mode: bool,
    auto_pad: str,
    mode: str,
    seed: int,
) -> torch.Tensor:
    attrs = (kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return pool_backward(OP, grad, X, attrs,
                         lambda g, windows, valid: stochastic_windows_backward(g, windows, mode, seed))


def _kernel(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed):
    """The CUDA kernel (and the CPU one without the compiled registration)."""
    if not _native.use_native(X):
        return stochastic_pool_reference(X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed)
    _check_input(OP, X)
    _check_mode(OP, mode)
    spec = spec_from_attrs(OP, X.dim(), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return _native.window(OP, _code(mode), X, spec, seed=seed)


def _backward_kernel(grad, X, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad, mode, seed):
    if not _native.use_native(X):
        return stochastic_pool_backward_reference(grad, X, kernel_shape, strides, pads, dilations, ceil_mode,
                                                  auto_pad, mode, seed)
    spec = spec_from_attrs(OP, X.dim(), kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
    return _native.window(OP, _code(mode), X, spec, seed=seed, grad=grad)


stochastic_pool, stochastic_pool_backward = define_pair(
    "stochastic_pool", f"{WINDOW_ARGS}, str mode, int seed",
    (stochastic_pool_reference, _kernel, _windowed_fake),
    (stochastic_pool_backward_reference, _backward_kernel, _input_like_fake),
)


# ---------------------------------------------------------------- reduction form
def reduce_stochastic_pool_reference(X, axes, keepdims, mode, seed):
    _check_input(REDUCE_OP, X)
    _check_mode(REDUCE_OP, mode)
    return reduce_forward(REDUCE_OP, X, axes, keepdims, lambda windows: stochastic_windows(windows, mode, seed))


def reduce_stochastic_pool_backward_reference(grad, X, axes, keepdims, mode, seed):
    return reduce_backward(REDUCE_OP, grad, X, axes, keepdims,
                           lambda g, windows: stochastic_windows_backward(g, windows, mode, seed))


def _reduce_kernel(X, axes, keepdims, mode, seed):
    _check_input(REDUCE_OP, X)
    _check_mode(REDUCE_OP, mode)
    if _native.use_native(X):
        reduced, _, _, out_shape = reduce_layout(tuple(X.shape), axes, keepdims, REDUCE_OP)
        y = _native.reduce(REDUCE_OP, _code(mode), X, reduced, out_shape, seed=seed)
        if y is not None:
            return y
    return reduce_stochastic_pool_reference(X, axes, keepdims, mode, seed)


def _reduce_backward_kernel(grad, X, axes, keepdims, mode, seed):
    if _native.use_native(X):
        reduced, _, _, out_shape = reduce_layout(tuple(X.shape), axes, keepdims, REDUCE_OP)
        dx = _native.reduce(REDUCE_OP, _code(mode), X, reduced, out_shape, seed=seed, grad=grad)
        if dx is not None:
            return dx
    return reduce_stochastic_pool_backward_reference(grad, X, axes, keepdims, mode, seed)


reduce_stochastic_pool, reduce_stochastic_pool_backward = define_pair(
    "reduce_stochastic_pool", f"{REDUCE_ARGS}, str mode, int seed",
    (reduce_stochastic_pool_reference, _reduce_kernel, _reduced_fake),
    (reduce_stochastic_pool_backward_reference, _reduce_backward_kernel, _input_like_fake),
)


# ---------------------------------------------------------------- the seed as a tensor
SEED_BOUND = 2**62  # fresh seeds are drawn in [0, SEED_BOUND)


def fresh_seed() -> torch.Tensor:
    """A fresh seed from torch's default CPU generator (reproducible under torch.manual_seed),
    as a 0-d int64 tensor: the one definition of a per-step draw, eager or compiled."""
    return torch.randint(0, SEED_BOUND, (), dtype=torch.int64)


# The draw as an op of its own: inductor would lower a torch.randint in the graph to its
# own generator (other values, other generator state than eager); a custom op runs as it
# is. X orders the draw after X's producer. `order`, one tensor that every draw mutates,
# chains the draws of a graph in the order eager makes them: passes that move independent
# nodes (inductor's peak-memory reordering, CSE of two draws from one X) keep a chain of
# writes to one buffer. Tagged random, so the AOT partitioner saves the seed for the
# backward instead of drawing again.
LIB.define("_draw_seed(Tensor(a!) order, Tensor X) -> Tensor", tags=(torch.Tag.nondeterministic_seeded,))


def _draw_seed_kernel(order, X):
    order.add_(1)
    return fresh_seed()


LIB.impl("_draw_seed", _draw_seed_kernel, "CompositeExplicitAutograd")
torch.library.register_fake("poolexport::_draw_seed", lambda order, X: torch.empty((), dtype=torch.int64), lib=LIB)
DRAW_ORDER = torch.zeros((), dtype=torch.int64)  # the draws' chain: its value counts draws, and is never read


def draw_seed(X: torch.Tensor) -> torch.Tensor:
    """A fresh seed (as :func:`fresh_seed`) drawn by an op of the graph, in program order."""
    return torch.ops.poolexport._draw_seed(DRAW_ORDER, X)


def _check_seed_tensor(op: str, seed: torch.Tensor) -> None:
    if seed.dtype != torch.int64 or seed.numel() != 1:
        raise ValueError(f"{op}: seed must be a one-element int64 tensor, got {seed.dtype} of shape "
                         f"{tuple(seed.shape)}")


def _int_seed(op: str, fn):
    """fn, whose last argument is the int seed, as the tensor_seed overload's kernel."""
    def call(*args):
        _check_seed_tensor(op, args[-1])
        return fn(*args[:-1], int(args[-1].item()))
    return call


def _checked_fake(op: str, fake):
    def call(*args):
        _check_seed_tensor(op, args[-1])
        return fake(*args)
    return call


stochastic_pool_tensor_seed, stochastic_pool_backward_tensor_seed = define_pair(
    "stochastic_pool", f"{WINDOW_ARGS}, str mode, Tensor seed",
    (_int_seed(OP, stochastic_pool_reference), _int_seed(OP, _kernel), _checked_fake(OP, _windowed_fake)),
    (_int_seed(OP, stochastic_pool_backward_reference), _int_seed(OP, _backward_kernel),
     _checked_fake(OP, _input_like_fake)),
    overload="tensor_seed",
)
reduce_stochastic_pool_tensor_seed, reduce_stochastic_pool_backward_tensor_seed = define_pair(
    "reduce_stochastic_pool", f"{REDUCE_ARGS}, str mode, Tensor seed",
    (_int_seed(REDUCE_OP, reduce_stochastic_pool_reference), _int_seed(REDUCE_OP, _reduce_kernel),
     _checked_fake(REDUCE_OP, _reduced_fake)),
    (_int_seed(REDUCE_OP, reduce_stochastic_pool_backward_reference), _int_seed(REDUCE_OP, _reduce_backward_kernel),
     _checked_fake(REDUCE_OP, _input_like_fake)),
    overload="tensor_seed",
)
