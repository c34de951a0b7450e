"""Generalized max pooling: values, bounds of the exported solver, gradients and exports.

Every expected value comes from an oracle written here: the paper's dual formula
Phi (Phi^T Phi + lam I)^-1 1 solved in 50-digit mpmath (no scaling, no series), its
closed-form gradient in float64 numpy, ONNX Runtime and the ONNX reference evaluator on the
exported files. The code under test is never its own reference.

Tolerances (stated once): errors are normwise per sample, max |y - want| / max |want|
(GMP's components can cancel to near zero, so a componentwise bound would measure noise),
against the oracle on the input as rounded to the tested dtype. They grow with the
condition bound kappa = 1 + ||Phi||_F^2 / lam, as any solve of the normal equations does:

* float64: 1e-12 + kappa * 1e-15
* float32: 1e-5 + kappa * 2^-23          (computed in float32; the series' rounding is
                                          amplified by up to ~kappa ulps)
* float16: 1e-3 + kappa * 2^-23          (computed in float32, rounded once to fp16)

plus an absolute floor for results in the denormal range, where precision is gone bit by
bit: 512 denormal ulps in float64 and float32 (2^-1060, 2^-140), half an ulp in float16
(2^-25, computed in float32 and rounded once).
"""
from __future__ import annotations

import math
import warnings

import mpmath
import numpy as np
import pytest
import torch

import poolexport.nn as pnn
from poolexport._gmp import KAPPA_MAX, SERIES_TOL, SQUARINGS, generalized_max_pool, generalized_max_pool_reduce

mpmath.mp.dps = 50
KAPPA_RTOL = {torch.float64: (1e-12, 1e-15), torch.float32: (1e-5, 2.0 ** -23), torch.float16: (1e-3, 2.0 ** -23)}
ATOL = {torch.float64: 2.0 ** -1060, torch.float32: 2.0 ** -140, torch.float16: 2.0 ** -25}
TINY = {torch.float64: 1e-310, torch.float32: 1e-40, torch.float16: 1e-7}  # a denormal of each dtype
BIG = {torch.float64: 1e4, torch.float32: 1e4, torch.float16: 6e4}


# ------------------------------------------------------------------ oracles
def gmp_oracle(phi, lam):
    """Phi (Phi^T Phi + lam I)^-1 1 for Phi (D x N), literally, in 50 digits."""
    phi = np.asarray(phi, dtype=np.float64)
    d, n = phi.shape
    p = mpmath.matrix(phi.tolist())
    a = p.T * p + mpmath.mpf(lam) * mpmath.eye(n)
    alpha = mpmath.lu_solve(a, mpmath.matrix([1] * n))
    return np.array([float(v) for v in (p * alpha)], dtype=np.float64)


def kappa(phi, lam):
    return 1.0 + float(np.sum(np.asarray(phi, np.float64) ** 2)) / lam


def lam_eff(phi, lam):
    """The ridge the exported series solves with: lam, raised to (lam + ||Phi||_F^2) / KAPPA_MAX."""
    return max(lam, (lam + float(np.sum(np.asarray(phi, np.float64) ** 2))) / KAPPA_MAX)


def gmp_grad_oracle(phi, lam, c):
    """d (c . phi) / d Phi = (c - Phi beta) alpha^T - phi beta^T, alpha = A^-1 1, beta = A^-1 Phi^T c."""
    phi = np.asarray(phi, np.float64)
    a = phi.T @ phi + lam * np.eye(phi.shape[1])
    alpha = np.linalg.solve(a, np.ones(phi.shape[1]))
    beta = np.linalg.solve(a, phi.T @ c)
    return np.outer(c - phi @ beta, alpha) - np.outer(phi @ alpha, beta)


def samples(x: torch.Tensor) -> list:
    """N x C x ... -> [C x positions] float64, one per batch index (the global form's Phi)."""
    return [x[i].double().reshape(x.shape[1], -1).numpy() for i in range(x.shape[0])]


def assert_gmp_close(got, want, kap, dtype):
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    assert np.all(np.isfinite(got)), got
    base, per_kappa = KAPPA_RTOL[dtype]
    err = np.abs(got - want).max()
    bound = (base + kap * per_kappa) * np.abs(want).max() + ATOL[dtype]
    assert err <= bound, (err, bound, kap)


def boundary_input(dtype, n=6, c=5, h=3, w=4, seed=0):
    """One sample per case: random, all 0, all denormal, all BIG, a mixture of the three with
    negatives, ReLU-like features (a third zero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    x[1] = 0.0
    x[2] = TINY[dtype]
    x[3] = BIG[dtype]
    x[4, 0, 0, 0], x[4, 1, 1, 2], x[4, 2, -1, -1], x[4, 3, 1, 1] = BIG[dtype], TINY[dtype], 0.0, -BIG[dtype] / 2
    x[5] = torch.relu(x[5] - 0.4) * 3
    return x.to(dtype)


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("solver", ["solve", "series"])
@pytest.mark.parametrize("c,h,w", [(6, 2, 3), (3, 3, 4), (12, 2, 2)])  # dual (C >= HW) and primal (C < HW)
@pytest.mark.parametrize("target_kappa", [1.5, 30.0, 1e3])
def test_matches_the_paper_formula(dtype, solver, c, h, w, target_kappa):
    g = torch.Generator().manual_seed(int(target_kappa) + c)
    x = (torch.rand(3, c, h, w, generator=g, dtype=torch.float64) * 4 - 1).to(dtype)
    rows = samples(x)
    lam = float(np.sum(rows[0] ** 2)) / (target_kappa - 1)
    y = generalized_max_pool(x, lam, flatten=True, solver=solver)
    assert y.dtype == dtype and y.shape == (3, c)
    for i, phi in enumerate(rows):
        assert_gmp_close(y[i].double().numpy(), gmp_oracle(phi, lam), kappa(phi, lam), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("solver", ["solve", "series"])
def test_boundary_inputs_are_finite_and_follow_the_stated_rule(dtype, solver):
    """0, denormals, BIG (1e4; 6e4 in fp16), mixtures: finite. The solve matches the
    definition; the series matches it with lam_eff (the definition where kappa <= KAPPA_MAX)."""
    x = boundary_input(dtype)
    lam = 10.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the out-of-range warning: tested on its own below
        y = generalized_max_pool(x, lam, solver=solver)
    assert y.dtype == dtype and y.shape == (6, 5, 1, 1)
    assert torch.isfinite(y).all()
    for i, phi in enumerate(samples(x)):
        lam_i = lam if solver == "solve" else lam_eff(phi, lam)
        kap = kappa(phi, lam_i)
        assert_gmp_close(y[i].double().numpy(), gmp_oracle(phi, lam_i), kap, dtype)
    assert (y[1] == 0).all()  # all zero: phi = 0 exactly


@pytest.mark.parametrize("lam", [1e3, 1e6])
@pytest.mark.parametrize("solver", ["solve", "series"])
def test_smallest_normal_inputs_with_a_large_lam(lam, solver):
    # s = 2e-37 is a normal float32, but lam / s overflows: phi ~ Phi 1 / lam must not flush to 0
    x = torch.full((1, 3, 4), 2e-37)
    x[0, 1, 2] = 5e-38
    y = generalized_max_pool_reduce(x, lam, 2, solver=solver)
    phi = samples(x.unsqueeze(-1))[0]
    assert_gmp_close(y[0].double().numpy(), gmp_oracle(phi, lam), kappa(phi, lam), torch.float32)
    assert (y > 0).all()


def test_limits_at_the_extremes():
    # lam -> inf: sum pooling / lam; lam -> 0 with independent descriptors: Phi^T phi = 1
    warnings.simplefilter("ignore")  # lam -> 0 is far beyond KAPPA_MAX: the eager solve warns (pytest restores filters)
    x = torch.rand(2, 7, 2, 2, dtype=torch.float64)
    y = generalized_max_pool(x, 1e12, flatten=True, solver="solve")
    torch.testing.assert_close(y * 1e12, x.sum((2, 3)), rtol=1e-9, atol=0)
    phi = generalized_max_pool(x, 1e-9, flatten=True, solver="solve")
    dots = torch.einsum("nc,nchw->nhw", phi, x)
    torch.testing.assert_close(dots, torch.ones_like(dots), rtol=1e-6, atol=0)
    # a descriptor repeated k times counts once (max pooling's property, for vectors)
    a, b = torch.rand(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    once = torch.stack([a, b], -1)[None]
    many = torch.stack([a, a, a, a, b], -1)[None]
    torch.testing.assert_close(generalized_max_pool_reduce(once, 1e-10, 2, solver="solve"),
                               generalized_max_pool_reduce(many, 1e-10, 2, solver="solve"), rtol=1e-6, atol=0)


def test_reduce_and_channel_forms():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    # channel form: the positions are the 3 channels, the descriptors their 4 x 5 maps
    y = pnn.GeneralizedMaxPoolReduce(1, True, lam=2.0)(x)
    assert y.shape == (2, 1, 4, 5)
    for i in range(2):
        want = gmp_oracle(x[i].reshape(3, 20).T.numpy(), 2.0).reshape(4, 5)
        np.testing.assert_allclose(y[i, 0].numpy(), want, rtol=1e-12, atol=1e-14)
    # positions along (1, 3), descriptors along axis 2
    y = generalized_max_pool_reduce(x, 3.0, (1, 3))
    assert y.shape == (2, 4)
    want = gmp_oracle(x[1].permute(1, 0, 2).reshape(4, 15).numpy(), 3.0)
    np.testing.assert_allclose(y[1].numpy(), want, rtol=1e-12)
    # every non-batch axis pooled: scalar descriptors, sum x / (sum x^2 + lam)
    y = generalized_max_pool_reduce(x, 3.0, None, keepdim=True)
    assert y.shape == (2, 1, 1, 1)
    torch.testing.assert_close(y.flatten(), x.sum((1, 2, 3)) / ((x * x).sum((1, 2, 3)) + 3.0))
    # 1-D and 3-D spatial inputs, global form
    for shape in ((2, 4, 9), (2, 4, 2, 2, 3)):
        xs = torch.rand(*shape, dtype=torch.float64)
        y = pnn.GlobalGeneralizedMaxPool(lam=1.0)(xs)
        assert y.shape == shape[:2] + (1,) * (len(shape) - 2)
        np.testing.assert_allclose(y[1].flatten().numpy(), gmp_oracle(samples(xs)[1], 1.0), rtol=1e-12)


# ------------------------------------------------------------------ NaN and inf
NONFINITE_POSITIONS = {"first": 0, "middle": 5, "last": 11}


@pytest.mark.parametrize("where", NONFINITE_POSITIONS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("solver", ["solve", "series"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nonfinite_value_makes_its_sample_nan(where, value, solver, dtype):
    base = torch.rand(3, 4, 12, dtype=torch.float64).to(dtype)
    x = base.clone()
    x[1, 2, NONFINITE_POSITIONS[where]] = value
    y = generalized_max_pool_reduce(x, 1.0, 2, solver=solver)
    assert torch.isnan(y[1]).all()
    # the other samples: as if the bad one were not there
    torch.testing.assert_close(y[[0, 2]], generalized_max_pool_reduce(base[[0, 2]], 1.0, 2, solver=solver),
                               rtol=0, atol=0)


# ------------------------------------------------------------------ the constants of the series
def _two_scale_input(kap: float):
    """Phi = diag(a, b) (D = N = 2, the dual form): eigenvalues (a^2 + lam)/(lam + F) ~ 1 and
    (b^2 + lam)/(lam + F) ~ 1/kappa, with lam chosen so that 1 + F / lam = kap exactly-ish."""
    a, b = 100.0, 1e-3
    f = a * a + b * b
    lam = f / (kap - 1)
    return torch.tensor([[[a, 0.0], [0.0, b]]], dtype=torch.float64), lam


@pytest.mark.parametrize("squarings,ok", [(SQUARINGS - 1, False), (SQUARINGS, True), (SQUARINGS + 1, True)])
def test_squarings_reach_the_tolerance_at_kappa_max(squarings, ok):
    # float64, so that only the truncation shows: at kappa = KAPPA_MAX the small-eigenvalue
    # component keeps (1 - 1/KAPPA_MAX)^(2^squarings) of its error: e^-16 > 2^-24 at 16
    # squarings, e^-32 at 17
    x, lam = _two_scale_input(KAPPA_MAX)
    y = generalized_max_pool_reduce(x, lam, 2, solver="series", squarings=squarings)[0].numpy()
    want = gmp_oracle(x[0].numpy(), lam)
    err = abs(y[1] - want[1]) / abs(want[1])  # the component along the small eigenvalue
    assert (err <= SERIES_TOL) == ok, err


@pytest.mark.parametrize("factor,floored", [(1 - 2.0 ** -12, False), (1.0, False), (1 + 2.0 ** -12, True)])
def test_kappa_max_is_where_the_series_raises_lam(factor, floored):
    x, lam = _two_scale_input(KAPPA_MAX * factor)
    y = generalized_max_pool_reduce(x, lam, 2, solver="series")[0].numpy()
    exact = gmp_oracle(x[0].numpy(), lam)
    raised = gmp_oracle(x[0].numpy(), lam_eff(x[0].numpy(), lam))
    np.testing.assert_allclose(y, raised, rtol=1e-12)  # lam_eff == lam below the bound
    assert (np.abs(y - exact).max() / np.abs(exact).max() > 1e-9) == floored


@pytest.mark.parametrize("factor,warns", [(1 - 2.0 ** -12, False), (1 + 2.0 ** -12, True)])
def test_eager_solve_warns_beyond_kappa_max(factor, warns):
    x, lam = _two_scale_input(KAPPA_MAX * factor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = generalized_max_pool_reduce(x, lam, 2, solver="solve")
    assert any("exceeds" in str(w.message) for w in caught) == warns
    np.testing.assert_allclose(y[0].numpy(), gmp_oracle(x[0].numpy(), lam), rtol=1e-10)  # solve stays exact


def test_solve_survives_a_numerically_singular_system():
    # |x| = 1e30 in float32: lam / s^2 underflows to 0 and Phi^T Phi (N > D) is singular;
    # the eps floor keeps torch.linalg.solve from raising, the result stays finite
    x = torch.full((1, 2, 5), 1e30)
    x[0, 1, 2] = -3e29
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for solver in ("solve", "series"):
            assert torch.isfinite(generalized_max_pool_reduce(x, 1.0, 2, solver=solver)).all()


def test_auto_picks_the_series_under_torch_export():
    # an input beyond KAPPA_MAX, where the two solvers differ by ~1/KAPPA_MAX
    x, lam = _two_scale_input(KAPPA_MAX * 4)
    x = x.float()
    m = pnn.GeneralizedMaxPoolReduce(2, lam=lam)
    program = torch.export.export(m, (x,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager, series = m(x), generalized_max_pool_reduce(x, lam, 2, solver="series")
    torch.testing.assert_close(program.module()(x), series, rtol=1e-6, atol=0)
    assert (program.module()(x) - eager).abs().max() > 1e-6 * eager.abs().max()


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("solver", ["solve", "series"])
def test_gradient_within_1e5_of_float64(solver):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 8, 3, 3, generator=g, dtype=torch.float64) * 5
    x[2] *= 3  # ~ 15: kappa ~ 1e2 (the gradient, like the value, loses ~kappa ulps)
    x32 = x.float().requires_grad_()
    lam = 50.0
    c = torch.randn(3, 8, generator=g, dtype=torch.float64)
    (generalized_max_pool(x32, lam, flatten=True, solver=solver) * c.float()).sum().backward()
    for i, phi in enumerate(samples(x32.detach())):
        want = gmp_grad_oracle(phi, lam, c[i].numpy())
        got = x32.grad[i].reshape(8, -1).double().numpy()
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), (i, np.abs(got - want).max())


def test_gradcheck_float64():
    torch.manual_seed(5)
    x = (torch.rand(2, 4, 3, 2, dtype=torch.float64) * 3).requires_grad_()
    for m in (pnn.GlobalGeneralizedMaxPool(lam=2.0), pnn.GlobalGeneralizedMaxPool(lam=2.0, solver="series"),
              pnn.GeneralizedMaxPoolReduce(1, True, lam=0.5), pnn.GlobalGeneralizedMaxPool(lam=0.3, flatten=True)):
        assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-7, rtol=1e-5), m
    # primal form (C < HW) too
    x = (torch.rand(2, 2, 3, 3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(pnn.GlobalGeneralizedMaxPool(lam=1.0), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_is_finite_at_zero_and_big_inputs():
    x = torch.zeros(2, 3, 2, 2)
    x[1] = 1e4
    x.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generalized_max_pool(x, 10.0).sum().backward()
    assert torch.isfinite(x.grad).all()
    # at Phi = 0 the gradient of sum(phi) is 1/lam per entry (phi ~ Phi 1 / lam)
    torch.testing.assert_close(x.grad[0], torch.full_like(x.grad[0], 0.1))


# ------------------------------------------------------------------ factory, replace_pools, arguments
def test_factory_and_replace_pools_names():
    assert "gmp" in pnn.POOL_NAMES
    m = pnn.create_pool("gmp", "global", lam=5.0, flatten=True)
    assert isinstance(m, pnn.GlobalGeneralizedMaxPool) and m.lam == 5.0 and m.flatten
    assert pnn.create_pool("gmp").lam == 1e3
    ch = pnn.create_pool("gmp", "channel")
    assert isinstance(ch, pnn.GeneralizedMaxPoolReduce) and ch.dim == 1 and ch.keepdim
    with pytest.raises(ValueError, match="no window form"):
        pnn.create_pool("gmp", "window", kernel_size=2)
    with pytest.raises(ValueError, match="form must be one of"):
        pnn.create_pool("gmp", "windows")
    # gmp replaces the global pools only; window pools stay
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.MaxPool2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1))
    assert pnn.replace_pools(net, "gmp", lam=2.0) == ["2"]
    assert isinstance(net[1], torch.nn.MaxPool2d) and isinstance(net[2], pnn.GlobalGeneralizedMaxPool)
    assert net[2].lam == 2.0 and net(torch.randn(1, 3, 12, 12)).shape == (1, 4, 1, 1)


@pytest.mark.parametrize("lam", [0.0, -1.0, math.inf, math.nan, -0.0])
def test_lam_must_be_positive_and_finite(lam):
    with pytest.raises(ValueError, match="lam"):
        pnn.GlobalGeneralizedMaxPool(lam=lam)
    with pytest.raises(ValueError, match="lam"):
        generalized_max_pool(torch.rand(1, 2, 2, 2), lam)


def test_argument_checks():
    with pytest.raises(TypeError, match="lam must be a real number"):
        pnn.GlobalGeneralizedMaxPool(lam=True)
    with pytest.raises(TypeError, match="lam must be a real number"):
        pnn.create_pool("gmp", lam="1")
    assert pnn.GlobalGeneralizedMaxPool(lam=5e-324).lam > 0  # the smallest positive double is accepted
    with pytest.raises(ValueError, match="solver must be one of"):
        pnn.GlobalGeneralizedMaxPool(solver="cholesky")
    with pytest.raises(ValueError, match="axis 0 is the batch axis"):
        generalized_max_pool_reduce(torch.rand(2, 3, 4), 1.0, (0, 2))
    with pytest.raises(ValueError, match="floating-point"):
        generalized_max_pool_reduce(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="rank >= 3"):
        pnn.GlobalGeneralizedMaxPool()(torch.rand(2, 3))
    with pytest.raises(ValueError, match="batch axis and at least one more"):
        generalized_max_pool_reduce(torch.rand(3))
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="squarings"):
            generalized_max_pool_reduce(torch.rand(2, 3, 4), squarings=bad)


# ------------------------------------------------------------------ export: standard ONNX, every runtime
class _Heads(torch.nn.Module):
    """The global (flattened), channel and reduce forms in one graph."""

    def __init__(self, lam):
        super().__init__()
        self.parts = torch.nn.ModuleList([pnn.GlobalGeneralizedMaxPool(lam, flatten=True),
                                          pnn.GeneralizedMaxPoolReduce(1, True, lam=lam),
                                          pnn.GeneralizedMaxPoolReduce((1, 3), lam=lam)])

    def forward(self, x):
        return torch.cat([p(x).flatten(1) for p in self.parts], 1)


_EXPORTS: dict = {}
EXPORT_LAM = 10.0


def _exported(fp16: bool):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if fp16 not in _EXPORTS:
        from poolexport.onnx.export import export_model

        model = _Heads(EXPORT_LAM).eval()
        _EXPORTS[fp16] = model, export_model(model, torch.randn(2, 5, 6, 7), target="portable", fp16=fp16)
    return _EXPORTS[fp16]


def _heads_oracle(x: torch.Tensor, lam_of) -> np.ndarray:
    """The three forms of _Heads by gmp_oracle; ``lam_of(phi)`` picks each sample's ridge."""
    out = []
    for i in range(x.shape[0]):
        v = x[i].double().numpy()  # C x H x W
        c, h, w = v.shape
        parts = [gmp_oracle(v.reshape(c, -1), lam_of(v.reshape(c, -1))),
                 gmp_oracle(v.reshape(c, -1).T, lam_of(v.reshape(c, -1).T)),
                 gmp_oracle(v.transpose(1, 0, 2).reshape(h, c * w), lam_of(v.transpose(1, 0, 2).reshape(h, c * w)))]
        out.append(parts)
    return out


@pytest.mark.parametrize("fp16", [False, True])
def test_export_is_standard_onnx_and_passes_parity_on_every_cpu_runtime(fp16):
    from poolexport.parity import check_parity, parity_shapes

    model, proto = _exported(fp16)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} and not proto.functions
    report = check_parity(proto, model, parity_shapes(proto, (2, 5, 6, 7)), fp16=fp16,
                          runtimes=("torch", "onnxruntime", "onnxruntime-fallback", "reference", "openvino"))
    ran = {r.runtime for r in report.results if r.status != "skip"}
    assert {"torch", "onnxruntime-fallback", "reference"} <= ran
    assert report.passed, [(r.runtime, r.status, r.max_rel, r.reason) for r in report.summary()]


def _runtimes(proto):
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(proto)
    runs = {"onnxruntime": lambda x: sess.run(None, {"input": x})[0],
            "reference": lambda x: ref.run(None, {"input": x})[0]}
    try:
        import openvino as ov

        compiled = ov.Core().compile_model(ov.Core().read_model(proto.SerializeToString(), b""), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        runs["openvino"] = lambda x: compiled(x)[0]
    except ImportError:
        pass
    return runs


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference evaluator, inf / inf
@pytest.mark.parametrize("fp16", [False, True])
def test_exports_follow_the_nonfinite_rule(fp16):
    _, proto = _exported(fp16)
    dtype = torch.float16 if fp16 else torch.float32
    base = torch.rand(4, 5, 3, 4, dtype=torch.float64).to(dtype)
    x = base.clone()
    x[1, 0, 0, 0], x[2, 2, 1, 2], x[3, 4, 2, 3] = math.nan, math.inf, -math.inf  # first, middle, last
    for name, run in _runtimes(proto).items():
        y = np.asarray(run(x.numpy()), np.float64)
        clean = np.asarray(run(base.numpy()), np.float64)
        assert np.isnan(y[1:]).all(), name  # every form of a sample with a NaN/inf is NaN
        np.testing.assert_array_equal(y[0], clean[0], err_msg=name)  # the clean sample is untouched


@pytest.mark.parametrize("fp16", [False, True])
def test_exports_are_finite_and_accurate_at_boundary_inputs(fp16):
    """0, denormals, 1e4 (6e4 in fp16), mixtures and a new spatial size, in ONNX Runtime, the
    reference evaluator and OpenVINO (if installed), against the 50-digit oracle with lam_eff."""
    _, proto = _exported(fp16)
    dtype = torch.float16 if fp16 else torch.float32
    x = boundary_input(dtype, n=6, c=5, h=4, w=3, seed=6)  # exported at 6 x 7: dynamic spatial axes
    want = _heads_oracle(x, lambda phi: lam_eff(phi, EXPORT_LAM))
    for name, run in _runtimes(proto).items():
        y = np.asarray(run(x.numpy()), np.float64)
        assert y.shape == (6, 5 + 12 + 4) and np.all(np.isfinite(y)), name
        for i in range(6):
            v = x[i].double().numpy()
            mats = [v.reshape(5, -1), v.reshape(5, -1).T, v.transpose(1, 0, 2).reshape(4, 15)]
            cols = np.split(y[i], [5, 17])
            for got, phi, wanted in zip(cols, mats, want[i]):
                kap = kappa(phi, lam_eff(phi, EXPORT_LAM))
                try:
                    assert_gmp_close(got, wanted, kap, dtype)
                except AssertionError as e:
                    raise AssertionError(f"{name}, sample {i}: {e}") from None
