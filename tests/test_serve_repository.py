"""`poolexport triton-repo`: the model repository a full Triton server loads, with every
config.pbtxt read back through Triton's own ModelConfig protobuf schema; plus the
model-signature reading and the serve CLI's fast failure paths (no server started).
"""
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


@pytest.mark.parametrize("batched", [True, False])
def test_infer_callable_casts_and_splits(batched):
    """The callable PyTriton invokes: inputs cast to the model's dtypes, one answer per
    request (batched mode merges requests for one backend run and splits the result)."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton not installed")
    from poolexport.serve.server import _infer_callable
    from poolexport.serve.signature import Signature, TensorSpec

    calls = []

    class Doubler:
        signature = Signature((TensorSpec("x", np.dtype(np.float32), (-1, 2)),),
                              (TensorSpec("y", np.dtype(np.float32), (-1, 2)),))

        def run(self, feeds):
            calls.append(feeds["x"].shape)
            assert feeds["x"].dtype == np.float32
            return {"y": feeds["x"] * 2}

    from pytriton.proxy.types import Request

    reqs = [Request({"x": np.array([[1, 2]], np.float64)}),
            Request({"x": np.array([[3, 4], [5, 6]], np.float64)})]
    out = _infer_callable(Doubler(), batched=batched)(reqs)
    assert len(out) == 2
    np.testing.assert_array_equal(out[0]["y"], [[2, 4]])
    np.testing.assert_array_equal(out[1]["y"], [[6, 8], [10, 12]])
    assert calls == ([(3, 2)] if batched else [(1, 2), (2, 2)])


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
