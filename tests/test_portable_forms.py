"""The fast standard-op forms against the float64 reference: the portable target's
(poolexport/onnx/portable.py, chosen per node at export) and the ``ort`` target's local
functions (poolexport/onnx/decompositions.py, chosen at run time), run in plain ONNX
Runtime and the reference evaluator. Same numbers as the per-window definition, finite
for any input, and the guard really switching to the generic decomposition when the
shared shift would lose a window."""
import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import _reference as ref
from poolexport.onnx import decompositions
from poolexport.onnx.targets import apply_target

ort = pytest.importorskip("onnxruntime")

WINDOWS = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),  # drops its last window
    dict(kernel_shape=[3, 2], strides=[2, 3], pads=[2, 0, 0, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"),
    dict(kernel_shape=[4], strides=[3], pads=[1, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2], pads=[1, 0, 0, 0, 1, 1]),
]
GENERIC = [  # no fast form: dilation, or a pad as large as the kernel
    dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2]),
    dict(kernel_shape=[2, 2], strides=[2, 2], pads=[2, 0, 0, 0]),
]
SHAPES = {1: (2, 3, 17), 2: (2, 3, 11, 13), 3: (1, 2, 6, 7, 5)}


def one_node(op, attrs, elem=TensorProto.FLOAT, rank=4):
    x = helper.make_tensor_value_info("X", elem, ["n", "c", *[f"d{i}" for i in range(rank - 2)]])
    y = helper.make_tensor_value_info("Y", elem, None)
    node = helper.make_node(op, ["X"], ["Y"], domain="poolexport", name="pool", **attrs)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             ir_version=10)


def expected(op, x, attrs, beta=1.0):
    fn = (lambda v, e: ref.soft_window(v, beta)) if op == "SoftPool" else (
        lambda v, e: ref.stochastic_expectation_window(v))
    return ref.pool(x, fn, attrs["kernel_shape"], attrs.get("strides"), attrs.get("pads"), attrs.get("dilations"),
                    bool(attrs.get("ceil_mode", 0)), attrs.get("auto_pad", "NOTSET"))


def run_both(model, x):
    ys = [ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0],
          ReferenceEvaluator(model).run(None, {"X": x})[0]]
    return ys


def inputs(shape, kind):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    if kind == "large":  # magnitudes of 1e4 with mixed signs in every window
        x = x * 1e4
    elif kind == "wide":  # a plane range of ~300: the shared shift needs its guard
        x = x * 50
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", ["normal", "wide", "large"])
@pytest.mark.parametrize("attrs", WINDOWS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("op", ["SoftPool", "StochasticPool"])
@pytest.mark.parametrize("target", ["portable", "ort"])
def test_fast_form_matches_float64_reference(target, op, attrs, kind):
    rank = len(attrs["kernel_shape"]) + 2
    model = apply_target(one_node(op, attrs, rank=rank), target)
    if target == "portable":
        assert {n.op_type for n in model.graph.node} >= {"AveragePool"}, "expected the fast form"
        assert "Conv" not in {n.op_type for n in model.graph.node}
    else:  # no library here: the local function runs, fast form or not
        assert any(n.op_type == "AveragePool" for f in model.functions for n in _all_nodes(f.node))
    x = inputs(SHAPES[rank - 2], kind)
    want = expected(op, x, attrs)
    for y in run_both(model, x):
        assert np.all(np.isfinite(y))
        err = np.max(np.abs(y - want)) / np.max(np.abs(want))
        assert err <= 1e-5, err


def _all_nodes(nodes):
    for n in nodes:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g.node)


@pytest.mark.parametrize("attrs", GENERIC, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("target", ["portable", "ort"])
def test_other_windows_keep_the_generic_decomposition(target, attrs):
    model = apply_target(one_node("SoftPool", attrs), target)
    if target == "portable":
        assert "Conv" in {n.op_type for n in model.graph.node}
    x = inputs(SHAPES[2], "normal")
    for y in run_both(model, x):
        np.testing.assert_allclose(y, expected("SoftPool", x, attrs), rtol=1e-5, atol=1e-6)


def _underflowing_input():
    """One plane: a 1000 in one corner, -1000 elsewhere: windows away from the corner have
    no weight left under the plane's shared shift (exp(-2000) = 0)."""
    x = np.full((1, 1, 8, 8), -1000.0, np.float32)
    x[0, 0, 0, 0] = 1000.0
    x[0, 0, 5:, 5:] += np.arange(9, dtype=np.float32).reshape(3, 3)  # something to get right there
    return x


@pytest.mark.parametrize("target", ["portable", "ort"])
def test_guard_takes_the_generic_form_when_the_shift_underflows(target):
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], beta=1.0)
    model = apply_target(one_node("SoftPool", attrs), target)
    x = _underflowing_input()
    want = expected("SoftPool", x, attrs)
    for y in run_both(model, x):
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("target", ["portable", "ort"])
def test_without_the_guard_the_shared_shift_is_wrong(target, monkeypatch):
    """The guard is what makes the form exact: with its threshold at 0 the fast branch is
    taken and the far windows come out as 0/0."""
    monkeypatch.setattr(decompositions, "MIN_MEAN_WEIGHT", 0.0)  # one threshold serves both targets
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], beta=1.0)
    model = apply_target(one_node("SoftPool", attrs), target)
    x = _underflowing_input()
    y = run_both(model, x)[0]
    assert not np.all(np.isfinite(y))


def test_float16_graph():
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], beta=2.0)
    for op in ("SoftPool", "StochasticPool"):
        a = attrs if op == "SoftPool" else {k: v for k, v in attrs.items() if k != "beta"}
        model = apply_target(one_node(op, a, TensorProto.FLOAT16), "portable")
        assert model.graph.node[0].op_type == "Cast"  # float16 in, float32 math
        x = inputs(SHAPES[2], "normal").astype(np.float16)
        want = expected(op, x.astype(np.float32), a, beta=a.get("beta", 1.0))
        for y in run_both(model, x):
            assert y.dtype == np.float16
            assert np.max(np.abs(y - want)) / np.max(np.abs(want)) <= 1e-3


def test_every_node_replaced_in_a_model_with_several():
    """Names stay unique when one graph holds several replaced nodes (two Ifs, two bodies)."""
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2, 9, 9])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2, 9, 9])
    nodes = [helper.make_node("SoftPool", ["X"], ["A"], domain="poolexport", **attrs),
             helper.make_node("SoftPool", ["A"], ["B"], domain="poolexport", beta=3.0, **attrs),
             helper.make_node("StochasticPool", ["B"], ["Y"], domain="poolexport", **attrs)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                              ir_version=10)
    out = apply_target(copy.deepcopy(model), "portable")
    onnx.checker.check_model(out, full_check=True)
    assert not any(n.domain == "poolexport" for n in out.graph.node)
    xv = _underflowing_input()[:, :, :, :].repeat(2, axis=1)
    xv = np.pad(xv, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-1000.0)
    a = expected("SoftPool", xv, attrs)
    b = expected("SoftPool", a.astype(np.float32), attrs, beta=3.0)
    want = expected("StochasticPool", b.astype(np.float32), attrs)
    for got in run_both(out, xv):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def _outer_condition(model):
    """The model with the condition of its outermost If (the unshifted form's check) as a
    second output."""
    m = copy.deepcopy(model)
    cond = next(n for n in m.graph.node if n.op_type == "If").input[0]
    m.graph.output.append(helper.make_tensor_value_info(cond, TensorProto.BOOL, None))
    return m


@pytest.mark.parametrize("attrs", WINDOWS[:3], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("kind,unshifted", [("normal", True), ("above 60", False), ("large", False)])
def test_portable_soft_pool_takes_the_unshifted_form_only_where_it_holds(attrs, kind, unshifted):
    """Ordinary activations skip the shift (no full-size Sub); z above 60 anywhere, or a
    window whose weights underflow, goes to the shifted form (and from there, if needed, to
    the generic one): each branch gives the float64 numbers."""
    model = apply_target(one_node("SoftPool", attrs), "portable")
    x = inputs(SHAPES[2], "large" if kind == "large" else "normal")
    if kind == "above 60":
        x = (x + 62.0).astype(np.float32)  # a narrow range above the unshifted limit: the shifted form holds
    sess = ort.InferenceSession(_outer_condition(model).SerializeToString(), providers=["CPUExecutionProvider"])
    y, taken = sess.run(None, {"X": x})
    assert bool(taken) == unshifted
    want = expected("SoftPool", x, attrs)
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y - want)) / np.max(np.abs(want)) <= 1e-5


def test_portable_soft_pool_with_tiny_beta_keeps_the_shift():
    """beta = 1e-12 and x ~ 5.9e13: beta*x ~ 59 passes the unshifted check, but x * e^59
    overflows float32, so a tiny beta never gets the unshifted form."""
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], beta=1e-12)
    model = apply_target(one_node("SoftPool", attrs), "portable")
    x = (5.9e13 + 1e11 * np.random.default_rng(3).standard_normal((1, 2, 6, 6))).astype(np.float32)
    assert np.max(x.astype(np.float64) * 1e-12) < decompositions.UNSHIFTED_MAX
    want = expected("SoftPool", x, attrs, beta=1e-12)
    for y in run_both(model, x):
        assert np.all(np.isfinite(y))
        np.testing.assert_allclose(y, want, rtol=1e-5)


@pytest.mark.parametrize("attrs", WINDOWS[:2], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_portable_file_agrees_with_the_library_kernel_on_1e4_mixed_signs(attrs):
    """Issue 13's acceptance, directly: the portable file in plain ONNX Runtime and the
    custom-op library's kernel on magnitudes 5e3-3e4 of both signs in every window: both
    finite, within 1e-5 relative of each other."""
    from poolexport import ort as pxort

    model = one_node("SoftPool", attrs)
    x = ref.large_magnitude_input((2, 3, 20, 22), seed=5).astype(np.float32)
    portable = apply_target(copy.deepcopy(model), "portable")
    y_portable = ort.InferenceSession(portable.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    y_kernel = pxort.session(model.SerializeToString()).run(None, {"X": x})[0]
    assert np.all(np.isfinite(y_portable)) and np.all(np.isfinite(y_kernel))
    assert np.max(np.abs(y_portable - y_kernel)) / np.max(np.abs(y_kernel)) <= 1e-5
