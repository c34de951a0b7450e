"""SoftPool: windowing, math, stability, gradients and errors against independent references."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import _reference as ref
import poolexport.functional as F
from poolexport.ops import reduce_soft_pool, soft_pool

# (spatial shape, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad)
WINDOW_CASES = [
    ((9,), [3], [2], [1, 1], [1], False, "NOTSET"),
    ((10,), [2], [3], [0, 1], [2], True, "NOTSET"),
    ((7, 8), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "NOTSET"),
    ((7, 8), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], True, "NOTSET"),
    ((9, 7), [3, 2], [2, 1], [1, 0, 0, 1], [2, 1], False, "NOTSET"),
    ((8, 9), [3, 3], [2, 3], [0, 0, 0, 0], [1, 1], False, "SAME_UPPER"),
    ((8, 9), [2, 3], [3, 2], [0, 0, 0, 0], [1, 2], False, "SAME_LOWER"),
    ((8, 9), [3, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "VALID"),
    ((5, 6, 7), [2, 2, 2], [2, 2, 2], [0, 0, 0, 0, 0, 0], [1, 1, 1], False, "NOTSET"),
    ((5, 6, 7), [3, 2, 3], [2, 1, 2], [1, 0, 1, 1, 1, 0], [1, 2, 1], True, "NOTSET"),
    # ceil_mode windows that would start in the end padding are dropped: 5 -> 3 (not 4),
    # 9 -> 4 (not 5), 7 -> 3 (not 4) (tests/_reference.ceil_drops)
    ((5, 9), [2, 2], [2, 2], [1, 1, 1, 1], [1, 1], True, "NOTSET"),
    ((9,), [3], [2], [1, 2], [1], True, "NOTSET"),
    ((7,), [2], [3], [1, 1], [1], True, "NOTSET"),
]
CEIL_DROP_CASES = WINDOW_CASES[-3:]
IDS = [f"{len(c[0])}d-{c[6]}-ceil{int(c[5])}-{i}" for i, c in enumerate(WINDOW_CASES)]


def _input(spatial, dtype=torch.float64, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64) * scale).to(dtype)


def test_ceil_drop_cases_drop_a_window():
    for spatial, kernel, strides, pads, dil, _, _ in CEIL_DROP_CASES:
        k = len(spatial)
        assert all(ref.ceil_drops(spatial[i], kernel[i], strides[i], dil[i], pads[i], pads[k + i]) for i in range(k))


@pytest.mark.parametrize("case", WINDOW_CASES, ids=IDS)
@pytest.mark.parametrize("beta", [0.0, 1.0, 10.0])
def test_matches_float64_reference(case, beta):
    spatial, kernel, strides, pads, dil, ceil_mode, auto_pad = case
    x = _input(spatial)
    y = soft_pool(x, kernel, strides, pads, dil, ceil_mode, auto_pad, beta)
    expected = ref.pool(x.numpy(), lambda v, _: ref.soft_window(v, beta), kernel, strides, pads, dil, ceil_mode, auto_pad)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def _ort_average_pool(x: np.ndarray, kernel, strides, pads, dil, ceil_mode, auto_pad):
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dil, ceil_mode=int(ceil_mode), auto_pad=auto_pad,
                 count_include_pad=0)
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    node = helper.make_node("AveragePool", ["X"], ["Y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=IDS)
def test_beta_zero_is_onnxruntime_average_pool(case):
    """ONNX Runtime's own AveragePool checks the window rules independently of our reference."""
    spatial, kernel, strides, pads, dil, ceil_mode, auto_pad = case
    if auto_pad.startswith("SAME") and max(dil) > 1:
        # ONNX Runtime sizes SAME padding from the undilated kernel (its own shape inference
        # disagrees with its kernel); we follow the ONNX spec, which uses the dilated span.
        pytest.skip("onnxruntime AveragePool ignores dilation in SAME padding (deviates from the ONNX spec)")
    x = _input(spatial, torch.float32)
    y = soft_pool(x, kernel, strides, pads, dil, ceil_mode, auto_pad, 0.0)
    expected = _ort_average_pool(x.numpy(), kernel, strides, pads, dil, ceil_mode, auto_pad)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_beta_zero_is_torch_avg_pool_without_padding(k, ceil_mode):
    x = _input((7,) * k)
    y = getattr(F, f"soft_pool{k}d")(x, 3, stride=2, padding=1, ceil_mode=ceil_mode, beta=0.0)
    avg = getattr(torch.nn.functional, f"avg_pool{k}d")
    expected = avg(x, 3, stride=2, padding=1, ceil_mode=ceil_mode, count_include_pad=False)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_large_beta_approaches_max_pool():
    x = _input((8, 8))
    y = F.soft_pool2d(x, 3, 2, 1, beta=200.0)
    expected = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    torch.testing.assert_close(y, expected, rtol=0, atol=5e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_inputs_stay_finite(dtype):
    x = _input((8, 8), torch.float64, scale=1.0)
    x = torch.sign(x) * 1e4 * torch.rand_like(x).clamp_min(0.5)
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    for beta in (1.0, 10.0):
        y = F.soft_pool2d(x.to(dtype), 3, 2, 1, beta=beta)
        assert torch.isfinite(y).all()
        expected = ref.pool(x.to(dtype).double().numpy(), lambda v, _: ref.soft_window(v, beta), [3, 3], [2, 2],
                            [1, 1, 1, 1])
        tol = 1e-5 if dtype == torch.float32 else 1e-3
        np.testing.assert_allclose(y.double().numpy(), expected, rtol=tol, atol=tol)


def test_float16_accumulates_in_float32():
    x = _input((9, 9), torch.float16)
    y = F.soft_pool2d(x, 3, 2)
    assert y.dtype == torch.float16
    expected = ref.pool(x.double().numpy(), lambda v, _: ref.soft_window(v, 1.0), [3, 3], [2, 2])
    np.testing.assert_allclose(y.double().numpy(), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("case", WINDOW_CASES[::3], ids=IDS[::3])
def test_gradcheck(case):
    spatial, kernel, strides, pads, dil, ceil_mode, auto_pad = case
    x = _input(spatial)[:1, :2].clone().requires_grad_()  # small: gradcheck is O(numel^2)
    assert torch.autograd.gradcheck(lambda t: soft_pool(t, kernel, strides, pads, dil, ceil_mode, auto_pad, 2.0), (x,))


@pytest.mark.parametrize("axes,keepdims", [([1], True), ([2, 3], False), (None, True), ([-1, 1], False)])
@pytest.mark.parametrize("beta", [0.0, 1.0, 10.0])
def test_reduce_matches_reference(axes, keepdims, beta):
    x = _input((4, 5))
    y = reduce_soft_pool(x, axes, keepdims, beta)
    expected = ref.reduce(x.numpy(), lambda v, _: ref.soft_window(v, beta), axes, keepdims)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_reduce_gradcheck_and_zero_beta_is_mean():
    x = _input((3, 4)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: F.soft_pool_reduce(t, (1,), True, 3.0), (x,))
    torch.testing.assert_close(F.soft_pool_reduce(x, (2, 3), beta=0.0), x.mean((2, 3)))


def test_opcheck():
    x = _input((6, 6), torch.float32).requires_grad_()
    torch.library.opcheck(soft_pool, (x, [2, 2], [2, 2], [0, 0, 1, 1], [1, 1], True, "NOTSET", 1.5))
    torch.library.opcheck(reduce_soft_pool, (x, [1], True, 1.0))


def test_empty_batch():
    x = torch.zeros(0, 3, 8, 8)
    assert F.soft_pool2d(x, 2).shape == (0, 3, 4, 4)


def test_module_matches_functional():
    from poolexport.nn import SoftPool2d

    x = _input((8, 8), torch.float32)
    m = SoftPool2d(3, 2, 1, beta=2.0)
    torch.testing.assert_close(m(x), F.soft_pool2d(x, 3, 2, 1, beta=2.0))


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda x: F.soft_pool2d(x, 9), "kernel_size"),
        (lambda x: F.soft_pool2d(x, 2, stride=0), "stride"),
        (lambda x: F.soft_pool2d(x, 2, stride=-1), "stride"),
        (lambda x: F.soft_pool2d(x, 2, padding=-1), "padding"),
        (lambda x: F.soft_pool2d(x, 2, dilation=0), "dilation"),
        (lambda x: F.soft_pool2d(x[0], 2), "input"),
        (lambda x: F.soft_pool3d(x, 2), "input"),
        (lambda x: F.soft_pool2d(x, (2, 2, 2)), "kernel_size"),
        (lambda x: F.soft_pool2d(x, 2, padding="full"), "padding"),
        (lambda x: F.soft_pool_reduce(x, 4), "dim"),
        (lambda x: soft_pool(x, [2, 2], [1, 1], [0, 0], [1, 1], False, "NOTSET", 1.0), "pads"),
        (lambda x: soft_pool(x, [2, 2], [], [], [], False, "SAME", 1.0), "auto_pad"),
    ],
)
def test_bad_arguments_name_the_argument(call, needle):
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match=needle):
        call(x)


def test_empty_attribute_lists_take_onnx_defaults():
    """Like the ONNX node: strides 1, no padding, dilation 1 (not PyTorch's stride = kernel)."""
    x = _input((6, 7))
    y = soft_pool(x, [2, 2], [], [], [], False, "NOTSET", 0.0)
    torch.testing.assert_close(y, torch.nn.functional.avg_pool2d(x, 2, stride=1))
