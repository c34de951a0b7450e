"""The portable file's unshifted SoftPool tier (poolexport/onnx/portable.py with
decompositions.unshifted_soft, UNSHIFTED_MAX, MIN_UNSHIFTED_BETA) where beta * x and x
disagree: beta = 2 and x ~ 50 has beta * x ~ 100 > UNSHIFTED_MAX while x < it, so a check
on max(x) instead of max(beta * x) takes exp(100) = inf (NaN in float32); beta = -2 with
x ~ -50 is the same on the other sign; beta = 0.5 with x ~ 110 is the reverse (z ~ 55
holds, x does not). Every case runs in plain ONNX Runtime (no custom-op library) and in
the ONNX reference evaluator against a float64 oracle (tests/_reference.py), and the
outer If's condition (the unshifted tier's check) is compared with the rule computed in
float64: max(beta * x) <= UNSHIFTED_MAX and every window's mean weight exp(beta * x) >=
MIN_MEAN_WEIGHT, for |beta| >= MIN_UNSHIFTED_BETA.
"""
from __future__ import annotations

import copy
import math

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
    dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 0, 1]),
    dict(kernel_shape=[3], strides=[2], pads=[1, 2], ceil_mode=1),
]
SHAPE = {1: (2, 2, 15), 2: (2, 2, 9, 8)}

# (beta, centre of x, spread): z = beta * x
CASES = [
    (2.0, 50.0, 3.0),     # z ~ 100 > 60, x ~ 50 < 60: the unshifted tier must not be taken
    (2.0, 59.0, 0.5),     # z ~ 118, x just below 60
    (-2.0, -50.0, 3.0),   # the same on the other sign
    (3.0, 25.0, 2.0),     # z ~ 75, x ~ 25
    (2.0, 25.0, 2.0),     # z ~ 50 <= 60: unshifted holds
    (-2.0, 50.0, 2.0),    # z ~ -100: every weight underflows, unshifted refused by the weight check
    (0.5, 110.0, 5.0),    # z ~ 55 <= 60 although x > 60: unshifted holds
    (-0.5, -110.0, 5.0),  # the same on the other sign
    (1.0, 50.0, 3.0),     # beta 1: z is x (no Mul)
    (1.0, 65.0, 1.0),     # beta 1 above the limit
    (-1.0, -65.0, 1.0),
    (2.0, 25.0, 2.0, -50.0),  # split plane: z ~ 50 on one half, ~ -100 (weights underflow to 0) on the other
    (-2.0, -25.0, 2.0, 50.0),
    (1.0, 40.0, 2.0, -120.0),
]


def one_node(attrs, beta):
    rank = len(attrs["kernel_shape"]) + 2
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", "c", *[f"d{i}" for i in range(rank - 2)]])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node = helper.make_node("SoftPool", ["X"], ["Y"], domain="poolexport", name="pool", beta=beta, **attrs)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             ir_version=10)


def window_pool(x, attrs, fn):
    return ref.pool(x, lambda v, e: fn(v), attrs["kernel_shape"], attrs.get("strides"), attrs.get("pads"),
                    attrs.get("dilations"), bool(attrs.get("ceil_mode", 0)), attrs.get("auto_pad", "NOTSET"))


def make_input(attrs, centre, spread, seed, low=None):
    """centre +- spread; with ``low``, the last axis' second half is low +- spread instead."""
    k = len(attrs["kernel_shape"])
    rng = np.random.default_rng(seed)
    x = centre + spread * rng.uniform(-1.0, 1.0, SHAPE[k])
    if low is not None:
        half = SHAPE[k][-1] // 2
        x[..., half:] += low - centre
    return x.astype(np.float32)


def unshifted_rule(x, attrs, beta) -> bool:
    """The documented condition of the unshifted tier, in float64."""
    if abs(beta) < decompositions.MIN_UNSHIFTED_BETA:
        return False
    x64 = x.astype(np.float64)
    if np.max(beta * x64) > decompositions.UNSHIFTED_MAX:
        return False
    mean_weight = window_pool(x64, attrs, lambda v: sum(math.exp(beta * t) for t in v) / len(v) if v else 0.0)
    return bool(np.min(mean_weight) >= decompositions.MIN_MEAN_WEIGHT)


def _with_outer_condition(model):
    m = copy.deepcopy(model)
    cond = next(n for n in m.graph.node if n.op_type == "If").input[0]
    m.graph.output.append(helper.make_tensor_value_info(cond, TensorProto.BOOL, None))
    return m


@pytest.mark.parametrize("attrs", WINDOWS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{v:g}" for v in c))
def test_portable_soft_pool_where_beta_x_and_x_disagree(case, attrs):
    beta, centre, spread, *low = case
    model = apply_target(one_node(attrs, beta), "portable")
    assert not any(n.domain == "poolexport" for n in model.graph.node)
    assert any(n.op_type == "If" for n in model.graph.node), "expected the fast form"
    x = make_input(attrs, centre, spread, seed=int(abs(beta * 100 + centre)), low=low[0] if low else None)
    want = window_pool(x, attrs, lambda v: ref.soft_window(v, beta))

    sess = ort.InferenceSession(_with_outer_condition(model).SerializeToString(), providers=["CPUExecutionProvider"])
    y, taken = sess.run(None, {"X": x})
    assert np.all(np.isfinite(y)), f"non-finite output (NaN/inf) at beta={beta}, x~{centre}"
    err = np.max(np.abs(y - want)) / np.max(np.abs(want))
    assert err <= 1e-5, err
    assert bool(taken) == unshifted_rule(x, attrs, beta), \
        f"unshifted tier taken={bool(taken)} at beta={beta}, max(beta*x)={np.max(beta * x.astype(np.float64)):.1f}"

    y_ref = ReferenceEvaluator(model).run(None, {"X": x})[0]
    assert np.all(np.isfinite(y_ref))
    assert np.max(np.abs(y_ref - want)) / np.max(np.abs(want)) <= 1e-5


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{v:g}" for v in c))
def test_ort_target_fallback_functions_agree(case):
    """The ``ort`` target's local functions (plain ONNX Runtime runs them) on the same inputs."""
    beta, centre, spread, *low = case
    attrs = WINDOWS[1]
    model = apply_target(one_node(attrs, beta), "ort")
    x = make_input(attrs, centre, spread, seed=3, low=low[0] if low else None)
    want = window_pool(x, attrs, lambda v: ref.soft_window(v, beta))
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    assert np.all(np.isfinite(y))
    assert np.max(np.abs(y - want)) / np.max(np.abs(want)) <= 1e-5


def test_the_cases_straddle_the_limit():
    """The grid really holds inputs where the two checks disagree, both ways."""
    lim = decompositions.UNSHIFTED_MAX
    assert any(b * c > lim and c < lim for b, c, *_ in CASES)
    assert any(b * c <= lim and abs(c) > lim for b, c, *_ in CASES)
    assert any(b < 0 and b * c > lim for b, c, *_ in CASES)
    assert any(len(c) == 4 and c[0] * c[3] < -90 for c in CASES)  # a plane with windows of no weight
