"""`poolexport triton-repo`: the model repository a full Triton server loads, with every
config.pbtxt read back through Triton's own ModelConfig protobuf schema; plus the
model-signature reading and the serve CLI's fast failure paths (no server started).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pb = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                         reason="tritonclient[grpc] not installed (Triton's model_config schema)")
from google.protobuf import text_format  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from poolexport.serve import onnx_signature  # noqa: E402
from poolexport.serve.cli import main as serve_main  # noqa: E402
from poolexport.serve.repository import (ORT_LIBRARY_NAME, parse_config,  # noqa: E402
                                         write_repository)


def _model(path, inputs, outputs, nodes, inits=()):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return path


@pytest.fixture
def pool_model(tmp_path):
    """Dynamic batch and spatial dims; weights as an initializer (not an input)."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "W")
    return _model(tmp_path / "pool net.onnx",
                  [("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                  [("y", TensorProto.FLOAT, ["N", 4, None, None])],
                  [helper.make_node("Conv", ["x", "W"], ["c"]),
                   helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2])], [w])


@pytest.fixture
def fake_library(tmp_path):
    p = tmp_path / "libfake_ops.so"
    p.write_bytes(b"\x7fELF not really a library")
    return p


def _read(model_dir):
    with open(os.path.join(model_dir, "config.pbtxt")) as f:
        return text_format.Parse(f.read(), pb.ModelConfig())


def test_onnxruntime_repository_layout_and_config(pool_model, fake_library, tmp_path):
    out = tmp_path / "model_repository"
    d = write_repository(pool_model, out, library_path=fake_library, max_batch_size=16,
                         max_queue_delay_us=500, instances=2, kind="KIND_CPU")
    assert d == str(out / "pool_net")  # stem made safe for a URL path
    cfg = _read(d)
    assert cfg.name == "pool_net" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in cfg.input] == [
        ("x", "TYPE_FP32", [3, -1, -1])]
    assert [(o.name, pb.DataType.Name(o.data_type), list(o.dims)) for o in cfg.output] == [
        ("y", "TYPE_FP32", [4, -1, -1])]
    assert len(cfg.instance_group) == 1
    assert cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    # the library is copied in and named by an absolute path the backend can dlopen
    lib = os.path.join(d, ORT_LIBRARY_NAME)
    assert list(cfg.model_operations.op_library_filename) == [lib]
    with open(lib, "rb") as f:
        assert f.read() == fake_library.read_bytes()
    with open(os.path.join(d, "1", "model.onnx"), "rb") as f:
        assert f.read() == pool_model.read_bytes()


def test_python_variant_layout_and_config(pool_model, fake_library, tmp_path):
    """The Python-backend variant names its files relative to its folder (no mount path
    needed) and carries serve/triton_model.py as model.py."""
    from poolexport.serve import triton_model

    d = write_repository(pool_model, tmp_path / "r", library_path=fake_library, variant="python",
                         max_batch_size=4, instances=3, mount_path="/ignored")
    cfg = _read(d)
    assert cfg.name == "pool_net" and cfg.backend == "python" and cfg.platform == ""
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"model_file": "1/model.onnx", "op_library": ORT_LIBRARY_NAME,
                      "backend": "onnxruntime"}
    assert not cfg.model_operations.op_library_filename  # the ORT backend's field, not ours
    assert cfg.max_batch_size == 4 and cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("x", [3, -1, -1])]
    assert cfg.instance_group[0].count == 3
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU  # KIND_AUTO: the session picks its device
    with open(os.path.join(d, "1", "model.py")) as f, open(triton_model.__file__) as g:
        assert f.read() == g.read()
    assert os.path.isfile(os.path.join(d, "1", "model.onnx"))
    assert os.path.isfile(os.path.join(d, ORT_LIBRARY_NAME))
    assert not os.path.exists(os.path.join(d, "serve_parameters.json"))


def test_both_variants_side_by_side(pool_model, fake_library, tmp_path, capsys):
    d = write_repository(pool_model, tmp_path / "r", library_path=fake_library, variant="both",
                         model_name="net")
    assert d == str(tmp_path / "r" / "net")
    ort_cfg, py_cfg = _read(tmp_path / "r" / "net"), _read(tmp_path / "r" / "net_python")
    assert (ort_cfg.name, ort_cfg.backend) == ("net", "onnxruntime")
    assert list(ort_cfg.model_operations.op_library_filename) == [
        str(tmp_path / "r" / "net" / ORT_LIBRARY_NAME)]
    assert (py_cfg.name, py_cfg.backend) == ("net_python", "python")
    assert sorted(os.listdir(tmp_path / "r")) == ["net", "net_python"]
    assert serve_main(["triton-repo", str(pool_model), "-o", str(tmp_path / "c"),
                       "--model-name", "net", "--variant", "both"]) == 0
    assert _read(tmp_path / "c" / "net_python").backend == "python"
    assert "net_python" in capsys.readouterr().out
    with pytest.raises(ValueError, match="variant"):
        write_repository(pool_model, tmp_path / "x", variant="cpp", library_path=None)


def test_python_variant_of_a_plan_runs_the_engine(pool_model, tmp_path):
    plan = tmp_path / "net.plan"
    plan.write_bytes(b"not a real engine")
    cfg = _read(write_repository(plan, tmp_path / "r", signature_from=pool_model, variant="python"))
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"model_file": "1/model.plan", "backend": "tensorrt"}


def test_mount_path_rewrites_library_location(pool_model, fake_library, tmp_path):
    d = write_repository(pool_model, tmp_path / "r", library_path=fake_library,
                         mount_path="/models", model_name="net")
    assert list(_read(d).model_operations.op_library_filename) == [
        f"/models/net/{ORT_LIBRARY_NAME}"]


def test_fixed_batch_dim_disables_batching(tmp_path):
    m = _model(tmp_path / "fixed.onnx", [("x", TensorProto.FLOAT, [1, 3, 8, 8])],
               [("y", TensorProto.FLOAT, [1, 3, 4, 4])],
               [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])])
    cfg = _read(write_repository(m, tmp_path / "r", library_path=None))
    assert cfg.max_batch_size == 0
    assert not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [1, 3, 8, 8]  # full dims when not batching


def test_dtypes_map_to_triton_types(tmp_path):
    m = _model(tmp_path / "types.onnx",
               [("a", TensorProto.FLOAT16, ["N", 2]), ("b", TensorProto.INT64, ["N", 2]),
                ("c", TensorProto.BOOL, ["N", 2])],
               [("a2", TensorProto.FLOAT16, ["N", 2]), ("b2", TensorProto.INT64, ["N", 2]),
                ("c2", TensorProto.BOOL, ["N", 2])],
               [helper.make_node("Identity", ["a"], ["a2"]), helper.make_node("Identity", ["b"], ["b2"]),
                helper.make_node("Identity", ["c"], ["c2"])])
    sig = onnx_signature(m)
    assert [np.dtype(t.dtype) for t in sig.inputs] == [np.float16, np.int64, np.bool_]
    cfg = _read(write_repository(m, tmp_path / "r", library_path=None))
    assert [pb.DataType.Name(i.data_type) for i in cfg.input] == ["TYPE_FP16", "TYPE_INT64", "TYPE_BOOL"]
    assert [pb.DataType.Name(o.data_type) for o in cfg.output] == ["TYPE_FP16", "TYPE_INT64", "TYPE_BOOL"]


def test_schema_validation_is_real():
    """parse_config must reject what Triton would reject, or it validates nothing."""
    ok = parse_config('name: "m" backend: "onnxruntime" max_batch_size: 4')
    assert ok.max_batch_size == 4
    with pytest.raises(text_format.ParseError):
        parse_config('name: "m" max_batch_sizes: 4')  # unknown field
    with pytest.raises(text_format.ParseError):
        parse_config('name: "m" input { name: "x" data_type: TYPE_FP33 dims: 1 }')  # bad enum


def test_tensorrt_plan_layout(pool_model, fake_library, tmp_path):
    plan = tmp_path / "net.plan"
    plan.write_bytes(b"not a real engine")
    d = write_repository(plan, tmp_path / "r", signature_from=pool_model,
                         plugin_library=fake_library)
    cfg = _read(d)
    assert cfg.platform == "tensorrt_plan" and cfg.backend == ""
    assert not cfg.model_operations.op_library_filename
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("x", [3, -1, -1])]
    assert os.path.isfile(os.path.join(d, "1", "model.plan"))
    assert os.path.isfile(os.path.join(d, "plugins", fake_library.name))


def test_tensorrt_plan_without_signature_or_tensorrt(tmp_path):
    plan = tmp_path / "net.plan"
    plan.write_bytes(b"x")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable; this checks the message when it is not")
    except Exception:
        pass
    with pytest.raises(ValueError, match="--signature-from"):
        write_repository(plan, tmp_path / "r")


def test_validation_errors_name_the_argument(pool_model, tmp_path):
    with pytest.raises(ValueError, match="max_batch_size"):
        write_repository(pool_model, tmp_path / "r", max_batch_size=-1, library_path=None)
    with pytest.raises(ValueError, match="instances"):
        write_repository(pool_model, tmp_path / "r", instances=0, library_path=None)
    with pytest.raises(ValueError, match="backend"):
        write_repository(pool_model, tmp_path / "r", backend="tflite", library_path=None)
    with pytest.raises(FileNotFoundError):
        write_repository(tmp_path / "missing.onnx", tmp_path / "r")


def test_cli_triton_repo(pool_model, tmp_path, capsys):
    assert serve_main(["triton-repo", str(pool_model), "-o", str(tmp_path / "r"),
                       "--model-name", "net", "--max-batch-size", "4"]) == 0
    cfg = _read(tmp_path / "r" / "net")
    assert cfg.max_batch_size == 4 and cfg.name == "net"
    assert serve_main(["triton-repo", str(pool_model), "-o", str(tmp_path / "k"),
                       "--model-name", "net", "--mount-path", "/mnt/models"]) == 0
    libs = list(_read(tmp_path / "k" / "net").model_operations.op_library_filename)
    from poolexport.serve.runtime import custom_op_library
    want = [f"/mnt/models/net/{ORT_LIBRARY_NAME}"] if custom_op_library() else []
    assert libs == want
    assert serve_main(["triton-repo", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "r")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_serve_tensorrt_unavailable_is_one_line(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable; this checks the message when it is not")
    except Exception:
        pass
    plan = tmp_path / "net.plan"
    plan.write_bytes(b"x")
    r = subprocess.run([sys.executable, "-m", "poolexport.serve", "serve", str(plan),
                        "--backend", "tensorrt"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith("error: serve: --backend tensorrt needs TensorRT") and "\n" not in err


def test_libpython_added_to_ld_library_path():
    import sysconfig

    from poolexport.serve.server import ensure_libpython_visible

    libdir = sysconfig.get_config_var("LIBDIR")
    shared = os.path.exists(os.path.join(libdir, sysconfig.get_config_var("LDLIBRARY") or ""))
    env = {"LD_LIBRARY_PATH": "/opt/other"}
    added = ensure_libpython_visible(env)
    if not shared or not (sysconfig.get_config_var("LDLIBRARY") or "").count(".so"):
        assert added is None and env == {"LD_LIBRARY_PATH": "/opt/other"}
        return
    assert added == libdir
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/opt/other"]
    assert ensure_libpython_visible(env) is None  # idempotent
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/opt/other"]


# -- serve/triton_model.py: the Python-backend model, driven through a stand-in pb_utils ----

class _FakePbUtils:
    """The parts of triton_python_backend_utils the model uses, as plain Python."""

    class TritonError:
        INVALID_ARG, INTERNAL = 3, 13

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return _FakePbUtils.Tensor(name, request[name]) if name in request else None

    @staticmethod
    def triton_string_to_numpy(name):
        return {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}[name]


def _python_model(tmp_path, monkeypatch, onnx_path, max_batch_size=4, private=None):
    """TritonPythonModel initialized as the Python backend would, from a config written by
    write_python_model (the JSON Triton hands over, from the same ModelConfig)."""
    from google.protobuf import json_format

    from poolexport.serve import triton_model
    from poolexport.serve.repository import write_python_model

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakePbUtils)
    model_dir = tmp_path / "repo" / "m"
    cfg = write_python_model(str(model_dir), "m", onnx_signature(onnx_path), model_file=str(onnx_path),
                             max_batch_size=max_batch_size, private_parameters=private)
    model = triton_model.TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
                      "model_repository": str(model_dir)})
    runs = []
    run = model.runner.run
    model.runner.run = lambda feeds: runs.append({n: a.shape for n, a in feeds.items()}) or run(feeds)
    return model, runs


@pytest.fixture
def doubler(tmp_path):
    """y = 2 x for x [N, 1, L] FP32, L dynamic."""
    return _model(tmp_path / "double.onnx", [("x", TensorProto.FLOAT, ["N", 1, "L"])],
                  [("y", TensorProto.FLOAT, ["N", 1, "L"])],
                  [helper.make_node("Mul", ["x", "two"], ["y"])],
                  [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])


def test_python_model_merges_same_shapes_and_splits_answers(tmp_path, monkeypatch, doubler):
    """Requests of one spatial shape run as one batch, another shape runs apart; every
    request gets exactly its own rows back, cast to the model's dtype."""
    model, runs = _python_model(tmp_path, monkeypatch, doubler)
    rng = np.random.default_rng(0)
    reqs = [{"x": rng.standard_normal((1, 1, 2)).astype(np.float32)},
            {"x": rng.standard_normal((2, 1, 2))},  # float64: cast to the model's FP32
            {"x": rng.standard_normal((1, 1, 3)).astype(np.float32)}]
    out = model.execute(reqs)
    assert [r.error for r in out] == [None] * 3
    for req, resp in zip(reqs, out):
        assert resp.outputs["y"].dtype == np.float32
        np.testing.assert_array_equal(resp.outputs["y"], 2 * req["x"].astype(np.float32))
    assert sorted(r["x"] for r in runs) == [(1, 1, 3), (3, 1, 2)]


def test_python_model_without_batching_runs_each_request(tmp_path, monkeypatch, doubler):
    model, runs = _python_model(tmp_path, monkeypatch, doubler, max_batch_size=0)
    reqs = [{"x": np.full((1, 1, 2), k, np.float32)} for k in range(3)]
    out = model.execute(reqs)
    assert [r["x"] for r in runs] == [(1, 1, 2)] * 3
    for k, resp in enumerate(out):
        np.testing.assert_array_equal(resp.outputs["y"], np.full((1, 1, 2), 2 * k, np.float32))


def test_python_model_rechecks_limits_per_request(tmp_path, monkeypatch, doubler):
    """With the limits `poolexport serve` passes, a request over the batch limit gets its
    own marked 400 and the others in the same execute() still run."""
    from poolexport.serve.validation import build_limits

    sig = onnx_signature(doubler)
    lim = build_limits(sig, 4)
    limits = {"inputs": [{"name": "x", "dtype": "float32", "dims": [-1, 1, -1], "dim_names": ["N", "", "L"]}],
              "max_batch_size": 4, "max_elements": lim.max_elements, "max_bytes": lim.max_bytes,
              "dim_bounds": ["L=2:8"]}
    model, runs = _python_model(tmp_path, monkeypatch, doubler,
                                private={"limits": json.dumps(limits), "reject_marker": "MARK"})
    reqs = [{"x": np.ones((4, 1, 8), np.float32)}, {"x": np.ones((5, 1, 8), np.float32)},
            {"x": np.ones((1, 1, 9), np.float32)}, {"x": np.ones((1, 1, 2), np.float32)}]
    out = model.execute(reqs)
    assert out[0].error is None and out[3].error is None
    assert out[1].error.message.startswith("MARK:400:input 'x': batch-size 5 is not within 1..4")
    assert out[2].error.message.startswith("MARK:400:input 'x': dim 2 is 9, not within 2..8")
    assert out[1].error.code == _FakePbUtils.TritonError.INVALID_ARG
    assert sorted(r["x"] for r in runs) == [(1, 1, 2), (4, 1, 8)]


def test_python_model_input_fault_is_a_marked_400(tmp_path, monkeypatch):
    """ONNX Runtime failing on the input (a Reshape the shape cannot take) is the client's
    fault: one line, no paths or C++ symbols, marked for the gate."""
    path = _model(tmp_path / "reshape.onnx", [("x", TensorProto.FLOAT, ["N", 1, "L"])],
                  [("y", TensorProto.FLOAT, ["N", 2])],
                  [helper.make_node("Reshape", ["x", "shape"], ["y"])],
                  [helper.make_tensor("shape", TensorProto.INT64, [2], [0, 2])])
    model, _ = _python_model(tmp_path, monkeypatch, path, private={"reject_marker": "MARK"})
    good, bad = model.execute([{"x": np.ones((1, 1, 2), np.float32)}, {"x": np.ones((1, 1, 3), np.float32)}])
    np.testing.assert_array_equal(good.outputs["y"], np.ones((1, 2), np.float32))
    message = bad.error.message
    assert message.startswith("MARK:400:the model cannot run on this input (x [1, 1, 3]): ")
    assert "\n" not in message and "/" not in message and "::" not in message, message


def test_cli_serve_port_in_use_fails_fast_with_one_line(tmp_path):
    import socket

    pytest.importorskip("pytriton", reason="nvidia-pytriton not installed")
    m = _model(tmp_path / "id.onnx", [("x", TensorProto.FLOAT, ["N", 2])],
               [("y", TensorProto.FLOAT, ["N", 2])], [helper.make_node("Identity", ["x"], ["y"])])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "poolexport.serve", "serve", str(m),
                            "--http-port", str(port), "--grpc-port", "0", "--metrics-port", "0"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == (f"error: serve: --http-port port {port} on 127.0.0.1 "
                                "is not available (Address already in use)")


@pytest.mark.parametrize("content", [None, b"not an onnx file"])
def test_cli_serve_unloadable_model_is_one_line(tmp_path, content):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "poolexport.serve", "serve", str(path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith(f"error: serve: cannot load {str(path)!r}") and "\n" not in err
