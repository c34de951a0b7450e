"""SE, ECA and CBAM: float64 re-computations written by hand from the papers' formulas."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import poolexport.nn as pnn
from poolexport.nn.attention import eca_kernel_size


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _np(t):
    return t.detach().numpy().astype(np.float64)


def _gap(x):
    return x.reshape(x.shape[0], x.shape[1], -1).mean(-1)


def _gl2(x):
    return np.sqrt((x.reshape(x.shape[0], x.shape[1], -1) ** 2).sum(-1))


def _gmax(x):
    return x.reshape(x.shape[0], x.shape[1], -1).max(-1)


def _bcast(g, x):
    return g.reshape(*g.shape, *([1] * (x.ndim - 2)))


# ---------------------------------------------------------------- ECA kernel size
@pytest.mark.parametrize("channels", [1, 2, 3, 8, 16, 24, 32, 64, 100, 128, 256, 512, 1024, 2048])
def test_eca_kernel_size_follows_the_paper(channels):
    t = int(abs((math.log(channels, 2) + 1) / 2))
    k = t if t % 2 == 1 else t + 1
    assert eca_kernel_size(channels) == k
    assert pnn.ECA(channels).conv.kernel_size == (k,)


def test_eca_kernel_size_known_values():
    assert eca_kernel_size(64) == 3
    assert eca_kernel_size(512) == 5
    assert eca_kernel_size(2048) == 7
    assert eca_kernel_size(256, gamma=1, b=0) == 9


# ---------------------------------------------------------------- SE
@pytest.mark.parametrize("act,pool", [("relu", "avg"), ("swish", "avg"), ("relu", "l2"), ("silu", "max")])
def test_se_matches_hand_computation(act, pool):
    torch.manual_seed(3)
    x = torch.randn(2, 12, 5, 6, dtype=torch.float64)
    se = pnn.SE(12, reduction=4, pool=pool, act=act).double()
    xn = _np(x)
    s = {"avg": _gap, "l2": _gl2, "max": _gmax}[pool](xn)
    h = s @ _np(se.fc1.weight).T + _np(se.fc1.bias)
    h = np.maximum(h, 0) if act == "relu" else h * _sigmoid(h)
    g = _sigmoid(h @ _np(se.fc2.weight).T + _np(se.fc2.bias))
    np.testing.assert_allclose(_np(se(x)), xn * _bcast(g, xn), rtol=1e-12)


def test_se_hidden_width_never_zero_and_min_channels():
    assert pnn.SE(4, reduction=16).fc1.out_features == 1
    assert pnn.SE(4, reduction=16, min_channels=8).fc1.out_features == 8
    assert pnn.SE(64, reduction=16).fc1.out_features == 4
    assert pnn.CBAM(2).channel.mlp[0].out_features == 1


# ---------------------------------------------------------------- ECA
@pytest.mark.parametrize("channels", [16, 64])
def test_eca_matches_hand_computation(channels):
    torch.manual_seed(4)
    x = torch.randn(2, channels, 4, 3, dtype=torch.float64)
    eca = pnn.ECA(channels).double()
    with torch.no_grad():
        eca.conv.weight.normal_()
    xn = _np(x)
    w = _np(eca.conv.weight).reshape(-1)
    k = len(w)
    s = _gap(xn)
    padded = np.pad(s, ((0, 0), ((k - 1) // 2, (k - 1) // 2)))
    conv = np.stack([(padded[:, c:c + k] * w).sum(-1) for c in range(channels)], axis=1)
    np.testing.assert_allclose(_np(eca(x)), xn * _bcast(_sigmoid(conv), xn), rtol=1e-12)
    assert eca.conv.bias is None


# ---------------------------------------------------------------- CBAM
def _conv2d_same(maps, w, b):
    """maps (N, M, H, W), w (1, M, k, k) -> (N, 1, H, W), zero padding k // 2 (cross-correlation)."""
    n, m, h, wd = maps.shape
    k = w.shape[-1]
    p = np.pad(maps, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    out = np.zeros((n, 1, h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, 0, i, j] = (p[:, :, i:i + k, j:j + k] * w[0]).sum((1, 2, 3)) + b[0]
    return out


def _stochastic_expectation(v, axis):
    r = np.maximum(v, 0)
    s1 = r.sum(axis, keepdims=True)
    return np.where(s1 > 0, (r * r).sum(axis, keepdims=True) / np.where(s1 > 0, s1, 1), 0)


@pytest.mark.parametrize("channel_pools,spatial_pools", [
    (("avg", "max"), ("max", "avg")),
    (("stochastic", "l2"), ("stochastic", "l2")),
])
def test_cbam_matches_hand_computation(channel_pools, spatial_pools):
    torch.manual_seed(5)
    x = torch.rand(2, 8, 5, 6, dtype=torch.float64)
    cbam = pnn.CBAM(8, reduction=2, channel_pools=channel_pools, spatial_pools=spatial_pools,
                    kernel_size=3).double().eval()
    xn = _np(x)
    desc = {"avg": _gap, "max": _gmax, "l2": _gl2,
            "stochastic": lambda v: _stochastic_expectation(v.reshape(v.shape[0], v.shape[1], -1), -1)[..., 0]}
    w1, b1 = _np(cbam.channel.mlp[0].weight), _np(cbam.channel.mlp[0].bias)
    w2, b2 = _np(cbam.channel.mlp[2].weight), _np(cbam.channel.mlp[2].bias)
    logits = sum(np.maximum(desc[p](xn) @ w1.T + b1, 0) @ w2.T + b2 for p in channel_pools)
    xc = xn * _bcast(_sigmoid(logits), xn)
    across = {"avg": lambda v: v.mean(1, keepdims=True), "max": lambda v: v.max(1, keepdims=True),
              "l2": lambda v: np.sqrt((v * v).sum(1, keepdims=True)),
              "stochastic": lambda v: _stochastic_expectation(v, 1)}
    maps = np.concatenate([across[p](xc) for p in spatial_pools], axis=1)
    gate = _sigmoid(_conv2d_same(maps, _np(cbam.spatial.conv.weight), _np(cbam.spatial.conv.bias)))
    np.testing.assert_allclose(_np(cbam(x)), xc * gate, rtol=1e-10)


@pytest.mark.parametrize("pool", pnn.POOL_NAMES)
def test_every_pool_name_works_in_every_block(pool):
    x = torch.rand(2, 8, 6, 6)
    if pool == "catavgmax":  # 2C-wide descriptors: only the spatial branch (2 maps) takes it
        for make in (lambda: pnn.SE(8, pool=pool), lambda: pnn.ECA(8, pool=pool),
                     lambda: pnn.CBAM(8, channel_pools=("avg", pool))):
            with pytest.raises(ValueError, match="catavgmax' gives 2C channels"):
                make()
        blocks = (pnn.CBAM(8, spatial_pools=(pool, "max")),)
        assert blocks[0].spatial.conv.in_channels == 3
    else:
        blocks = (pnn.SE(8, pool=pool), pnn.ECA(8, pool=pool),
                  pnn.CBAM(8, channel_pools=(pool, "avg"), spatial_pools=(pool,)))
    for block in blocks:
        for mode in (block.train, block.eval):
            mode()
            y = block(x)
            assert y.shape == x.shape and torch.isfinite(y).all()


def test_pools_accept_modules():
    x = torch.randn(2, 8, 6, 6)
    se = pnn.SE(8, pool=nn.AdaptiveAvgPool2d(1))
    ref = pnn.SE(8)
    ref.load_state_dict(se.state_dict())
    torch.testing.assert_close(se(x), ref(x))
    cbam = pnn.CBAM(8, spatial_pools=(pnn.AvgPoolReduce(1, True),))
    assert cbam(x).shape == x.shape


@pytest.mark.parametrize("shape", [(1, 24, 56, 56), (1, 512, 26, 26)])
def test_se_eca_on_the_reported_feature_maps(shape):
    # the DOMAIN example shapes: 56x56x24 and 26x26x512
    x = torch.randn(*shape)
    c = shape[1]
    se = pnn.create_attention("se", c, reduction=4, act="swish")
    assert se.fc1.out_features == c // 4 and isinstance(se.act, nn.SiLU)
    eca = pnn.create_attention("eca", c)
    assert eca.conv.kernel_size == (eca_kernel_size(c),)
    for block in (se, eca, pnn.create_attention("cbam", c)):
        assert block(x).shape == x.shape


@pytest.mark.parametrize("dims", [1, 3])
def test_blocks_on_1d_and_3d_inputs(dims):
    x = torch.rand(2, 8, *([5] * dims))
    for block in (pnn.SE(8), pnn.ECA(8), pnn.CBAM(8, dims=dims, kernel_size=3)):
        assert block(x).shape == x.shape


def test_no_lazy_layers():
    for block in (pnn.SE(16), pnn.ECA(16), pnn.CBAM(16), pnn.CBAM(16, channel_pools=("mixed",), spatial_pools=("l2",))):
        params = list(block.parameters())
        assert params and not any(isinstance(p, nn.parameter.UninitializedParameter) for p in params)


def test_gradients_flow_through_cbam():
    x = torch.rand(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    cbam = pnn.CBAM(4, reduction=2, channel_pools=("l2", "soft"), spatial_pools=("soft", "l2"),
                    kernel_size=3).double()
    assert torch.autograd.gradcheck(cbam, (x,))


def test_attention_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"CBAM: spatial_pools\[1\] must be one of"):
        pnn.CBAM(8, spatial_pools=("max", "median"))
    with pytest.raises(ValueError, match=r"CBAM: channel_pools\[0\]"):
        pnn.CBAM(8, channel_pools=("nope",))
    with pytest.raises(ValueError, match="SE: pool"):
        pnn.SE(8, pool="median")
    with pytest.raises(ValueError, match="SE: act"):
        pnn.SE(8, act="tanhshrink")
    with pytest.raises(ValueError, match="ECA: kernel_size"):
        pnn.ECA(8, kernel_size=4)
    with pytest.raises(ValueError, match="SE: channels"):
        pnn.SE(0)
    with pytest.raises(ValueError, match="CBAM: kernel_size"):
        pnn.CBAM(8, kernel_size=6)
