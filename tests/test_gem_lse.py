"""GeM and LSE pooling: values, non-finite rules, gradients and standard-op exports.

Every expected value comes from an oracle written here: the formulas evaluated literally in
50-digit mpmath (no shift, no scaling), their closed-form gradients, cirtorch's GeM and
timm's LsePlus2d formulas (re-written from their sources), ONNX Runtime and the ONNX
reference evaluator on the exported files. The code under test is never its own reference.

Tolerances (stated once):
* GeM, elementwise relative (its output is positive and scales with the input):
  float64 1e-12, float32 1e-5 (computed in float32: a few ulps), float16 1e-3 (computed in
  float32, rounded once to fp16: half an ulp, 4.9e-4), plus an absolute 2^-25 (half the
  spacing of fp16's denormals: GeM of a plane at or below eps is eps = 1e-6, a denormal).
* LSE, absolute, relative to the largest |x| in the window (it shifts with the input:
  an error of a few ulps of max |x|): same numbers.
"""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

import poolexport.nn as pnn
from poolexport.nn import functional as PF

mpmath.mp.dps = 50
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3}
ATOL = {torch.float64: 0.0, torch.float32: 0.0, torch.float16: 2.0 ** -25}
EPS = 1e-6
TINY = {torch.float64: 1e-310, torch.float32: 1e-40, torch.float16: 1e-7}  # a denormal of each dtype
BIG = {torch.float64: 1e4, torch.float32: 1e4, torch.float16: 6e4}


# ------------------------------------------------------------------ oracles
def gem_oracle(values, p, eps=EPS):
    """(mean max(v, eps)^p)^(1/p), literally, in 50 digits; NaN/inf by the documented rule."""
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        return math.nan
    c = [max(v, eps) for v in vals]
    if p > 0 and any(math.isinf(v) for v in c):
        return math.inf
    c = [mpmath.mpf(v) for v in c if not math.isinf(v)] + [None] * sum(math.isinf(v) for v in c)
    n = len(c)
    if p == 0:
        return float(mpmath.exp(mpmath.fsum(mpmath.log(v) for v in c) / n))
    s = mpmath.fsum(mpmath.mpf(0) if v is None else v ** p for v in c) / n  # inf^p = 0 for p < 0
    return float(s ** (mpmath.mpf(1) / p))


def lse_oracle(values, r):
    """(1/r) log(mean exp(r v)), literally, in 50 digits (mpmath's exponent range has no overflow)."""
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        return math.nan
    if r == 0:
        return float(mpmath.fsum(vals) / len(vals))
    top = max(vals) if r > 0 else min(vals)
    if math.isinf(top):
        return top
    terms = [mpmath.mpf(0) if math.isinf(v) else mpmath.exp(r * mpmath.mpf(v)) for v in vals]
    return float(mpmath.log(mpmath.fsum(terms) / len(vals)) / r)


def gem_grad_oracle(values, p, eps=EPS):
    """d y / d x_i = (1/n) c_i^(p-1) y^(1-p) (0 where x_i < eps); d y / d p."""
    x = np.asarray(values, dtype=np.float64)
    c = np.maximum(x, eps)
    n = x.size
    s = np.mean(c ** p)
    y = s ** (1 / p)
    gx = np.where(x >= eps, c ** (p - 1) * y ** (1 - p) / n, 0.0)
    gp = y * (np.mean(c ** p * np.log(c)) / (p * s) - np.log(s) / p ** 2)
    return gx, gp


def lse_grad_oracle(values, r):
    """d y / d x = softmax(r x); d y / d r = (sum softmax(r x) x - y) / r."""
    x = np.asarray(values, dtype=np.float64)
    z = r * x
    w = np.exp(z - z.max())
    w /= w.sum()
    y = lse_oracle(x.ravel(), r)
    return w, (np.sum(w * x) - y) / r


def cirtorch_gem(x, p, eps=EPS):
    # cirtorch/layers/functional.py (filipradenovic/cnnimageretrieval-pytorch): avg_pool2d of
    # x.clamp(min=eps).pow(p) over the plane, then pow(1/p); re-written, not imported
    return x.clamp(min=eps).pow(p).mean((-2, -1), keepdim=True).pow(1.0 / p)


def timm_lse_plus(x, r):
    # timm/layers/other_pool.py LsePlus2d.forward (huggingface/pytorch-image-models, Dec 2025):
    # x_max + (1/r) log(mean exp(r (x - x_max))), x_max the plane max; flattened to N x C
    x_max = x.amax((2, 3), keepdim=True)
    return (x_max + (1.0 / r) * torch.log(torch.exp(r * (x - x_max)).mean((2, 3), keepdim=True))).flatten(1)


def planes(x: torch.Tensor) -> np.ndarray:
    """N x C x ... -> (N*C, plane) float64."""
    return x.double().reshape(x.shape[0] * x.shape[1], -1).numpy()


def boundary_input(dtype, n=2, c=3, h=4, w=5, seed=0):
    """Random normals with planes of 0s, denormals, the dtype's big value, negatives, and mixtures."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 3
    x[0, 0] = 0.0
    x[0, 1] = TINY[dtype]
    x[0, 2] = BIG[dtype]
    x[1, 0] = -BIG[dtype]
    x[1, 1, 0, 0], x[1, 1, 1, 2], x[1, 1, -1, -1] = BIG[dtype], TINY[dtype], 0.0
    x[1, 2, ::2] = TINY[dtype]
    x[1, 2, 1, 1] = BIG[dtype] / 2
    return x.to(dtype)


def assert_gem_close(got, want, dtype):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=ATOL[dtype])


def assert_lse_close(got, want, scale, dtype):
    got, want, scale = (np.asarray(a, np.float64).ravel() for a in (got, want, scale))
    assert np.all(np.isfinite(got)), got
    err = np.abs(got - want)
    bound = RTOL[dtype] * np.maximum(scale, 1e-30)
    assert np.all(err <= bound), (err / np.maximum(scale, 1e-30)).max()


# ------------------------------------------------------------------ values at the boundaries
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("p", [1.0, 3.0, 10.0])
def test_gem_global_matches_the_literal_formula_at_boundary_inputs(dtype, p):
    x = boundary_input(dtype)
    y = PF.gem_pool_reduce(x, p, (2, 3))
    assert y.dtype == dtype
    want = [gem_oracle(v, p) for v in planes(x)]  # the input as rounded to dtype
    assert_gem_close(y.double().numpy(), want, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("r", [1.0, 3.0, 10.0, -3.0])
def test_lse_global_matches_the_literal_formula_at_boundary_inputs(dtype, r):
    x = boundary_input(dtype)
    y = PF.lse_pool_reduce(x, r, (2, 3))
    assert y.dtype == dtype
    rows = planes(x)
    want = [lse_oracle(v, r) for v in rows]
    assert_lse_close(y.double().numpy(), want, np.abs(rows).max(1), dtype)


def test_the_literal_formulas_overflow_where_the_scaled_ones_do_not():
    # the bug these layers fix: cirtorch's clamp-then-power is inf in fp16 at 1e4 (p = 3)
    # and in fp32 at 1e4 (p = 10); exp(r x) overflows fp32 at r x > 88
    x16 = torch.full((1, 1, 2, 2), 1e4, dtype=torch.float16)
    assert torch.isinf(cirtorch_gem(x16, 3.0)).all()
    assert torch.isinf(cirtorch_gem(x16.float(), 10.0)).all()
    assert torch.isinf(torch.log(torch.exp(10 * x16.float()).mean()) / 10)
    for x in (x16, x16.float()):
        for p in (3.0, 10.0):
            y = PF.gem_pool_reduce(x, p, (2, 3))
            assert torch.isfinite(y).all() and y.dtype == x.dtype
            assert abs(float(y.flatten()[0]) - 1e4) <= 1e4 * RTOL[x.dtype]
        assert float(PF.lse_pool_reduce(x, 10.0, (2, 3)).flatten()[0]) == pytest.approx(1e4, rel=RTOL[x.dtype])


def test_gem_matches_cirtorch_and_lse_matches_timm_where_those_are_finite():
    # second oracles: the references' own formulas, in float64 at ordinary inputs
    x = torch.rand(2, 4, 5, 6, dtype=torch.float64) * 4 - 1
    for p in (1.0, 3.0, 6.5):
        torch.testing.assert_close(PF.gem_pool_reduce(x, p, (2, 3), keepdim=True), cirtorch_gem(x, p),
                                   rtol=1e-13, atol=0)
    for r in (0.5, 10.0, 100.0):
        lse = pnn.GlobalLsePool(r, learn_r=False, flatten=True)  # timm's LsePlus2d(flatten=True)
        torch.testing.assert_close(lse(x), timm_lse_plus(x, r), rtol=1e-13, atol=1e-13)


def test_gem_eps_boundary():
    # x < eps is clamped to eps (no gradient); x == eps and above pass through
    below, above = np.nextafter(EPS, 0.0), np.nextafter(EPS, 1.0)
    for v, grad in ((below, False), (EPS, True), (above, True)):
        x = torch.tensor([[[v, 2.0, 0.5]]], dtype=torch.float64, requires_grad=True)
        y = PF.gem_pool_reduce(x, 3.0, -1)
        assert y.item() == pytest.approx(gem_oracle([v, 2.0, 0.5], 3.0), rel=1e-14)
        y.backward()
        assert (float(x.grad[0, 0, 0]) != 0) == grad
    zeros = torch.zeros(1, 2, 3, 3)
    for p in (1.0, 3.0, 10.0):  # an all-zero plane (after ReLU) is eps, not NaN
        for dtype in (torch.float32, torch.float16):
            y = PF.gem_pool_reduce(zeros.to(dtype), p, (2, 3))
            assert_gem_close(y, np.full(2, EPS), dtype)
    with pytest.raises(ValueError, match="eps must be > 0"):
        PF.gem_pool_reduce(zeros, 3.0, eps=0.0)


def test_lse_r_zero_is_the_mean_and_small_r_is_continuous():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    mean = x.mean((2, 3))
    torch.testing.assert_close(PF.lse_pool_reduce(x, torch.tensor(0.0, dtype=torch.float64), (2, 3)), mean)
    for r in (1e-4, -1e-4):
        want = torch.tensor([lse_oracle(v, r) for v in planes(x)], dtype=torch.float64).reshape(2, 3)
        torch.testing.assert_close(PF.lse_pool_reduce(x, r, (2, 3)), want, rtol=1e-9, atol=1e-9)
    # GeM: p = 0 is the geometric mean
    xp = x.abs() + 0.1
    geo = torch.exp(torch.log(xp).mean((2, 3)))
    torch.testing.assert_close(PF.gem_pool_reduce(xp, torch.tensor(0.0, dtype=torch.float64), (2, 3)), geo)


# ------------------------------------------------------------------ NaN and inf
NONFINITE_POSITIONS = {"first": 0, "middle": 7, "last": 14}


@pytest.mark.parametrize("where", NONFINITE_POSITIONS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nonfinite_rule(where, value, dtype):
    """NaN anywhere gives NaN. GeM: +inf gives +inf (p > 0), -inf is clamped to eps.
    LSE (r > 0): +inf gives +inf, -inf adds 0; r < 0 mirrors it. Other planes are unaffected."""
    base = torch.rand(2, 2, 15, dtype=torch.float64) * 3
    x = base.clone()
    x[0, 1, NONFINITE_POSITIONS[where]] = value
    x = x.to(dtype)
    rows = planes(x.unsqueeze(-1))
    for p in (3.0, 10.0, -2.0):
        y = PF.gem_pool_reduce(x, p, -1).double().numpy().ravel()
        want = np.array([gem_oracle(v, p) for v in rows])
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
        ok = np.isfinite(want)
        assert_gem_close(y[ok], want[ok], dtype)
    for r in (3.0, -3.0):
        y = PF.lse_pool_reduce(x, r, -1).double().numpy().ravel()
        want = np.array([lse_oracle(v, r) for v in rows])
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        np.testing.assert_array_equal(y[np.isinf(want)], want[np.isinf(want)])
        ok = np.isfinite(want)
        finite_rows = np.where(np.isfinite(rows), rows, 0)
        assert_lse_close(y[ok], want[ok], np.abs(finite_rows).max(1)[ok], dtype)


def test_all_minus_inf_plane():
    x = torch.full((1, 1, 4), -math.inf)
    assert float(PF.lse_pool_reduce(x, 3.0, -1)) == -math.inf
    assert float(PF.gem_pool_reduce(x, 3.0, -1)) == pytest.approx(EPS)


# ------------------------------------------------------------------ windows
def _window_oracle(x, oracle, k, s, pad, param):
    """Windows of a 2-D input, the padding excluded, by plain index loops."""
    n, c, h, w = x.shape
    xv = x.double().numpy()
    oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    out = np.zeros((n, c, oh, ow))
    scale = np.zeros_like(out)
    for i in range(oh):
        for j in range(ow):
            rows = [a for a in range(i * s - pad, i * s - pad + k) if 0 <= a < h]
            cols = [b for b in range(j * s - pad, j * s - pad + k) if 0 <= b < w]
            for ni in range(n):
                for ci in range(c):
                    vals = xv[ni, ci][np.ix_(rows, cols)].ravel()
                    pc = param[ci] if isinstance(param, (list, tuple)) else param
                    out[ni, ci, i, j] = oracle(vals, pc)
                    scale[ni, ci, i, j] = np.abs(vals).max()
    return out, scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("k,s,pad", [(3, 1, 1), (2, 2, 0), (3, 2, 1)])
def test_windowed_forms_match_the_oracle(dtype, k, s, pad):
    x = boundary_input(dtype, h=6, w=7, seed=1)
    ps = [1.0, 3.0, 10.0]
    gem = pnn.GeMPool2d(k, s, pad, channels=3).to(dtype)
    with torch.no_grad():
        gem.p.copy_(torch.tensor(ps))
    want, _ = _window_oracle(x, gem_oracle, k, s, pad, ps)
    assert_gem_close(gem(x).detach().double().numpy(), want, dtype)
    rs = [1.0, 10.0, -2.0]
    lse = pnn.LsePool2d(k, s, pad, channels=3).to(dtype)
    with torch.no_grad():
        lse.r.copy_(torch.tensor(rs))
    want, scale = _window_oracle(x, lse_oracle, k, s, pad, rs)
    assert_lse_close(lse(x).detach().double().numpy(), want, scale, dtype)


def test_windowed_forms_1d_3d_dilation_and_empty_windows():
    x = torch.rand(2, 3, 9, dtype=torch.float64) * 5
    # dilation 2, kernel 3: window i covers 2i-1, 2i+1, 2i+3 (padding 1, stride 2)
    y = PF.gem_pool1d(x, 3, 2, 1, 2, False, p=3.0)
    for i in range(y.shape[-1]):
        idx = [t for t in (2 * i - 1, 2 * i + 1, 2 * i + 3) if 0 <= t < 9]
        want = [gem_oracle(v, 3.0) for v in x[..., idx].reshape(6, -1).numpy()]
        np.testing.assert_allclose(y[..., i].reshape(-1).numpy(), want, rtol=1e-12)
    x3 = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64)
    y3 = PF.lse_pool3d(x3, 3, 1, 1, r=2.0)
    want = lse_oracle(x3[0, 1, 0:3, 1:4, 2:5].numpy().ravel(), 2.0)
    assert float(y3[0, 1, 1, 2, 3]) == pytest.approx(want, rel=1e-12)
    # ceil_mode: kernel 2 stride 2 on 5 gives a last window of one valid position
    y = PF.lse_pool1d(x[:1, :1, :5], 2, 2, 0, 1, True, r=3.0)
    assert y.shape[-1] == 3 and float(y[0, 0, -1]) == pytest.approx(float(x[0, 0, 4]), rel=1e-12)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("p", [1.0, 3.0, 10.0])
def test_gem_gradient_within_1e5_of_float64(p):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 100
    x[0, 0, 0, :2] = 0.0  # clamped: no gradient
    x[1, 2] *= 100  # up to 1e4
    x32 = x.float().requires_grad_()
    pp = torch.tensor(p, requires_grad=True)
    PF.gem_pool_reduce(x32, pp, (2, 3)).sum().backward()
    for i, row in enumerate(planes(x32.detach())):
        gx, gp = gem_grad_oracle(row, p)
        got = x32.grad.reshape(6, -1)[i].double().numpy()
        np.testing.assert_allclose(got, gx, rtol=1e-5, atol=1e-5 * np.abs(gx).max())
    want_p = sum(gem_grad_oracle(row, p)[1] for row in planes(x32.detach()))
    assert float(pp.grad) == pytest.approx(want_p, rel=1e-5)


@pytest.mark.parametrize("r", [0.5, 3.0, 10.0])
def test_lse_gradient_within_1e5_of_float64(r):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * 5
    x[1, 2] *= 1000
    x32 = x.float().requires_grad_()
    rr = torch.tensor(r, requires_grad=True)
    PF.lse_pool_reduce(x32, rr, (2, 3)).sum().backward()
    rows = planes(x32.detach())
    for i, row in enumerate(rows):
        gx, _ = lse_grad_oracle(row, r)
        np.testing.assert_allclose(x32.grad.reshape(6, -1)[i].double().numpy(), gx, rtol=1e-5, atol=1e-6)
    want_r = sum(lse_grad_oracle(row, r)[1] for row in rows)
    assert float(rr.grad) == pytest.approx(want_r, rel=1e-5, abs=1e-5)


def test_gradcheck_modules_float64():
    # finite differences of every form in float64, per-channel learned p and r included
    torch.manual_seed(5)
    x = (torch.rand(2, 3, 5, 5, dtype=torch.float64) * 3).requires_grad_()
    for m in (pnn.GeMPool2d(3, 2, 1, channels=3), pnn.GlobalGeMPool(channels=3), pnn.GeMPoolReduce(1, True),
              pnn.LsePool2d(3, 1, "same", channels=3), pnn.GlobalLsePool(r=2.0, channels=3),
              pnn.LsePoolReduce(1, True, r=-1.5)):
        m = m.double()
        params = tuple(m.parameters())
        assert torch.autograd.gradcheck(lambda xx, *ps: m(xx), (x,) + params, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("fill", [2.0, 1e4, -1e4])
def test_padding_and_ties_give_finite_gradients(fill):
    # padded positions and all-equal windows (ties at the extreme) keep gradients finite,
    # also where a padded position's power or exponential would overflow (p, r = -10 or 10)
    x = torch.full((1, 1, 4, 4), fill, requires_grad=True)
    for m in (pnn.GeMPool2d(3, 2, 1, p=10.0), pnn.GeMPool2d(3, 2, 1, p=-10.0), pnn.LsePool2d(3, 2, 1, r=10.0),
              pnn.LsePool2d(3, 2, 1, r=-10.0)):
        x.grad = None
        y = m(x)
        want = max(fill, EPS) if isinstance(m, pnn.GeMPool2d) else fill
        torch.testing.assert_close(y, torch.full_like(y, want))
        y.sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(next(m.parameters()).grad).all(), m


# ------------------------------------------------------------------ factory and replace_pools
def test_factory_and_replace_pools_names():
    assert "gem" in pnn.POOL_NAMES and "lse" in pnn.POOL_NAMES
    g = pnn.create_pool("gem", "global", flatten=True)
    assert isinstance(g, pnn.GlobalGeMPool) and g.p.item() == 3.0 and isinstance(g.p, torch.nn.Parameter)
    assert pnn.create_pool("gem", "global", p=4.0, learn_p=False).p == 4.0
    assert pnn.create_pool("lp", "global").norm_type == 2.0  # lp keeps its own default
    lse = pnn.create_pool("lse", "channel", r=5.0)
    assert isinstance(lse, pnn.LsePoolReduce) and lse.r.item() == 5.0 and lse.dim == 1
    w = pnn.create_pool("gem", "window", dims=3, kernel_size=2)
    assert isinstance(w, pnn.GeMPool3d)
    with pytest.raises(ValueError, match="kernel_size is required"):
        pnn.create_pool("lse", "window")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1))
    assert pnn.replace_pools(net, "gem") == ["1", "2"]
    assert isinstance(net[1], pnn.GeMPool2d) and isinstance(net[2], pnn.GlobalGeMPool)
    assert net(torch.randn(1, 3, 12, 12)).shape == (1, 4, 1, 1)


def test_argument_checks():
    with pytest.raises(ValueError, match="channels"):
        pnn.GlobalGeMPool(channels=0)
    with pytest.raises(TypeError, match="learn_r must be a bool"):
        pnn.GlobalLsePool(learn_r=1)
    with pytest.raises(ValueError, match="per-channel p has 3 values"):
        pnn.GlobalGeMPool(channels=3)(torch.rand(1, 4, 2, 2))
    with pytest.raises(ValueError, match="per-channel r needs axis 1"):
        PF.lse_pool_reduce(torch.rand(1, 3, 2), torch.ones(3), dim=1)
    with pytest.raises(ValueError, match="floating-point"):
        PF.gem_pool_reduce(torch.ones(1, 2, 3, dtype=torch.int64))


# ------------------------------------------------------------------ export: standard ONNX, every runtime
class _Heads(torch.nn.Module):
    """Every form in one graph, so one export per dtype checks them all."""

    def __init__(self):
        super().__init__()
        self.parts = torch.nn.ModuleList([
            pnn.GlobalGeMPool(channels=4), pnn.GlobalLsePool(channels=4), pnn.GeMPool2d(3, 2, 1),
            pnn.LsePool2d(3, 1, "same"), pnn.GeMPoolReduce(1, True), pnn.LsePoolReduce(1, True, r=3.0, learn_r=False),
            pnn.GeMPool2d(2, 2, ceil_mode=True, p=10.0, learn_p=False),
        ])
        with torch.no_grad():
            self.parts[0].p.copy_(torch.tensor([1.0, 3.0, 7.0, 10.0]))
            self.parts[1].r.copy_(torch.tensor([0.5, 1.0, 10.0, -2.0]))

    def forward(self, x):
        return torch.cat([p(x).flatten(1) for p in self.parts], 1)


_EXPORTS: dict = {}


def _exported(fp16: bool):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if fp16 not in _EXPORTS:
        from poolexport.onnx.export import export_model

        model = _Heads().eval()
        _EXPORTS[fp16] = model, export_model(model, torch.randn(2, 4, 9, 9), target="portable", fp16=fp16)
    return _EXPORTS[fp16]


@pytest.mark.parametrize("fp16", [False, True])
def test_export_is_standard_onnx_and_passes_parity_on_every_cpu_runtime(fp16):
    from poolexport.parity import check_parity, parity_shapes

    model, proto = _exported(fp16)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} and not proto.functions
    report = check_parity(proto, model, parity_shapes(proto, (2, 4, 9, 9)), fp16=fp16,
                          runtimes=("torch", "onnxruntime", "onnxruntime-fallback", "reference", "openvino"))
    ran = {r.runtime for r in report.results if r.status != "skip"}
    assert {"torch", "onnxruntime-fallback", "reference"} <= ran
    assert report.passed, [(r.runtime, r.status, r.max_rel, r.reason) for r in report.summary()]


@pytest.mark.parametrize("fp16", [False, True])
def test_exports_are_finite_and_accurate_at_boundary_inputs(fp16):
    """0, denormals, 1e4 (6e4 in fp16) and negatives, p and r up to 10, through ONNX Runtime
    and the reference evaluator, against the 50-digit oracles."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    model, proto = _exported(fp16)
    dtype = torch.float16 if fp16 else torch.float32
    x = boundary_input(dtype, n=2, c=4, h=9, w=9, seed=6)
    x[0, 3] = BIG[dtype]
    x[1, 3, 4, 4] = BIG[dtype]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(proto)
    outputs = {"onnxruntime": sess.run(None, {"input": x.numpy()})[0],
               "reference": ref.run(None, {"input": x.numpy()})[0]}
    ps, rs = [1.0, 3.0, 7.0, 10.0], [0.5, 1.0, 10.0, -2.0]
    rows = planes(x)
    gem_want = np.array([gem_oracle(v, ps[i % 4]) for i, v in enumerate(rows)])
    lse_want = np.array([lse_oracle(v, rs[i % 4]) for i, v in enumerate(rows)])
    for name, y in outputs.items():
        y = y.astype(np.float64)
        assert np.all(np.isfinite(y)), name
        assert_gem_close(y[:, :4].ravel(), gem_want, dtype)
        assert_lse_close(y[:, 4:8].ravel(), lse_want, np.abs(rows).max(1), dtype)
        with torch.no_grad():
            np.testing.assert_allclose(y, model.half()(x).double().numpy() if fp16 else model(x).double().numpy(),
                                       rtol=RTOL[dtype], atol=RTOL[dtype] * float(np.abs(y).max()))
        model.float()
