"""adaUnpool (AdaUnpool in the poolexport domain, poolexport::ada_unpool) against the float64
oracle (_ada_unpool_oracle), the adaPool repository's formula, and across runtimes: torch,
ONNX Runtime with the library, ONNX Runtime running the decomposition, the reference
evaluator, OpenVINO (parity rows)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import _ada_unpool_oracle as O
from poolexport import ort as pxort
from poolexport.onnx import decompositions
from poolexport.onnx import domain as D
from poolexport.ops.ada_unpool import ada_unpool

# (X shape, mask shape, Beta shape): 1/2/3-D; integer, non-integer and equal ratios; masks
# broadcast over N or C; Beta per position, per channel, scalar
CASES = [
    ((2, 3, 5), (2, 3, 12), (5,)),  # 1-D, 12/5 not an integer: windows of one and two cells
    ((2, 3, 4), (2, 1, 8), (2, 3, 4)),  # 1-D, x2, one mask for every channel
    ((2, 3, 3, 4), (2, 3, 7, 9), (3, 4)),  # 2-D, both axes non-integer
    ((2, 2, 4, 4), (1, 2, 8, 8), (2, 1, 1, 1)),  # 2-D, x2 (the repository's kernel 2), mask shared over N
    ((1, 2, 3, 3), (1, 1, 3, 3), ()),  # 2-D, O = I: no interpolation
    ((1, 2, 3, 5), (1, 2, 9, 6), (1,)),  # 2-D, x3 on one axis, 6/5 on the other
    ((1, 2, 2, 3, 2), (1, 2, 5, 6, 4), (2, 3, 2)),  # 3-D
    ((2, 1, 2, 2, 2), (2, 1, 4, 4, 4), (1, 1, 2, 2, 2)),  # 3-D x2
]
IDS = [f"{len(c[0]) - 2}d-{i}" for i, c in enumerate(CASES)]
RUNTIMES = ["ort-library", "ort-decomposition", "reference-evaluator"]
EPS32 = 2.0**-24


def _inputs(case, seed=0, beta_range=(0.0, 1.0), mask_range=(-0.25, 1.25), scale=2.0):
    xs, ms, bs = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=xs) * scale
    me = rng.uniform(*mask_range, ms)
    mm = rng.uniform(*mask_range, (ms[0], xs[1]) + ms[2:])  # the other mask: broadcast differently
    beta = rng.uniform(*beta_range, bs)
    return x, me, mm, beta


def _t(*arrays):
    return [torch.tensor(a) for a in arrays]


def _close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() if got.size else 0.0
    assert err <= tol, (err, tol)


def _tol32(x):
    # at most 8 cells, each X * t * w and a sum: a few float32 roundings of max |X|
    return 32 * EPS32 * max(np.abs(x).max(), 1e-30)


# ---------------------------------------------------------------- the repository's formula
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("beta_range", [(0.0, 1.0), (-0.5, 1.5)])
def test_oracle_and_op_match_repository_formula(case, beta_range):
    """The repository's adaunpool (re-typed, run here: pure torch, float64) on its own mask
    shapes (N, *O): oracle and op agree with it to 1e-12, Beta unclamped as it is there."""
    xs, ms, _ = case
    x, me, mm, beta = _inputs(case, seed=3, beta_range=beta_range)
    me_r = np.broadcast_to(me, xs[:2] + ms[2:])[:, 0].copy()  # (N, *O): no channel axis
    mm_r = np.random.default_rng(4).uniform(-0.25, 1.25, me_r.shape)
    repo = O.repo_adaunpool(*_t(x), (*_t(me_r, mm_r), torch.tensor(beta))).numpy()
    oracle = O.forward(x, me_r[:, None], mm_r[:, None], beta)
    import poolexport.nn.ada_unpool as U

    ours = getattr(U, f"ada_unpool{len(xs) - 2}d")(*_t(x), tuple(_t(me_r, mm_r, beta))).numpy()
    tol = 1e-12 * max(np.abs(x).max(), 1.0)
    _close(oracle, repo, tol)
    _close(ours, repo, tol)


@pytest.mark.parametrize("case", CASES[:4] + CASES[6:7], ids=IDS[:4] + IDS[6:7])
def test_single_mask_form_matches_repository_formula(case):
    """The repository's one-mask form A(x) m + A(x) (1 - m) is A(x)."""
    xs, ms, _ = case
    x, me, _, _ = _inputs(case, seed=5)
    m = np.broadcast_to(me, xs[:2] + ms[2:])[:, 0].copy()
    repo = O.repo_adaunpool(*_t(x, m)).numpy()
    import poolexport.nn.ada_unpool as U

    ours = getattr(U, f"ada_unpool{len(xs) - 2}d")(*_t(x, m)).numpy()
    _close(ours, repo, 1e-12 * max(np.abs(x).max(), 1.0))
    _close(ours, O.area(x, ms[2:]), 1e-12 * max(np.abs(x).max(), 1.0))


# Where the repository's numbers are not the formula's: (name, x, me, mm, beta, repository, ours)
DIFFERING = [
    # area interpolation as (a + b) / 2 overflows float32; ours sums w X t, w = 1/2
    ("float32 sum overflow", [3e38, 3e38], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0],
     [3e38, np.inf, 3e38], [3e38, 3e38, 3e38]),
    # x * Beta = inf * 0 is NaN there; ours weighs inf by t = m_m = 1
    ("inf cell with Beta 0", [np.inf, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.5], [np.nan, 1.0], [np.inf, 1.0]),
    # a mask of 0 times A(inf) is NaN there; ours: t = 0.5 * 1 + 0.5 * 0 > 0
    ("inf cell with one mask 0", [np.inf, 1.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [np.nan, 1.0], [np.inf, 1.0]),
]


@pytest.mark.parametrize("name,x,me,mm,beta,repo,ours", DIFFERING, ids=[d[0] for d in DIFFERING])
def test_listed_differences_from_repository(name, x, me, mm, beta, repo, ours):
    dt = torch.float32
    xt = torch.tensor([[x]], dtype=dt)
    me_t, mm_t, bt = (torch.tensor(v, dtype=dt) for v in (me, mm, beta))
    got_repo = O.repo_adaunpool(xt, (me_t[None], mm_t[None], bt)).numpy()[0, 0]
    got = ada_unpool(xt, me_t[None, None], mm_t[None, None], bt).numpy()[0, 0]
    np.testing.assert_array_equal(got_repo, np.array(repo, np.float32))
    np.testing.assert_array_equal(got, np.array(ours, np.float32))


# ---------------------------------------------------------------- torch op
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_op_matches_oracle(case, dtype):
    x, me, mm, beta = _inputs(case, seed=7)
    if dtype == torch.float32:
        x, me, mm, beta = (a.astype(np.float32).astype(np.float64) for a in (x, me, mm, beta))
    got = ada_unpool(*(torch.tensor(a, dtype=dtype) for a in (x, me, mm, beta))).numpy()
    want = O.forward(x, me, mm, beta)
    _close(got, want, 1e-12 * np.abs(x).max() if dtype == torch.float64 else _tol32(x))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_float64(case):
    x, me, mm, beta = _inputs(case, seed=11, beta_range=(-0.5, 1.5))
    args = [torch.tensor(a, requires_grad=True) for a in (x, me, mm, beta)]
    assert torch.autograd.gradcheck(ada_unpool, args)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_gradients_within_1e5_of_float64(case):
    x, me, mm, beta = (a.astype(np.float32).astype(np.float64) for a in _inputs(case, seed=13))
    args = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in (x, me, mm, beta)]
    y = ada_unpool(*args)
    g = np.random.default_rng(17).normal(size=y.shape)
    y.backward(torch.tensor(g, dtype=torch.float32))
    for a, want in zip(args, O.gradients(x, me, mm, beta, g)):
        assert a.grad.shape == a.shape
        np.testing.assert_allclose(a.grad.numpy(), want, rtol=1e-5, atol=1e-5)


BAD = [
    # (X shape, MaskEdscw shape, MaskEm shape, Beta shape, message)
    ((2, 3), (2, 3), (2, 3), (), "k = 1, 2 or 3"),
    ((1, 1, 2, 2, 2, 2), (1, 1, 2, 2, 2, 2), (1, 1, 2, 2, 2, 2), (), "k = 1, 2 or 3"),
    ((2, 3, 4), (2, 8), (2, 3, 8), (), "MaskEdscw must have X's rank"),
    ((2, 3, 4), (2, 3, 8), (2, 3, 8, 1), (), "MaskEm must have X's rank"),
    ((2, 3, 4), (3, 3, 8), (2, 3, 8), (), "must have N = 2 or 1"),
    ((2, 3, 4), (2, 3, 8), (2, 2, 8), (), "C = 3 or 1"),
    ((2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 8, 7), (), "same spatial shape"),
    ((2, 3, 4, 4), (2, 3, 8, 3), (2, 3, 8, 3), (), "at least X's"),
    ((2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 8, 8), (5,), "Beta of shape \\[5\\] does not broadcast"),
    ((2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 8, 8), (1, 1, 1, 1, 1), "does not broadcast"),
    ((2, 3, 0), (2, 3, 4), (2, 3, 4), (), "must not be empty"),
]


@pytest.mark.parametrize("xs,ms,mms,bs,msg", BAD)
def test_torch_op_refuses_shapes_that_do_not_fit(xs, ms, mms, bs, msg):
    args = [torch.zeros(s) for s in (xs, ms, mms, bs)]
    with pytest.raises(ValueError, match=msg):
        ada_unpool(*args)


@pytest.mark.parametrize("xs,ms,mms,bs,msg", BAD)
def test_ort_library_refuses_shapes_that_do_not_fit(xs, ms, mms, bs, msg):
    sess = pxort.session(_model(TensorProto.FLOAT, False).SerializeToString())
    feeds = {n: np.zeros(s, np.float32) for n, s in zip(NAMES, (xs, ms, mms, bs))}
    with pytest.raises(Exception, match=msg):
        sess.run(None, feeds)


def test_torch_op_refuses_integer_tensors():
    with pytest.raises(ValueError, match="floating-point"):
        ada_unpool(torch.zeros(1, 1, 2, dtype=torch.int64), torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.zeros(()))


# ---------------------------------------------------------------- ONNX runtimes
NAMES = ["X", "MaskEdscw", "MaskEm", "Beta"]


def _model(elem, with_function):
    inputs = [helper.make_tensor_value_info(n, elem, None) for n in NAMES]
    node = helper.make_node(D.ADA_UNPOOL, NAMES, ["Y"], domain=D.DOMAIN)
    graph = helper.make_graph([node], "unpool", inputs, [helper.make_tensor_value_info("Y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", D.OPSET), helper.make_opsetid(D.DOMAIN, 1)],
                              ir_version=10)
    if with_function:
        model.functions.extend(decompositions.functions([D.ADA_UNPOOL]))
    return model


def _run(runtime, feeds, elem=TensorProto.FLOAT):
    if runtime == "torch":
        return ada_unpool(*(torch.tensor(feeds[n]) for n in NAMES)).numpy()
    if runtime == "ort-library":
        return pxort.session(_model(elem, False).SerializeToString()).run(None, feeds)[0]
    model = _model(elem, True)
    if runtime == "ort-decomposition":
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)[0]


def _feeds(arrays, dtype=np.float32):
    return {n: np.asarray(a).astype(dtype) for n, a in zip(NAMES, arrays)}


def _f64(feeds):
    return [feeds[n].astype(np.float64) for n in NAMES]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_onnx_runtimes_match_oracle(runtime, case):
    feeds = _feeds(_inputs(case, seed=19, beta_range=(-0.25, 1.25)))
    got = _run(runtime, feeds)
    _close(got, O.forward(*_f64(feeds)), _tol32(feeds["X"]))


def test_ort_float16():
    feeds = _feeds(_inputs(CASES[2], seed=23), np.float16)
    got = _run("ort-library", feeds, TensorProto.FLOAT16)
    assert got.dtype == np.float16
    want = O.forward(*_f64(feeds))
    # float32 math, one float16 rounding of the result
    _close(got, want, _tol32(feeds["X"]) + 2.0**-11 * np.abs(want).max())


@pytest.mark.parametrize("runtime", ["torch"] + RUNTIMES)
@pytest.mark.parametrize("scale", [1e-38, 1e30, 3.4e38])
def test_finite_for_large_and_small_inputs(runtime, scale):
    x, me, mm, beta = _inputs(CASES[2], seed=29, mask_range=(0.0, 1.0), scale=1.0)
    x = np.clip(x / np.abs(x).max() * scale, -3.4e38, 3.4e38)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 3.4e38 if scale > 1 else x[0, 0, 1, 1]  # a two-cell window at float32's max
    feeds = _feeds((x, me, mm, beta))
    got = _run(runtime, feeds)
    assert np.all(np.isfinite(got))
    _close(got, O.forward(*_f64(feeds)), _tol32(feeds["X"]))


def _nonfinite_cases():
    out = []
    for value in (np.nan, np.inf, -np.inf):
        for where in ("first", "middle", "last"):
            for target in ("X", "MaskEdscw", "Beta"):
                if target != "X" and not np.isnan(value):
                    continue  # masks and Beta: NaN only (inf masks clip to 1; inf Beta is inf - inf)
                out.append((value, where, target))
    return out


@pytest.mark.parametrize("runtime", ["torch"] + RUNTIMES)
@pytest.mark.parametrize("value,where,target", _nonfinite_cases())
def test_nonfinite_at_first_middle_last(runtime, value, where, target):
    """A NaN reaches exactly the outputs whose cells (or mask position) hold it; an inf cell
    gives +-inf there (weighed by t > 0), the rest stays finite and accurate."""
    case = ((1, 2, 3, 5), (1, 2, 7, 11), (1, 2, 3, 5))
    x, me, mm, beta = _inputs(case, seed=31, mask_range=(0.05, 1.0), beta_range=(0.05, 0.95))
    arrays = dict(zip(NAMES, (x, me, mm, beta)))
    flat = arrays[target].reshape(-1)
    flat[{"first": 0, "middle": flat.size // 2, "last": flat.size - 1}[where]] = value
    feeds = _feeds([arrays[n] for n in NAMES])
    got = _run(runtime, feeds).astype(np.float64)
    want = O.forward_per_cell(*_f64(feeds))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    assert np.isnan(want).any() or np.isinf(want).any()
    fin = np.isfinite(want)
    _close(got[fin], want[fin], _tol32(np.where(np.isfinite(x), x, 0.0)))


def test_shape_inference():
    model = _model(TensorProto.FLOAT, False)
    shapes = (["N", 3, 4, 5], [1, 3, 8, "W"], ["N", 1, 8, 10], [4, 5])
    for vi, s in zip(model.graph.input, shapes):
        vi.CopyFrom(helper.make_tensor_value_info(vi.name, TensorProto.FLOAT, s))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 8, 10]
    bad = _model(TensorProto.FLOAT, False)
    for vi, s in zip(bad.graph.input, ([1, 3, 4, 5], [1, 3, 8, 4], [1, 3, 8, 4], [1])):
        vi.CopyFrom(helper.make_tensor_value_info(vi.name, TensorProto.FLOAT, s))
    with pytest.raises(Exception, match="smaller than X"):
        onnx.shape_inference.infer_shapes(bad, strict_mode=True)


# ---------------------------------------------------------------- parity rows, modules, loaders
def _parity_net(dims):
    import poolexport.nn as pnn

    conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[dims - 1](3, 4, 3, padding=1)
    rng = np.random.default_rng(dims)
    out = (7,) * dims  # from 4: windows of one and two cells
    masks = (torch.tensor(rng.uniform(0, 1, (2,) + out), dtype=torch.float32),  # the repository's (N, *O)
             torch.tensor(rng.uniform(0, 1, (2, 4) + out), dtype=torch.float32),
             torch.tensor(rng.uniform(0, 1, (4,) * dims), dtype=torch.float32))
    return torch.nn.Sequential(conv, getattr(pnn, f"AdaUnpool{dims}d")(masks))


@pytest.mark.parametrize("dims,target", [(1, "ort"), (2, "ort"), (3, "ort"), (2, "portable")])
def test_parity_of_exported_file(dims, target):
    from poolexport.onnx.export import export_model
    from poolexport.parity import check_parity

    torch.manual_seed(dims)
    net = _parity_net(dims).eval()
    shape = (2, 3) + (4,) * dims
    model = export_model(net, torch.randn(shape), target=target, dynamic=())
    ops = {n.op_type for n in model.graph.node}
    assert (D.ADA_UNPOOL in ops) == (target == "ort")
    report = check_parity(model, net, [shape], runtimes=("torch", "onnxruntime", "onnxruntime-fallback", "reference",
                                                          "openvino"))
    for r in report.results:
        assert r.status in ("pass", "skip"), (r.runtime, r.status, r.reason, r.max_abs)
    assert any(r.runtime == "onnxruntime" and r.status == "pass" for r in report.results)


def test_modules_take_the_mask_in_init_or_forward():
    import poolexport.nn as pnn

    x, me, mm, beta = _inputs(CASES[3], seed=37)
    me_r = me[:, 0]
    mm_r = np.random.default_rng(1).uniform(0, 1, me_r.shape)
    mask = tuple(_t(me_r, mm_r, beta))
    want = O.forward(x, me_r[:, None], mm_r[:, None], beta)
    _close(pnn.AdaUnpool2d(mask)(torch.tensor(x)).numpy(), want, 1e-12 * np.abs(x).max())
    _close(pnn.AdaUnpool2d()(torch.tensor(x), mask).numpy(), want, 1e-12 * np.abs(x).max())
    with pytest.raises(ValueError, match="no mask"):
        pnn.AdaUnpool2d()(torch.tensor(x))
    with pytest.raises(ValueError, match="N x C x 2 spatial axes"):
        pnn.AdaUnpool2d(mask)(torch.zeros(1, 2, 3))


def test_untrusted_program_loader_allows_the_op():
    from poolexport._untrusted.operators import check_graph_target, operator_problem

    assert operator_problem("poolexport", "ada_unpool", None) is None
    assert operator_problem("poolexport", "ada_unpool_backward", None) is None
    check_graph_target("torch.ops.poolexport.ada_unpool.default")
