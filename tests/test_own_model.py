"""Bring your own model: pools swapped in a torchvision-style network, exported through the
CLI with parity, and the CLI telling the whole truth (errors, dynamism, verification)."""
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import poolexport.nn as pnn
import poolexport.onnx.domain  # noqa: F401  (registers the poolexport schemas for strict inference)
from poolexport import cli
from poolexport.parity import ParityReport, RuntimeResult, TOLERANCES, check_parity


def torchvision_style(num_classes=10):
    """The stem and head of torchvision's ResNet (MaxPool2d(3, 2, 1), AdaptiveAvgPool2d(1))
    plus an AvgPool2d downsample, built from torch.nn only."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


def dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


# ------------------------------------------------------------------ replace_pools
def test_replace_pools_names_types_and_shapes():
    torch.manual_seed(0)
    net = torchvision_style().eval()
    x = torch.randn(2, 3, 20, 22)
    before = net(x).shape
    replaced = pnn.replace_pools(net, "soft", beta=2.0)
    assert replaced == ["3", "6", "7"]
    assert isinstance(net[3], pnn.SoftPool2d) and isinstance(net[6], pnn.SoftPool2d)
    assert isinstance(net[7], pnn.GlobalSoftPool)
    assert net[3].beta == 2.0
    assert net(x).shape == before


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True),
                                  nn.MaxPool1d(4, 3, 2, ceil_mode=True), nn.MaxPool3d(2, (1, 2, 2)),
                                  nn.AvgPool2d(3, 2), nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
                                  nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d((1, 1)), nn.AdaptiveAvgPool1d(1)],
                         ids=repr)
def test_replace_with_same_kind_keeps_outputs(pool):
    """Replaced by its own kind, a pool must give torch's numbers: the geometry is kept."""
    rank = {nn.MaxPool1d: 3, nn.AdaptiveAvgPool1d: 3, nn.MaxPool3d: 5}.get(type(pool), 4)
    x = torch.randn(*(2, 3, 11, 13, 9)[:rank])
    expected = pool(x)
    holder = nn.Sequential(pool)
    kind = "max" if "Max" in type(pool).__name__ else "avg"
    assert pnn.replace_pools(holder, kind) == ["0"]
    assert holder[0] is not pool
    torch.testing.assert_close(holder(x), expected, rtol=1e-6, atol=1e-6)


def test_replace_pools_filters_and_leaves_others():
    net = nn.Sequential(nn.MaxPool2d(2), nn.Sequential(nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(3)),
                        nn.MaxPool2d(2, return_indices=True))
    assert pnn.replace_pools(net, "l2", types=(nn.AvgPool2d,)) == ["1.0"]
    assert pnn.replace_pools(net, "stochastic", filter=lambda name, m: name != "0") == []
    assert pnn.replace_pools(net, "stochastic") == ["0"]  # adaptive 3x3 and return_indices stay
    assert isinstance(net[1][1], nn.AdaptiveAvgPool2d) and isinstance(net[2], nn.MaxPool2d)
    with pytest.raises(TypeError, match="pool"):
        pnn.replace_pools(net, pnn.SoftPool2d(2))


def test_replace_pools_timm_select_adaptive_pool():
    timm_layers = pytest.importorskip("timm.layers", reason="timm is not installed (see README: your own model)")
    for flatten in (True, False):
        net = nn.Sequential(nn.Conv2d(3, 4, 3), timm_layers.SelectAdaptivePool2d(pool_type="avg", flatten=flatten))
        x = torch.randn(2, 3, 9, 9)
        shape = net(x).shape
        assert pnn.replace_pools(net, "soft") == ["1"]
        assert isinstance(net[1], pnn.GlobalSoftPool) and net(x).shape == shape


# ------------------------------------------------------------------ the acceptance flow
@pytest.fixture(scope="module")
def own_pt2(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision_style().eval()
    pnn.replace_pools(net, "soft")
    d = tmp_path_factory.mktemp("own")
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(program, d / "own.pt2")
    return d / "own.pt2"


def test_own_model_exports_with_parity_and_named_dims(own_pt2, tmp_path, capfd):
    out, report = tmp_path / "own.onnx", tmp_path / "report.json"
    code = cli.main([str(own_pt2), "-o", str(out), "--json", str(report)])
    printed = capfd.readouterr()
    assert code == 0, printed.err
    data = json.loads(report.read_text())
    assert data["passed"] and data["target_verified"] and data["dynamic"] == ["batch"]
    model = onnx.load(str(out))
    assert dims(model.graph.input[0]) == ["batch", 3, 32, 32]
    assert dims(model.graph.output[0]) == ["batch", 10]
    # stripped of everything the exporter wrote, strict inference recovers the shapes:
    # the poolexport schemas carry their own inference functions
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert dims(inferred.graph.output[0]) == ["batch", 10]
    assert any(n.op_type == "SoftPool" for n in inferred.graph.node)


def test_static_program_refuses_dynamic_batch(tmp_path, capfd):
    torch.manual_seed(0)
    net = torchvision_style().eval()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, 16, 16),)), path)
    code = cli.main([str(path), "-o", str(tmp_path / "x.onnx"), "--dynamic", "batch", "--no-parity"])
    err = capfd.readouterr().err
    assert code == 2 and "axis 0 (batch)" in err and "fixed size" in err
    assert not (tmp_path / "x.onnx").exists()


def test_unsupported_operator_named_in_the_error(tmp_path, capfd):
    class Eig(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvalsh(x @ x.transpose(-1, -2))

    path = tmp_path / "eig.pt2"
    torch.export.save(torch.export.export(Eig(), (torch.randn(2, 3, 4, 4),)), path)
    code = cli.main([str(path), "-o", str(tmp_path / "x.onnx"), "--no-parity"])
    err = capfd.readouterr().err
    assert code == 2
    assert "unsupported operator aten::_linalg_eigh" in err
    assert "\x1b[" not in err and "Traceback" not in err


def test_state_dict_mismatch_shows_the_keys(tmp_path, capfd):
    from poolexport import models

    path = tmp_path / "w.pt"
    torch.save(models.create_model("newcbam").state_dict(), path)
    code = cli.main([str(path), "--arch", "eca", "-o", str(tmp_path / "x.onnx"), "--no-parity"])
    err = capfd.readouterr().err
    assert code == 2
    assert "Missing key(s)" in err and "Unexpected key(s)" in err and "size mismatch for head.weight" in err


def test_tensorrt_target_not_verified_without_tensorrt(tmp_path, capfd):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: the target can be verified here")
    except ImportError:
        pass
    from pathlib import Path
    ts = Path(__file__).resolve().parents[1] / "examples" / "newcbam.ts"
    report = tmp_path / "r.json"
    code = cli.main([str(ts), "-o", str(tmp_path / "x.onnx"), "--target", "tensorrt", "--json", str(report),
                     "--runtimes", "torch,onnxruntime,tensorrt"])
    out = capfd.readouterr().out
    assert code == cli.EXIT_UNVERIFIED  # issue 23: not 0 without --allow-unverified; the file is still written
    assert "--allow-unverified" in out
    data = json.loads(report.read_text())
    assert data["target_verified"] is False and data["passed"] is True
    assert "not verified on tensorrt" in out
    model = onnx.load(str(tmp_path / "x.onnx"))
    assert dims(model.graph.output[0]) == ["batch", 10]  # TorchScript exporter: the width stays fixed


# ------------------------------------------------------------------ parity report details
def test_verified_needs_every_shape_to_pass():
    r = ParityReport("float32", TOLERANCES["float32"], [(1, 3, 8, 8), (2, 3, 8, 8)])
    r.results = [RuntimeResult("onnxruntime", "pass", (1, 3, 8, 8))]
    assert not r.verified_on("onnxruntime")
    r.results.append(RuntimeResult("onnxruntime", "fail", (2, 3, 8, 8)))
    assert not r.verified_on("onnxruntime")
    r.results[-1].status = "pass"
    assert r.verified_on("onnxruntime") and not r.verified_on("tensorrt")


def test_reference_evaluator_skipped_above_the_size_limit():
    from poolexport.onnx.export import export_model

    net = nn.Sequential(nn.Conv2d(3, 8, 3), pnn.SoftPool2d(2)).eval()
    proto = export_model(net, torch.randn(1, 3, 8, 8), exporter="torchscript", dynamic=())
    report = check_parity(proto, net, [(1, 3, 8, 8)], runtimes=("reference",), reference_max_params=100)
    (row,) = report.summary()
    assert row.status == "skip" and "parameters" in row.reason
    report = check_parity(proto, net, [(1, 3, 8, 8)], runtimes=("reference",), reference_max_params=1000)
    assert report.summary()[0].status == "pass"


def test_parity_table_fits_80_columns():
    from rich.console import Console

    r = ParityReport("float16", TOLERANCES["float16"], [(2, 3, 224, 224), (3, 3, 232, 232)])
    r.results = [RuntimeResult("onnxruntime-fallback", "pass", (2, 3, 224, 224), 1.2345e-4, 6.789e-5, 1234.5),
                 RuntimeResult("tensorrt", "skip", reason="TensorRT Python package not importable: " + "x" * 120)]
    console = Console(width=80, record=True, force_terminal=False)
    for part in cli._table(r):
        console.print(part)
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if "onnxruntime-fallback" in line and "pass" in line]
    assert len(rows) == 1 and "1.23e-04" in rows[0]  # one row, not folded
    assert any(line.startswith("[1] tensorrt:") for line in lines)


# ------------------------------------------------------------------ shape inference
WINDOWS = [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 3], strides=[2, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),  # drops its last window
    dict(kernel_shape=[3, 2], strides=[3, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[3, 3], auto_pad="VALID", strides=[2, 1]),
    dict(kernel_shape=[3], strides=[2], pads=[2, 0]),
    dict(kernel_shape=[2, 2, 2], strides=[1, 2, 2], pads=[0, 1, 1, 0, 0, 1]),
]


def _one_node(op, attrs, shape, out_name="z"):
    from onnx import helper

    node = helper.make_node(op, ["x"], ["y"], domain="poolexport" if op != "AveragePool" else "", **attrs)
    graph = helper.make_graph([node, helper.make_node("Relu", ["y"], [out_name])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             ir_version=10)


@pytest.mark.parametrize("attrs", WINDOWS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("op", ["SoftPool", "StochasticPool"])
def test_windowed_inference_matches_onnxruntime(op, attrs):
    """Inferred shapes = the shape ONNX Runtime's own AveragePool kernel produces (padding
    excluded, same windowing)."""
    import onnxruntime as ort

    import poolexport.onnx  # noqa: F401  (registers the schemas)

    k = len(attrs["kernel_shape"])
    for spatial in [(7, 8, 9)[:k], (5, 12, 6)[:k]]:
        shape = [2, 3, *spatial]
        inferred = onnx.shape_inference.infer_shapes(_one_node(op, attrs, shape), strict_mode=True)
        got = dims(inferred.graph.output[0])
        base = _one_node("AveragePool", attrs, shape)
        y = ort.InferenceSession(base.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": np.zeros(shape, np.float32)})[0]
        assert got == list(y.shape)
        symbolic = onnx.shape_inference.infer_shapes(_one_node(op, attrs, ["n", 3, *spatial]), strict_mode=True)
        assert dims(symbolic.graph.output[0]) == ["n", *y.shape[1:]]


@pytest.mark.parametrize("attrs,expect", [
    (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), ["n", 3, "h", "w"]),  # stride 1, size kept
    (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"), ["n", 3, "h", "w"]),
    (dict(kernel_shape=[3, 3]), ["n", 3, None, None]),  # h - 2: not a dim ONNX can name
    (dict(kernel_shape=[2, 2], strides=[2, 2]), ["n", 3, None, None]),
])
def test_symbolic_spatial_dims(attrs, expect):
    import poolexport.onnx  # noqa: F401

    inferred = onnx.shape_inference.infer_shapes(_one_node("SoftPool", attrs, ["n", 3, "h", "w"]), strict_mode=True)
    got = dims(inferred.graph.output[0])
    for g, e in zip(got, expect):
        assert g == e or (e is None and (g == "" or g.startswith("unk__"))), (got, expect)


@pytest.mark.parametrize("attrs,shape,expect", [
    (dict(axes=[2, 3], keepdims=0), ["n", 3, "h", "w"], ["n", 3]),
    (dict(axes=[1]), ["n", 3, 5, 6], ["n", 1, 5, 6]),
    (dict(), [2, 3, 5], [1, 1, 1]),
    (dict(axes=[-1], keepdims=0), [2, "c", 5], [2, "c"]),
])
@pytest.mark.parametrize("op", ["ReduceSoftPool", "ReduceStochasticPool"])
def test_reduce_inference(op, attrs, shape, expect):
    import poolexport.onnx  # noqa: F401

    inferred = onnx.shape_inference.infer_shapes(_one_node(op, attrs, shape), strict_mode=True)
    assert dims(inferred.graph.output[0]) == expect


def test_inference_rejects_a_window_larger_than_the_input():
    import poolexport.onnx  # noqa: F401

    with pytest.raises(Exception, match="exceeds"):
        onnx.shape_inference.infer_shapes(_one_node("SoftPool", dict(kernel_shape=[5, 5]), [1, 1, 4, 4]),
                                          strict_mode=True)
