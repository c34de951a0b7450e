"""Issue 12: the seeds' systems and the torch/timm/Keras conventions, against independent
references: torch's own modules, float64 loops (tests/_reference.py and below) written
from the definitions, the seed code's own formulas transcribed to NumPy, and ONNX Runtime's
built-in AveragePool / MaxPool / Resize kernels."""
import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import _reference as ref
import poolexport.nn as pnn

# ---------------------------------------------------------------- avgmax / catavgmax
SHAPES = [(2, 5, 7), (2, 4, 5, 6), (1, 3, 3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_avgmax_and_catavgmax_global_and_channel_forms(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    xn = x.numpy()
    spatial = tuple(range(2, len(shape)))
    avg, mx = xn.mean(spatial, keepdims=True), xn.max(spatial, keepdims=True)
    np.testing.assert_allclose(pnn.create_pool("avgmax", "global")(x).numpy(), 0.5 * (avg + mx), rtol=1e-13)
    flat = pnn.create_pool("catavgmax", "global", flatten=True)(x).numpy()
    np.testing.assert_allclose(flat, np.concatenate([avg, mx], 1).reshape(shape[0], -1), rtol=1e-13)
    assert flat.shape == (shape[0], 2 * shape[1])
    # across channels (CBAM's spatial branch): N x 1 and N x 2 maps
    cavg, cmx = xn.mean(1, keepdims=True), xn.max(1, keepdims=True)
    np.testing.assert_allclose(pnn.create_pool("avgmax", "channel")(x).numpy(), 0.5 * (cavg + cmx), rtol=1e-13)
    np.testing.assert_allclose(pnn.create_pool("catavgmax", "channel")(x).numpy(),
                               np.concatenate([cavg, cmx], 1), rtol=1e-13)
    with pytest.raises(ValueError, match="cat_avg_max_pool_reduce: without keepdim"):
        pnn.create_pool("catavgmax", "reduce", dim=1, keepdim=False)(x)


@pytest.mark.parametrize("k,spatial,kernel,stride,padding,ceil_mode", [
    (1, (11,), 3, 2, 1, True), (2, (7, 8), 3, 2, 1, False), (2, (6, 7), 3, 1, "same", False),
    (3, (5, 6, 5), 2, 2, 1, True)])
def test_avgmax_and_catavgmax_window_forms(k, spatial, kernel, stride, padding, ceil_mode):
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    pads = [padding] * (2 * k) if isinstance(padding, int) else None
    auto = "SAME_UPPER" if padding == "same" else "NOTSET"
    win = dict(kernel=[kernel] * k, strides=[stride] * k, pads=pads, ceil_mode=ceil_mode, auto_pad=auto)
    avg = ref.pool(x.numpy(), lambda v, e: sum(v) / len(v), **win)
    mx = ref.pool(x.numpy(), lambda v, e: max(v), **win)
    opts = dict(dims=k, kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    np.testing.assert_allclose(pnn.create_pool("avgmax", "window", **opts)(x).numpy(), 0.5 * (avg + mx), rtol=1e-12)
    np.testing.assert_allclose(pnn.create_pool("catavgmax", "window", **opts)(x).numpy(),
                               np.concatenate([avg, mx], 1), rtol=1e-12)


def test_catavgmax_in_cbam_spatial_branch_gives_two_maps():
    cbam = pnn.CBAM(8, spatial_pools=("catavgmax",))
    assert cbam.spatial.conv.in_channels == 2
    x = torch.randn(2, 8, 5, 5)
    assert cbam(x).shape == x.shape


# ---------------------------------------------------------------- count_include_pad
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(3, 2, 1, False), (3, 2, 1, True), (2, 2, 1, True),
                                                            (3, 1, 1, False), (4, 3, 2, True)])
def test_avg_pool_count_include_pad_matches_torch(k, kernel, stride, padding, ceil_mode):
    torch_cls = {1: torch.nn.AvgPool1d, 2: torch.nn.AvgPool2d, 3: torch.nn.AvgPool3d}[k]
    mine = {1: pnn.AvgPool1d, 2: pnn.AvgPool2d, 3: pnn.AvgPool3d}[k](kernel, stride, padding, ceil_mode=ceil_mode,
                                                                    count_include_pad=True)
    for n in (7, 8):
        x = torch.randn(2, 3, *([n] * k), dtype=torch.float64)
        want = torch_cls(kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=True)(x)
        torch.testing.assert_close(mine(x), want, rtol=1e-12, atol=1e-12)


def test_avg_pool_acceptance_case_and_default_differs():
    x = torch.randn(2, 3, 9, 10)
    torch.testing.assert_close(pnn.AvgPool2d(3, 2, 1, count_include_pad=True)(x), torch.nn.AvgPool2d(3, 2, 1)(x))
    # the default excludes padding (ONNX's count_include_pad=0): the border differs
    assert not torch.allclose(pnn.AvgPool2d(3, 2, 1)(x), torch.nn.AvgPool2d(3, 2, 1)(x))


def _include_pad_ref(x, kernel, strides, pads, dilations, ceil_mode, auto_pad):
    """sum of the valid values / number of kernel taps inside input + declared padding."""
    n, c, *spatial = x.shape
    k = len(kernel)
    axes = [ref.axis_out(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[k + i], ceil_mode, auto_pad)
            for i in range(k)]
    if auto_pad == "NOTSET":
        end = [pads[k + i] for i in range(k)]
    else:  # SAME: the padding it adds is the declared padding
        end = [max(0, (axes[i][0] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i]) - axes[i][1]
               for i in range(k)]
    y = np.zeros((n, c, *[a[0] for a in axes]))
    for o in itertools.product(*[range(a[0]) for a in axes]):
        total, count = np.zeros((n, c)), 0
        for j in itertools.product(*[range(v) for v in kernel]):
            p = [o[i] * strides[i] - axes[i][1] + j[i] * dilations[i] for i in range(k)]
            if all(-axes[i][1] <= p[i] < spatial[i] + end[i] for i in range(k)):
                count += 1
            if all(0 <= p[i] < spatial[i] for i in range(k)):
                total += x[(slice(None), slice(None), *p)]
        y[(slice(None), slice(None), *o)] = total / count if count else 0.0
    return y


@pytest.mark.parametrize("spatial,kernel,stride,padding,dilation,ceil_mode", [
    ((9, 8), (3, 3), (2, 2), (1, 0, 2, 1), (1, 1), False),   # asymmetric ONNX pads
    ((9, 8), (3, 2), (2, 1), (1, 1), (2, 1), True),          # dilation
    ((8, 7), (3, 2), (2, 2), (1, 1), (2, 1), True),          # dilation, ceil_mode beyond the pads
    ((7, 6), (3, 3), (2, 2), "same", (1, 1), False),         # SAME pads count
    ((8, 8), (2, 2), (2, 2), "valid", (1, 1), False),
])
def test_avg_pool_count_include_pad_beyond_torch(spatial, kernel, stride, padding, dilation, ceil_mode):
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    got = pnn.AvgPool2d(kernel, stride, padding, dilation, ceil_mode, count_include_pad=True)(x)
    auto = {"same": "SAME_UPPER", "valid": "VALID"}.get(padding, "NOTSET") if isinstance(padding, str) else "NOTSET"
    pads = [0] * 4 if isinstance(padding, str) else list(padding) * (2 if len(padding) == 2 else 1)
    want = _include_pad_ref(x.numpy(), list(kernel), list(stride), pads, list(dilation), ceil_mode, auto)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


class _Wrap(torch.nn.Module):
    def __init__(self, mod):
        super().__init__()
        self.mod = mod

    def forward(self, x):
        return self.mod(x)


def _ort_run(module, x, n_out=1):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    program = torch.onnx.export(_Wrap(module).eval(), (x,), dynamo=True, verbose=False)
    proto = program.model_proto
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return proto, outs[:n_out]


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_count_include_pad_exports_as_averagepool(ceil_mode):
    x = torch.randn(2, 3, 9, 10)
    pool = pnn.AvgPool2d(3, 2, 1, ceil_mode=ceil_mode, count_include_pad=True)
    proto, (got,) = _ort_run(pool, x)
    nodes = [n for n in proto.graph.node if n.op_type == "AveragePool"]
    assert len(nodes) == 1 and {a.name: a.i for a in nodes[0].attribute}["count_include_pad"] == 1
    np.testing.assert_allclose(got, torch.nn.AvgPool2d(3, 2, 1, ceil_mode=ceil_mode)(x).numpy(), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("make", [lambda: pnn.L2Pool2d(3, 1, padding="same", mean=True),
                                  lambda: pnn.MaxPool2d(3, 2, "SAME"),
                                  lambda: pnn.AvgPool2d(3, 2, (1, 0, 2, 1), ceil_mode=True, count_include_pad=True),
                                  lambda: pnn.AvgPool2d(3, 2, 1, 2, ceil_mode=True)],
                         ids=["l2-same", "max-SAME", "avg-asym-ceil-include", "avg-dilated-ceil"])
def test_traced_windows_follow_the_input_size(make):
    pool = make()  # built in the test, so a construction bug fails here, not at collection
    # torch.jit.trace (the TorchScript export path) hands sizes over as tensors: the pads
    # that 'same' and ceil_mode need must stay traced, not frozen at the example's size
    traced = torch.jit.trace(pool, torch.randn(1, 2, 9, 9), check_trace=False)
    for shape in [(2, 2, 12, 11), (1, 2, 7, 8)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(traced(x), pool(x), rtol=0, atol=0)
    # and its constants follow a later dtype change (the fp16 export converts the traced module)
    half = copy.deepcopy(traced).half()
    torch.testing.assert_close(half(x.half()).float(), pool(x), rtol=2e-3, atol=2e-3)


# ---------------------------------------------------------------- return_indices / MaxUnpool
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", [
    (2, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 2, False), (2, 3, 1, 1, True)])
def test_max_pool_return_indices_matches_torch(k, kernel, stride, padding, dilation, ceil_mode):
    torch_cls = {1: torch.nn.MaxPool1d, 2: torch.nn.MaxPool2d, 3: torch.nn.MaxPool3d}[k]
    mine = {1: pnn.MaxPool1d, 2: pnn.MaxPool2d, 3: pnn.MaxPool3d}[k](kernel, stride, padding, dilation, ceil_mode,
                                                                    return_indices=True)
    x = torch.randn(2, 3, *([8, 7, 9][:k]), dtype=torch.float64)
    y, idx = mine(x)
    y_t, idx_t = torch_cls(kernel, stride, padding, dilation, return_indices=True, ceil_mode=ceil_mode)(x)
    torch.testing.assert_close(y, y_t, rtol=0, atol=0)
    torch.testing.assert_close(idx, idx_t, rtol=0, atol=0)


def test_max_unpool_inverts_return_indices_as_torch_does():
    x = torch.randn(2, 3, 6, 8)
    y, idx = pnn.MaxPool2d(2, 2, return_indices=True)(x)
    y_t, idx_t = torch.nn.MaxPool2d(2, 2, return_indices=True)(x)
    torch.testing.assert_close(y, y_t, rtol=0, atol=0)
    assert torch.equal(idx, idx_t)
    un = pnn.MaxUnpool2d(2, 2)(y, idx)
    torch.testing.assert_close(un, torch.nn.MaxUnpool2d(2, 2)(y_t, idx_t), rtol=0, atol=0)
    # the round trip keeps each window's maximum in place and zeros the rest
    kept = (un != 0)
    assert int(kept.sum()) == y.numel()
    torch.testing.assert_close(un[kept], x[kept])


def test_max_pool_indices_export_as_maxpool_indices_output():
    x = torch.randn(2, 3, 7, 9)
    pool = pnn.MaxPool2d(3, 2, 1, return_indices=True)
    proto, (y, idx) = _ort_run(pool, x, n_out=2)
    assert any(n.op_type == "MaxPool" and len([o for o in n.output if o]) == 2 for n in proto.graph.node)
    y_t, idx_t = TF.max_pool2d(x, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(idx, idx_t.numpy())


# ---------------------------------------------------------------- upsampling
def _seed002_nearest(x, s):
    # seed 002's nearest_upsample, transcribed: y[i, j] = x[int(i / s), int(j / s)]
    n, c, h, w = x.shape
    y = np.zeros((n, c, int(h * s), int(w * s)))
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            y[:, :, i, j] = x[:, :, int(i / s), int(j / s)]
    return y


def _bilinear_half_pixel(x, s):
    n, c, h, w = x.shape
    y = np.zeros((n, c, int(h * s), int(w * s)))

    def taps(i, size):
        src = max((i + 0.5) / s - 0.5, 0.0)
        i0 = min(int(math.floor(src)), size - 1)
        i1 = min(i0 + 1, size - 1)
        return i0, i1, src - i0

    for i in range(y.shape[2]):
        h0, h1, fh = taps(i, h)
        for j in range(y.shape[3]):
            w0, w1, fw = taps(j, w)
            y[:, :, i, j] = ((1 - fh) * (1 - fw) * x[:, :, h0, w0] + (1 - fh) * fw * x[:, :, h0, w1]
                             + fh * (1 - fw) * x[:, :, h1, w0] + fh * fw * x[:, :, h1, w1])
    return y


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_nearest_is_the_seeds(scale):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    got = pnn.Upsample(scale)(x).numpy()
    # seed 004 (Keras UpSampling2D): repeat rows and columns
    np.testing.assert_array_equal(got, x.numpy().repeat(scale, axis=2).repeat(scale, axis=3))
    np.testing.assert_array_equal(got, _seed002_nearest(x.numpy(), scale))
    x1 = torch.randn(2, 3, 5, dtype=torch.float64)
    np.testing.assert_array_equal(pnn.Upsample(scale)(x1).numpy(), x1.numpy().repeat(scale, axis=2))


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_bilinear_half_pixel(scale):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    np.testing.assert_allclose(pnn.Upsample(scale, "bilinear")(x).numpy(), _bilinear_half_pixel(x.numpy(), scale),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_exports_as_resize(mode):
    x = torch.randn(2, 3, 5, 6)
    proto, (got,) = _ort_run(pnn.Upsample(2, mode), x)
    assert any(n.op_type == "Resize" for n in proto.graph.node)
    np.testing.assert_allclose(got, pnn.Upsample(2, mode)(x).numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- argument checking
BAD_ARGS = [
    (lambda: pnn.L2Pool2d(3, 2, "same"), TypeError, "L2Pool2d: ceil_mode"),
    (lambda: pnn.AvgPool2d(3, ceil_mode="yes"), TypeError, "AvgPool2d: ceil_mode"),
    (lambda: pnn.SoftPool2d(2, beta="1"), TypeError, "SoftPool2d: beta"),
    (lambda: pnn.SoftPool2d(2, beta=float("nan")), ValueError, "SoftPool2d: beta"),
    (lambda: pnn.MaxPool2d(2.5), TypeError, "MaxPool2d: kernel_size"),
    (lambda: pnn.MaxPool2d(2, stride="2"), TypeError, "MaxPool2d: stride"),
    (lambda: pnn.MaxPool2d(2, 0), ValueError, "MaxPool2d: stride"),
    (lambda: pnn.AvgPool2d(2, padding="full"), ValueError, "AvgPool2d: padding"),
    (lambda: pnn.AvgPool2d(2, padding=-1), ValueError, "AvgPool2d: padding"),
    (lambda: pnn.AvgPool2d(2, dilation=(1, 1, 1)), ValueError, "AvgPool2d: dilation"),
    (lambda: pnn.AvgPool2d(2, count_include_pad=1), TypeError, "AvgPool2d: count_include_pad"),
    (lambda: pnn.MaxPool3d(2, return_indices="no"), TypeError, "MaxPool3d: return_indices"),
    (lambda: pnn.StochasticPool2d(2, seed=1.5), TypeError, "StochasticPool2d: seed"),
    (lambda: pnn.MixedPool1d(2, alpha="0.5"), TypeError, "MixedPool1d: alpha"),
    (lambda: pnn.MixedPool1d(2, learn_alpha=1), TypeError, "MixedPool1d: learn_alpha"),
    (lambda: pnn.LpPool2d(2, 2, mean="yes"), TypeError, "LpPool2d: mean"),
    (lambda: pnn.GlobalSoftPool(beta=None), TypeError, "GlobalSoftPool: beta"),
    (lambda: pnn.GlobalAvgPool(flatten="yes"), TypeError, "GlobalAvgPool: flatten"),
    (lambda: pnn.AvgPoolReduce(dim="1"), TypeError, "AvgPoolReduce: dim"),
    (lambda: pnn.SoftPoolReduce(1, keepdim=1), TypeError, "SoftPoolReduce: keepdim"),
    (lambda: pnn.MaxUnpool2d("2"), TypeError, "MaxUnpool2d: kernel_size"),
    (lambda: pnn.Upsample("2"), TypeError, "Upsample: scale_factor"),
    (lambda: pnn.Upsample(2, "bicubic"), ValueError, "Upsample: mode"),
    (lambda: pnn.WeightedAvgPool2d(4, 2, ceil_mode=None), TypeError, "WeightedAvgPool2d: ceil_mode"),
]


@pytest.mark.parametrize("make,exc,match", BAD_ARGS, ids=[m for _, _, m in BAD_ARGS])
def test_wrong_arguments_raise_naming_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_functions_check_arguments_too():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(TypeError, match="avg_pool2d: ceil_mode"):
        pnn.functional.avg_pool2d(x, 3, 2, 1, 1, "yes")
    with pytest.raises(TypeError, match="max_pool2d: kernel_size"):
        pnn.functional.max_pool2d(x, "3")


@pytest.mark.parametrize("spelling", ["same", "SAME", "Same", "valid", "VALID"])
def test_padding_spellings_are_case_insensitive(spelling):
    x = torch.randn(1, 2, 7, 8)
    want = pnn.L2Pool2d(3, 2, padding=spelling.lower())(x)
    torch.testing.assert_close(pnn.L2Pool2d(3, 2, padding=spelling)(x), want)
    assert want.shape[2:] == ((4, 4) if spelling.lower() == "same" else (3, 3))


def test_repr_lists_every_window_argument():
    text = repr(pnn.SoftPool2d(3, 2, "same", beta=2.0))
    assert text == "SoftPool2d(kernel_size=3, stride=2, padding=same, dilation=1, ceil_mode=False, beta=2.0)"


# ---------------------------------------------------------------- one functional module
def test_one_functional_module_under_both_paths():
    import poolexport.functional as F
    import poolexport.nn.functional as NF

    for name in F.__all__:
        assert getattr(NF, name) is getattr(F, name), name


def test_output_size_rule_is_shared_with_tensorrt_shapes():
    from poolexport import _window
    from poolexport.tensorrt import shapes

    assert shapes.axis_output is _window.axis_output and shapes.INT_OPS is _window.INT_OPS


# ---------------------------------------------------------------- seed 000's networks
def _np(t):
    return t.detach().numpy()


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _stoch_window(v, e):
    return ref.stochastic_expectation_window(v)


def _rms_window(v, e):
    return math.sqrt(sum(a * a for a in v) / len(v))


def test_newcbam_seed_block_is_the_seeds_formula():
    import poolexport.models as M

    torch.manual_seed(0)
    block = M.NewCBAMSeed(16).double().eval()
    torch.nn.init.constant_(block.gamma, 0.3)
    x = torch.randn(2, 16, 6, 7, dtype=torch.float64)
    xn = x.numpy()
    # channel attention: one MLP over concat[GAP, GMP, global RMS] (3C), C // 16 = 1 hidden unit
    z = np.concatenate([xn.mean((2, 3)), xn.max((2, 3)), np.sqrt((xn ** 2).mean((2, 3)))], 1)
    assert block.dense1.in_features == 48 and block.dense1.out_features == 1
    h = np.maximum(z @ _np(block.dense1.weight).T + _np(block.dense1.bias), 0)
    channel_out = xn * _sigmoid(h @ _np(block.dense2.weight).T + _np(block.dense2.bias))[:, :, None, None]
    # spatial attention: per-channel 3x3 stride-1 'same' [stochastic, RMS] (2C) -> 1x1 conv
    same = dict(kernel=[3, 3], strides=[1, 1], auto_pad="SAME_UPPER")
    maps = np.concatenate([ref.pool(xn, _stoch_window, **same), ref.pool(xn, _rms_window, **same)], 1)
    gate = np.einsum("nchw,c->nhw", maps, _np(block.conv.weight).reshape(-1))[:, None] + _np(block.conv.bias)
    spatial_out = xn * _sigmoid(gate)
    want = 0.7 * xn + 0.3 * (channel_out + spatial_out)
    np.testing.assert_allclose(_np(block(x)), want, rtol=1e-10, atol=1e-12)


def test_cbam_seed_block_is_the_seeds_formula():
    import poolexport.models as M

    torch.manual_seed(0)
    block = M.ChannelCBAMSeed(8).double().eval()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64).relu()
    xn = x.numpy()
    stoch = ref.reduce(xn, lambda v, e: ref.stochastic_expectation_window(v), axes=[2, 3], keepdims=False)
    z = np.concatenate([stoch, np.sqrt((xn ** 2).mean((2, 3)))], 1)
    assert block.fc1.out_features == 16  # C // 0.5 = 2C
    h = np.maximum(z @ _np(block.fc1.weight).T + _np(block.fc1.bias), 0)
    gate = _sigmoid(h @ _np(block.fc2.weight).T + _np(block.fc2.bias))
    np.testing.assert_allclose(_np(block(x)), xn * gate[:, :, None, None], rtol=1e-10, atol=1e-12)


def test_seed_networks_layout():
    import poolexport.models as M

    full = M.create_model("newcbam_seed", width=1.0)
    convs = [m for m in full.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1024] and all(c.bias is not None for c in convs)
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.BatchNorm2d)) for m in full.features)  # as written
    assert sum(isinstance(m, M.NewCBAMSeed) for m in full.modules()) == 5
    assert isinstance(full.head, torch.nn.Identity)  # the seed's model ends at global average pooling
    blocks = [m for m in full.modules() if isinstance(m, M.NewCBAMSeed)]
    assert [b.dense1.out_features for b in blocks] == [4, 8, 16, 32, 64]  # C // 16
    assert M.create_model("newcbam_seed", num_classes=10)(torch.rand(1, 3, 16, 16)).shape == (1, 10)

    seed2 = M.create_model("cbam_seed").eval()
    convs = [m for m in seed2.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128]
    assert sum(isinstance(m, torch.nn.ReLU) for m in seed2.features) == 4
    with torch.no_grad():
        p = seed2(torch.rand(3, 3, 16, 16))
    assert p.shape == (3, 10)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    # Keras he_normal: zero biases, truncated normal of variance 2 / fan_in
    fc1 = [m for m in seed2.modules() if isinstance(m, M.ChannelCBAMSeed)][-1].fc1
    assert fc1.in_features == 256 and fc1.out_features == 256
    std = math.sqrt(2 / 256)
    assert torch.count_nonzero(fc1.bias) == 0
    assert abs(float(fc1.weight.std()) / std - 1) < 0.05 and float(fc1.weight.abs().max()) <= 2 * std / 0.8796 + 1e-6


def test_cbam_layout_models_select_the_l2_form():
    import poolexport.models as M

    def kinds(model):
        lp = (pnn.GlobalLpPool, pnn.LpPoolReduce)
        return [(p.norm_type, p.mean) for p in model.modules() if isinstance(p, lp)]

    assert set(kinds(M.create_model("newcbam"))) == {(2.0, False)}
    assert set(kinds(M.create_model("newcbam", l2="rms"))) == {(2.0, True)}
    assert set(kinds(M.create_model("cbam_stochastic_l2", l2="rms"))) == {(2.0, True)}
    with pytest.raises(ValueError, match="newcbam: l2 must be one of"):
        M.create_model("newcbam", l2="L2")


@pytest.mark.parametrize("name", ["newcbam_seed", "cbam_seed"])
def test_seed_networks_export_and_pass_parity(name):
    """Acceptance: with gamma away from 0, the ort-target export passes parity on every
    runtime present (absent ones skip with a reason)."""
    import poolexport.models as M
    from poolexport.onnx.export import export_model
    from poolexport.parity import RUNTIMES, check_parity, parity_shapes

    torch.manual_seed(0)
    model = M.create_model(name).eval()
    for mod in model.modules():
        if isinstance(mod, M.NewCBAMSeed):
            torch.nn.init.constant_(mod.gamma, 0.5)
    shape = (2, 3, 32, 32)
    proto = export_model(model, torch.rand(*shape), target="ort")
    assert any(n.domain == "poolexport" for n in proto.graph.node)
    report = check_parity(proto, model, parity_shapes(proto, shape), runtimes=RUNTIMES)
    ran = {r.runtime for r in report.results if r.status != "skip"}
    assert {"torch", "onnxruntime", "onnxruntime-fallback", "reference"} <= ran
    assert report.passed, [r for r in report.results if r.status not in ("pass", "skip")]
