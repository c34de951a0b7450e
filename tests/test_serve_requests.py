"""Requests `poolexport serve` must refuse before allocating anything they size.

Unit tests of serve/validation.py at each boundary, of the gate's error rewriting and of
the model callable's own check, then one real `poolexport serve` subprocess on loopback:
the 99-byte request that declares 8x3x100000x100000 FP32 (tritonserver 2.51 alone
allocates 960 GB for it and aborts), a data-length mismatch, too-small inputs, malformed
JSON, refused admin endpoints; each answered with a one-line 4xx, and the server then still
answers correctly (checked against a local ONNX Runtime session).
"""
import gzip
import http.client
import json
import math
import re

import numpy as np
import pytest

from poolexport.serve.signature import Signature, TensorSpec
from poolexport.serve.validation import (DEFAULT_DYNAMIC_EXTENT, MAX_JSON_DEPTH,
                                         MIN_DEFAULT_ELEMENTS, DeclaredInput, RequestError,
                                         build_limits, check_inputs, default_max_elements,
                                         grpc_infer_inputs, model_error_reason,
                                         parse_dim_bound, parse_http_infer)

F32 = np.dtype(np.float32)
MAX_BATCH = 4

# a 99-byte KServe v2 JSON body declaring 8x3x100000x100000 FP32 (960 GB) with one value
OVERSIZE_99 = b'{"inputs": [{"name": "input", "shape": [8, 3, 100000, 100000], "datatype": "FP32", "data": [0.5]}]}'


def _image_sig():
    """input [batch, 3, height, width] FP32 -> output [batch, 4]."""
    return Signature((TensorSpec("input", F32, (-1, 3, -1, -1), ("batch", "", "height", "width")),),
                     (TensorSpec("output", F32, (-1, 4), ("batch", "")),))


def _two_input_sig():
    """x [N, 3, 16, 16] FP32 (all static but the batch) and s [N, 1] INT64."""
    return Signature((TensorSpec("x", F32, (-1, 3, 16, 16), ("N", "", "", "")),
                      TensorSpec("s", np.dtype(np.int64), (-1, 1), ("N", ""))),
                     (TensorSpec("y", F32, (-1, 4), ("N", "")),))


def _seq_sig():
    """t [batch, length] FP32: elements = batch * length, any count reachable."""
    return Signature((TensorSpec("t", F32, (-1, -1), ("batch", "length")),),
                     (TensorSpec("u", F32, (-1,), ("batch",)),))


def _inp(name, shape, datatype="FP32", values="auto", byte_size=None):
    n = math.prod(shape) if all(type(d) is int and d >= 0 for d in shape) else 0
    if values == "auto":
        values = None if byte_size is not None else n
    return DeclaredInput(name, datatype, tuple(shape), values=values, byte_size=byte_size)


def _two(x_shape=(1, 3, 16, 16), s_shape=(1, 1), **kw):
    return [_inp("x", x_shape, **kw), _inp("s", s_shape, "INT64")]


def _refused(declared, limits, status=400, match=None):
    with pytest.raises(RequestError) as e:
        check_inputs(declared, limits)
    assert e.value.status == status, e.value.message
    assert "\n" not in e.value.message
    if match:
        assert re.search(match, e.value.message), e.value.message
    return e.value.message


# --------------------------------------------------------------------- static dims, batch

@pytest.fixture
def two():
    return build_limits(_two_input_sig(), MAX_BATCH)


def test_static_dims_equal_pass(two):
    check_inputs(_two(), two)


@pytest.mark.parametrize("axis", [1, 2, 3])
@pytest.mark.parametrize("delta", [-1, 1])
def test_static_dim_one_off_refused(two, axis, delta):
    shape = [1, 3, 16, 16]
    shape[axis] += delta
    _refused(_two(tuple(shape)), two, match=rf"dim {axis} is {shape[axis]}, the model takes")


def test_rank_refused(two):
    _refused(_two((1, 3, 16)), two, match="has 3 dims")
    _refused(_two((1, 3, 16, 16, 1)), two, match="has 5 dims")


def test_batch_at_max_passes_and_one_over_refused(two):
    check_inputs(_two((MAX_BATCH, 3, 16, 16), (MAX_BATCH, 1)), two)
    _refused(_two((MAX_BATCH + 1, 3, 16, 16), (MAX_BATCH + 1, 1)), two, match="batch-size 5")


def test_batch_zero_refused(two):
    _refused(_two((0, 3, 16, 16), (0, 1)), two, match="batch-size 0")


def test_batch_must_agree_across_inputs(two):
    _refused(_two((2, 3, 16, 16), (1, 1)), two, match="differs")


def test_no_batching_takes_full_dims():
    limits = build_limits(_two_input_sig(), 0)
    check_inputs(_two((7, 3, 16, 16), (7, 1)), limits)  # dim 0 dynamic, unbounded above
    _refused(_two((0, 3, 16, 16), (1, 1)), limits, match="dim 0 is 0, not within 1..")


# ------------------------------------------------------------------ dynamic dims, bounds

def test_dynamic_dim_bounds_inclusive():
    limits = build_limits(_image_sig(), MAX_BATCH, dim_bounds=["height=32:64", "input:3=8:"])
    for h in (32, 64):
        check_inputs([_inp("input", (1, 3, h, 8))], limits)
    for h in (31, 65):
        _refused([_inp("input", (1, 3, h, 8))], limits, match=rf"dim 2 is {h}, not within 32..64")
    _refused([_inp("input", (1, 3, 40, 7))], limits, match="dim 3 is 7, not within 8..")
    check_inputs([_inp("input", (1, 3, 40, 100000 // 3 // 40))], limits)


def test_dynamic_dim_zero_refused_by_default():
    limits = build_limits(_image_sig(), MAX_BATCH)
    check_inputs([_inp("input", (1, 3, 1, 1))], limits)
    _refused([_inp("input", (1, 3, 0, 5))], limits, match="dim 2 is 0, not within 1..")


@pytest.mark.parametrize("shape", [(1, -3, 16, 16), (1, 3, -1, 16), (-1, 3, 16, 16)])
def test_negative_dims_refused(two, shape):
    _refused([_inp("x", shape, values=1), _inp("s", (1, 1), "INT64")], two, match="negative")


@pytest.mark.parametrize("bad", [1.5, 16.0, "16", True, None, [16]])
def test_non_integer_dims_refused(two, bad):
    _refused([_inp("x", (1, 3, bad, 16), values=1), _inp("s", (1, 1), "INT64")], two,
             match="not an integer")


def test_shape_not_a_list_refused(two):
    _refused([DeclaredInput("x", "FP32", "1,3,16,16", values=768), _inp("s", (1, 1), "INT64")], two)


# --------------------------------------------------------------------------- element cap

@pytest.mark.parametrize("length,ok", [(99, True), (100, True), (101, False)])
def test_element_cap_boundary(length, ok):
    limits = build_limits(_seq_sig(), MAX_BATCH, max_elements=100)
    declared = [_inp("t", (1, length))]
    if ok:
        check_inputs(declared, limits)
    else:
        _refused(declared, limits, 413, match="101 elements, more than the 100 allowed")


def test_element_cap_counts_all_inputs():
    limits = build_limits(_two_input_sig(), MAX_BATCH, max_elements=2 * 768 + 2)
    check_inputs(_two((2, 3, 16, 16), (2, 1)), limits)
    limits = build_limits(_two_input_sig(), MAX_BATCH, max_elements=2 * 768 + 1)
    _refused(_two((2, 3, 16, 16), (2, 1)), limits, 413)


def test_oversize_99_byte_request_refused_without_allocating():
    assert len(OVERSIZE_99) == 99
    limits = build_limits(_image_sig(), 8)
    declared = parse_http_infer(OVERSIZE_99)
    assert declared == [DeclaredInput("input", "FP32", (8, 3, 100000, 100000), values=1)]
    _refused(declared, limits, 413, match="240000000000 elements")


def test_default_element_cap_derived_from_model():
    # static dims: exactly the model's own largest request
    assert build_limits(_two_input_sig(), 8).max_elements == 8 * (768 + 1)
    assert build_limits(_two_input_sig(), 0).max_elements == MIN_DEFAULT_ELEMENTS  # N unbounded
    # dynamic dims: their stated maximum (exact), else DEFAULT_DYNAMIC_EXTENT with a floor
    image = build_limits(_image_sig(), 8)
    assert image.max_elements == 8 * 3 * DEFAULT_DYNAMIC_EXTENT ** 2
    assert build_limits(_seq_sig(), 8).max_elements == MIN_DEFAULT_ELEMENTS  # 8 * 1024 floored
    bounded = build_limits(_image_sig(), 8, dim_bounds=["height=:20", "width=:30"])
    assert bounded.max_elements == 8 * 3 * 20 * 30
    assert default_max_elements(bounded.inputs, 8) == bounded.max_elements
    # the byte cap follows the element cap
    assert build_limits(_seq_sig(), 1, max_elements=10).max_bytes == (1 << 20) + 32 * 10
    assert build_limits(_seq_sig(), 1, max_elements=10, max_bytes=5).max_bytes == 5


# ------------------------------------------------------------------------ data lengths

def test_json_value_count_exact_short_long(two):
    check_inputs(_two(values=768), two)
    _refused(_two(values=767), two, match="needs 768 values, 'data' has 767")
    _refused(_two(values=769), two, match="needs 768 values, 'data' has 769")


def test_binary_byte_size_exact_short_long(two):
    check_inputs(_two(byte_size=768 * 4), two)
    _refused(_two(byte_size=768 * 4 - 1), two, match="needs 3072 bytes, the request carries 3071")
    _refused(_two(byte_size=768 * 4 + 1), two, match="carries 3073")


def test_no_data_refused(two):
    _refused([DeclaredInput("x", "FP32", (1, 3, 16, 16)), _inp("s", (1, 1), "INT64")], two,
             match="either in 'data' or as binary")


# ------------------------------------------------------------ names, dtypes, duplicates

def test_wrong_dtype_refused(two):
    _refused([_inp("x", (1, 3, 16, 16), "FP64"), _inp("s", (1, 1), "INT64")], two,
             match="datatype 'FP64', the model takes FP32")


def test_missing_input_refused(two):
    _refused([_inp("x", (1, 3, 16, 16))], two, match="missing input 's'")


def test_extra_input_refused(two):
    _refused(_two() + [_inp("z", (1, 1))], two, match="unexpected input 'z'")


def test_duplicate_input_refused(two):
    _refused(_two() + [_inp("x", (1, 3, 16, 16))], two, match="given twice")


# -------------------------------------------------------------- KServe v2 JSON parsing

def _body(inputs, **top):
    return json.dumps({"inputs": inputs, **top}).encode()


def test_parse_flat_and_nested_data():
    flat = _body([{"name": "t", "shape": [2, 3], "datatype": "FP32", "data": [0.5] * 6}])
    nested = _body([{"name": "t", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5.5, -6e-3]]}])
    for body in (flat, nested):
        assert parse_http_infer(body) == [DeclaredInput("t", "FP32", (2, 3), values=6)]


@pytest.mark.parametrize("value, kind", [("a", "string"), (True, "boolean"), (False, "boolean")])
def test_parse_non_numeric_values_refused(value, kind):
    data = [0.5, 1, [2.5][0], value]
    body = _body([{"name": "t", "shape": [1, 4], "datatype": "FP32", "data": data}])
    with pytest.raises(RequestError) as e:
        parse_http_infer(body)
    assert e.value.status == 400 and f"holds {kind} values; FP32 takes numbers" in e.value.message
    nested = _body([{"name": "t", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, value]]}])
    with pytest.raises(RequestError):
        parse_http_infer(nested)


def test_parse_values_of_their_own_kind_pass():
    assert parse_http_infer(_body([{"name": "t", "shape": [3], "datatype": "FP32", "data": [1, 2.5, 0]}]))[0].values == 3
    assert parse_http_infer(_body([{"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]}]))[0].values == 2
    assert parse_http_infer(_body([{"name": "s", "shape": [1], "datatype": "BYTES", "data": ["x"]}]))[0].values == 1


def test_parse_data_nested_deeper_than_shape_refused():
    body = _body([{"name": "t", "shape": [1, 2], "datatype": "FP32", "data": [[[1.0, 2.0]]]}])
    with pytest.raises(RequestError, match="nested deeper than its shape"):
        parse_http_infer(body)
    body = _body([{"name": "t", "shape": [2], "datatype": "FP32", "data": [[1.0], 2.0]}])
    with pytest.raises(RequestError, match="deeper than its shape|mixes"):
        parse_http_infer(body)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_parse_deep_json_refused_not_crashing(depth):
    body = (b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0], '
            b'"parameters": {"x": ' + b"[" * depth + b"]" * depth + b"}}]}")
    with pytest.raises(RequestError, match="nested") as e:
        parse_http_infer(body)
    assert e.value.status == 400


def test_parse_depth_at_limit_passes():
    inner = MAX_JSON_DEPTH - 5  # object, inputs list, input object, parameters object, x
    body = (b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0], '
            b'"parameters": {"x": ' + b"[" * inner + b"]" * inner + b"}}]}")
    parse_http_infer(body)


@pytest.mark.parametrize("body", [
    b'{"inputs": [ {"name": "x", ', b"\x00\xff" * 10, b"", b"[]", b'"text"', b'{"inputs": {}}',
    b'{"inputs": []}', b'{"inputs": [1]}', b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "t", "shape": 1, "datatype": "FP32", "data": [1]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32"}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": 1}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": [1, null]}]}',
    b'{"inputs": [{"name": "t", "shape": [2], "datatype": "FP32", "data": [1, {}]}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1], '
    b'"parameters": {"binary_data_size": 4}}]}',
    b'{"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": -4}}]}',
])
def test_parse_malformed_refused(body):
    with pytest.raises(RequestError) as e:
        parse_http_infer(body)
    assert e.value.status == 400 and "\n" not in e.value.message


def test_parse_binary_tail_must_match_declared_sizes():
    head = _body([{"name": "t", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}])
    assert parse_http_infer(head + b"\0" * 8, len(head)) == [
        DeclaredInput("t", "FP32", (1, 2), byte_size=8)]
    for tail in (7, 9):
        with pytest.raises(RequestError, match=f"binary data is {tail} bytes, the inputs declare 8"):
            parse_http_infer(head + b"\0" * tail, len(head))
    with pytest.raises(RequestError, match="does not fit"):
        parse_http_infer(head, len(head) + 1)
    with pytest.raises(RequestError, match="does not fit"):
        parse_http_infer(head, -1)


def test_parse_counts_values_without_materializing_them():
    n = 200_000
    body = _body([{"name": "t", "shape": [1, n], "datatype": "FP32", "data": [0.123456789] * n}])
    (d,) = parse_http_infer(body)
    assert d.values == n


def test_parse_refuses_more_commas_than_allowed_before_parsing():
    body = _body([{"name": "t", "shape": [1, 10], "datatype": "FP32", "data": [1] * 70_000}])
    parse_http_infer(body, max_values=10_000)  # within max_values + structure slack
    body = _body([{"name": "t", "shape": [1, 10], "datatype": "FP32", "data": [1] * 80_000}])
    with pytest.raises(RequestError) as e:
        parse_http_infer(body, max_values=10_000)
    assert e.value.status == 413


# ---------------------------------------------------------------------- --dim, limits

@pytest.mark.parametrize("text,want", [("height=32:1024", ("height", 32, 1024)),
                                       ("height=32:", ("height", 32, None)),
                                       ("height=:64", ("height", 1, 64)),
                                       ("input:2=7", ("input:2", 7, 7))])
def test_parse_dim_bound(text, want):
    assert parse_dim_bound(text) == want


@pytest.mark.parametrize("text", ["height", "=3:4", "height=a:4", "height=0:4", "height=5:4"])
def test_parse_dim_bound_refused(text):
    with pytest.raises(ValueError, match="--dim"):
        parse_dim_bound(text)


@pytest.mark.parametrize("bound,match", [("depth=1:2", "no dynamic dim"), ("input:1=1:3", "static"),
                                         ("batch=1:2", "--max-batch-size")])
def test_build_limits_refuses_bad_dim(bound, match):
    with pytest.raises(ValueError, match=match):
        build_limits(_image_sig(), 8, dim_bounds=[bound])


# ----------------------------------------------------------------------------- gRPC

def test_grpc_declared_inputs():
    pb = pytest.importorskip("tritonclient.grpc.service_pb2")
    limits = build_limits(_seq_sig(), MAX_BATCH)
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="t", datatype="FP32", shape=[1, 3])
    t.contents.fp32_contents.extend([1, 2, 3])
    check_inputs(grpc_infer_inputs(req), limits)
    t.contents.fp32_contents.append(4)
    with pytest.raises(RequestError, match="needs 3 values, 'data' has 4"):
        check_inputs(grpc_infer_inputs(req), limits)
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="t", datatype="FP32", shape=[1, 3])
    raw.raw_input_contents.append(b"\0" * 12)
    check_inputs(grpc_infer_inputs(raw), limits)
    raw.raw_input_contents[0] = b"\0" * 11
    with pytest.raises(RequestError, match="needs 12 bytes"):
        check_inputs(grpc_infer_inputs(raw), limits)
    huge = pb.ModelInferRequest(model_name="m")
    huge.inputs.add(name="t", datatype="FP32", shape=[8, 10 ** 12]).contents.fp32_contents.append(1)
    with pytest.raises(RequestError) as e:
        check_inputs(grpc_infer_inputs(huge), build_limits(_seq_sig(), 8))
    assert e.value.status == 413


# ------------------------------------------------------------ errors sent to clients

def test_model_error_reason_strips_paths_and_symbols():
    text = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running "
            "AveragePool node. Name:'' Status Message: /onnxruntime_src/onnxruntime/core/providers/"
            "cpu/nn/pool_attributes.h:124 onnxruntime::TensorShapeVector onnxruntime::Pool"
            "Attributes::SetOutputSize(const onnxruntime::TensorShape&) const was false.\n"
            "Invalid input shape. Got:{1,3,0,5}\n")
    reason = model_error_reason(text)
    assert "/" not in reason and "::" not in reason and "\n" not in reason
    assert "Invalid input shape" in reason


def test_gate_rewrites_upstream_errors():
    from poolexport.serve.gate import GENERIC_500, upstream_error

    marker = "poolexport-reject-0123456789abcdef"
    tb = ('Model execute error: Traceback (most recent call last):\n  File "/srv/app/x.py", line 3\n'
          f"serve.server.RequestRejected: {marker}:400:the model cannot run on this input\n\nAt: /tmp/y.py")
    assert upstream_error(tb, marker) == (400, "the model cannot run on this input")
    assert upstream_error(tb.replace(marker, "poolexport-reject-forged"), marker) == (500, GENERIC_500)
    assert upstream_error("unexpected shape for input 'x'", marker) is None
    status, msg = upstream_error("failed to open /root/.cache/x/model.py", marker)
    assert status is None and "/root" not in msg


def test_model_checks_each_request_and_maps_input_faults(monkeypatch):
    """The Python-backend model (what reaches tritonserver's loopback ports directly)
    refuses a request out of bounds, and turns an ONNX Runtime failure on the input into a
    marked 400; other failures are a marked 500 whose text says nothing of the failure
    (the traceback goes to the server's log)."""
    ort_state = pytest.importorskip("onnxruntime.capi.onnxruntime_pybind11_state")
    from poolexport.serve import triton_model

    class PbUtils:  # the parts of triton_python_backend_utils the model uses
        class TritonError:
            INVALID_ARG, INTERNAL = 3, 13

            def __init__(self, message, code=None):
                self.message = message

        class Tensor:
            def __init__(self, name, array):
                self.name, self.array = name, array

            def as_numpy(self):
                return self.array

        class InferenceResponse:
            def __init__(self, output_tensors, error=None):
                self.outputs, self.error = {t.name: t.array for t in output_tensors}, error

        @staticmethod
        def get_input_tensor_by_name(request, name):
            return PbUtils.Tensor(name, request[name])

    class Runner:
        fail = None

        def run(self, feeds):
            if self.fail is not None:
                raise self.fail
            return {"output": np.zeros((feeds["input"].shape[0], 4), np.float32)}

    model = triton_model.TritonPythonModel()
    model.pb, model.runner, model.batching = PbUtils, Runner(), True
    model.inputs, model.names, model.marker = [("input", np.float32)], ["input"], "MARK"
    model.limits = build_limits(_image_sig(), MAX_BATCH, dim_bounds=["height=32:"])
    ok = {"input": np.zeros((1, 3, 32, 8), np.float32)}
    (resp,) = model.execute([ok])
    assert resp.error is None and resp.outputs["output"].shape == (1, 4)
    (resp,) = model.execute([{"input": np.zeros((1, 3, 31, 8), np.float32)}])
    assert resp.error.message.startswith("MARK:400:input 'input': dim 2 is 31")
    model.runner.fail = ort_state.InvalidArgument("Invalid input shape: {1,1}")
    (resp,) = model.execute([ok])
    assert resp.error.message.startswith("MARK:400:the model cannot run on this input "
                                         "(input [1, 3, 32, 8]): Invalid input shape")
    model.runner.fail = RuntimeError("disk on fire at /srv/secret")
    (resp,) = model.execute([ok])
    assert resp.error.message == ("MARK:500:inference failed on the server (details are in the "
                                  "server's log): RuntimeError")


# =========================================================== a real `poolexport serve`
# The unit tests above need none of PyTriton, tritonclient or a server: these imports are
# made by the fixtures below, so a machine without the serve extra skips only what follows.

MODEL = "m32"
SERVE_MAX_BATCH = 8  # so the 99-byte request (batch 8) meets the element cap, not the batch
CAP = 200_000  # --max-request-elements; the byte cap follows: 1 MiB + 32 * CAP


def _model32(path):
    """input [batch, 3, height, width] -> Conv 32x32 stride 16 -> mean: needs 32x32 at least."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 32, 32)) / 32).astype(np.float32), "W")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes = [helper.make_node("Conv", ["input", "W"], ["c"], strides=[16, 16]),
             helper.make_node("ReduceMean", ["c", "axes"], ["output"], keepdims=0)]
    graph = helper.make_graph(
        nodes, MODEL, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])], [w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


class _Clients:
    """What the end-to-end tests import, gathered by the `lib` fixture."""


@pytest.fixture(scope="module")
def lib():
    """tritonclient and test_serve_server's subprocess helper, or a skip."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton not installed (pip install 'poolexport[serve]')")
    c = _Clients()
    c.http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    c.grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] not installed")
    c.Error = pytest.importorskip("tritonclient.utils").InferenceServerException
    c.ort = pytest.importorskip("onnxruntime")
    import test_serve_server as served  # its subprocess helper and start-up pattern
    c.served = served
    return c


def _proc_class(served):
    class _Proc(served._ServerProc):
        """test_serve_server's subprocess (same start-up, readiness wait and teardown),
        started with this file's options."""

        def __init__(self, model_path, log_path, kind):
            import subprocess
            import sys

            self.model_name, self.kind = MODEL, kind
            self.http, self.grpc, self.metrics = served._loopback_ports(3)
            self.log_path = log_path
            self._log = open(log_path, "w")
            cmd = [sys.executable, "-m", "poolexport.serve", "serve", str(model_path),
                   "--model-name", MODEL, "--host", "127.0.0.1", "--http-port", str(self.http),
                   "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
                   "--max-batch-size", str(SERVE_MAX_BATCH), "--dim", "height=32:",
                   "--max-request-elements", str(CAP), "--server", kind]
            # own session, cwd outside the source tree: as test_serve_server does, and why
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=str(log_path.parent))
            self.returncode = None
    return _Proc


@pytest.fixture(scope="module")
def model_path(lib, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_requests") / "m32.onnx"
    _model32(path)
    return path


@pytest.fixture(scope="module")
def session(lib, model_path):
    return lib.ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=("poolexport", "tritonserver"))
def server(lib, model_path, request):
    proc = _proc_class(lib.served)(model_path, model_path.parent / f"server-{request.param}.log",
                                   request.param)
    proc.lib = lib
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.terminate(timeout=30)
        proc.kill()


def _post(server, body, path=f"/v2/models/{MODEL}/infer", headers=None, timeout=60):
    """Raw HTTP: exactly these bytes, nothing added by a client library."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=timeout)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


_SERVER_PATHS = re.compile(r"Traceback|File \"|/[\w.+-]+/[\w.+-]+|\.py\b|site-packages")


def _assert_clean_4xx(server, status, text, want=None):
    assert server.proc.poll() is None, f"server died:\n{server.log()}"
    if want is not None:
        assert status == want, text
    assert 400 <= status < 500, text
    message = json.loads(text)["error"]
    assert "\n" not in message and message.strip(), text
    assert not _SERVER_PATHS.search(text), text
    return message


def _x(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _json_body(x, data=None):
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist() if data is None else data}]}).encode()


def _still_correct(server, session, shape=(2, 3, 48, 40), seed=5):
    """Raw JSON, tritonclient binary HTTP and gRPC all answer what ONNX Runtime computes."""
    x = _x(shape, seed)
    (want,) = session.run(["output"], {"input": x})
    status, text = _post(server, _json_body(x))
    assert status == 200, text
    (out,) = json.loads(text)["outputs"]
    np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]), want,
                               rtol=1e-5, atol=1e-5)
    httpclient, grpcclient = server.lib.http, server.lib.grpc
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        i = httpclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=True)
        np.testing.assert_allclose(c.infer(MODEL, [i]).as_numpy("output"), want, rtol=1e-5, atol=1e-5)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        i = grpcclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        np.testing.assert_allclose(c.infer(MODEL, [i]).as_numpy("output"), want, rtol=1e-5, atol=1e-5)


def test_serves_correct_results(server, session):
    _still_correct(server, session)


def test_oversize_99_byte_request_gets_413_and_server_survives(server, session):
    assert len(OVERSIZE_99) == 99
    status, text = _post(server, OVERSIZE_99)
    message = _assert_clean_4xx(server, status, text, 413)
    assert "240000000000 elements" in message and "--max-request-elements" in message
    _still_correct(server, session)


def test_element_cap_boundary_live(server, session):
    at_cap = _x((1, 3, 250, 266), 1)  # 199500 <= CAP
    status, text = _post(server, _json_body(at_cap))
    assert status == 200, text
    over = (1, 3, 260, 260)  # 202800 > CAP
    status, text = _post(server, _json_body(np.zeros(over, np.float32), data=[0.5]))
    _assert_clean_4xx(server, status, text, 413)


@pytest.mark.parametrize("delta", [-1, 1])
def test_json_data_length_mismatch_gets_400(server, session, delta):
    x = _x((1, 3, 32, 32), 2)
    data = x.ravel().tolist()
    data = data[:-1] if delta < 0 else data + [0.5]
    status, text = _post(server, _json_body(x, data))
    message = _assert_clean_4xx(server, status, text, 400)
    assert f"'data' has {3072 + delta}" in message
    _still_correct(server, session)


@pytest.mark.parametrize("delta", [-4, 4])
def test_binary_data_length_mismatch_gets_400(server, session, delta):
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 3072 * 4 + delta}}]}).encode()
    body = head + b"\0" * (3072 * 4 + delta)
    status, text = _post(server, body, headers={"Inference-Header-Content-Length": str(len(head))})
    message = _assert_clean_4xx(server, status, text, 400)
    assert "needs 12288 bytes" in message
    _still_correct(server, session)


def test_too_small_input_gets_400_from_the_bounds(server, session):
    """1x3x1x1: height is under the stated --dim height=32: bound, refused by the gate."""
    status, text = _post(server, _json_body(_x((1, 3, 1, 1), 3)))
    message = _assert_clean_4xx(server, status, text, 400)
    assert "dim 2 is 1, not within 32.." in message
    _still_correct(server, session)


def test_too_small_input_gets_400_from_the_model(server, session):
    """1x3x32x1: width has no stated bound, so ONNX Runtime runs and fails on it; the
    answer is still a one-line 400, not PyTriton's 500 with a traceback."""
    status, text = _post(server, _json_body(_x((1, 3, 32, 1), 4)))
    message = _assert_clean_4xx(server, status, text, 400)
    assert message.startswith("the model cannot run on this input (input [1, 3, 32, 1])"), message
    grpcclient = server.lib.grpc
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        i = grpcclient.InferInput("input", [1, 3, 32, 1], "FP32")
        i.set_data_from_numpy(_x((1, 3, 32, 1), 4))
        with pytest.raises(server.lib.Error) as e:
            c.infer(MODEL, [i])
    assert "INVALID_ARGUMENT" in str(e.value.status()) and "Traceback" not in e.value.message()
    assert "cannot run on this input" in e.value.message()
    _still_correct(server, session)


@pytest.mark.parametrize("body", [b'{"inputs": [ {"name": "input", ', b"\x00\xff" * 100,
                                  b"[" * 100_000, b'{"inputs": [{"name": "input"}]}'])
def test_malformed_json_gets_400(server, session, body):
    status, text = _post(server, body)
    _assert_clean_4xx(server, status, text, 400)
    _still_correct(server, session)


def test_shape_and_name_errors_get_400(server, session):
    for inputs, match in [
        ([{"name": "input", "shape": [1, 4, 32, 32], "datatype": "FP32", "data": [0.5] * 4096}], "dim 1 is 4"),
        ([{"name": "input", "shape": [SERVE_MAX_BATCH + 1, 3, 32, 32], "datatype": "FP32",
           "data": [0.5] * (SERVE_MAX_BATCH + 1) * 3072}], "batch-size 9"),
        ([{"name": "input", "shape": [1, 3, -32, 32], "datatype": "FP32", "data": [0.5]}], "negative"),
        ([{"name": "input", "shape": [1, 3, 32.5, 32], "datatype": "FP32", "data": [0.5]}], "not an integer"),
        ([{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP64", "data": [0.5] * 3072}], "datatype"),
        ([{"name": "other", "shape": [1], "datatype": "FP32", "data": [0.5]}], "unexpected input"),
    ]:
        status, text = _post(server, json.dumps({"inputs": inputs}).encode())
        assert re.search(match, _assert_clean_4xx(server, status, text, 400)), text
    _still_correct(server, session)


def test_body_over_byte_cap_gets_413(server, session):
    cap = (1 << 20) + 32 * CAP
    status, text = _post(server, b" " * (cap + 1), timeout=120)
    assert "--max-request-bytes" in _assert_clean_4xx(server, status, text, 413)
    bomb = gzip.compress(b" " * (cap + 1))  # small on the wire, over the cap decoded
    status, text = _post(server, bomb, headers={"Content-Encoding": "gzip"})
    _assert_clean_4xx(server, status, text, 413)
    _still_correct(server, session)


def test_gzip_request_decoded_and_served(server, session):
    x = _x((1, 3, 32, 32), 6)
    (want,) = session.run(["output"], {"input": x})
    status, text = _post(server, gzip.compress(_json_body(x)), headers={"Content-Encoding": "gzip"})
    assert status == 200, text
    np.testing.assert_allclose(json.loads(text)["outputs"][0]["data"], want.ravel(), rtol=1e-5, atol=1e-5)


def test_unknown_model_404_and_admin_endpoints_refused(server, session):
    status, text = _post(server, OVERSIZE_99, path="/v2/models/other/infer")
    _assert_clean_4xx(server, status, text, 404)
    # refused by the gate itself (PyTriton's tritonserver also wants an access token for
    # these; the gate does not rely on that)
    for path in (f"/v2/repository/models/{MODEL}/load", f"/v2/repository/models/{MODEL}/unload",
                 "/v2/repository/index", "/v2/systemsharedmemory/region/r/register",
                 "/v2/logging", "/v2/trace/setting"):
        status, text = _post(server, b'{"parameters": {}}', path=path)
        assert "not served by poolexport serve" in _assert_clean_4xx(server, status, text, 403)
    with server.lib.grpc.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        with pytest.raises(server.lib.Error, match="not served"):
            c.unload_model(MODEL)
        assert c.is_model_ready(MODEL)
    _still_correct(server, session)


def test_grpc_oversize_and_mismatch_refused(server, session):
    grpcclient = server.lib.grpc
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        for shape, values, match in [((8, 3, 100000, 100000), 1, "elements"),
                                     ((1, 3, 32, 32), 3071, "needs 3072 values")]:
            i = grpcclient.InferInput("input", list(shape), "FP32")
            i._get_tensor().contents.fp32_contents.extend([0.5] * values)  # declared != carried
            with pytest.raises(server.lib.Error, match=match) as e:
                c.infer(MODEL, [i])
            assert "Traceback" not in e.value.message()
    _still_correct(server, session)


def test_grpc_stream_checks_each_request(server, session):
    """ModelStreamInfer: a refused request is answered in the stream, in one line, and the
    good requests around it still get ONNX Runtime's answer."""
    import queue

    grpcclient = server.lib.grpc
    good = _x((1, 3, 32, 40), 7)
    (want,) = session.run(["output"], {"input": good})
    answers = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for rid, x in (("bounds", _x((1, 3, 1, 40), 8)), ("width", _x((1, 3, 32, 1), 9)),
                           ("good", good)):
                i = grpcclient.InferInput("input", list(x.shape), "FP32")
                i.set_data_from_numpy(x)
                c.async_stream_infer(MODEL, [i], request_id=rid)
            got = [answers.get(timeout=60) for _ in range(3)]
        finally:
            c.stop_stream()
    errors = sorted(str(e.message()) for r, e in got if e is not None)
    assert len(errors) == 2, got
    assert errors[0].startswith("input 'input': dim 2 is 1, not within 32..")
    assert errors[1].startswith("the model cannot run on this input (input [1, 3, 32, 1])")
    assert not any(_SERVER_PATHS.search(e) for e in errors), errors
    (result,) = [r for r, e in got if e is None]
    np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-5, atol=1e-5)


def test_zz_server_memory_stayed_small(server):
    """After all of the above, serve is still up (it exits when tritonserver dies, so
    nothing restarted underneath) and no process of the server's tree (serve, tritonserver,
    the backend stub) holds more than 2 GiB. With --server poolexport the tree is serve
    alone: the model runs in its process."""
    import os
    assert server.proc.poll() is None
    children, names = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                comm, rest = f.read().rsplit(")", 1)
            children.setdefault(int(rest.split()[1]), []).append(int(pid))
            names[int(pid)] = comm.split("(", 1)[1]
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = [], [server.proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    if server.kind == "tritonserver":
        assert {"tritonserver", "triton_python_b"} <= {names.get(p) for p in tree}, [names.get(p) for p in tree]
    else:
        assert tree == [server.proc.pid], [names.get(p) for p in tree]
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
        assert rss_kb < 2 << 20, (pid, names.get(pid), rss_kb)


def _get(server, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.http, timeout=60)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_unknown_model_get_requests_get_404(server, session):
    """Issue 23: KServe v2 documents 404 for an unknown model's ready/metadata (tritonserver
    alone answers 400); the served model and server-wide GETs still pass through."""
    for path in ("/v2/models/nope/ready", "/v2/models/nope", "/v2/models/nope/versions/1/ready",
                 "/v2/models/nope/config"):
        status, text = _get(server, path)
        message = _assert_clean_4xx(server, status, text, 404)
        assert "unknown model 'nope'" in message
    assert _get(server, "/v2/models/nope/ready", "HEAD")[0] == 404
    assert _get(server, f"/v2/models/{MODEL}/ready")[0] == 200
    assert _get(server, f"/v2/models/{MODEL}")[0] == 200
    assert _get(server, "/v2/health/ready")[0] == 200
    assert _get(server, "/v2/models/stats")[0] != 404  # every model's stats: passed on (PyTriton refuses it)


@pytest.mark.parametrize("value", ["a", True])
def test_non_numeric_json_values_get_400(server, session, value):
    """Issue 23: a string or boolean in an FP32 input's data was tritonserver's 500 ("attempt
    to access JSON non-number as double"); the gate answers 400. (Every data-length mismatch,
    flat, nested, empty, gRPC contents or raw, was already a 400: the tests above.)"""
    x = _x((1, 3, 32, 32), 2)
    data = x.ravel().tolist()
    data[7] = value
    status, text = _post(server, _json_body(x, data))
    message = _assert_clean_4xx(server, status, text, 400)
    assert "takes numbers" in message
    _still_correct(server, session)
