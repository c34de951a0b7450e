"""The adaPool family's TensorRT plugins (EdscwPool, IdwPool, AdaPool with its Beta input,
AdaUnpool with four inputs) driven through TensorRT's own ``tensorrt.plugin`` Python code,
with the stand-in compiled module and parser-field conversion of
tests/test_tensorrt_plugins.py (see there for what this can and cannot check).

Expected output shapes and kernel arguments are computed here independently: output sizes
from the float64 oracle's windows (tests/_oracle.py), Beta's and the masks' 5-D view by
the rule of kernel_abi.h written out in tests/test_kernels_emulated_ada.py (the same
argument lists those tests launch the emulated kernels with).
"""
import types

import numpy as np
import pytest

from poolexport.tensorrt import abi, plugins, shapes
from _oracle import windows
from test_kernels_emulated_ada import _pad3, dims5
from test_tensorrt_plugins import (WHEELS, DynamicPluginTensorDesc, ExprBuilder, IDimensionExpr, Setter,  # noqa: F401
                                   _load_fields, trt_env)

pytestmark = [
    pytest.mark.skipif(
        not WHEELS, reason="tensorrt bindings wheel not available (pip download --no-deps tensorrt-cu13-bindings "
        "tensorrt-cu12-bindings==10.9.0.34 -d ~/.cache/poolexport/wheels)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("error:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"),
]

INPUTS = {"EdscwPool": ["X"], "IdwPool": ["X"], "AdaPool": ["X", "Beta"],
          "AdaUnpool": ["X", "MaskEdscw", "MaskEm", "Beta"]}


def _prepared_node(op, input_shapes, attrs):
    """The node ``build-engine`` hands to the parser: a one-node model through ``prepare_onnx``."""
    import onnx
    from onnx import helper

    from poolexport.tensorrt.onnx_prep import prepare_onnx

    names = INPUTS[op]
    node = helper.make_node(op, names, ["Y"], domain="poolexport", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in zip(names, input_shapes)],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)])
    (prepared,) = prepare_onnx(model).graph.node
    return prepared


def _create(trt, registry, node):
    creator = registry.get_creator(node.op_type, plugins.VERSION, plugins.NAMESPACE)
    return creator.create_plugin(node.op_type, plugins.NAMESPACE, _load_fields(trt, creator, node),
                                 trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)


def _expected(op, input_shapes, attrs):
    """(int32 arguments, output shape) by the ABI's definition, from the oracle's windows."""
    x = list(input_shapes[0])
    k = len(x) - 2
    if op == "AdaUnpool":
        _, me, mm, beta = input_shapes
        args = [x[0], x[1], *_pad3(x[2:], 1), *_pad3(me[2:], 1), me[0], me[1], mm[0], mm[1], *dims5(beta, len(x))]
        return args, [x[0], x[1], *me[2:]]
    a = dict(attrs)
    a.setdefault("pads", [0] * (2 * k))
    out, _ = windows(x[2:], a)
    args = [x[0], x[1], *_pad3(x[2:], 1), *_pad3(out, 1), *_pad3(a["kernel_shape"], 1),
            *_pad3(a.get("strides") or [1] * k, 1), *_pad3(a.get("dilations") or [1] * k, 1),
            *_pad3(a["pads"][:k], 0)]
    out_shape = [x[0], x[1], *out]
    if op == "AdaPool":
        args += dims5(input_shapes[1], len(out_shape))
    return args, out_shape


CASES = [
    ("EdscwPool", [[2, 3, 9, 7]], dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], dilations=[1, 2],
                                       ceil_mode=1)),
    ("IdwPool", [[1, 4, 11]], dict(kernel_shape=[4], strides=[3], pads=[1, 2])),
    ("IdwPool", [[2, 2, 5, 6, 7]], dict(kernel_shape=[2, 3, 2], strides=[1, 2, 2], pads=[0, 1, 0, 1, 1, 0])),
    ("AdaPool", [[2, 3, 9, 10], [5, 5]], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AdaPool", [[2, 3, 9, 10], [3, 1, 1]], dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    ("AdaPool", [[2, 3, 12], [2, 1, 6]], dict(kernel_shape=[2], strides=[2])),
    ("AdaPool", [[1, 2, 4, 6, 6], []], dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
    ("AdaUnpool", [[2, 3, 5, 6], [1, 1, 13, 11], [2, 1, 13, 11], [3, 1, 1]], {}),
    ("AdaUnpool", [[2, 3, 7], [2, 3, 14], [1, 3, 14], [7]], {}),
    ("AdaUnpool", [[1, 2, 3, 4, 5], [1, 2, 5, 8, 7], [1, 1, 5, 8, 7], []], {}),
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op,input_shapes,attrs", CASES)
def test_ada_plugin_through_tensorrt_plugin_package(trt_env, op, input_shapes, attrs, dtype):
    trt, trtp, registry = trt_env
    dt = trt.DataType.HALF if dtype == "float16" else trt.DataType.FLOAT
    n_in = len(input_shapes)
    plg = _create(trt, registry, _prepared_node(op, input_shapes, attrs))
    assert type(plg).__name__ == "_TemplateAOTPlugin"
    assert plg.get_output_data_types([dt] * n_in, [len(s) for s in input_shapes]) == [dt]

    builder = ExprBuilder()
    (out_exprs,) = plg.get_output_shapes([[IDimensionExpr(v) for v in s] for s in input_shapes], [], builder)
    out_shape = [e.v for e in out_exprs]
    expected_args, expected_shape = _expected(op, input_shapes, attrs)
    assert out_shape == expected_shape

    in_out = [DynamicPluginTensorDesc(s, dt, trt.TensorFormat.LINEAR) for s in input_shapes]
    in_out.append(DynamicPluginTensorDesc(out_shape, dt, trt.TensorFormat.LINEAR))
    combos = plg.get_supported_format_combinations(in_out, n_in)
    groups = {tuple(c.type for c in combos[i:i + n_in + 1]) for i in range(0, len(combos), n_in + 1)}
    assert groups == {(trt.DataType.FLOAT,) * (n_in + 1), (trt.DataType.HALF,) * (n_in + 1)}

    plg.set_tactic(0)
    launch, setter = types.SimpleNamespace(), Setter()
    plg.get_launch_params(None, in_out, n_in, launch, setter, builder)
    assert setter.nbSymExprs == len(abi.kernel_scalars(op))
    got = [setter.items[i] for i in range(setter.nbSymExprs)]
    assert all(a.dtype == trt.PluginArgDataType.INT32 for a in got)
    assert [a.expr.v for a in got] == expected_args
    assert launch.grid_x.expr.v == max(1, min(-(-int(np.prod(out_shape)) // 256), 65535))
    assert (launch.block_x.expr.v, launch.shared_mem.expr.v) == (256, 0)
    name, code = plg.get_kernel([d.desc for d in in_out[:-1]], [in_out[-1].desc])
    assert name == f"{abi.KERNELS[op][0]}_{'f16' if dtype == 'float16' else 'f32'}"
    assert code == b"// stand-in PTX\n"


@pytest.mark.parametrize("op,input_shapes,match", [
    ("AdaPool", [[2, 3, 8, 8], [3, 5, 1]], "AdaPool: Beta of shape .* does not broadcast to the output"),
    ("AdaPool", [[2, 3, 8, 8], [1, 2, 3, 4, 4]], "AdaPool: Beta of rank 5 does not broadcast"),
    ("AdaUnpool", [[2, 3, 5], [2, 3, 4], [2, 3, 4], []], "AdaUnpool: the masks' spatial shape must be at least X's"),
    ("AdaUnpool", [[2, 3, 5], [2, 3, 9], [2, 3, 8], []], "AdaUnpool: MaskEdscw and MaskEm must have the same spatial"),
    ("AdaUnpool", [[2, 3, 5], [3, 3, 9], [2, 3, 9], []], "AdaUnpool: MaskEdscw of shape .* must have N = 2 or 1"),
    ("AdaUnpool", [[2, 3, 5], [2, 3, 9], [2, 3, 9], [2, 5]], "AdaUnpool: Beta of shape .* does not broadcast to X"),
])
def test_ada_bad_static_shapes_fail_at_network_build(trt_env, op, input_shapes, match):
    trt, trtp, registry = trt_env
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2]) if op == "AdaPool" else {}
    plg = _create(trt, registry, _prepared_node(op, input_shapes, attrs))
    with pytest.raises(ValueError, match=match):  # a rank mismatch already when the types are asked
        plg.get_output_data_types([trt.DataType.FLOAT] * len(input_shapes), [len(s) for s in input_shapes])
        plg.get_output_shapes([[IDimensionExpr(v) for v in s] for s in input_shapes], [], ExprBuilder())


def test_ada_shape_functions_match_expected_without_tensorrt():
    """shapes.kernel_args / launch_total on ints (what build-engine's checks use) agree with
    the independent argument lists for every case."""
    for op, input_shapes, attrs in CASES:
        args, out_shape = shapes.kernel_args(op, input_shapes[0], attrs, others=input_shapes[1:])
        assert (args, out_shape) == _expected(op, input_shapes, attrs), op
        assert shapes.launch_total(op, input_shapes[0], attrs, others=input_shapes[1:]) == int(np.prod(out_shape))
        assert len(args) == len(abi.kernel_scalars(op))


def test_tensorrt_target_exports_ada_nodes():
    """``--target tensorrt`` shapes the adaPool nodes for the parser instead of refusing."""
    import onnx
    from onnx import helper

    from poolexport.onnx.targets import apply_target

    for op, input_shapes, attrs in CASES[::3]:
        names = INPUTS[op]
        node = helper.make_node(op, names, ["Y"], domain="poolexport", **attrs)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s)
                                            for n, s in zip(names, input_shapes)],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)])
        m = apply_target(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                                             helper.make_opsetid("poolexport", 1)]), "tensorrt")
        (n,) = m.graph.node
        got = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert got["plugin_namespace"] == b"poolexport" and got["aot"] == 1
        assert [a.name for a in n.attribute][:len(plugins.ATTRS[op])] == list(plugins.ATTRS[op])
        assert not m.functions
