"""The parity harness: its error measure, its verdicts and its skips."""
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import poolexport.nn as pnn
from poolexport.onnx.export import export_model
from poolexport.parity import (RUNTIMES, TOLERANCES, check_parity, errors, other_shape, parity_shapes)


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), pnn.SoftPool2d(2),
                               pnn.StochasticPoolReduce(dim=1, keepdim=True)).eval()


@pytest.fixture(scope="module")
def exported():
    net = small_net()
    return net, export_model(net, torch.randn(2, 3, 8, 8), target="ort", exporter="torchscript")


def test_tolerances_stated_once():
    assert TOLERANCES["float32"].rtol <= 1e-5 and TOLERANCES["float16"].rtol <= 1e-3
    assert TOLERANCES["float32"].atol < 1e-5 and TOLERANCES["float16"].atol < 1e-3


def test_errors_are_normwise():
    ref = np.array([0.0, 10.0, -20.0])
    abs_err, rel_err = errors(np.array([1e-3, 10.0, -20.0]), ref)
    assert abs_err == pytest.approx(1e-3) and rel_err == pytest.approx(1e-3 / 20)
    assert errors(np.array([np.nan, 0, 0]), ref)[0] == float("inf")
    with pytest.raises(ValueError, match="shape"):
        errors(np.zeros(2), ref)


def test_shapes_other_than_the_export():
    assert other_shape((2, 3, 32, 32), {0, 2, 3}) == (3, 3, 40, 40)
    assert other_shape((2, 3, 32, 32), {0}) == (3, 3, 32, 32)


def test_passes_and_skips_with_reasons(exported):
    net, model = exported
    shapes = parity_shapes(model, (2, 3, 8, 8))
    assert shapes == [(2, 3, 8, 8), (3, 3, 16, 16)]
    report = check_parity(model, net, shapes)
    assert report.passed
    rows = {r.runtime: r for r in report.summary()}
    assert set(rows) == set(RUNTIMES)
    for name in ("torch", "onnxruntime-fallback", "reference"):
        assert rows[name].status == "pass" and rows[name].max_abs < 1e-5
    for r in report.results:
        if r.status == "skip":
            assert r.reason  # every skip says what is missing
    assert report.to_dict()["passed"] is True


def test_reference_precision_is_reported(exported):
    """A model that cannot run in float64 gets a float32 reference, and the report says so:
    the torch row then compares the model with itself."""
    from poolexport.cli import _table

    net, model = exported
    report = check_parity(model, net, [(2, 3, 8, 8)], runtimes=("torch",))
    assert report.reference == "float64" and report.to_dict()["reference"] == "float64"
    assert not any("reference: PyTorch in" in str(part) for part in _table(report))

    class Float32Only(torch.nn.Module):  # a float32 constant baked in, as an exported program does
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) @ torch.eye(4, dtype=torch.float32)

    report = check_parity(model, Float32Only().eval(), [(2, 3, 8, 8)], runtimes=("torch",))
    assert report.reference.startswith("float32 (the model cannot run in float64: RuntimeError")
    assert "dtype" in report.reference and report.results[0].status == "pass"
    assert report.to_dict()["reference"] == report.reference
    assert any(str(part).startswith("[1] reference: PyTorch in float32") for part in _table(report))


def test_detects_a_wrong_model(exported):
    """A perturbed weight must fail every ONNX runtime (the harness can fail)."""
    net, model = exported
    bad = copy.deepcopy(model)
    init = bad.graph.initializer[0]
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.05
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    report = check_parity(bad, net, [(2, 3, 8, 8)], runtimes=("torch", "onnxruntime-fallback", "reference"))
    status = {r.runtime: r.status for r in report.results}
    assert status == {"torch": "pass", "onnxruntime-fallback": "fail", "reference": "fail"}
    assert not report.passed


def test_tensorrt_file_skips_function_runtimes():
    net = small_net()
    model = export_model(net, torch.randn(2, 3, 8, 8), target="tensorrt", exporter="torchscript")
    report = check_parity(model, net, [(2, 3, 8, 8)], runtimes=("onnxruntime-fallback", "reference"))
    assert all(r.status == "skip" and "local functions" in r.reason for r in report.results)
    assert not report.passed  # nothing ran: no proof


def test_unknown_runtime(exported):
    net, model = exported
    report = check_parity(model, net, [(2, 3, 8, 8)], runtimes=("bogus",))
    assert report.results[0].status == "error" and "bogus" in report.results[0].reason


class _Constant(torch.nn.Module):
    """y = x * 0 + c: PyTorch's answer is exactly c (in the dtype check_parity casts to)."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.tensor(c, dtype=torch.float32))

    def forward(self, x):
        return x * 0 + self.c


def _constant_model(d: np.ndarray) -> onnx.ModelProto:
    """The ONNX side: y = x * 0 + d, so the runtime's error is exactly |d - c| per element."""
    elem = onnx.helper.np_dtype_to_tensor_dtype(d.dtype)
    nodes = [onnx.helper.make_node("Mul", ["x", "zero"], ["z"]), onnx.helper.make_node("Add", ["z", "d"], ["y"])]
    inits = [numpy_helper.from_array(np.zeros((), d.dtype), "zero"), numpy_helper.from_array(d, "d")]
    graph = onnx.helper.make_graph(nodes, "constant", [onnx.helper.make_tensor_value_info("x", elem, list(d.shape))],
                                   [onnx.helper.make_tensor_value_info("y", elem, list(d.shape))], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)


# (dtype, PyTorch's outputs c). The error sits on element 0 (c = 0), where the dtype
# resolves it to ~1e-3 of the boundary; max |ref| is small in one case per dtype and large
# in the other, so a swap of atol and rtol moves the boundary one way or the other.
BOUNDARY = [("float32", [0.0, 0.03, -0.01]), ("float32", [0.0, -100.0, 3.0]),
            ("float16", [0.0, 2.0, -0.5]), ("float16", [0.0, 0.0625, 0.01])]


@pytest.mark.parametrize("dtype,c", BOUNDARY, ids=[f"{d}-max{max(abs(v) for v in c)}" for d, c in BOUNDARY])
def test_verdict_at_the_tolerance_boundary(dtype, c):
    """An error just inside atol + rtol * max|ref| passes, just outside fails."""
    npdt = np.dtype(dtype)
    fp16 = dtype == "float16"
    ref = np.array(c, npdt)
    tol = TOLERANCES[dtype]
    bound = tol.atol + tol.rtol * float(np.max(np.abs(ref.astype(np.float64))))
    for factor, verdict in ((1 - 4e-3, "pass"), (1 + 4e-3, "fail")):
        d = ref.copy()
        d[0] = npdt.type(bound * factor)
        err = abs(float(d[0]) - float(ref[0]))
        assert (err <= bound) == (verdict == "pass") and abs(err / bound - 1) < 1e-2  # the construction is what it says
        report = check_parity(_constant_model(d), _Constant(c), [(3,)], fp16=fp16, runtimes=("reference",))
        (result,) = report.results
        assert result.status == verdict, (dtype, c, factor, result)
        assert result.max_abs == pytest.approx(err, rel=1e-12)
