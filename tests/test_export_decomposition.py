"""The standard-op decompositions (model-local functions) against independent references.

Hand-built one-node models (every windowing attribute, auto_pad values torch modules never
produce included) run in a plain ONNX Runtime session (no custom-op library: the local
function runs) and in onnx's ReferenceEvaluator; both must match the float64 loops of
tests/_reference.py. The portable target (function inlined) is checked the same way.
"""
import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import _reference as ref
from poolexport.onnx import apply_target

RTOL, ATOL = 1e-5, 1e-6  # float32 (poolexport.parity.TOLERANCES)


def one_node(op, attrs, rank, dtype=TensorProto.FLOAT, out_rank=None):
    node = helper.make_node(op, ["X"], ["Y"], domain="poolexport", **attrs)
    dims = ["N", "C"] + [f"D{i}" for i in range(rank - 2)]
    x = helper.make_tensor_value_info("X", dtype, dims)
    y = helper.make_tensor_value_info("Y", dtype, [f"Y{i}" for i in range(rank if out_rank is None else out_rank)])
    graph = helper.make_graph([node], "one_node", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)])


def run_all(model, x):
    """Outputs of a plain ORT session and of the ReferenceEvaluator."""
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    y_ort = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    y_ref = ReferenceEvaluator(model).run(None, {"X": x})[0]
    return y_ort, y_ref


def assert_close(y, expected, rtol=RTOL, atol=ATOL):
    assert y.shape == expected.shape
    assert np.all(np.isfinite(y))
    err = np.max(np.abs(y.astype(np.float64) - expected), initial=0.0)
    assert err <= atol + rtol * np.max(np.abs(expected), initial=0.0), err


def soft_fn(beta):
    return lambda vals, e: ref.soft_window(vals, beta)


def stochastic_fn(vals, e):
    return ref.stochastic_expectation_window(vals)


# (kernel, strides, pads, dilations, ceil_mode, auto_pad, spatial)
WINDOWS = [
    ([3], [1], [0, 0], [1], 0, "NOTSET", [7]),
    ([3], [2], [1, 2], [2], 1, "NOTSET", [10]),
    ([2], [3], [0, 0], [1], 0, "SAME_UPPER", [8]),
    ([4], [3], [0, 0], [2], 0, "SAME_LOWER", [9]),
    ([2], [2], [0, 0], [1], 0, "VALID", [7]),
    ([2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 0, "NOTSET", [6, 7]),
    ([3, 2], [2, 1], [1, 0, 1, 1], [1, 2], 1, "NOTSET", [9, 8]),
    ([3, 3], [2, 2], [1, 1, 2, 2], [1, 1], 1, "NOTSET", [5, 7]),  # ceil: a dropped last window (both axes)
    ([3, 2], [2, 3], [0, 0, 0, 0], [2, 1], 0, "SAME_UPPER", [9, 7]),
    ([3, 4], [2, 3], [0, 0, 0, 0], [1, 2], 0, "SAME_LOWER", [8, 9]),
    ([3, 2], [1, 2], [0, 0, 0, 0], [2, 1], 0, "VALID", [8, 5]),
    ([2, 3], [2, 2], [0, 0, 0, 0], [1, 1], 1, "SAME_UPPER", [7, 7]),  # ceil_mode ignored with SAME
    ([2, 2, 2], [2, 1, 2], [0, 1, 0, 1, 0, 1], [1, 1, 1], 1, "NOTSET", [5, 4, 5]),
    ([2, 3, 2], [1, 2, 2], [0, 0, 0, 0, 0, 0], [2, 1, 1], 0, "SAME_LOWER", [5, 6, 5]),
    ([2], [2], [1, 1], [1], 1, "NOTSET", [5]),  # ceil: 4 windows, the last dropped
    ([2], [3], [1, 1], [1], 1, "NOTSET", [7]),  # ceil: 4 windows, the last dropped
]
CEIL_DROP = [WINDOWS[7], WINDOWS[-2], WINDOWS[-1]]


def test_ceil_drop_cases_drop_a_window():
    for kernel, strides, pads, dilations, ceil_mode, _, spatial in CEIL_DROP:
        k = len(kernel)
        assert ceil_mode and all(ref.ceil_drops(spatial[i], kernel[i], strides[i], dilations[i], pads[i], pads[k + i])
                                 for i in range(k))


def window_attrs(case):
    kernel, strides, pads, dilations, ceil_mode, auto_pad, _ = case
    return dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations, ceil_mode=ceil_mode,
                auto_pad=auto_pad)


def window_ref(x, fn, case):
    kernel, strides, pads, dilations, ceil_mode, auto_pad, _ = case
    return ref.pool(x, fn, kernel, strides, pads, dilations, bool(ceil_mode), auto_pad)


def shaped(model, target):
    """apply_target, or ``generic``: the ort target's functions without their run-time
    fast forms, so that the one-hot Conv body (and its ceil_mode rule) runs for every case."""
    if target != "generic":
        return apply_target(model, target)
    from poolexport.onnx.targets import IR_VERSION, attach_functions, normalize_nodes

    normalize_nodes(model)
    model = attach_functions(model, fast=False)
    model.ir_version = IR_VERSION
    return model


@pytest.mark.parametrize("case", WINDOWS, ids=lambda c: f"{len(c[0])}d-{c[5]}-ceil{c[4]}-k{c[0]}s{c[1]}d{c[3]}")
@pytest.mark.parametrize("target", ["ort", "portable", "generic"])
def test_soft_pool_windows(case, target):
    beta = 0.7
    model = shaped(one_node("SoftPool", {**window_attrs(case), "beta": beta}, len(case[6]) + 2), target)
    x = (np.random.default_rng(1).standard_normal((2, 3, *case[6])) * 2).astype(np.float32)
    expected = window_ref(x, soft_fn(beta), case)
    for y in run_all(model, x):
        assert_close(y, expected)


@pytest.mark.parametrize("case", WINDOWS[::2] + CEIL_DROP[1:], ids=lambda c: f"{len(c[0])}d-{c[5]}-ceil{c[4]}-k{c[0]}")
@pytest.mark.parametrize("target", ["ort", "generic"])
def test_stochastic_pool_windows(case, target):
    model = shaped(one_node("StochasticPool", window_attrs(case), len(case[6]) + 2), target)
    x = np.random.default_rng(2).standard_normal((2, 2, *case[6])).astype(np.float32)
    expected = window_ref(x, stochastic_fn, case)
    for y in run_all(model, x):
        assert_close(y, expected)


def test_soft_pool_beta_zero_is_torch_avg_pool():
    """An independent check by PyTorch itself: beta = 0 is average pooling without padding."""
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], beta=0.0)
    model = apply_target(one_node("SoftPool", attrs, 4), "ort")
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 10)).astype(np.float32)
    expected = torch.nn.functional.avg_pool2d(torch.from_numpy(x).double(), 3, 2, 1, count_include_pad=False).numpy()
    for y in run_all(model, x):
        assert_close(y, expected)


def test_defaults_filled_in():
    """A node with only kernel_shape gets AveragePool's defaults (strides 1, no padding)."""
    model = apply_target(one_node("SoftPool", dict(kernel_shape=[2, 3]), 4), "ort")
    attrs = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["strides"] == [1, 1] and attrs["pads"] == [0, 0, 0, 0] and attrs["dilations"] == [1, 1]
    assert attrs["ceil_mode"] == 0 and attrs["auto_pad"] == b"NOTSET" and attrs["beta"] == pytest.approx(1.0)
    x = np.random.default_rng(4).standard_normal((1, 2, 5, 6)).astype(np.float32)
    for y in run_all(model, x):
        assert_close(y, ref.pool(x, soft_fn(1.0), [2, 3]))


@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([2, 3], 0), ([0, 2], 1), ([-1], 0), ([], 1)])
@pytest.mark.parametrize("op", ["ReduceSoftPool", "ReduceStochasticPool"])
def test_reduce_ops(op, axes, keepdims):
    attrs = {"axes": axes, "keepdims": keepdims} if axes else {"keepdims": keepdims}  # absent axes = all
    if op == "ReduceSoftPool":
        attrs["beta"] = 1.5
        fn = soft_fn(1.5)
    else:
        fn = stochastic_fn
    out_rank = 4 if keepdims else 4 - len(axes or range(4))
    model = apply_target(one_node(op, attrs, 4, out_rank=out_rank), "ort")
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = ref.reduce(x, fn, axes or None, bool(keepdims))
    for y in run_all(model, x):
        assert_close(y, expected)


@pytest.mark.parametrize("scale", [1e4, -1e4])
@pytest.mark.parametrize("op", ["SoftPool", "StochasticPool", "ReduceSoftPool", "ReduceStochasticPool"])
def test_stable_at_large_magnitudes(op, scale):
    """Inputs up to +-1e4 in float32: finite outputs equal to the float64 reference."""
    x = (np.random.default_rng(6).uniform(0.5, 1.0, (1, 2, 6, 6)) * scale).astype(np.float32)
    if op.startswith("Reduce"):
        model = apply_target(one_node(op, {"axes": [2, 3], "keepdims": 1}, 4), "ort")
        fn = soft_fn(1.0) if "Soft" in op else stochastic_fn
        expected = ref.reduce(x, fn, [2, 3], True)
    else:
        model = apply_target(one_node(op, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 4), "ort")
        fn = soft_fn(1.0) if "Soft" in op else stochastic_fn
        expected = ref.pool(x, fn, [3, 3], [2, 2], [1, 1, 1, 1])
    for y in run_all(model, x):
        assert_close(y, expected)


def test_float16_graph():
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    model = apply_target(one_node("SoftPool", attrs, 4, TensorProto.FLOAT16), "ort")
    x = np.random.default_rng(7).standard_normal((2, 3, 7, 7)).astype(np.float16)
    expected = ref.pool(x.astype(np.float64), soft_fn(1.0), [2, 2], [2, 2], None, None, True)
    for y in run_all(model, x):
        assert y.dtype == np.float16
        assert_close(y, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("case", WINDOWS[1::2], ids=lambda c: f"{len(c[0])}d-{c[5]}-ceil{c[4]}")
@pytest.mark.parametrize("seed", [0, -3, 2**40 + 5])
def test_stochastic_sample_bit_exact(case, seed):
    """mode="sample": the Philox picks of the decomposition equal, bit for bit, the
    documented pick written in Python integers (tests/_reference.py)."""
    attrs = {**window_attrs(case), "mode": "sample", "seed": seed}
    x = np.random.default_rng(8).standard_normal((2, 3, *case[6])).astype(np.float32)
    expected = window_ref(x, lambda vals, e: ref.stochastic_sample_window(vals, seed, e), case).astype(np.float32)
    for target in ("ort", "portable"):
        model = apply_target(one_node("StochasticPool", attrs, len(case[6]) + 2), target)
        for y in run_all(model, x):
            np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("seed", [0, 31337])
def test_stochastic_sample_ties(seed):
    """Windows [u, 1 - u], u the uniform of their element: cum_0 == t exactly, so the
    first cum > t is the second value (a >= would pick the first)."""
    x, picks = ref.tie_windows(seed, 200)
    attrs = dict(kernel_shape=[2], strides=[2], mode="sample", seed=seed)
    for target in ("ort", "portable"):
        model = apply_target(one_node("StochasticPool", attrs, 3), target)
        for y in run_all(model, x[None]):
            np.testing.assert_array_equal(y[0, :, 0], picks)
        model = apply_target(one_node("ReduceStochasticPool", dict(axes=[1], keepdims=0, mode="sample", seed=seed), 2,
                                      out_rank=1), target)
        for y in run_all(model, x):
            np.testing.assert_array_equal(y, picks)


def test_sample_and_expectation_in_one_model():
    """Both modes in one model share the sample-capable function; each node gets its own mode."""
    a = helper.make_node("StochasticPool", ["X"], ["A"], domain="poolexport", kernel_shape=[2, 2], mode="sample",
                         seed=11)
    b = helper.make_node("StochasticPool", ["X"], ["B"], domain="poolexport", kernel_shape=[2, 2])
    add = helper.make_node("Concat", ["A", "B"], ["Y"], axis=1)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2, 4, 6])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4, 3, 5])
    model = helper.make_model(helper.make_graph([a, b, add], "two", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)])
    model = apply_target(model, "ort")
    xv = np.random.default_rng(9).standard_normal((2, 2, 4, 6)).astype(np.float32)
    sample = ref.pool(xv, lambda vals, e: ref.stochastic_sample_window(vals, 11, e), [2, 2], [1, 1])
    expectation = ref.pool(xv, stochastic_fn, [2, 2], [1, 1])
    for out in run_all(model, xv):
        np.testing.assert_array_equal(out[:, :2], sample.astype(np.float32))
        assert_close(out[:, 2:], expectation)


@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([2, 3], 0), ([0, 2], 1), ([-1], 0)])
@pytest.mark.parametrize("seed", [0, -9])
def test_reduce_stochastic_sample_bit_exact(axes, keepdims, seed):
    attrs = dict(axes=axes, keepdims=keepdims, mode="sample", seed=seed)
    out_rank = 4 if keepdims else 4 - len(axes)
    x = np.random.default_rng(10).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = ref.reduce(x, lambda vals, e: ref.stochastic_sample_window(vals, seed, e), axes, bool(keepdims))
    for target in ("ort", "portable"):
        model = apply_target(one_node("ReduceStochasticPool", attrs, 4, out_rank=out_rank), target)
        for y in run_all(model, x):
            np.testing.assert_array_equal(y, expected.astype(np.float32))
    # the tensorrt target carries no decomposition
    assert not apply_target(one_node("ReduceStochasticPool", attrs, 4), "tensorrt").functions


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="StochasticPool: mode"):
        apply_target(one_node("StochasticPool", dict(kernel_shape=[2, 2], mode="argmax"), 4), "ort")


def test_inference_models_get_the_lean_function():
    """Expectation-only models need no ONNX-ML import and none of the sampling machinery
    (their only If chooses the fast AveragePool form or the per-window one)."""
    model = apply_target(one_node("StochasticPool", dict(kernel_shape=[2, 2]), 4), "ort")
    assert "ai.onnx.ml" not in {i.domain for i in model.opset_import}

    def ops(nodes):
        for n in nodes:
            yield n.op_type
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from ops(a.g.node)

    used = set(ops(model.functions[0].node))
    assert not used & {"LabelEncoder", "CumSum", "BitwiseXor"} and "AveragePool" in used


def test_unknown_target():
    with pytest.raises(ValueError, match="target"):
        apply_target(one_node("SoftPool", dict(kernel_shape=[2]), 3), "tflite")
