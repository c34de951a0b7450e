"""The plugin definitions driven through TensorRT's own ``tensorrt.plugin`` Python code.

TensorRT's libraries cannot be installed here, but its bindings wheels contain the pure
Python package ``tensorrt_bindings/plugin`` (decorators, signature validation, the
plugin-creator and AOT-plugin classes TensorRT calls back). This test loads that code
from the published wheels (10.9 and 11.4) over a small stand-in for the compiled
``tensorrt`` module, registers our plugins with it, and plays the calls the ONNX parser
and the builder make: create the plugin with a STRICT_AOT request from the fields the
parser builds (``_load_fields``, a line-by-line copy of onnx-tensorrt's conversion) out of
the node ``build-engine`` prepares, then output types and shapes (integer-valued
dimension expressions), format combinations, launch parameters and the kernel. The
results must equal the plain shape/argument functions and kernel_abi.h's grid rule.

Run under numpy 1.x and >= 2.4 (TensorRT 10.x's ``int(ndarray)`` breaks on 2.4; here
numpy 1.x's DeprecationWarning for it is an error, so 1.x catches it too).

What this cannot check: the compiled C++ side of TensorRT and of the parser (the real
``PluginField`` data conversion in the bindings). The wheels are looked up in $POOLEXPORT_TRT_BINDINGS_WHEELS
(os.pathsep-separated files or folders) or ~/.cache/poolexport/wheels; CI downloads them
with ``pip download --no-deps``.
"""
import enum
import importlib
import operator
import os
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from poolexport.tensorrt import abi, plugins, ptx, shapes


def _wheels():
    spec = os.environ.get("POOLEXPORT_TRT_BINDINGS_WHEELS") or str(Path.home() / ".cache" / "poolexport" / "wheels")
    found = []
    for part in spec.split(os.pathsep):
        p = Path(part)
        found += sorted(p.glob("tensorrt_cu1*_bindings-*.whl")) if p.is_dir() else ([p] if p.is_file() else [])
    return found


WHEELS = _wheels()
pytestmark = [
    pytest.mark.skipif(
        not WHEELS, reason="tensorrt bindings wheel not available (pip download --no-deps tensorrt-cu13-bindings "
        "tensorrt-cu12-bindings==10.9.0.34 -d ~/.cache/poolexport/wheels)"),
    # TensorRT's own code: regex docstrings. But int(ndarray) is what numpy 2.4 rejects
    # (10.9's create_plugin does it for scalar annotations): an error under 1.x as well.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("error:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"),
]


# ---------------------------------------------------------------- stand-in for the compiled module
class DimensionOperation(enum.Enum):
    SUM, PROD, MAX, MIN, SUB, EQUAL, LESS, FLOOR_DIV, CEIL_DIV = range(9)


_EVAL = {
    DimensionOperation.SUM: operator.add, DimensionOperation.PROD: operator.mul,
    DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: operator.sub,
    DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: operator.floordiv, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class IDimensionExpr:
    def __init__(self, v):
        self.v = int(v)

    def is_constant(self):
        return True

    def get_constant_value(self):
        return self.v


class ExprBuilder:
    def constant(self, v):
        return IDimensionExpr(v)

    def operation(self, op, a, b):
        return IDimensionExpr(_EVAL[op](a.v, b.v))


class _Base:
    def __init__(self, *a, **k):
        pass


class PluginField:
    def __init__(self, name="", data=None, type=None):
        self.name, self.data, self.type = name, data, type


class Dims(list):
    MAX_DIMS = 8

    def __init__(self, v=()):
        super().__init__([0] * v if isinstance(v, int) else list(v))


class DimsExprs(list):
    def __init__(self, n):
        super().__init__([None] * n)


class PluginTensorDesc:
    def __init__(self, dims=(), type=None, format=None):
        self.dims, self.type, self.format, self.scale = Dims(dims), type, format, -1.0


class DynamicPluginTensorDesc:
    def __init__(self, dims=(), type=None, format=None):
        self.desc = PluginTensorDesc(dims, type, format)
        self.min = self.max = self.opt = Dims(dims)


class Registry:
    def __init__(self):
        self.creators = {}

    def register_creator(self, creator, namespace):
        self.creators[(creator.name, creator.plugin_version, namespace)] = creator
        return True

    def get_creator(self, name, version, namespace):
        return self.creators[(name, version, namespace)]


def _stub_tensorrt(package_dir: Path, version: str):
    trt = types.ModuleType("tensorrt")
    trt.__path__ = [str(package_dir)]  # so `import tensorrt.plugin` finds the wheel's plugin/
    trt.__version__ = version
    E = lambda name, *members: enum.Enum(name, members)  # noqa: E731
    trt.DataType = E("DataType", "FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4")
    trt.float32, trt.float16, trt.int32 = trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32
    trt.TensorFormat = E("TensorFormat", "LINEAR", "CHW2", "HWC8", "CHW4", "CHW16", "CHW32", "DHWC8", "CDHW32",
                         "HWC", "DLA_LINEAR", "DLA_HWC4", "HWC16", "DHWC")
    trt.PluginFieldType = E("PluginFieldType", "FLOAT16", "FLOAT32", "FLOAT64", "INT8", "INT16", "INT32", "CHAR",
                            "DIMS", "UNKNOWN", "BF16", "INT64", "FP8", "INT4")
    trt.TensorRTPhase = E("TensorRTPhase", "BUILD", "RUNTIME")
    trt.QuickPluginCreationRequest = E("QuickPluginCreationRequest", "UNKNOWN", "PREFER_JIT", "PREFER_AOT",
                                       "STRICT_JIT", "STRICT_AOT")
    trt.PluginArgType = E("PluginArgType", "INT")
    trt.PluginArgDataType = E("PluginArgDataType", "INT8", "INT16", "INT32")
    trt.DimensionOperation = DimensionOperation
    trt.IDimensionExpr = IDimensionExpr
    trt.IExprBuilder = ExprBuilder
    trt.PluginField = PluginField
    trt.PluginFieldCollection = list
    trt.Dims, trt.DimsExprs = Dims, DimsExprs
    trt.PluginTensorDesc, trt.DynamicPluginTensorDesc = PluginTensorDesc, DynamicPluginTensorDesc
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild", "IPluginV3QuickRuntime",
                 "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "ISymExpr", "ITensor"):
        setattr(trt, name, type(name, (_Base,), {}))

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = range(4)

        def log(self, *a):
            pass

    trt.Logger = Logger
    registry = Registry()
    trt.get_plugin_registry = lambda: registry
    trt.nptype = lambda t: {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}[t]
    return trt, registry


@pytest.fixture(params=WHEELS, ids=lambda p: p.name.split("-")[0] + "-" + p.name.split("-")[1])
def trt_env(request, tmp_path_factory, monkeypatch):
    wheel = request.param
    root = tmp_path_factory.mktemp("bindings")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root, [n for n in z.namelist() if n.startswith("tensorrt_bindings/plugin/")])
    version = wheel.name.split("-")[1]
    trt, registry = _stub_tensorrt(root / "tensorrt_bindings", version)
    before = set(sys.modules)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(plugins, "_registered", False)
    monkeypatch.setattr(ptx, "load_ptx", lambda arch=ptx.DEFAULT_ARCH: "// stand-in PTX\n")
    trtp = importlib.import_module("tensorrt.plugin")
    plugins.register_plugins()
    yield trt, trtp, registry
    for name in set(sys.modules) - before:
        if name.startswith("tensorrt"):
            del sys.modules[name]


def _load_fields(trt, creator, node):
    """The plugin fields TensorRT's ONNX parser hands to ``creator`` for ``node``.

    Follows onnx-tensorrt's ``onnxOpImporters.cpp`` (github.com/onnx/onnx-tensorrt, commit
    0137504e2b25; unchanged since 10.1 GA), ``loadFields`` and ``copyField``: walk the
    creator's field names (not the node's attributes), skip a field the node lacks, and
    convert by the attribute's type: FLOAT -> one float32; INT -> ``get<int32_t>``, one
    int32 (narrowed); STRING -> the bytes plus a NUL, counted in the length, kCHAR; INTS ->
    ``get<std::vector<int>>``, int32 each; FLOATS -> float32. The numpy arrays are what
    TensorRT's Python bindings expose as ``PluginField.data`` for those types.
    """
    from onnx import AttributeProto

    attrs = {a.name: a for a in node.attribute}
    fields = []
    for wanted in creator.field_names:
        a = attrs.get(wanted.name)
        if a is None:
            continue
        if a.type == AttributeProto.FLOAT:
            data, kind = np.array([a.f], dtype=np.float32), trt.PluginFieldType.FLOAT32
        elif a.type == AttributeProto.INT:
            data, kind = np.array([a.i], dtype=np.int64).astype(np.int32), trt.PluginFieldType.INT32
        elif a.type == AttributeProto.STRING:
            data, kind = np.frombuffer(a.s + b"\0", dtype=np.int8), trt.PluginFieldType.CHAR
        elif a.type == AttributeProto.INTS:
            data, kind = np.array(list(a.ints), dtype=np.int64).astype(np.int32), trt.PluginFieldType.INT32
        elif a.type == AttributeProto.FLOATS:
            data, kind = np.array(list(a.floats), dtype=np.float32), trt.PluginFieldType.FLOAT32
        else:
            raise AssertionError(f"attribute type {a.type} is not a plugin field type the parser accepts")
        fields.append(PluginField(a.name, data, kind))
    return fields


def _prepared_node(op, shape, attrs):
    """The node ``build-engine`` hands to the parser: a one-node ``ort``-style model (int64
    ``seed``) through ``prepare_onnx``."""
    import onnx
    from onnx import helper

    from poolexport.tensorrt.onnx_prep import prepare_onnx

    node = helper.make_node(op, ["X"], ["Y"], domain="poolexport", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)])
    (prepared,) = prepare_onnx(model).graph.node
    return prepared


def _create(trt, registry, node):
    creator = registry.get_creator(node.op_type, plugins.VERSION, plugins.NAMESPACE)
    return creator.create_plugin(node.op_type, plugins.NAMESPACE, _load_fields(trt, creator, node),
                                 trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)


class Setter:
    def __init__(self):
        self.nbSymExprs, self.items = 0, {}

    def __setitem__(self, i, v):
        self.items[i] = v


CASES = [
    ("SoftPool", [2, 3, 9, 7], dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], dilations=[1, 2],
                                    ceil_mode=1, auto_pad="NOTSET", beta=0.5)),
    ("SoftPool", [1, 4, 11], dict(kernel_shape=[4], strides=[3], pads=[0, 0], dilations=[1], ceil_mode=0,
                                  auto_pad="SAME_LOWER", beta=-2.0)),
    ("StochasticPool", [2, 2, 5, 6, 7], dict(kernel_shape=[2, 3, 2], strides=[1, 2, 2], pads=[0, 1, 0, 1, 1, 0],
                                             dilations=[1, 1, 2], ceil_mode=0, auto_pad="NOTSET", mode="sample",
                                             seed=-(2**40) + 3)),
    ("StochasticPool", [1, 1, 8, 8], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1],
                                          ceil_mode=0, auto_pad="SAME_UPPER", mode="expectation", seed=0)),
    ("ReduceSoftPool", [2, 3, 4, 5], dict(axes=[1, 3], keepdims=1, beta=2.0)),
    ("ReduceSoftPool", [2, 1, 3, 2, 2, 3, 2, 2], dict(axes=[0, 1, 4, 5, 6], keepdims=0, beta=1.0)),
    ("StochasticPool", [1, 2, 9], dict(kernel_shape=[3], mode="sample", seed=2**40 + 5)),  # defaults filled in
    ("ReduceStochasticPool", [4, 6], dict(axes=[-1], keepdims=0, mode="sample", seed=2**63 - 1)),
    ("ReduceStochasticPool", [3, 2, 2], dict(axes=[0, 1, 2], keepdims=0, mode="expectation", seed=7)),
    ("ReduceStochasticPool", [3, 5, 2], dict(mode="sample", seed=-1)),  # axes from the input rank
]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op,shape,attrs", CASES)
def test_plugin_through_tensorrt_plugin_package(trt_env, op, shape, attrs, dtype):
    """Created from the parser's fields of the prepared node, the plugin declares what the
    plain shape/argument functions compute from the original (int64 seed) attributes."""
    trt, trtp, registry = trt_env
    dt = trt.DataType.HALF if dtype == "float16" else trt.DataType.FLOAT
    plg = _create(trt, registry, _prepared_node(op, shape, attrs))
    assert type(plg).__name__ == "_TemplateAOTPlugin"
    assert plg.get_output_data_types([dt], [len(shape)]) == [dt]

    builder = ExprBuilder()
    (out_exprs,) = plg.get_output_shapes([[IDimensionExpr(s) for s in shape]], [], builder)
    out_shape = [e.v for e in out_exprs]
    expected_args, expected_shape = shapes.kernel_args(op, shape, attrs)
    assert out_shape == list(expected_shape)

    in_out = [DynamicPluginTensorDesc(shape, dt, trt.TensorFormat.LINEAR),
              DynamicPluginTensorDesc(out_shape, dt, trt.TensorFormat.LINEAR)]
    combos = plg.get_supported_format_combinations(in_out, 1)
    pairs = {(combos[i].type, combos[i + 1].type) for i in range(0, len(combos), 2)}
    assert pairs == {(trt.DataType.FLOAT, trt.DataType.FLOAT), (trt.DataType.HALF, trt.DataType.HALF)}
    assert {c.format for c in combos} == {trt.TensorFormat.LINEAR}

    plg.set_tactic(0)
    launch, setter = types.SimpleNamespace(), Setter()
    plg.get_launch_params(None, in_out, 1, launch, setter, builder)
    assert setter.nbSymExprs == len(abi.kernel_params(op)) - 2
    got = [setter.items[i] for i in range(setter.nbSymExprs)]
    assert all(a.dtype == trt.PluginArgDataType.INT32 for a in got)
    assert [a.expr.v for a in got] == expected_args
    assert launch.grid_x.expr.v == abi.launch_grid(shapes.launch_total(op, shape, attrs))
    assert (launch.grid_y.expr.v, launch.grid_z.expr.v) == (1, 1)
    assert (launch.block_x.expr.v, launch.block_y.expr.v, launch.block_z.expr.v) == (abi.BLOCK, 1, 1)
    assert launch.shared_mem.expr.v == 0
    name, code = plg.get_kernel([in_out[0].desc], [in_out[1].desc])
    assert name == abi.kernel_name(op, dtype)
    assert code == b"// stand-in PTX\n"


def _launch_args(trt, plg, shape, out_shape, dt=None):
    dt = dt or trt.DataType.FLOAT
    plg.get_output_data_types([dt], [len(shape)])
    plg.get_output_shapes([[IDimensionExpr(s) for s in shape]], [], ExprBuilder())
    in_out = [DynamicPluginTensorDesc(shape, dt, trt.TensorFormat.LINEAR),
              DynamicPluginTensorDesc(out_shape, dt, trt.TensorFormat.LINEAR)]
    plg.set_tactic(0)
    setter = Setter()
    plg.get_launch_params(None, in_out, 1, types.SimpleNamespace(), setter, ExprBuilder())
    return [setter.items[i].expr.v for i in range(setter.nbSymExprs)]


SEED = 2**40 + 5  # words (5, 256): the high word is what an int32 INT field would lose


@pytest.mark.parametrize("op,shape,attrs,out_shape", [
    ("SoftPool", [1, 2, 6, 6], dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="VALID"), [1, 2, 3, 3]),
    ("StochasticPool", [1, 2, 6, 6], dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="VALID", mode="sample",
                                          seed=SEED), [1, 2, 3, 3]),
    ("ReduceSoftPool", [2, 3, 4], dict(axes=[1], keepdims=0, beta=3.0), [2, 4]),
    ("ReduceStochasticPool", [2, 3, 4], dict(axes=[1], keepdims=0, mode="sample", seed=SEED), [2, 4]),
])
def test_each_plugin_from_parser_fields_carries_the_whole_seed(trt_env, op, shape, attrs, out_shape):
    trt, trtp, registry = trt_env
    node = _prepared_node(op, shape, attrs)
    args = _launch_args(trt, _create(trt, registry, node), shape, out_shape)
    params = abi.kernel_params(op)[1:-1]
    named = dict(zip(params, args))
    if "seed" in attrs:
        assert (named["sample"], named["seed_lo"], named["seed_hi"]) == (1, 5, 256)
    else:
        assert named["beta_bits"] == int(np.array(attrs.get("beta", 1.0), np.float32).view(np.int32))
    # the parser's STRING field ends in NUL; the plugin must not see it
    fields = {f.name: f for f in _load_fields(trt, registry.get_creator(op, "1", "poolexport"), node)}
    assert all(bytes(f.data.tobytes()).endswith(b"\0") for f in fields.values() if f.type == trt.PluginFieldType.CHAR)


def test_fields_out_of_schema_order_are_rejected(trt_env):
    """A hand-built collection (never the parser's) in another order fails loudly."""
    trt, trtp, registry = trt_env
    op, shape, attrs = CASES[0]
    fields = _load_fields(trt, registry.get_creator(op, "1", "poolexport"), _prepared_node(op, shape, attrs))
    fields[0], fields[5] = fields[5], fields[0]  # auto_pad first, kernel_shape sixth
    plg = registry.get_creator(op, "1", "poolexport").create_plugin(
        op, "poolexport", fields, trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)
    plg.get_output_data_types([trt.DataType.FLOAT], [len(shape)])
    plg.get_output_shapes([[IDimensionExpr(s) for s in shape]], [], ExprBuilder())  # by keyword: fine
    in_out = [DynamicPluginTensorDesc(shape, trt.DataType.FLOAT, trt.TensorFormat.LINEAR)] * 2
    plg.set_tactic(0)
    with pytest.raises(ValueError, match="SoftPool: field kernel_shape received str .* must follow the order"):
        plg.get_launch_params(None, in_out, 1, types.SimpleNamespace(), Setter(), ExprBuilder())


def test_window_larger_than_static_input_fails_at_network_build(trt_env):
    trt, trtp, registry = trt_env
    op, shape, attrs = CASES[0]
    plg = _create(trt, registry, _prepared_node(op, shape, dict(attrs, kernel_shape=[20, 2])))
    plg.get_output_data_types([trt.DataType.FLOAT], [len(shape)])  # no shapes yet: nothing to check
    with pytest.raises(ValueError, match="SoftPool: kernel_shape: window span 20 exceeds"):
        plg.get_output_shapes([[IDimensionExpr(s) for s in shape]], [], ExprBuilder())


def test_invalid_attribute_fails_at_network_build(trt_env):
    trt, trtp, registry = trt_env
    op, shape, attrs = CASES[0]
    plg = _create(trt, registry, _prepared_node(op, shape, dict(attrs, auto_pad="SAME")))
    with pytest.raises(ValueError, match="SoftPool: auto_pad"):
        plg.get_output_data_types([trt.DataType.FLOAT], [len(shape)])


@pytest.fixture(scope="module")
def exported():
    """An exported model and torch's intermediate shapes; exported before the stand-in
    ``tensorrt`` module is installed (torch.export inspects installed modules)."""
    import torch

    from poolexport.nn import SoftPool2d, SoftPoolReduce, StochasticPool2d, StochasticPoolReduce
    from poolexport.onnx import export_model
    from poolexport.tensorrt.onnx_prep import prepare_onnx

    layers = [SoftPool2d(3, 2, 1, ceil_mode=True, beta=0.5), StochasticPool2d(2, 1, dilation=2),
              SoftPoolReduce(dim=1, keepdim=True, beta=2.0), StochasticPoolReduce(dim=(2, 3), keepdim=False)]
    model = torch.nn.Sequential(*layers).eval()
    x = torch.randn(2, 3, 13, 11)
    shapes_torch = []
    h = x
    for layer in layers:
        h = layer(h)
        shapes_torch.append(list(h.shape))
    return prepare_onnx(export_model(model, x, target="tensorrt")), list(x.shape), shapes_torch


def test_exported_model_nodes_create_plugins_with_torch_shapes(exported, trt_env):
    """The tensorrt export target + the builder's preparation give nodes our plugins accept."""
    trt, trtp, registry = trt_env
    proto, shape, shapes_torch = exported
    nodes = [n for n in proto.graph.node if n.domain == "poolexport"]
    assert [n.op_type for n in nodes] == ["SoftPool", "StochasticPool", "ReduceSoftPool", "ReduceStochasticPool"]
    for node, expected in zip(nodes, shapes_torch):
        plg = _create(trt, registry, node)
        plg.get_output_data_types([trt.DataType.FLOAT], [len(shape)])
        (out,) = plg.get_output_shapes([[IDimensionExpr(s) for s in shape]], [], ExprBuilder())
        assert [e.v for e in out] == expected, node.op_type
        in_out = [DynamicPluginTensorDesc(shape, trt.DataType.FLOAT, trt.TensorFormat.LINEAR),
                  DynamicPluginTensorDesc(expected, trt.DataType.FLOAT, trt.TensorFormat.LINEAR)]
        plg.set_tactic(0)
        setter = Setter()
        plg.get_launch_params(None, in_out, 1, types.SimpleNamespace(), setter, ExprBuilder())
        assert setter.nbSymExprs == len(abi.kernel_params(node.op_type)) - 2
        shape = expected
