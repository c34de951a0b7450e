"""Standard-op layers of poolexport.nn against independent references.

References: float64 NumPy loops written here from the ONNX windowing rules (not from
poolexport._window), PyTorch's own pooling where the math agrees, and ONNX Runtime's
built-in LpPool / LRN / MaxUnpool kernels.
"""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import poolexport.nn as pnn
from poolexport.nn import functional as PF


# ---------------------------------------------------------------- float64 window reference
def _axis(n, k, s, pb, pe, d, ceil_mode, auto_pad):
    """(output size, begin pad) of one axis, from the ONNX operator spec."""
    span = (k - 1) * d + 1
    if auto_pad == "SAME_UPPER":
        out = -(-n // s)
        total = max(0, (out - 1) * s + span - n)
        return out, total // 2
    if auto_pad == "VALID":
        return (n - span) // s + 1, 0
    room = n + pb + pe - span
    out = (math.ceil(room / s) if ceil_mode else room // s) + 1
    if ceil_mode and (out - 1) * s >= n + pb:
        out -= 1
    return out, pb


def ref_pool(x, reduce, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Apply ``reduce(values) -> float`` to every window (valid positions only)."""
    x = np.asarray(x, dtype=np.float64)
    n, c, *sp = x.shape
    r = len(sp)
    kern = [kernel] * r if isinstance(kernel, int) else list(kernel)
    st = kern if stride is None else ([stride] * r if isinstance(stride, int) else list(stride))
    dil = [dilation] * r if isinstance(dilation, int) else list(dilation)
    auto = "NOTSET"
    if padding == "same":
        auto, pads = "SAME_UPPER", [0] * (2 * r)
    elif padding == "valid":
        auto, pads = "VALID", [0] * (2 * r)
    elif isinstance(padding, int):
        pads = [padding] * (2 * r)
    elif len(padding) == r:
        pads = list(padding) * 2
    else:
        pads = list(padding)
    axes = [_axis(sp[i], kern[i], st[i], pads[i], pads[r + i], dil[i], ceil_mode, auto) for i in range(r)]
    out = np.zeros((n, c, *[a[0] for a in axes]))
    for o in itertools.product(*[range(a[0]) for a in axes]):
        idx = []
        for j in itertools.product(*[range(k) for k in kern]):
            pos = [o[i] * st[i] - axes[i][1] + j[i] * dil[i] for i in range(r)]
            if all(0 <= pos[i] < sp[i] for i in range(r)):
                idx.append(tuple(pos))
        for b in range(n):
            for ch in range(c):
                vals = np.array([x[(b, ch) + p] for p in idx])
                out[(b, ch) + o] = reduce(vals) if len(vals) else 0.0
    return out


def lp_ref(p, mean=False):
    return lambda v: (np.mean(np.abs(v) ** p) if mean else np.sum(np.abs(v) ** p)) ** (1 / p)


def mixed_ref(alpha):
    return lambda v: alpha * v.max() + (1 - alpha) * v.mean()


WINDOW_CASES = [
    # dims, spatial, kernel, stride, padding, dilation, ceil_mode
    (1, (11,), 3, 2, 1, 1, False),
    (1, (10,), 4, 3, 0, 2, True),
    (1, (9,), 3, 1, "same", 1, False),
    (2, (7, 8), 3, 2, 1, 1, True),
    (2, (9, 7), (3, 2), (2, 1), (1, 0, 2, 1), (2, 1), False),
    (2, (8, 8), 2, None, "valid", 1, False),
    (2, (6, 7), 3, 2, "same", 2, False),
    (3, (5, 6, 5), 2, 2, 1, 1, True),
    (3, (5, 5, 6), (3, 1, 2), (1, 2, 2), 0, (1, 1, 2), False),
]


def _case_id(c):
    return f"{c[0]}d-k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-ceil{int(c[6])}"


@pytest.mark.parametrize("case", WINDOW_CASES, ids=_case_id)
@pytest.mark.parametrize("p,mean", [(2.0, False), (2.0, True), (3.0, False), (1.0, True)])
def test_lp_pool_window_matches_reference(case, p, mean):
    k, spatial, kernel, stride, padding, dilation, ceil_mode = case
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    cls = {1: pnn.LpPool1d, 2: pnn.LpPool2d, 3: pnn.LpPool3d}[k]
    got = cls(p, kernel, stride, ceil_mode, padding=padding, dilation=dilation, mean=mean)(x)
    want = ref_pool(x.numpy(), lp_ref(p, mean), kernel, stride, padding, dilation, ceil_mode)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", WINDOW_CASES, ids=_case_id)
def test_avg_max_mixed_window_match_reference(case):
    k, spatial, kernel, stride, padding, dilation, ceil_mode = case
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    args = (kernel, stride, padding, dilation, ceil_mode)
    avg = {1: pnn.AvgPool1d, 2: pnn.AvgPool2d, 3: pnn.AvgPool3d}[k](*args)(x)
    mx = {1: pnn.MaxPool1d, 2: pnn.MaxPool2d, 3: pnn.MaxPool3d}[k](*args)(x)
    mixed = {1: pnn.MixedPool1d, 2: pnn.MixedPool2d, 3: pnn.MixedPool3d}[k](*args, alpha=0.3)(x)
    np.testing.assert_allclose(avg.numpy(), ref_pool(x.numpy(), np.mean, *args), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mx.numpy(), ref_pool(x.numpy(), np.max, *args), rtol=0, atol=0)
    np.testing.assert_allclose(mixed.numpy(), ref_pool(x.numpy(), mixed_ref(0.3), *args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_lp_pool_matches_torch_for_nonnegative_input(k, ceil_mode):
    # torch's lp_pool raises a to the p-th power keeping the sign, and in ceil_mode
    # rescales a clipped last window by the full kernel size: compare where both agree.
    if ceil_mode:
        x = torch.rand(2, 3, *([9] * k), dtype=torch.float64)  # 9 = 1 + 2*4: no clipped window
    else:
        x = torch.rand(2, 3, *([10] * k), dtype=torch.float64)
    fn = {1: TF.lp_pool1d, 2: TF.lp_pool2d, 3: TF.lp_pool3d}[k]
    mine = {1: PF.lp_pool1d, 2: PF.lp_pool2d, 3: PF.lp_pool3d}[k]
    for p in (1.0, 2.0, 3.0):
        torch.testing.assert_close(mine(x, p, 3, 2, ceil_mode), fn(x, p, 3, 2, ceil_mode))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_avg_max_match_torch(k):
    x = torch.randn(2, 3, *([9] * k), dtype=torch.float64)
    avg = {1: TF.avg_pool1d, 2: TF.avg_pool2d, 3: TF.avg_pool3d}[k]
    mx = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}[k]
    pavg = {1: PF.avg_pool1d, 2: PF.avg_pool2d, 3: PF.avg_pool3d}[k]
    pmx = {1: PF.max_pool1d, 2: PF.max_pool2d, 3: PF.max_pool3d}[k]
    for ceil_mode in (False, True):
        torch.testing.assert_close(pavg(x, 3, 2, 1, 1, ceil_mode),
                                   avg(x, 3, 2, 1, ceil_mode=ceil_mode, count_include_pad=False))
        torch.testing.assert_close(pmx(x, 3, 2, 1, 2, ceil_mode), mx(x, 3, 2, 1, 2, ceil_mode=ceil_mode))


def test_l2_pool_is_lp_with_p_2_and_rms_differs_by_window_count():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    l2 = pnn.L2Pool2d(2)(x)
    torch.testing.assert_close(l2, pnn.LpPool2d(2, 2)(x))
    # sqrt(sum a^2 over 4 values) = 2 * sqrt(mean a^2)
    torch.testing.assert_close(l2, 2 * pnn.L2Pool2d(2, mean=True)(x))
    # a "1x1 L2 pool" is abs(x); a real one mixes the window
    assert not torch.allclose(l2, x.abs()[..., ::2, ::2])


def test_lp_pool_zero_window_has_zero_gradient():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    for mean in (False, True):
        y = PF.lp_pool2d(x, 2, 2, mean=mean)
        y.sum().backward()
        assert torch.equal(y, torch.zeros_like(y))
        assert torch.isfinite(x.grad).all() and torch.equal(x.grad, torch.zeros_like(x))


def test_lp_pool_norm_form_matches_onnxruntime_lppool_with_pads():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import onnx
    from onnx import TensorProto, helper

    x = np.random.default_rng(0).standard_normal((1, 2, 7, 6)).astype(np.float32)
    node = helper.make_node("LpPool", ["X"], ["Y"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], p=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    got = PF.lp_pool2d(torch.from_numpy(x), 2, (3, 2), 2, padding=(1, 0, 1, 1))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- reductions and globals
def _np_reduce(x, axes, fn):
    """fn applied to the values of each slice over ``axes`` (keepdims)."""
    x = np.asarray(x, dtype=np.float64)
    kept = [i for i in range(x.ndim) if i not in axes]
    moved = np.moveaxis(x, kept + list(axes), range(x.ndim))
    flat = moved.reshape(*[x.shape[i] for i in kept], -1)
    out = np.apply_along_axis(fn, -1, flat)
    return out.reshape([1 if i in axes else x.shape[i] for i in range(x.ndim)])


def _softpool_ref(v, beta=1.0):
    w = np.exp(beta * v - np.max(beta * v))
    return np.sum(w / w.sum() * v)


def _stochastic_expectation_ref(v):
    r = np.maximum(v, 0)
    return (r * r).sum() / r.sum() if r.sum() > 0 else 0.0


REDUCE_REFS = {
    "avg": np.mean,
    "max": np.max,
    "l2": lambda v: np.sqrt(np.sum(v * v)),
    "lp": lambda v: np.sum(np.abs(v) ** 3) ** (1 / 3),
    "rms": lambda v: np.sqrt(np.mean(v * v)),
    "soft": _softpool_ref,
    "stochastic": _stochastic_expectation_ref,
    "mixed": mixed_ref(0.25),
}
POOL_OPTS = dict(p=3.0, alpha=0.25)


@pytest.mark.parametrize("name", list(REDUCE_REFS))
@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 4, 5, 6), (1, 3, 3, 4, 5)])
def test_global_and_channel_forms_match_reference(name, shape):
    x = torch.randn(*shape, dtype=torch.float64)
    if name == "stochastic":
        x = x.relu()
    spatial = tuple(range(2, len(shape)))
    g = pnn.create_pool(name, "global", **POOL_OPTS).eval()
    np.testing.assert_allclose(g(x).numpy(), _np_reduce(x, spatial, REDUCE_REFS[name]), rtol=1e-9, atol=1e-12)
    flat = pnn.create_pool(name, "global", flatten=True, **POOL_OPTS).eval()(x)
    assert flat.shape == shape[:2]
    c = pnn.create_pool(name, "channel", **POOL_OPTS).eval()
    np.testing.assert_allclose(c(x).numpy(), _np_reduce(x, (1,), REDUCE_REFS[name]), rtol=1e-9, atol=1e-12)
    r = pnn.create_pool(name, "reduce", dim=(1, -1), keepdim=True, **POOL_OPTS).eval()
    np.testing.assert_allclose(r(x).numpy(), _np_reduce(x, (1, len(shape) - 1), REDUCE_REFS[name]),
                               rtol=1e-9, atol=1e-12)


def test_global_stochastic_training_picks_an_element_reproducibly():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    pool = pnn.GlobalStochasticPool(seed=7).train()
    y = pool(x)
    vals = x.reshape(2, 3, -1)
    assert ((vals - y.reshape(2, 3, 1)).abs() == 0).any(-1).all()
    torch.testing.assert_close(pool(x), y)
    # fresh seeds from torch's generator: differ across seeds, reproduce under manual_seed
    free = pnn.GlobalStochasticPool().train()
    torch.manual_seed(1)
    a = free(x)
    torch.manual_seed(2)
    b = free(x)
    torch.manual_seed(1)
    torch.testing.assert_close(free(x), a)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_weighted_avg_pool(k):
    x = torch.randn(2, 3, *([6, 5, 4][:k]), dtype=torch.float64)
    cls = {1: pnn.WeightedAvgPool1d, 2: pnn.WeightedAvgPool2d, 3: pnn.WeightedAvgPool3d}[k]
    pool = cls(3, 2, 2, padding=1, dilation=1, ceil_mode=True).double()
    with torch.no_grad():
        pool.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    w = np.array([0.5, -1.0, 2.0]).reshape(1, 3, *([1] * k))
    want = ref_pool(x.numpy() * w, np.mean, 2, 2, 1, 1, True)
    np.testing.assert_allclose(pool(x).detach().numpy(), want, rtol=1e-12)
    g = pnn.GlobalWeightedAvgPool(3, flatten=True).double()
    with torch.no_grad():
        g.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    np.testing.assert_allclose(g(x).detach().numpy(), (x.numpy() * w).mean(tuple(range(2, 2 + k))), rtol=1e-12)
    with pytest.raises(ValueError, match=f"WeightedAvgPool{k}d.*4"):
        pool(torch.randn(1, 4, *([4] * k), dtype=torch.float64))


# ---------------------------------------------------------------- gradcheck (learnable / smooth layers)
def test_gradcheck_lp_pool():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    for mean in (False, True):
        assert torch.autograd.gradcheck(
            lambda t: PF.lp_pool2d(t, 3.0, 3, 2, True, padding=1, dilation=1, mean=mean), (x,))
    for mean in (False, True):
        assert torch.autograd.gradcheck(lambda t: PF.lp_pool_reduce(t, 3.0, (1, 3), mean=mean), (x,))


def test_gradcheck_mixed_pool_learned_alpha():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, a: PF.mixed_pool2d(t, 2, 2, 1, 1, False, a), (x, alpha))
    assert torch.autograd.gradcheck(lambda t, a: PF.mixed_pool_reduce(t, 1, True, a), (x, alpha))
    pool = pnn.MixedPool2d(2, learn_alpha=True, alpha=0.3).double()
    pool(x).sum().backward()
    assert pool.alpha_logit.grad is not None and pool.alpha_logit.grad.abs() > 0
    torch.testing.assert_close(pool.alpha, torch.tensor(0.3, dtype=torch.float64))


def test_gradcheck_weighted_avg_pool_weight():
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    pool = pnn.WeightedAvgPool2d(3, 2).double()

    def f(weight):
        return torch.func.functional_call(pool, {"weight": weight}, (x,))

    assert torch.autograd.gradcheck(f, (w,))


def test_gradcheck_lrn_and_bilinear():
    x = torch.randn(1, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: PF.local_response_norm(t, 4, 0.1, 0.75, 2.0), (x,))
    assert torch.autograd.gradcheck(lambda t: PF.bilinear_pool(t), (x,))


# ---------------------------------------------------------------- LRN, bilinear, unpool
def _lrn_ref(x, size, alpha, beta, bias):
    x = np.asarray(x, dtype=np.float64)
    c = x.shape[1]
    out = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - (size - 1) // 2), min(c - 1, ch + math.ceil((size - 1) / 2))
        sq = (x[:, lo:hi + 1] ** 2).sum(1)
        out[:, ch] = x[:, ch] / (bias + alpha / size * sq) ** beta
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(2, 6, 5), (1, 7, 3, 4), (1, 4, 2, 3, 2)])
def test_local_response_norm(size, shape):
    x = torch.randn(*shape, dtype=torch.float64)
    got = pnn.LocalResponseNorm(size, 0.5, 0.75, 2.0)(x)
    np.testing.assert_allclose(got.numpy(), _lrn_ref(x.numpy(), size, 0.5, 0.75, 2.0), rtol=1e-12)
    if size % 2:  # torch's window is the mirror image of ONNX's: equal for odd sizes only
        torch.testing.assert_close(got, TF.local_response_norm(x, size, 0.5, 0.75, 2.0))


@pytest.mark.parametrize("size", [3, 5])
def test_local_response_norm_matches_onnxruntime_lrn(size):
    # ONNX Runtime's LRN kernel only accepts odd sizes, and onnx 1.23's reference LRN loops
    # over the batch axis instead of channels, so even sizes are checked by _lrn_ref alone
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from onnx import TensorProto, helper

    x = np.random.default_rng(1).standard_normal((2, 6, 4, 5)).astype(np.float32)
    node = helper.make_node("LRN", ["X"], ["Y"], size=size, alpha=0.3, beta=0.6, bias=1.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"X": x})[0]
    got = PF.local_response_norm(torch.from_numpy(x), size, 0.3, 0.6, 1.5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_bilinear_pool():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = torch.randn(2, 2, 4, 5, dtype=torch.float64)
    a, b = x.numpy().reshape(2, 3, -1), y.numpy().reshape(2, 2, -1)
    raw = np.einsum("ncl,ndl->ncd", a, b).reshape(2, -1) / 20
    ssq = np.sign(raw) * np.sqrt(np.abs(raw))
    want = ssq / np.linalg.norm(ssq, axis=1, keepdims=True)
    np.testing.assert_allclose(pnn.BilinearPool()(x, y).numpy(), want, rtol=1e-8)
    np.testing.assert_allclose(pnn.BilinearPool(signed_sqrt=False, normalize=False)(x, y).numpy(), raw, rtol=1e-12)
    assert pnn.BilinearPool()(x).shape == (2, 9)
    x1 = torch.randn(2, 3, 7, dtype=torch.float64)  # 1-D: locations are the one axis
    raw1 = np.einsum("ncl,ndl->ncd", x1.numpy(), x1.numpy()).reshape(2, -1) / 7
    np.testing.assert_allclose(pnn.BilinearPool(signed_sqrt=False, normalize=False)(x1).numpy(), raw1, rtol=1e-12)
    with pytest.raises(ValueError, match="bilinear_pool"):
        pnn.BilinearPool()(x, torch.randn(2, 2, 4, 4))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_max_unpool_scatters_to_argmax(k):
    x = torch.rand(2, 3, *([6] * k), dtype=torch.float64) + 0.1  # positive: zeros never win a window
    mp = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}[k]
    y, idx = mp(x, 2, 2, return_indices=True)
    un = {1: pnn.MaxUnpool1d, 2: pnn.MaxUnpool2d, 3: pnn.MaxUnpool3d}[k](2, 2)(y, idx)
    want = np.zeros((2, 3, 6 ** k))
    for b in range(2):
        for c in range(3):
            want[b, c, idx[b, c].reshape(-1).numpy()] = y[b, c].reshape(-1).numpy()
    np.testing.assert_array_equal(un.reshape(2, 3, -1).numpy(), want)
    # every kept value is the maximum of its window
    np.testing.assert_array_equal(mp(un, 2, 2).numpy(), y.numpy())


def test_max_unpool_matches_onnxruntime_maxunpool():
    # ONNX indices are flattened over N*C*H*W, torch's per (n, c) plane: offset them
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from onnx import TensorProto, helper

    x = torch.randn(2, 3, 6, 8)
    y, idx = TF.max_pool2d(x, 2, 2, return_indices=True)
    onnx_idx = idx + (torch.arange(6).reshape(2, 3, 1, 1) * 48)
    node = helper.make_node("MaxUnpool", ["X", "I"], ["Y"], kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, y.shape),
                                            helper.make_tensor_value_info("I", TensorProto.INT64, y.shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"X": y.numpy(), "I": onnx_idx.numpy()})[0]
    np.testing.assert_array_equal(pnn.MaxUnpool2d(2, 2)(y, idx).numpy(), want)


# ---------------------------------------------------------------- factory and validation
def test_factory_errors_name_the_argument():
    with pytest.raises(ValueError, match="pool must be one of"):
        pnn.create_pool("median")
    with pytest.raises(ValueError, match="form must be one of"):
        pnn.create_pool("avg", "sideways")
    with pytest.raises(ValueError, match="kernel_size is required"):
        pnn.create_pool("avg", "window")
    with pytest.raises(ValueError, match="dims"):
        pnn.create_pool("avg", "window", kernel_size=2, dims=4)
    with pytest.raises(ValueError, match="create_attention: attn"):
        pnn.create_attention("gc", 8)
    mod = torch.nn.Identity()
    assert pnn.create_pool(mod) is mod
    assert isinstance(pnn.create_attention(None, 8), torch.nn.Identity)


def test_window_forms_from_factory():
    x = torch.rand(1, 2, 9, 9, dtype=torch.float64)
    for name, ref in [("avg", np.mean), ("max", np.max), ("l2", lp_ref(2)), ("rms", lp_ref(2, True)),
                      ("lp", lp_ref(3)), ("mixed", mixed_ref(0.25)), ("soft", _softpool_ref),
                      ("stochastic", _stochastic_expectation_ref)]:
        pool = pnn.create_pool(name, "window", kernel_size=3, stride=2, padding=1, ceil_mode=True, **POOL_OPTS).eval()
        np.testing.assert_allclose(pool(x).numpy(), ref_pool(x.numpy(), ref, 3, 2, 1, 1, True),
                                   rtol=1e-6 if name in ("soft", "stochastic") else 1e-10, atol=1e-12, err_msg=name)
    x3 = torch.rand(1, 2, 4, 5, 6, dtype=torch.float64)
    assert pnn.create_pool("l2", "window", dims=3, kernel_size=2)(x3).shape == (1, 2, 2, 2, 3)


def test_layer_validation():
    with pytest.raises(ValueError, match="LpPool2d: norm_type"):
        pnn.LpPool2d(0.5, 2)
    with pytest.raises(ValueError, match="lp_pool2d: input must be 4-D"):
        PF.lp_pool2d(torch.randn(1, 2, 3), 2, 2)
    with pytest.raises(ValueError, match="lp_pool2d: padding"):
        PF.lp_pool2d(torch.randn(1, 2, 3, 3), 2, 2, padding="full")
    with pytest.raises(ValueError, match="MixedPool2d: alpha"):
        pnn.MixedPool2d(2, alpha=1.5)
    with pytest.raises(ValueError, match="avg_pool_reduce: dim 4"):
        PF.avg_pool_reduce(torch.randn(1, 2, 3), dim=4)
    with pytest.raises(ValueError, match="LocalResponseNorm: size"):
        pnn.LocalResponseNorm(0)
    with pytest.raises(ValueError, match="WeightedAvgPool2d: channels"):
        pnn.WeightedAvgPool2d(0, 2)


def test_functional_reexports():
    import poolexport.functional as F

    assert F.lp_pool2d is PF.lp_pool2d and F.mixed_pool_reduce is PF.mixed_pool_reduce
    assert F.local_response_norm is PF.local_response_norm and F.soft_pool2d is not None


class _StandardLayers(torch.nn.Module):
    """Every standard-op layer in one graph, so one export checks them all."""

    def __init__(self):
        super().__init__()
        self.parts = torch.nn.ModuleList([
            pnn.LpPool2d(2, 3, 2, True, padding=1), pnn.L2Pool2d(2, mean=True), pnn.LpPool2d(3, 2, dilation=2),
            pnn.MixedPool2d(3, 2, "same", learn_alpha=True), pnn.MaxPool2d(3, 2, 1, 2, True), pnn.AvgPool2d(2, 1, 1, 2),
            pnn.LocalResponseNorm(4), pnn.GlobalL2Pool(), pnn.GlobalMixedPool(), pnn.GlobalMaxPool(),
            pnn.WeightedAvgPool2d(4, 2), pnn.ECA(4), pnn.SE(4, pool="l2"),
            pnn.CBAM(4, channel_pools=("l2", "mixed"), spatial_pools=("l2", "max", "avg", "mixed", "rms")),
        ])
        self.bilinear = pnn.BilinearPool()

    def forward(self, x):
        return torch.cat([p(x).flatten(1) for p in self.parts] + [self.bilinear(x)], 1)


def _ort_check(model, example, shapes, dynamic: bool):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    dyn = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: dyn, 2: dyn, 3: dyn},) if dynamic else None)
    sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in shapes:
        xs = torch.randn(*shape)
        got = sess.run(None, {sess.get_inputs()[0].name: xs.numpy()})[0]
        with torch.no_grad():
            want = model(xs).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(shape))
    return {n.op_type for n in program.model_proto.graph.node}


def test_standard_layers_export_to_onnx_and_match_onnxruntime():
    ops = _ort_check(_StandardLayers().eval(), torch.randn(2, 4, 9, 9), [(2, 4, 9, 9)], dynamic=False)
    assert "ReduceL2" in ops  # L2 descriptors export to the standard reduction


class _ShapeDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.parts = torch.nn.ModuleList([pnn.LpPool2d(2, 3, 2, True, padding=1, mean=True),
                                          pnn.MaxPool2d(3, 2, "same"), pnn.GlobalL2Pool(mean=True)])

    def forward(self, x):
        return torch.cat([p(x).flatten(1) for p in self.parts], 1)


def test_windowed_layers_export_with_dynamic_spatial_dims():
    # pads, window counts and RMS means must follow the runtime shape, not the example's:
    # a count baked in as a constant would be silently wrong at another size
    model = _ShapeDependent().eval()
    _ort_check(model, torch.randn(2, 4, 9, 9), [(2, 4, 9, 9), (1, 4, 12, 11), (3, 4, 16, 7)], dynamic=True)
