"""Node names from module paths (poolexport/onnx/names.py): every target's file names its
nodes ``<module path>/<OpType>`` after the PyTorch module they came from, uniquely, keeps a
valid graph (onnx.checker full_check) and computes exactly what the unnamed file computes."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import poolexport.nn as pnn
from poolexport.onnx import export as export_mod
from poolexport.onnx import names, targets
from poolexport.onnx.export import export_model
from poolexport.ort import session


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)  # folded into conv1 by torch.onnx's optimizer
        self.pool = pnn.SoftPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv1(x))))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = torch.nn.Sequential(Block(), torch.nn.Conv2d(4, 3, 1), Block())
        self.sp = pnn.StochasticPool2d(2)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        y = self.sp(self.layer1(x))
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def raw(net):
    return export_model(net, torch.randn(2, 3, 16, 16), target=None)


def _target(raw, target, rename=True):
    proto = onnx.ModelProto()
    proto.CopyFrom(raw)
    if rename:
        return targets.apply_target(proto, target)
    real = targets.name_nodes
    targets.name_nodes = lambda model, scopes=None: model
    try:
        return targets.apply_target(proto, target)
    finally:
        targets.name_nodes = real


def _all_names(graph, nodes, values):
    for n in graph.node:
        nodes.append(n.name)
        values.extend(o for o in n.output if o)
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _all_names(g, nodes, values)
    return nodes, values


@pytest.mark.parametrize("target", ["ort", "portable", "tensorrt"])
def test_names_follow_module_paths(net, raw, target):
    model = _target(raw, target)
    onnx.checker.check_model(model, full_check=True)
    modules = dict(net.named_modules())
    main = [n.name for n in model.graph.node]
    main_values = [o for n in model.graph.node for o in n.output]
    _, all_values = _all_names(model.graph, [], [])
    inner = set(all_values) - set(main_values)  # sibling If branches may reuse a name; never the main graph's
    assert len(set(main)) == len(main), "node names repeat"
    assert len(set(main_values)) == len(main_values), "a value is produced twice"
    assert len(all_values) - len(main_values) >= len(inner) and not inner & set(main_values)
    assert all(name for name in main), "a node has no name"
    assert not any(name.startswith("node_") for name in main), main
    # every node reading a module's weight is named after that module (a Conv that absorbed
    # its BatchNorm included): the module path from torch's own named_modules()
    weighted = 0
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        for name in node.input:
            if name in inits and name.endswith(".weight"):
                path = name[: -len(".weight")]
                assert path in modules, path
                assert node.name.split("/")[0] == path, (node.name, path)
                weighted += 1
    assert weighted >= 4  # three convs and the head
    convs = sorted(n.name for n in model.graph.node if n.op_type == "Conv")
    assert convs == ["layer1.0.conv1/Conv", "layer1.1/Conv", "layer1.2.conv1/Conv"]
    pool_paths = {p for p, m in modules.items() if isinstance(m, (pnn.SoftPool2d, pnn.StochasticPool2d))}
    assert pool_paths == {"layer1.0.pool", "layer1.2.pool", "sp"}
    if target == "portable":
        # the inlined decompositions take their pool's path
        prefixes = {n.name.rsplit("/", 1)[0] for n in model.graph.node if "/" in n.name}
        assert pool_paths <= prefixes
        assert sum(n.name.startswith("layer1.0.pool/") for n in model.graph.node) > 3
    else:
        custom = sorted(n.name for n in model.graph.node if n.domain == "poolexport")
        assert custom == ["layer1.0.pool/SoftPool", "layer1.2.pool/SoftPool", "sp/StochasticPool"]
    # intermediate values are named after their producer; the graph's own names stay
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    produced = {o: n.name for n in model.graph.node for o in n.output}
    for value, node_name in produced.items():
        if value != "output":
            assert value.startswith(node_name + "_output_"), (value, node_name)


@pytest.mark.parametrize("target", ["ort", "portable"])
def test_renaming_changes_no_output(raw, net, target):
    """Bit for bit the outputs of the same file without the renaming, and within the
    float32 tolerance of PyTorch in float64 (an independent reference)."""
    named, plain = _target(raw, target), _target(raw, target, rename=False)
    assert [n.name for n in named.graph.node] != [n.name for n in plain.graph.node]
    x = np.random.default_rng(1).standard_normal((3, 3, 20, 24)).astype(np.float32)
    got = session(named.SerializeToString()).run(None, {"input": x})[0]
    want = session(plain.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, want)
    with torch.no_grad():
        ref = net.double()(torch.from_numpy(x).double()).numpy()
        net.float()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_rename_is_stable(raw):
    """Applying the pass again (a file re-targeted) gives the same names."""
    model = _target(raw, "ort")
    again = onnx.ModelProto()
    again.CopyFrom(model)
    names.name_nodes(again)
    assert [n.name for n in again.graph.node] == [n.name for n in model.graph.node]
    assert [list(n.output) for n in again.graph.node] == [list(n.output) for n in model.graph.node]


# ------------------------------------------------------------------ hand-made graphs
def _scoped(node, *scopes):
    node.metadata_props.add(key=names.SCOPES_KEY, value=repr(["", *scopes, "fx_node"]))
    return node


def _if_model(duplicate_inner: str = "inner"):
    """x -> Relu (scope a.b) -> If(cond) whose branches read the Relu's output from the
    outer scope -> y; a branch node is named like a name the pass would give."""
    relu = _scoped(helper.make_node("Relu", ["x"], ["r"], name="node_Relu_0"), "a", "a.b")
    red = _scoped(helper.make_node("ReduceMax", ["r"], ["m"], name="node_ReduceMax_1", keepdims=0), "a", "a.b")
    zero = helper.make_node("Constant", [], ["z"], name="node_Constant_2",
                            value=helper.make_tensor("zv", TensorProto.FLOAT, [], [0.0]))
    cond = _scoped(helper.make_node("Greater", ["m", "z"], ["c"], name="node_Greater_3"), "a", "a.b")
    then_g = helper.make_graph([helper.make_node("Neg", ["r"], ["t_out"], name="a.b/Relu")], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("Identity", ["r"], ["e_out"], name=duplicate_inner)], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 3])])
    iff = _scoped(helper.make_node("If", ["c"], ["y"], name="node_If_4", then_branch=then_g, else_branch=else_g),
                  "a", "a.c")
    graph = helper.make_graph([relu, red, zero, cond, iff], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_subgraph_reads_follow_the_rename():
    from onnx.reference import ReferenceEvaluator

    model = _if_model()
    x = np.array([[1.0, -2.0, 3.0], [0.5, -1.0, 0.0]], np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    names.name_nodes(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in model.graph.node] == ["a.b/Relu_1", "a.b/ReduceMax", "a.b/Constant", "a.b/Greater",
                                                  "a.c/If"]
    # the branch's own node name "a.b/Relu" is kept, so the outer Relu got "_1"
    branches = {a.name: a.g for a in model.graph.node[-1].attribute}
    assert branches["then_branch"].node[0].name == "a.b/Relu"
    assert branches["then_branch"].node[0].input[0] == "a.b/Relu_1_output_0"
    assert branches["else_branch"].node[0].input[0] == "a.b/Relu_1_output_0"
    # the Constant has no metadata: it takes its consumer's path
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], want)


def test_same_op_in_one_module_is_numbered():
    nodes = [_scoped(helper.make_node("Relu", [i], [o], name=f"n{k}"), "m")
             for k, (i, o) in enumerate([("x", "a"), ("a", "b"), ("b", "y")])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    names.name_nodes(model)
    assert [n.name for n in model.graph.node] == ["m/Relu", "m/Relu_1", "m/Relu_2"]
    assert [n.output[0] for n in model.graph.node] == ["m/Relu_output_0", "m/Relu_1_output_0", "y"]


@pytest.mark.parametrize("value", ["__import__('os').system('false')", "[", "{'a': 1}", "[1, 2]", "'text'"])
def test_metadata_that_is_not_a_list_of_strings_is_ignored(value):
    node = helper.make_node("Relu", ["x"], ["y"], name="kept")
    node.metadata_props.add(key=names.SCOPES_KEY, value=value)
    assert names._metadata_scope(node) is None


def test_file_without_metadata_keeps_its_names():
    """The TorchScript exporter's names (``/layer1/conv1/Conv``) stay; only empty or
    repeated names are filled in."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/m/Relu"), helper.make_node("Relu", ["a"], ["b"], name=""),
             helper.make_node("Relu", ["b"], ["y"], name="/m/Relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    names.name_nodes(model)
    got = [n.name for n in model.graph.node]
    assert got[0] == "/m/Relu" and len(set(got)) == 3 and all(got)
    assert [list(n.output) for n in model.graph.node] == [["a"], ["b"], ["y"]]


def test_torchscript_export_keeps_its_names():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), pnn.SoftPool2d(2)).eval()
    traced = torch.jit.trace(m, torch.randn(1, 3, 8, 8))
    model = export_mod.export_model(traced, torch.randn(1, 3, 8, 8), target="portable", exporter="torchscript")
    onnx.checker.check_model(model, full_check=True)
    got = [n.name for n in model.graph.node]
    assert all(got) and len(set(got)) == len(got)
    assert any(name.startswith("/") for name in got), got  # the exporter's own scheme
