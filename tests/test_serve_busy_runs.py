"""Which session runs a batch (serve/batcher.py, serve/runtime.py, serve/server.py): a lone
request runs on the runner's `run` (one ONNX Runtime thread per core, the fastest answer);
a run made while other requests are in the batch, queued, being received, or running on
another instance goes to `run_busy` (one thread: less CPU per row, and the front ends
get the other cores). Each condition is checked at its edge (none / one), and the
second session answers what an independent ONNX Runtime session and a float64 formula do.
"""
import threading
import time

import numpy as np
import pytest

from poolexport.serve.batcher import DynamicBatcher
from poolexport.serve.server import BUSY_INTRA_OP_THREADS, busy_intra_op_threads

MAX_BATCH = 4


class TwoWayRecorder:
    """y = 2x through `run` or `run_busy`; records (which, rows) per finished run, and
    which as each run starts in `started` (a list that recorders may share). `hold`
    blocks runs while cleared."""

    def __init__(self, started=None):
        self.runs = []
        self.started = [] if started is None else started  # which, as each run starts
        self.hold = threading.Event()
        self.hold.set()
        self.running = threading.Event()

    def _run(self, which, feeds):
        self.started.append(which)
        self.running.set()
        self.hold.wait(30)
        x = feeds["x"]
        self.runs.append((which, x.shape[0]))
        return {"y": x * 2}

    def run(self, feeds):
        return self._run("run", feeds)

    def run_busy(self, feeds):
        return self._run("busy", feeds)


class OneWayRecorder:
    """A runner without run_busy (TensorRT, a test double): every run goes to `run`."""

    def __init__(self):
        self.runs = []

    def run(self, feeds):
        self.runs.append(("run", feeds["x"].shape[0]))
        return {"y": feeds["x"] * 2}


def _rows(n, value, width=3):
    return np.full((n, width), value, np.float32)


def _infer_on_a_thread(batcher, feeds, ticket=None):
    """infer() from a thread of its own (as an HTTP connection's); waits until queued."""
    box, received = [], batcher.received

    def call():
        box.append(batcher.infer(feeds, timeout=60, ticket=ticket))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    end = time.monotonic() + 10
    while batcher.received == received and time.monotonic() < end:
        time.sleep(0.001)

    def get():
        t.join(30)
        assert box, "no answer"
        return box[0]
    return get


def test_lone_request_runs_on_run():
    rec = TwoWayRecorder()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        out = b.infer({"x": _rows(1, 3)}, timeout=30)
        np.testing.assert_array_equal(out["y"], _rows(1, 6))
        assert rec.runs == [("run", 1)]
    finally:
        b.close()


def test_a_request_being_received_makes_the_run_busy():
    """incoming 0: run; incoming 1 (a front end is reading another request; delay 0 so
    nothing waits for it): run_busy."""
    rec = TwoWayRecorder()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        b.infer({"x": _rows(1, 1)}, timeout=30)
        with b.incoming():
            b.infer({"x": _rows(1, 2)}, timeout=30)
        b.infer({"x": _rows(1, 3)}, timeout=30)
        assert rec.runs == [("run", 1), ("busy", 1), ("run", 1)]
    finally:
        b.close()


@pytest.mark.parametrize("queued, want", [
    (1, [("run", 1), ("run", 1)]),                       # alone once taken: lone
    (2, [("run", 1), ("busy", 2)]),                      # two merged
    (MAX_BATCH + 1, [("run", 1), ("busy", MAX_BATCH), ("run", 1)]),  # one left behind, then alone
])
def test_batch_of_several_runs_busy(queued, want):
    """Requests queued behind a held lone run: a batch of two or more runs busy, and so
    does a full batch that leaves one queued; one request taken with nothing behind it,
    none being received and no other instance running, is lone."""
    rec = TwoWayRecorder()
    rec.hold.clear()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        first = _infer_on_a_thread(b, {"x": _rows(1, -1)})
        assert rec.running.wait(10)
        gets = [_infer_on_a_thread(b, {"x": _rows(1, i)}) for i in range(queued)]
        rec.hold.set()
        first()
        for i, g in enumerate(gets):
            np.testing.assert_array_equal(g()["y"], _rows(1, 2 * i))
        assert rec.runs == want
    finally:
        rec.hold.set()
        b.close()


def test_a_request_queued_behind_the_batch_makes_it_busy():
    """A batch of one whose next request cannot join it (another shape) runs busy; the
    last one, with nothing behind it, runs on `run`."""
    rec = TwoWayRecorder()
    rec.hold.clear()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        first = _infer_on_a_thread(b, {"x": _rows(1, -1)})
        assert rec.running.wait(10)
        g1 = _infer_on_a_thread(b, {"x": _rows(1, 1, width=3)})
        g2 = _infer_on_a_thread(b, {"x": _rows(1, 2, width=5)})
        rec.hold.set()
        first(), g1(), g2()
        assert rec.runs == [("run", 1), ("busy", 1), ("run", 1)]
    finally:
        rec.hold.set()
        b.close()


def test_another_instance_running_makes_the_run_busy():
    """Two instances: a request that starts while the other instance runs goes busy; the
    first (both idle) and one sent once both are idle again run on `run`."""
    started = []
    a, c = TwoWayRecorder(started), TwoWayRecorder(started)
    a.hold.clear()
    c.hold.clear()
    b = DynamicBatcher([a, c], MAX_BATCH, max_queue_delay_us=0)
    try:
        first = _infer_on_a_thread(b, {"x": _rows(1, 1)})
        end = time.monotonic() + 10
        while len(started) < 1 and time.monotonic() < end:
            time.sleep(0.001)
        second = _infer_on_a_thread(b, {"x": _rows(1, 2)})
        while len(started) < 2 and time.monotonic() < end:
            time.sleep(0.001)
        a.hold.set()
        c.hold.set()
        np.testing.assert_array_equal(first()["y"], _rows(1, 2))
        np.testing.assert_array_equal(second()["y"], _rows(1, 4))
        b.infer({"x": _rows(1, 3)}, timeout=30)
        assert started == ["run", "busy", "run"]
    finally:
        a.hold.set()
        c.hold.set()
        b.close()


def test_submitted_batch_runs_busy():
    """The gRPC front end's way in (submit/drain) makes the same choice."""
    rec = TwoWayRecorder()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    done = threading.Event()
    results = []
    try:
        for i in range(3):
            _req, start = b.submit({"x": _rows(1, i)}, lambda r: (results.append(r.result),
                                                                   len(results) == 3 and done.set()))
        b.drain()
        assert done.wait(10)
        assert rec.runs == [("busy", 3)]
        _req, start = b.submit({"x": _rows(1, 7)}, lambda r: None)
        b.drain()
        assert rec.runs[-1] == ("run", 1)
    finally:
        b.close()


def test_runner_without_run_busy_takes_every_run():
    rec = OneWayRecorder()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        for i in range(2):
            b.submit({"x": _rows(1, i)}, lambda r: None)
        b.drain()
        assert rec.runs == [("run", 2)]
    finally:
        b.close()


@pytest.mark.parametrize("threads, cores, want", [
    (0, BUSY_INTRA_OP_THREADS, 0),          # one core: ONNX Runtime's default is one thread anyway
    (0, BUSY_INTRA_OP_THREADS + 1, BUSY_INTRA_OP_THREADS),
    (0, 16, BUSY_INTRA_OP_THREADS),
    (1, 2, 0), (2, 2, 0), (3, 16, 0),         # an explicit --intra-op-threads applies to every run
])
def test_busy_threads_only_by_default_and_with_cores_to_spare(threads, cores, want):
    assert busy_intra_op_threads(threads, cores) == want


# -------------------------------------------------------------------- the two sessions

@pytest.fixture(scope="module")
def matmul_model(tmp_path_factory):
    """y = relu(x @ W), x [N, 64], W [64, 32]: enough work for ONNX Runtime to split."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("busy") / "mm.onnx"
    onnx.save(model, str(path))
    return str(path), w


def test_busy_session_has_its_threads_and_answers_like_a_plain_session(matmul_model):
    ort = pytest.importorskip("onnxruntime")
    from poolexport.serve.runtime import OrtBackend

    path, w = matmul_model
    backend = OrtBackend(path, providers=["CPUExecutionProvider"], busy_intra_op_threads=1,
                         allow_spinning=False)
    assert backend.busy_session is not None
    assert backend.busy_session.get_session_options().intra_op_num_threads == 1
    assert backend.session.get_session_options().intra_op_num_threads == 0
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    plain = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    exact = np.maximum(x.astype(np.float64) @ w.astype(np.float64), 0)
    for got in (backend.run({"x": x})["y"], backend.run_busy({"x": x})["y"]):
        np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads, busy", [(0, 0), (1, 1), (2, 2)])
def test_no_second_session_when_it_would_be_the_same(matmul_model, threads, busy):
    """busy 0, or busy equal to the session's own threads: one session; run_busy uses it."""
    from poolexport.serve.runtime import OrtBackend

    path, w = matmul_model
    backend = OrtBackend(path, providers=["CPUExecutionProvider"], intra_op_threads=threads,
                         busy_intra_op_threads=busy)
    assert backend.busy_session is None
    x = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(backend.run_busy({"x": x})["y"], backend.run({"x": x})["y"])


@pytest.mark.parametrize("threads", [0, 1])
def test_server_runner_sessions(matmul_model, threads, monkeypatch):
    """The default server's runner: with --intra-op-threads 0 (and cores to spare) a busy
    session of BUSY_INTRA_OP_THREADS; an explicit count, one session."""
    from poolexport.serve import server as server_module

    monkeypatch.setattr(server_module.os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    path, _ = matmul_model
    s = server_module.Server(path, model_name="m", intra_op_threads=threads)
    runner = s._runner()
    if threads == 0 and runner.session.get_providers()[0] == "CPUExecutionProvider":
        assert runner.busy_session.get_session_options().intra_op_num_threads == BUSY_INTRA_OP_THREADS
    else:
        assert runner.busy_session is None
