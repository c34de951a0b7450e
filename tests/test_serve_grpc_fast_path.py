"""Where the default server's gRPC front end runs a request (serve/gate.py): a lone client's
unary requests run on the event-loop thread (no hand-over to a pool thread and back),
after INLINE_AFTER lone requests in a row and except every PROBE_EVERY-th; concurrent
clients, a busy model instance and streams go through the pool, so requests still meet
in a batch and the event loop never waits for a model instance.

The gate runs in this process around a recording model (y = 2x), reached with a plain
grpc channel, so the tests see the thread of every run.
"""
import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")

from poolexport.serve.batcher import DynamicBatcher  # noqa: E402
from poolexport.serve.gate import INLINE_AFTER, INLINE_MAX_RUN_NS, PROBE_EVERY, Gate  # noqa: E402
from poolexport.serve.kserve import ServedModel  # noqa: E402
from poolexport.serve.signature import Signature, TensorSpec  # noqa: E402
from poolexport.serve.validation import build_limits  # noqa: E402

MODEL = "m"
WIDTH = 5
LOOP_THREAD = "gate-grpc"
METHOD = "/inference.GRPCInferenceService/"


class ThreadRecorder:
    """y = 2x; records the thread and batch rows of every run. `hold` (an Event, set
    when free) blocks runs while cleared; `run_s` makes a run take that long."""

    def __init__(self, run_s=0.0):
        self.threads, self.rows = [], []
        self.hold = threading.Event()
        self.hold.set()
        self.running = threading.Event()
        self.run_s = run_s

    def run(self, feeds):
        x = feeds["x"]
        self.running.set()
        self.hold.wait(30)
        if self.run_s:
            time.sleep(self.run_s)
        self.threads.append(threading.current_thread().name)
        self.rows.append(x.shape[0])
        return {"y": x * 2}


@pytest.fixture
def served():
    """(gate, recorder, batcher): the default server's front ends on free ports."""
    yield from _served()


def _served(upstream_timeout=600.0, run_s=0.0):
    spec_in = TensorSpec("x", np.dtype(np.float32), (-1, WIDTH))
    spec_out = TensorSpec("y", np.dtype(np.float32), (-1, WIDTH))
    signature = Signature((spec_in,), (spec_out,))
    limits = build_limits(signature, 8)
    rec = ThreadRecorder(run_s)
    batcher = DynamicBatcher([rec], 8, 100)
    model = ServedModel(MODEL, signature, limits, batcher, config=None)
    gate = Gate(limits, MODEL, "127.0.0.1", 0, 0, model=model, upstream_timeout=upstream_timeout).start()
    try:
        yield gate, rec, batcher
    finally:
        gate.stop()
        batcher.close()


def _request(value: float, rows: int = 1) -> bytes:
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    req.inputs.add(name="x", datatype="FP32", shape=[rows, WIDTH])
    req.raw_input_contents.append(np.full((rows, WIDTH), value, np.float32).tobytes())
    return req.SerializeToString()


def _answer(raw: bytes) -> np.ndarray:
    resp = service_pb2.ModelInferResponse.FromString(raw)
    return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(tuple(resp.outputs[0].shape))


def _channel(gate):
    return grpc.insecure_channel(f"127.0.0.1:{gate.grpc_port}")


def test_lone_client_runs_on_the_event_loop_but_every_probe(served):
    gate, rec, _ = served
    n = PROBE_EVERY + 4
    with _channel(gate) as ch:
        infer = ch.unary_unary(METHOD + "ModelInfer")
        for i in range(n):
            np.testing.assert_array_equal(_answer(infer(_request(i), timeout=30)),
                                          np.full((1, WIDTH), 2 * i, np.float32))
    on_loop = [t == LOOP_THREAD for t in rec.threads]
    # request k (1-based) found k lone requests in a row: the loop from INLINE_AFTER on,
    # except when k is a multiple of PROBE_EVERY
    want = [k >= INLINE_AFTER and k % PROBE_EVERY != 0 for k in range(1, n + 1)]
    assert on_loop == want


def test_concurrent_clients_after_a_lone_run_still_batch(served):
    """8 clients start while the front end runs a lone client's requests on its loop: the
    next probe must see them, and their requests must merge again (with runs on the loop
    only, every run would hold one request)."""
    gate, rec, _ = served
    rec.run_s = 0.002  # a model run the requests can pile up behind
    with _channel(gate) as ch:
        infer = ch.unary_unary(METHOD + "ModelInfer")
        for i in range(INLINE_AFTER + 1):
            infer(_request(i), timeout=30)
    assert rec.threads[-1] == LOOP_THREAD
    start = len(rec.rows)

    def client(k):
        with _channel(gate) as ch:
            infer = ch.unary_unary(METHOD + "ModelInfer")
            for i in range(30):
                value = 1000 * k + i
                np.testing.assert_array_equal(_answer(infer(_request(value), timeout=60)),
                                              np.full((1, WIDTH), 2 * value, np.float32))
        return True

    with cf.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(client, range(8)))
    rows = rec.rows[start:]
    assert sum(rows) == 8 * 30
    assert max(rows) > 1, "no batch formed: concurrent requests ran one by one on the loop"


def test_busy_instance_never_blocks_the_event_loop(served):
    """A lone client's request that finds the model instance busy waits on a pool thread:
    the loop goes on answering (a health check here) while the instance is held."""
    gate, rec, batcher = served
    with _channel(gate) as ch:
        infer = ch.unary_unary(METHOD + "ModelInfer")
        for i in range(INLINE_AFTER + 1):
            infer(_request(i), timeout=30)
        rec.hold.clear()
        rec.running.clear()
        other = threading.Thread(target=batcher.infer, args=({"x": np.ones((1, WIDTH), np.float32)}, 30))
        other.start()  # as an HTTP request would: the instance is taken
        assert rec.running.wait(10)
        future = infer.future(_request(7), timeout=30)
        time.sleep(0.2)
        live = ch.unary_unary(METHOD + "ServerLive")
        t0 = time.monotonic()
        service_pb2.ServerLiveResponse.FromString(live(service_pb2.ServerLiveRequest().SerializeToString(),
                                                       timeout=5))
        answered_in = time.monotonic() - t0
        rec.hold.set()
        np.testing.assert_array_equal(_answer(future.result()), np.full((1, WIDTH), 14, np.float32))
        other.join(10)
    assert answered_in < 2.0


def test_stream_requests_go_through_the_pool(served):
    gate, rec, _ = served
    with _channel(gate) as ch:
        infer = ch.unary_unary(METHOD + "ModelInfer")
        for i in range(INLINE_AFTER + 1):
            infer(_request(i), timeout=30)
        assert rec.threads[-1] == LOOP_THREAD
        start = len(rec.threads)
        stream = ch.stream_stream(METHOD + "ModelStreamInfer")
        answers = list(stream(iter([_request(10 + i) for i in range(3)]), timeout=30))
    got = sorted(float(_answer(service_pb2.ModelStreamInferResponse.FromString(a).infer_response
                               .SerializeToString())[0, 0]) for a in answers)
    assert got == [20.0, 22.0, 24.0]
    assert LOOP_THREAD not in rec.threads[start:]


def test_bad_request_on_the_lone_path_is_refused(served):
    """The checks run before the run, on the loop path too: a wrong width is a 400."""
    gate, rec, _ = served
    with _channel(gate) as ch:
        infer = ch.unary_unary(METHOD + "ModelInfer")
        for i in range(INLINE_AFTER + 1):
            infer(_request(i), timeout=30)
        req = service_pb2.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="x", datatype="FP32", shape=[1, WIDTH + 1])
        req.raw_input_contents.append(np.zeros((1, WIDTH + 1), np.float32).tobytes())
        runs = len(rec.rows)
        with pytest.raises(grpc.RpcError) as e:
            infer(req.SerializeToString(), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(rec.rows) == runs
        np.testing.assert_array_equal(_answer(infer(_request(3), timeout=30)),
                                      np.full((1, WIDTH), 6, np.float32))


def test_company_restarts_the_lone_count(served):
    """A request that finds another in flight ends the lone run: the next INLINE_AFTER - 1
    lone requests go through the pool again before one runs on the loop."""
    gate, rec, batcher = served
    with _channel(gate) as ch:
        infer = ch.unary_unary(METHOD + "ModelInfer")
        for i in range(INLINE_AFTER + 1):
            infer(_request(i), timeout=30)
        assert rec.threads[-1] == LOOP_THREAD
        rec.hold.clear()
        rec.running.clear()
        other = threading.Thread(target=batcher.infer, args=({"x": np.ones((1, WIDTH), np.float32)}, 30))
        other.start()
        assert rec.running.wait(10)
        first = infer.future(_request(5), timeout=30)  # waits for the held instance
        time.sleep(0.2)
        second = infer.future(_request(6), timeout=30)  # finds the first in flight
        time.sleep(0.2)
        rec.hold.set()
        first.result(), second.result()
        other.join(10)
        start = len(rec.threads)
        for i in range(INLINE_AFTER):
            infer(_request(i), timeout=30)
    assert [t == LOOP_THREAD for t in rec.threads[start:]] == [False] * (INLINE_AFTER - 1) + [True]


def test_queued_request_past_the_timeout_is_withdrawn():
    """A request that waits in the queue longer than the server's timeout gets UNAVAILABLE
    and never runs; the front end keeps serving."""
    gen = _served(upstream_timeout=0.5)
    gate, rec, batcher = next(gen)
    try:
        rec.hold.clear()
        rec.running.clear()
        other = threading.Thread(target=batcher.infer, args=({"x": np.ones((1, WIDTH), np.float32)}, 30))
        other.start()
        assert rec.running.wait(10)
        with _channel(gate) as ch:
            infer = ch.unary_unary(METHOD + "ModelInfer")
            with pytest.raises(grpc.RpcError) as e:
                infer(_request(3), timeout=30)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "did not answer in time" in e.value.details()
            rec.hold.set()
            other.join(10)
            assert rec.rows == [1]  # the withdrawn request never ran
            np.testing.assert_array_equal(_answer(infer(_request(4), timeout=30)),
                                          np.full((1, WIDTH), 8, np.float32))
    finally:
        rec.hold.set()
        gen.close()


@pytest.mark.parametrize("run_ms, inline", [(INLINE_MAX_RUN_NS / 1e6 / 4, True), (INLINE_MAX_RUN_NS / 1e6 * 1.5, False)])
def test_slow_model_never_runs_on_the_event_loop(run_ms, inline):
    """A run on the loop holds every other gRPC call: only a model whose last run took at
    most INLINE_MAX_RUN_NS goes there (a quarter of it: the lone rule as usual; 1.5x: never)."""
    for gate, rec, _ in _served(run_s=run_ms / 1e3):
        n = INLINE_AFTER + 3
        with _channel(gate) as ch:
            infer = ch.unary_unary(METHOD + "ModelInfer")
            for i in range(n):
                infer(_request(i), timeout=30)
        on_loop = [t == LOOP_THREAD for t in rec.threads]
        # (a request may find the instance not yet handed back by the pool thread that
        # answered the one before, and go through the pool: only "some" for the fast model)
        assert not any(on_loop[:INLINE_AFTER - 1])
        assert any(on_loop) == inline, on_loop

