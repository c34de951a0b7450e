"""The torch ops on the library's native CPU kernels (issue 9).

Checked against independent references: the float64 window-by-window loops of
tests/_reference.py (forward, sampled picks), the float64 pure-torch implementation
(gradients; itself gradchecked in test_soft_pool.py / test_stochastic_pool.py) and the
ONNX Runtime kernel of the same library (forward, bit for bit: the same code path).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import _reference as ref
import poolexport.functional as F
from poolexport import ort as pxort
from poolexport.ops import _native, reduce_soft_pool, reduce_stochastic_pool, soft_pool, stochastic_pool

pytestmark = pytest.mark.skipif(
    not _native.available(), reason="libpoolexport_ort.so with the torch C ABI is not built (pip install .)"
)

# (spatial, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
CASES = {
    "k2s2": ((12, 14), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "NOTSET"),
    "k3s2p1": ((13, 12), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET"),
    "k3s1p1": ((9, 10), [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], False, "NOTSET"),
    "1d": ((23,), [3], [2], [1, 0], [1], True, "NOTSET"),
    "3d": ((5, 6, 7), [3, 2, 3], [2, 1, 2], [1, 0, 1, 1, 1, 0], [1, 2, 1], True, "NOTSET"),
    "dilated-same": ((11, 13), [2, 3], [3, 2], [0, 0, 0, 0], [1, 2], False, "SAME_LOWER"),
    "k3s3-wide": ((7, 40), [3, 3], [3, 3], [0, 0, 0, 0], [1, 1], True, "NOTSET"),
}
REDUCE_AXES = [[1], [2, 3], None, [0, 2]]
OPS = {
    "soft": lambda x, c, **kw: soft_pool(x, *c[1:], kw.get("beta", 1.0)),
    "expectation": lambda x, c, **kw: stochastic_pool(x, *c[1:], "expectation", 0),
    "sample": lambda x, c, **kw: stochastic_pool(x, *c[1:], "sample", kw.get("seed", 5)),
}
REDUCE_OPS = {
    "soft": lambda x, axes, beta=1.0: reduce_soft_pool(x, axes, True, beta),
    "expectation": lambda x, axes, **_: reduce_stochastic_pool(x, axes, True, "expectation", 0),
    "sample": lambda x, axes, **_: reduce_stochastic_pool(x, axes, True, "sample", 9),
}


def _input(spatial, seed=0, n=2, c=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g, dtype=torch.float64) * 2
    # exact zeros and ties exercise the stochastic edge cases
    return torch.where(torch.rand(x.shape, generator=g, dtype=torch.float64) < 0.1, torch.zeros_like(x), x)


def _reference_fn(op, beta=1.0, seed=5):
    if op == "soft":
        return lambda v, e: ref.soft_window(v, beta)
    if op == "expectation":
        return lambda v, e: ref.stochastic_expectation_window(v)
    return lambda v, e: ref.stochastic_sample_window(v, seed, e)


def _grads(fn, x64, dtype, seed=1):
    """(native dX, float64 reference dX) for the same upstream gradient."""
    x = x64.to(dtype).requires_grad_()
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y.backward(g.to(dtype))
    with _native.reference_kernels():
        xr = x.detach().double().requires_grad_()  # the same (rounded) input values
        fn(xr).backward(g)
    return x.grad.double(), xr.grad


def _normwise(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES)
def test_forward_float32_matches_float64_reference(op, case):
    c = CASES[case]
    x = _input(c[0])
    y = OPS[op](x.float(), c)
    expected = ref.pool(x.float().double().numpy(), _reference_fn(op), *c[1:])
    if op == "sample":  # the pick is exact: the float32 value of the picked element
        np.testing.assert_array_equal(y.double().numpy(), expected)
    else:
        np.testing.assert_allclose(y.double().numpy(), expected, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", CASES)
def test_gradient_float32_within_1e5_of_float64(op, case):
    c = CASES[case]
    got, expected = _grads(lambda t: OPS[op](t, c), _input(c[0]), torch.float32)
    # sample: upstream values routed to the picks (a wrong pick is an O(1) error); float32
    # rounding of g and of sums where windows overlap
    assert _normwise(got, expected) <= (1e-6 if op == "sample" else 1e-5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axes", REDUCE_AXES, ids=str)
def test_reduce_forward_and_gradient(op, axes):
    x = _input((5, 6), c=12)
    y = REDUCE_OPS[op](x.float(), axes)
    expected = ref.reduce(x.float().double().numpy(), _reference_fn(op, seed=9), axes, True)
    if op == "sample":
        np.testing.assert_array_equal(y.double().numpy(), expected)
    else:
        np.testing.assert_allclose(y.double().numpy(), expected, rtol=2e-6, atol=2e-6)
    got, ref_grad = _grads(lambda t: REDUCE_OPS[op](t, axes), x, torch.float32)
    if op == "sample":
        torch.testing.assert_close(got, ref_grad.float().double(), rtol=0, atol=0)
    else:
        assert _normwise(got, ref_grad) <= 1e-5


@pytest.mark.parametrize("beta", [0.0, 0.5, 10.0])
def test_soft_gradient_for_other_betas_and_large_ranges(beta):
    c = CASES["k3s2p1"]
    x = _input(c[0])
    # plane 0 spans far more than the single-shift range of beta * x: the per-window path.
    # (Not much more: float32 rounding of y costs beta * |a| * 6e-8 in 1 + beta * (a - y).)
    x[0, 0] *= 40 / max(beta, 1.0)
    assert beta == 0 or beta * (x[0, 0].max() - x[0, 0].min()) > 100
    got, expected = _grads(lambda t: OPS["soft"](t, c, beta=beta), x, torch.float32)
    assert _normwise(got[0, 0], expected[0, 0]) <= 1e-5
    assert _normwise(got, expected) <= 1e-5
    assert torch.isfinite(got).all()


def test_soft_gradient_with_large_offset_stays_accurate():
    """a - y computed per window: no cancellation when activations sit far from 0."""
    c = CASES["k2s2"]
    got, expected = _grads(lambda t: OPS["soft"](t, c), _input(c[0]) + 40, torch.float32)
    assert _normwise(got, expected) <= 1e-5


@pytest.mark.parametrize("op", OPS)
def test_float16(op):
    c = CASES["k3s2p1"]
    x = _input(c[0]).half()
    y = OPS[op](x, c)
    assert y.dtype == torch.float16
    expected = ref.pool(x.double().numpy(), _reference_fn(op), *c[1:])
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=2e-3, atol=2e-3)
    got, ref_grad = _grads(lambda t: OPS[op](t, c), x.double(), torch.float16)
    assert _normwise(got, ref_grad) <= 2e-3


def _ort_node(op, attrs):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node = helper.make_node(op, ["X"], ["Y"], domain="poolexport", **attrs)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)]
    return helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=opsets, ir_version=10)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", ["k2s2", "k3s2p1", "3d", "k3s3-wide"])
def test_eval_forward_is_the_onnxruntime_kernel_bit_for_bit(op, case):
    pytest.importorskip("onnxruntime")
    c = CASES[case]
    x = _input(c[0], n=2, c=4).float()
    spatial, kernel, strides, pads, dil, ceil_mode, auto_pad = c
    attrs = dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dil, ceil_mode=int(ceil_mode))
    if op == "soft":
        model = _ort_node("SoftPool", dict(attrs, beta=1.0))
    else:
        model = _ort_node("StochasticPool", dict(attrs, mode=op, seed=5))
    expected = pxort.session(model.SerializeToString()).run(None, {"X": x.numpy()})[0]
    np.testing.assert_array_equal(OPS[op](x, c).numpy(), expected)


@pytest.mark.parametrize("op", ["ReduceSoftPool", "ReduceStochasticPool"])
@pytest.mark.parametrize("axes", [[1], [2, 3]], ids=str)
def test_reduce_forward_is_the_onnxruntime_kernel_bit_for_bit(op, axes):
    pytest.importorskip("onnxruntime")
    x = _input((5, 16), c=12).float()
    attrs = dict(axes=axes, keepdims=1, **({"beta": 1.0} if op == "ReduceSoftPool" else {"mode": "sample", "seed": 9}))
    expected = pxort.session(_ort_node(op, attrs).SerializeToString()).run(None, {"X": x.numpy()})[0]
    got = REDUCE_OPS["soft" if op == "ReduceSoftPool" else "sample"](x, axes)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_sample_gradient_lands_on_the_pick():
    x = torch.rand(2, 3, 16, 16).requires_grad_()
    y = F.stochastic_pool2d(x, 2, mode="sample", seed=3)
    y.backward(torch.ones_like(y))
    hit = (x.grad != 0).view(2, 3, 8, 2, 8, 2)
    assert hit.sum((3, 5)).eq(1).all()  # one element per window
    picked = (x.detach().view(2, 3, 8, 2, 8, 2) * hit).sum((3, 5))
    torch.testing.assert_close(picked, y.detach(), rtol=0, atol=0)


def test_backward_is_deterministic_across_threads():
    x = torch.randn(4, 8, 33, 31)
    grads = []
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        xi = x.clone().requires_grad_()
        F.soft_pool2d(xi, 3, 1, 1).backward(torch.ones(4, 8, 33, 31))
        grads.append(xi.grad)
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


def test_reference_is_selectable():
    x = _input((8, 8)).float()
    assert _native.use_native(x)
    with _native.reference_kernels():
        assert not _native.use_native(x)
    assert not _native.use_native(x.double())  # float64 always takes the reference


def test_gradcheck_through_the_native_kernels():
    # float32 kernels inside, finite differences of float32: loose tolerances
    x = _input((6, 7)).requires_grad_()
    for fn in (lambda t: F.soft_pool2d(t.float(), 3, 2, 1).double(),
               lambda t: F.stochastic_pool2d(t.float().abs(), 3, 2, 1).double(),
               lambda t: F.soft_pool_reduce(t.float(), (2, 3)).double()):
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-2, atol=2e-3, rtol=2e-2)


def test_opcheck_through_the_native_kernels():
    x = _input((8, 9)).float().requires_grad_()
    assert _native.use_native(x)
    torch.library.opcheck(soft_pool, (x, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET", 1.0))
    torch.library.opcheck(stochastic_pool, (x, [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "NOTSET", "expectation", 0))
    torch.library.opcheck(stochastic_pool, (x, [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "NOTSET", "sample", 4))
    torch.library.opcheck(reduce_soft_pool, (x, [1], True, 1.0))
    torch.library.opcheck(reduce_stochastic_pool, (x, [2, 3], False, "expectation", 0))


def test_empty_inputs():
    assert F.soft_pool2d(torch.zeros(0, 3, 8, 8), 2).shape == (0, 3, 4, 4)
    x = torch.zeros(2, 0, 8, 8, requires_grad=True)
    F.soft_pool2d(x, 2).sum().backward()
    assert x.grad.shape == x.shape


def test_torch_compile_of_an_example_network_matches_eager():
    from poolexport.models import create_model, default_input_shape

    torch.manual_seed(0)
    model = create_model("resnet_softpool").eval()
    x = torch.randn(default_input_shape("resnet_softpool"))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
