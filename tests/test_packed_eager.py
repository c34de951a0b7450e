"""The layers' eager inference path (poolexport/ops/_packed.py): window arguments packed
in one int64 tensor for the compiled kernel.

What it must keep: the same values as the public ops (checked against the float64 oracle
of tests/_oracle.py and, bit for bit, against the public op on the same input), the same
errors, and no trace of itself where autograd, tracing or a mode could see it. The route
is observed by counting calls of the packed op, not inferred from timings.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import _oracle
import poolexport.functional as F
from poolexport.ops import _native, _packed

pytestmark = pytest.mark.skipif(not _packed.AVAILABLE, reason="the compiled registration is unavailable (no "
                                "custom-op library, or a torch older than 2.10)")

FUNCS = {1: (F.soft_pool1d, F.stochastic_pool1d), 2: (F.soft_pool2d, F.stochastic_pool2d),
         3: (F.soft_pool3d, F.stochastic_pool3d)}


@pytest.fixture
def packed_calls(monkeypatch):
    """Counts the packed op's calls made by poolexport.functional (the memo emptied first:
    a call that fills it takes the packed op too, one that hits it skips the checks)."""
    F._WINDOW_ARGS.clear()
    calls = []
    real = F._window_pool_packed

    def counting(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(F, "_window_pool_packed", counting)
    return calls


def _public(x, rank, kind, kernel, stride, padding, dilation, ceil_mode, beta=1.0, seed=0):
    """The same call through the public op (the path every traced or differentiated call takes)."""
    spec = F.window_spec_for_input("t", x, rank, kernel, stride, padding, dilation, ceil_mode)
    args = list(spec.kernel_shape), list(spec.strides), list(spec.pads), list(spec.dilations), spec.ceil_mode, spec.auto_pad
    if kind == "soft":
        return torch.ops.poolexport.soft_pool.default(x, *args, beta)
    return torch.ops.poolexport.stochastic_pool.default(x, *args, kind, seed)


# (rank, kernel, stride, padding, dilation, ceil_mode): every field of the packed layout moved
CASES = [
    (1, 3, 2, 1, 1, False),
    (1, 2, 3, 0, 2, True),
    (2, 2, 2, 0, 1, False),
    (2, (3, 2), (2, 1), (1, 0), (1, 2), True),
    (2, 3, 1, "same", 1, False),
    (2, 3, 2, "valid", 1, False),
    (3, 2, 2, 0, 1, False),
    (3, (2, 3, 1), (1, 2, 1), (0, 1, 0), (2, 1, 1), True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kind", ["soft", "expectation", "sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed_equals_public_op(case, kind, dtype, packed_calls):
    rank, kernel, stride, padding, dilation, ceil_mode = case
    torch.manual_seed(rank)
    x = torch.randn(2, 3, *[7, 6, 5][:rank]).to(dtype)
    soft, stochastic = FUNCS[rank]
    with torch.no_grad():
        for _ in range(2):  # the first call fills the memo, the second hits it
            if kind == "soft":
                y = soft(x, kernel, stride, padding, dilation, ceil_mode, beta=1.5)
            else:
                y = stochastic(x, kernel, stride, padding, dilation, ceil_mode, mode=kind, seed=987654321)
    assert len(packed_calls) == 2
    assert packed_calls[-1] == _packed.MODE_CODES[kind]
    ref = _public(x, rank, kind, kernel, stride, padding, dilation, ceil_mode, 1.5, 987654321)
    assert y.dtype == dtype and y.shape == ref.shape
    assert torch.equal(y, ref)


@pytest.mark.parametrize("case", [c for c in CASES if not isinstance(c[3], str)], ids=str)
def test_packed_against_float64_oracle(case, packed_calls):
    rank, kernel, stride, padding, dilation, ceil_mode = case
    as_list = lambda v, n: list(v) if isinstance(v, tuple) else [v] * n
    attrs = {"kernel_shape": as_list(kernel, rank), "strides": as_list(stride, rank),
             "pads": as_list(padding, rank) * 2, "dilations": as_list(dilation, rank), "ceil_mode": int(ceil_mode)}
    x = np.random.default_rng(rank).standard_normal((2, 3, *[7, 6, 5][:rank])).astype(np.float32)
    soft, stochastic = FUNCS[rank]
    with torch.inference_mode():
        ys = soft(torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode, beta=0.7)
        ye = stochastic(torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode, mode="expectation")
        yp = stochastic(torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode, mode="sample", seed=3)
    assert len(packed_calls) == 3
    np.testing.assert_allclose(ys.numpy(), _oracle.soft_forward(x.astype(np.float64), attrs, 0.7)["y"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ye.numpy(), _oracle.expectation_forward(x.astype(np.float64), attrs)[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(yp.numpy(), _oracle.sample_picks(x, attrs, 3)[0])


def test_non_contiguous_input(packed_calls):
    x = torch.randn(2, 9, 8, 3).permute(0, 3, 1, 2)  # (2, 3, 9, 8), channels last in memory
    assert not x.is_contiguous()
    with torch.no_grad():
        F.soft_pool2d(x, 2)
        y = F.soft_pool2d(x, 2)
    assert packed_calls == [0, 0]
    assert torch.equal(y, _public(x.contiguous(), 2, "soft", 2, None, 0, 1, False))


def test_other_dtypes_take_the_reference(packed_calls):
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        F.soft_pool2d(x, 3, 2, 1)
        y = F.soft_pool2d(x, 3, 2, 1, beta=2.0)
    assert packed_calls == [0, 0] and y.dtype == torch.float64
    ref = torch.ops.poolexport._reference_soft_pool(x, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET", 2.0)
    assert torch.equal(y, ref)


def test_reference_kernels_reach_the_packed_op():
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        native = [F.soft_pool2d(x, 3, 2, 1) for _ in range(2)][-1]
        with _native.reference_kernels():
            ref = F.soft_pool2d(x, 3, 2, 1)
    twin = torch.ops.poolexport._reference_soft_pool(x, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET", 1.0)
    assert torch.equal(ref, twin)
    torch.testing.assert_close(native, twin, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- where it must not be taken
def _twice(fn, x):
    fn(x)
    return fn(x)


def test_grad_mode_with_a_tracked_input_records_the_public_op(packed_calls):
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    y = _twice(lambda t: F.soft_pool2d(t, 2), x)
    assert packed_calls == []
    assert y.requires_grad
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_grad_mode_with_an_untracked_input_takes_it(packed_calls):
    x = torch.randn(1, 2, 6, 6)
    _twice(lambda t: F.stochastic_pool2d(t, 2, mode="sample", seed=1), x)
    assert packed_calls == [2, 2]


class _SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_public_op(packed_calls):
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        F.soft_pool2d(x, 2)  # outside the mode: packed, and the memo filled
        with _SeenOps() as mode:
            F.soft_pool2d(x, 2)
    assert packed_calls == [0]
    assert "poolexport.soft_pool.default" in mode.ops
    assert not any("packed" in op for op in mode.ops)


def test_a_function_mode_keeps_it_away(packed_calls):
    class Nothing(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        F.soft_pool2d(x, 2)
        with Nothing():
            F.soft_pool2d(x, 2)
    assert packed_calls == [0]


def test_tracing_records_the_public_op(packed_calls):
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        F.soft_pool2d(x, 2)
        traced = torch.jit.trace(lambda t: F.soft_pool2d(t, 2), x, check_trace=False)
    assert packed_calls == [0]
    assert "poolexport::soft_pool" in str(traced.graph)
    assert "packed" not in str(traced.graph)


def test_a_subclass_takes_the_public_op(packed_calls):
    class Marked(torch.Tensor):
        pass

    x = torch.randn(1, 2, 6, 6).as_subclass(Marked)
    with torch.no_grad():
        _twice(lambda t: F.soft_pool2d(t, 2), x)
    assert packed_calls == []


def test_exported_program_holds_the_public_op():
    from poolexport.nn import SoftPool2d

    m = SoftPool2d(2).eval()
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad():
        m(x), m(x)
    ep = torch.export.export(m, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "poolexport.soft_pool.default" in targets
    assert not any("packed" in t for t in targets)


# ---------------------------------------------------------------- the internal op's own checks
def _call(window, mode=0, x=None):
    x = torch.randn(1, 1, 4, 4) if x is None else x
    return torch.ops.poolexport._window_pool_packed.default(x, window, 1.0, mode, 0)


def _good(rank=2):
    return _packed.pack_window([2] * rank, [2] * rank, [0] * (2 * rank), [1] * rank, False, "NOTSET")


def test_pack_window_layout():
    w = _packed.pack_window([3, 2], [2, 1], [1, 0, 1, 0], [1, 2], True, "SAME_LOWER")
    assert w.tolist() == [2, 3, 2, 2, 1, 1, 0, 1, 0, 1, 2, 1, 2]
    assert _packed.unpack_window(w) == ([3, 2], [2, 1], [1, 0, 1, 0], [1, 2], True, "SAME_LOWER")


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("delta", [-1, 1])
def test_window_length_off_by_one_is_refused(rank, delta):
    w = _good(rank)
    w = torch.cat([w, torch.zeros(1, dtype=torch.int64)]) if delta > 0 else w[:-1].clone()
    x = torch.randn(1, 1, *[4] * rank)
    with pytest.raises(ValueError, match="5 \\* rank \\+ 3"):
        _call(w, x=x)


@pytest.mark.parametrize("rank", [0, 4])
def test_rank_outside_1_to_3_is_refused(rank):
    w = torch.tensor([rank] + [1] * (5 * rank + 2), dtype=torch.int64)
    with pytest.raises(ValueError, match="rank 1 to 3"):
        _call(w)


@pytest.mark.parametrize("make", [lambda: _good().to(torch.int32), lambda: _good().reshape(1, -1),
                                  lambda: torch.stack([_good(), _good()], 1)[:, 0]], ids=["int32", "2-D", "strided"])
def test_window_tensor_kind_is_refused(make):
    with pytest.raises(ValueError, match="contiguous 1-D int64 CPU tensor"):
        _call(make())


@pytest.mark.parametrize("code, ok", [(-1, False), (0, True), (3, True), (4, False)])
def test_auto_pad_codes_at_their_bounds(code, ok):
    w = _good()
    w[-1] = code
    if ok:
        assert _call(w).shape == (1, 1, 2, 2)
    else:
        with pytest.raises(ValueError, match="auto_pad must be"):
            _call(w)


@pytest.mark.parametrize("mode, ok", [(-1, False), (0, True), (2, True), (3, False)])
def test_mode_codes_at_their_bounds(mode, ok):
    if ok:
        assert _call(_good(), mode).shape == (1, 1, 2, 2)
    else:
        with pytest.raises(ValueError, match="mode must be 0"):
            _call(_good(), mode)


def test_window_values_are_checked_like_the_public_op():
    w = _good()
    w[1] = 0  # kernel_shape 0
    with pytest.raises(ValueError, match="SoftPool: kernel_shape must be positive"):
        _call(w)
    with pytest.raises(ValueError, match="StochasticPool: kernel_shape must be positive"):
        _call(w, 1)
