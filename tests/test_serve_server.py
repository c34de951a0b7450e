"""`poolexport serve` for real: a server in a subprocess on loopback ports, queried with
tritonclient (HTTP and gRPC) and raw KServe v2 JSON, checked against a direct ONNX Runtime
session on the same file. Every test runs against both servers `--server` picks: the
model in serve's own process (poolexport, the default) and the bundled tritonserver. One
server of each per module (start-up is slow).
"""
import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton not installed (pip install 'poolexport[serve]')")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] not installed")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402
from poolexport.serve.server import _loopback_ports  # noqa: E402  (the server's own free-port pick)

MODEL = "small"
MAX_BATCH = 8
START_TIMEOUT_S = 180
SERVERS = ("poolexport", "tritonserver")  # `poolexport serve --server`


def _small_model(path):
    """Conv -> Relu -> AveragePool and a ReduceMax head; batch dim symbolic."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("ReduceMax", ["y", "axes"], ["m"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


class _ServerProc:
    def __init__(self, model_path, log_path, model_name=MODEL, kind="poolexport"):
        self.model_name, self.kind = model_name, kind
        self.http, self.grpc, self.metrics = _loopback_ports(3)
        self.log_path = log_path
        self._log = open(log_path, "w")
        cmd = [sys.executable, "-m", "poolexport.serve", "serve", str(model_path),
               "--model-name", model_name, "--host", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc),
               "--metrics-port", str(self.metrics), "--max-batch-size", str(MAX_BATCH),
               "--server", kind]
        # Own session: teardown can kill tritonserver and the stub with it, whatever happens.
        # cwd outside the source tree: `python -m` puts cwd first on sys.path, and the
        # source tree's poolexport/ (no serve/, no library) would shadow the installed one.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=os.path.dirname(log_path))
        self.returncode = None

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        client = httpclient.InferenceServerClient(f"127.0.0.1:{self.http}")
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if client.is_model_ready(self.model_name):
                        return
                except Exception:
                    pass
                time.sleep(0.5)
        finally:
            client.close()
        self.kill()
        pytest.fail(f"server not ready after {START_TIMEOUT_S} s:\n{self.log()}")

    def terminate(self, timeout=60):
        """SIGTERM, as a supervisor would; returns the exit code (None if it hung)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self._log.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "small.onnx"
    _small_model(path)
    return path


@pytest.fixture(scope="module")
def session(model_path):
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=SERVERS)
def server(model_path, tmp_path_factory, request):
    proc = _ServerProc(model_path, tmp_path_factory.mktemp("serve_log") / "server.log",
                       kind=request.param)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.terminate(timeout=30)
        proc.kill()  # the whole process group, even after a clean exit


def _x(batch, seed):
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)


def _expected(session, x):
    y, m = session.run(["y", "m"], {"x": x})
    return {"y": y, "m": m}


def _http_infer(client, x, binary=True):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("y", "m")]
    res = client.infer(MODEL, [inp], outputs=outs)
    return {n: res.as_numpy(n) for n in ("y", "m")}


def _grpc_infer(client, x):
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(MODEL, [inp])
    return {n: res.as_numpy(n) for n in ("y", "m")}


def _assert_matches(got, want):
    for n in want:
        assert got[n].shape == want[n].shape, n
        np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-5, err_msg=n)


def _post(url, body: bytes, timeout=60):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _still_serving(server, session):
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        x = _x(1, 1234)
        _assert_matches(_http_infer(c, x), _expected(session, x))


def test_metadata_named_and_typed_from_model(server):
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        meta = c.get_model_metadata(MODEL)
        cfg = c.get_model_config(MODEL)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("x", "FP32", [-1, 3, 16, 16])]
    assert sorted((o["name"], o["datatype"], tuple(o["shape"])) for o in meta["outputs"]) == [
        ("m", "FP32", (-1, 4)), ("y", "FP32", (-1, 4, 8, 8))]
    assert cfg["max_batch_size"] == MAX_BATCH
    assert "dynamic_batching" in cfg
    # the config is anyone's to read: no file paths, limits or the gate's marker in it
    assert set(cfg.get("parameters", {})) <= {"backend", "intra_op_threads", "allow_spinning"}
    assert "/" not in json.dumps(cfg.get("parameters", {}))


@pytest.mark.parametrize("batch", [1, 3, MAX_BATCH])
def test_http_binary_matches_onnxruntime(server, session, batch):
    x = _x(batch, batch)
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        _assert_matches(_http_infer(c, x, binary=True), _expected(session, x))


def test_http_json_matches_onnxruntime(server, session):
    x = _x(2, 7)
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        _assert_matches(_http_infer(c, x, binary=False), _expected(session, x))


def test_raw_kserve_v2_json(server, session):
    """What curl sends: no tritonclient involved."""
    x = _x(1, 11)
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    status, raw = _post(f"http://127.0.0.1:{server.http}/v2/models/{MODEL}/infer", body)
    assert status == 200, raw
    outs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
            for o in json.loads(raw)["outputs"]}
    _assert_matches(outs, _expected(session, x))


@pytest.mark.parametrize("batch", [1, 5])
def test_grpc_matches_onnxruntime(server, session, batch):
    x = _x(batch, 100 + batch)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        _assert_matches(_grpc_infer(c, x), _expected(session, x))


def test_requested_outputs_only(server, session):
    """A request naming one output gets that one (HTTP binary, HTTP JSON, gRPC); an
    output the model does not have is a 400."""
    x = _x(2, 21)
    want = _expected(session, x)
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        for binary in (True, False):
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            res = c.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("m", binary_data=binary)])
            np.testing.assert_allclose(res.as_numpy("m"), want["m"], rtol=1e-5, atol=1e-5)
            assert res.as_numpy("y") is None
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = c.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("y")])
        np.testing.assert_allclose(res.as_numpy("y"), want["y"], rtol=1e-5, atol=1e-5)
        assert res.as_numpy("m") is None
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 16, 16], "datatype": "FP32",
                                   "data": [0.5] * 768}], "outputs": [{"name": "nope"}]}).encode()
    status, raw = _post(f"http://127.0.0.1:{server.http}/v2/models/{MODEL}/infer", body)
    assert status == 400 and "nope" in json.loads(raw)["error"], raw
    _still_serving(server, session)


def test_health_metadata_config_and_stats_over_grpc_and_http(server):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
        meta = c.get_model_metadata(MODEL, as_json=True)
        assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]] == [
            ("x", "FP32", [-1, 3, 16, 16])]
        cfg = c.get_model_config(MODEL, as_json=True)["config"]
        assert int(cfg["max_batch_size"]) == MAX_BATCH and "dynamic_batching" in cfg
        stats = c.get_inference_statistics(MODEL, as_json=True)
        assert stats["model_stats"][0]["name"] == MODEL
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        assert c.is_server_live() and c.is_server_ready()
        assert c.get_server_metadata()["name"]
        stats = c.get_inference_statistics(MODEL)
        assert stats["model_stats"][0]["name"] == MODEL


def _v2(name="x", shape=(1, 3, 16, 16), datatype="FP32", data=None):
    n = int(np.prod(shape))
    data = [0.5] * n if data is None else data
    return json.dumps({"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                                   "data": data}]}).encode()


BAD_HTTP = {
    "unknown_model": ("nope", _v2(), 404),
    "unknown_input": (MODEL, _v2(name="z"), 400),
    "wrong_dtype": (MODEL, _v2(datatype="INT32", data=[1] * 768), 400),
    "wrong_shape": (MODEL, _v2(shape=(1, 3, 8, 8)), 400),
    "batch_over_max": (MODEL, _v2(shape=(MAX_BATCH + 1, 3, 16, 16)), 400),
    # the front end (serve/gate.py) checks these before Triton sees them: all 400
    "data_count_mismatch": (MODEL, _v2(data=[0.5] * 10), 400),
    "malformed_json": (MODEL, b'{"inputs": [ {"name": "x", ', 400),
    "not_json": (MODEL, b"\x00\xff" * 1000, 400),
}


@pytest.mark.parametrize("case", sorted(BAD_HTTP))
def test_bad_http_request_gets_error_and_server_keeps_serving(server, session, case):
    model, body, code = BAD_HTTP[case]
    status, raw = _post(f"http://127.0.0.1:{server.http}/v2/models/{model}/infer", body)
    if code is not None:
        assert status == code, raw
    else:
        assert 400 <= status < 600, raw
    assert "error" in json.loads(raw)
    _still_serving(server, session)


def test_body_over_limit_rejected_and_server_keeps_serving(server, session):
    """64 MiB of non-JSON: the bundled Triton has no byte cap option, so the limit that
    bites is the model's (batch/shape); it must answer with an error, not fall over."""
    status, raw = _post(f"http://127.0.0.1:{server.http}/v2/models/{MODEL}/infer",
                        b" " * (64 << 20), timeout=120)
    assert 400 <= status < 600 and "error" in json.loads(raw)
    # and a well-formed request whose declared size is over the model's limit
    big = _x(4 * MAX_BATCH, 3)
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.http}") as c:
        with pytest.raises(InferenceServerException, match="batch-size"):
            _http_infer(c, big)
    _still_serving(server, session)


@pytest.mark.parametrize("case", ["unknown_model", "unknown_input", "wrong_dtype", "wrong_shape"])
def test_bad_grpc_request_gets_error_and_server_keeps_serving(server, session, case):
    x = _x(1, 5)
    model, name, dtype, arr = MODEL, "x", "FP32", x
    if case == "unknown_model":
        model = "nope"
    elif case == "unknown_input":
        name = "z"
    elif case == "wrong_dtype":
        dtype, arr = "FP64", x.astype(np.float64)
    else:
        arr = x[:, :, :8, :8].copy()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        inp = grpcclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        with pytest.raises(InferenceServerException):
            c.infer(model, [inp])
    _still_serving(server, session)


def _metrics(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=30) as r:
        return r.read().decode()


def _counters(server):
    """Prometheus counters for our model (PyTriton restricts the statistics API)."""
    out = {}
    for line in _metrics(server).splitlines():
        name, _, rest = line.partition("{")
        if name in ("nv_inference_count", "nv_inference_exec_count") and f'model="{MODEL}"' in rest:
            out[name] = int(float(rest.rsplit(" ", 1)[1]))
    return out


def test_concurrent_clients_zero_failures_and_batching(server, session):
    """8 clients (4 HTTP, 4 gRPC) x 200 requests, every answer checked; the dynamic
    batcher must have merged some of them (fewer executions than requests)."""
    clients, per_client, deadline_s = 8, 200, 240
    xs = [_x(1, 10_000 + i) for i in range(16)]
    want = [_expected(session, x) for x in xs]
    before = _counters(server)
    stop_at = time.monotonic() + deadline_s

    def worker(k):
        grpc = k % 2 == 1
        make = grpcclient.InferenceServerClient if grpc else httpclient.InferenceServerClient
        port = server.grpc if grpc else server.http
        done, failures = 0, []
        with make(f"127.0.0.1:{port}") as c:
            for i in range(per_client):
                if time.monotonic() > stop_at:
                    failures.append("deadline")
                    break
                j = (k * per_client + i) % len(xs)
                try:
                    got = _grpc_infer(c, xs[j]) if grpc else _http_infer(c, xs[j])
                    _assert_matches(got, want[j])
                    done += 1
                except Exception as e:  # collect, report all at the end
                    failures.append(repr(e)[:200])
        return done, failures

    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, range(clients)))
    failures = [f for _, fs in results for f in fs]
    assert not failures, failures[:5]
    assert sum(d for d, _ in results) == clients * per_client
    after = _counters(server)
    n_inf = after["nv_inference_count"] - before["nv_inference_count"]
    n_exec = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert n_inf == clients * per_client
    assert n_exec < n_inf, (n_exec, n_inf)


def test_metrics_endpoint(server):
    text = _metrics(server)
    assert f'nv_inference_request_success{{model="{MODEL}"' in text


def test_zz_sigterm_stops_cleanly(server):
    """Runs last in this module: the shared server exits 0 on SIGTERM, ports released."""
    assert server.terminate(timeout=60) == 0, server.log()
    assert "poolexport serve: stopped" in server.log()
    for port in (server.http, server.grpc, server.metrics):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


# -- a model with a poolexport custom node, served through our ONNX Runtime library --------

def _softpool_reference(x, k, beta):
    """float64 SoftPool over non-overlapping k x k windows, written from the definition."""
    n, c, h, w = x.shape
    win = x.astype(np.float64).reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, h // k, w // k, k * k)
    z = beta * win
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e * win).sum(-1) / e.sum(-1)


@pytest.fixture(scope="module")
def library():
    import poolexport
    try:
        return poolexport.get_library_path()
    except (AttributeError, RuntimeError) as e:
        pytest.skip(f"poolexport ONNX Runtime custom-op library not available ({e})")


@pytest.fixture(scope="module")
def softpool_server(library, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_softpool")
    node = helper.make_node("SoftPool", ["x"], ["y"], domain="poolexport",
                            kernel_shape=[2, 2], strides=[2, 2], beta=2.0)
    graph = helper.make_graph(
        [node], "softpool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("poolexport", 1)])
    model.ir_version = 10
    onnx.save(model, d / "softpool.onnx")  # no local function: only our kernel can run it
    proc = _ServerProc(d / "softpool.onnx", d / "server.log", model_name="softpool")
    try:
        proc.wait_ready()
        yield proc, d / "softpool.onnx"
    finally:
        proc.terminate(timeout=30)
        proc.kill()


def test_custom_op_model_served_through_library(softpool_server, library):
    server, path = softpool_server
    x = np.random.default_rng(3).standard_normal((3, 2, 8, 8)).astype(np.float32) * 30
    so = ort.SessionOptions()
    so.register_custom_ops_library(library)
    direct = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    (want,) = direct.run(["y"], {"x": x})
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}") as c:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = c.infer("softpool", [inp]).as_numpy("y")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, _softpool_reference(x, 2, 2.0), rtol=1e-5, atol=1e-4)


# -- `triton-repo --variant python` as a full Triton would load it -------------------------

def test_triton_repo_python_variant_loads_in_tritonserver(library, tmp_path):
    """The repository `poolexport triton-repo --variant python` writes, copied elsewhere (its
    paths are relative to the model folder), loaded by the bundled tritonserver itself (no
    gate, no serve): it answers what ONNX Runtime with our library computes."""
    import shutil

    from poolexport.serve.repository import write_repository
    from poolexport.serve.server import (_backend_directory, bundled_tritonserver,
                                         tritonserver_environment)

    node = helper.make_node("SoftPool", ["x"], ["y"], domain="poolexport",
                            kernel_shape=[2, 2], strides=[2, 2], beta=1.5)
    graph = helper.make_graph(
        [node], "softpool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("poolexport", 1)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "sp.onnx")
    write_repository(tmp_path / "sp.onnx", tmp_path / "written", variant="python", max_batch_size=4)
    shutil.copytree(tmp_path / "written", tmp_path / "moved")
    shutil.rmtree(tmp_path / "written")

    paths = bundled_tritonserver()
    backends = _backend_directory(str(tmp_path / "work"), paths)
    http_port, grpc_port, metrics_port = _loopback_ports(3)
    log = open(tmp_path / "triton.log", "w")
    proc = subprocess.Popen(
        [paths["tritonserver"], f"--model-repository={tmp_path / 'moved'}",
         f"--backend-directory={backends}", "--exit-on-error=true", "--allow-gpu-metrics=false",
         "--http-address=127.0.0.1", f"--http-port={http_port}", "--grpc-address=127.0.0.1",
         f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}", "--pinned-memory-pool-byte-size=0"],
        env=tritonserver_environment(paths), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        with httpclient.InferenceServerClient(f"127.0.0.1:{http_port}") as c:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert proc.poll() is None, (tmp_path / "triton.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "tritonserver not ready"
                try:
                    if c.is_model_ready("sp"):
                        break
                except Exception:
                    pass
                time.sleep(0.5)
            x = np.random.default_rng(8).standard_normal((3, 2, 8, 8)).astype(np.float32) * 20
            inp = httpclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = c.infer("sp", [inp]).as_numpy("y")
        np.testing.assert_allclose(got, _softpool_reference(x, 2, 1.5), rtol=1e-5, atol=1e-4)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
