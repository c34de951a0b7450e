"""The dynamic batcher `poolexport serve` runs its model with (serve/batcher.py): how many
rows it merges (max batch -1, =, +1), how long it waits for them (the queue delay), a
request alone over the max batch, shapes that must not merge, failures, shutdown, and
concurrent callers each getting their own rows back bit-exact against a local ONNX
Runtime session on that request alone.
"""
import threading
import time

import numpy as np
import pytest

from poolexport.serve.batcher import DynamicBatcher, RunError

MAX_BATCH = 4


class Recorder:
    """A model: output = input * 2 + row index within the run (so a row that comes back
    to the wrong request, or from the wrong run position, shows). Records every run's
    batch size; `hold` blocks the first run until released."""

    def __init__(self, hold=False):
        self.runs, self.times = [], []
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.started = threading.Event()

    def run(self, feeds):
        x = feeds["x"]
        self.started.set()
        self.release.wait(30)
        self.runs.append(x.shape[0])
        self.times.append(time.monotonic())
        return {"y": x * 2, "n": np.full((x.shape[0], 1), x.shape[0], np.int64)}


def _rows(n, value, width=3):
    return np.full((n, width), value, np.float32)


def _submit(batcher, feeds, ticket=None):
    """Send a request from a thread of its own, as a front end does, and wait until it
    is queued; returns a getter for (outputs, error)."""
    box = []
    received = batcher.received

    def call():
        try:
            box.append((batcher.infer(feeds, timeout=60, ticket=ticket), None))
        except Exception as e:  # noqa: BLE001 - handed to the test
            box.append((None, e))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    end = time.monotonic() + 10
    while batcher.received == received and t.is_alive() and time.monotonic() < end:
        time.sleep(0.001)

    def get(timeout=30):
        t.join(timeout)
        assert box, "no answer"
        return box[0]
    return get


def _fill_behind_a_held_run(rec, batcher, count, rows=1):
    """A first request occupies the worker (held); `count` more queue up behind it."""
    first = _submit(batcher, {"x": _rows(1, -1)})
    assert rec.started.wait(10)
    gets = [_submit(batcher, {"x": _rows(rows, i)}) for i in range(count)]
    rec.release.set()
    first()
    return gets


@pytest.mark.parametrize("count, want", [(MAX_BATCH - 1, [MAX_BATCH - 1]), (MAX_BATCH, [MAX_BATCH]),
                                         (MAX_BATCH + 1, [MAX_BATCH, 1])])
def test_merges_up_to_max_batch(count, want):
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        gets = _fill_behind_a_held_run(rec, b, count)
        for i, get in enumerate(gets):
            outs, error = get()
            assert error is None
            np.testing.assert_array_equal(outs["y"], _rows(1, 2 * i))  # its own row, nobody else's
        assert rec.runs == [1] + want
        assert b.stats.execution_count == 1 + len(want)
        assert b.stats.inference_count == 1 + count
    finally:
        b.close()


def test_rows_not_requests_count_against_max_batch():
    """Two 2-row requests fill a max batch of 4; a third waits for the next run."""
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        gets = _fill_behind_a_held_run(rec, b, 3, rows=2)
        for i, get in enumerate(gets):
            outs, error = get()
            assert error is None and outs["y"].shape == (2, 3)
            np.testing.assert_array_equal(outs["y"], _rows(2, 2 * i))
        assert rec.runs == [1, 4, 2]
    finally:
        b.close()


def test_request_over_max_batch_runs_alone_with_all_its_rows():
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        first = _submit(b, {"x": _rows(1, -1)})
        assert rec.started.wait(10)
        small = _submit(b, {"x": _rows(1, 7)})
        big = _submit(b, {"x": _rows(MAX_BATCH + 2, 8)})
        after = _submit(b, {"x": _rows(1, 9)})
        rec.release.set()
        first()
        outs, error = big()
        assert error is None
        np.testing.assert_array_equal(outs["y"], _rows(MAX_BATCH + 2, 16))
        assert small()[0]["y"].shape == (1, 3) and after()[0]["y"].shape == (1, 3)
        assert rec.runs == [1, 1, MAX_BATCH + 2, 1]
    finally:
        b.close()


def test_other_shapes_are_not_merged():
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        first = _submit(b, {"x": _rows(1, -1)})
        assert rec.started.wait(10)
        a = _submit(b, {"x": _rows(1, 1, width=3)})
        c = _submit(b, {"x": _rows(1, 2, width=5)})
        d = _submit(b, {"x": _rows(1, 3, width=5)})
        rec.release.set()
        first()
        assert a()[0]["y"].shape == (1, 3)
        assert c()[0]["y"].shape == (1, 5) and d()[0]["y"].shape == (1, 5)
        assert rec.runs == [1, 1, 2]
    finally:
        b.close()


def test_queue_delay_waits_for_incoming_requests_only():
    """A lone request runs at once (nobody else is on the way). While a front end is
    receiving another request (an open `incoming()` ticket) the batch waits for it: it
    joins when it comes within the delay; when it does not come, the batch runs once the
    delay is over, not much later. A full batch does not wait."""
    delay_s = 0.3
    rec = Recorder()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=int(delay_s * 1e6))
    try:
        t0 = time.monotonic()
        _submit(b, {"x": _rows(1, 1)})()
        assert rec.runs[-1] == 1 and rec.times[-1] - t0 < delay_s * 0.5

        with b.incoming() as ticket:  # one on its way, arriving within the delay: merged
            g1 = _submit(b, {"x": _rows(1, 1)})
            time.sleep(delay_s / 3)
            g2 = _submit(b, {"x": _rows(1, 2)}, ticket=ticket)
            np.testing.assert_array_equal(g2()[0]["y"], _rows(1, 4))
            g1()
        assert rec.runs[-1] == 2

        with b.incoming():  # on its way, never queued: the batch runs at the delay
            t0 = time.monotonic()
            _submit(b, {"x": _rows(1, 1)})()
            waited = rec.times[-1] - t0
        assert rec.runs[-1] == 1 and delay_s * 0.9 <= waited < delay_s + 1.0, waited

        with b.incoming():  # a full batch does not wait out the delay
            t0 = time.monotonic()
            gets = [_submit(b, {"x": _rows(1, i)}) for i in range(MAX_BATCH)]
            for g in gets:
                g()
        assert rec.runs[-1] == MAX_BATCH
        assert rec.times[-1] - t0 < delay_s * 0.9
    finally:
        b.close()


def test_zero_delay_never_waits():
    rec = Recorder()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    try:
        with b.incoming():
            t0 = time.monotonic()
            _submit(b, {"x": _rows(1, 1)})()
        assert rec.times[-1] - t0 < 0.2
    finally:
        b.close()


def test_no_batching_runs_each_request_alone():
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], 0, max_queue_delay_us=10_000)
    try:
        gets = _fill_behind_a_held_run(rec, b, 3, rows=2)
        for g in gets:
            assert g()[1] is None
        assert rec.runs == [1, 2, 2, 2]
    finally:
        b.close()


def test_failures_answer_every_request_of_the_batch():
    class Failing:
        def run(self, feeds):
            raise RuntimeError("disk on fire at /srv/secret")

    b = DynamicBatcher([Failing()], MAX_BATCH, max_queue_delay_us=50_000)
    try:
        gets = [_submit(b, {"x": _rows(1, i)}) for i in range(3)]
        for g in gets:
            outs, error = g()
            assert outs is None and isinstance(error, RunError) and error.status == 500
            assert "/srv" not in error.message and error.message.endswith("RuntimeError")
        assert b.stats.failure == 3 and b.stats.success == 0
    finally:
        b.close()


def test_input_fault_is_a_400():
    ort_state = pytest.importorskip("onnxruntime.capi.onnxruntime_pybind11_state")

    class TooSmall:
        def run(self, feeds):
            raise ort_state.InvalidArgument("Invalid input shape: {1,1} in /opt/x.cc")

    b = DynamicBatcher([TooSmall()], MAX_BATCH, max_queue_delay_us=0)
    try:
        with pytest.raises(RunError) as e:
            b.infer({"x": _rows(1, 1)}, timeout=30)
        assert e.value.status == 400
        assert e.value.message.startswith("the model cannot run on this input (x [1, 3]): Invalid input shape")
        assert "/opt" not in e.value.message
    finally:
        b.close()


def test_close_runs_what_is_queued_then_refuses():
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    first = _submit(b, {"x": _rows(1, -1)})
    assert rec.started.wait(10)
    queued = _submit(b, {"x": _rows(1, 5)})
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(RuntimeError):
        b.infer({"x": _rows(1, 6)})
    rec.release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert first()[1] is None
    np.testing.assert_array_equal(queued()[0]["y"], _rows(1, 10))


def test_instances_run_in_parallel():
    """Two runners, both held: two requests run at once, one on each."""
    one, two = Recorder(hold=True), Recorder(hold=True)
    b = DynamicBatcher([one, two], 0, max_queue_delay_us=0)
    try:
        gets = [_submit(b, {"x": _rows(1, i)}) for i in range(2)]
        assert one.started.wait(10) and two.started.wait(10)
        one.release.set()
        two.release.set()
        for g in gets:
            assert g()[1] is None
        assert one.runs == [1] and two.runs == [1]
    finally:
        one.release.set()
        two.release.set()
        b.close()


# --------------------------------------------------- a real session, concurrent callers

def test_concurrent_callers_get_their_own_rows_bit_exact(tmp_path):
    """16 threads x 25 requests through a batcher on a real ONNX Runtime session: merged
    runs happen, and every answer equals, bit for bit, the local session run on that
    request alone."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from test_serve_server import _small_model

    from poolexport.serve.runtime import OrtBackend

    _small_model(tmp_path / "small.onnx")
    local = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    served = OrtBackend(tmp_path / "small.onnx", providers=["CPUExecutionProvider"])
    b = DynamicBatcher([served], 8, max_queue_delay_us=2000)
    failures = []

    def client(k):
        rng = np.random.default_rng(k)
        for i in range(25):
            x = rng.standard_normal((1 + (k + i) % 3, 3, 16, 16)).astype(np.float32)
            try:
                got = b.infer({"x": x}, timeout=60)
                y, m = local.run(["y", "m"], {"x": x})
                np.testing.assert_array_equal(got["y"], y)
                np.testing.assert_array_equal(got["m"], m)
            except Exception as e:  # noqa: BLE001 - collected, reported below
                failures.append(repr(e)[:300])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        b.close()
    assert not failures, failures[:3]
    assert b.stats.success == 16 * 25
    assert b.stats.execution_count < b.stats.success  # some requests were merged


@pytest.mark.parametrize("instances", [1, 2])
def test_close_returns_at_once_when_idle_and_waits_for_a_running_batch(instances):
    """SIGTERM on an idle server must not sit out close()'s timeout; with a batch running,
    close() returns when it ends, not before."""
    recs = [Recorder() for _ in range(instances)]
    b = DynamicBatcher(recs, MAX_BATCH, max_queue_delay_us=0)
    _submit(b, {"x": _rows(1, 1)})()
    start = time.monotonic()
    b.close(timeout=20)
    assert time.monotonic() - start < 2

    held = [Recorder(hold=True) for _ in range(instances)]
    b = DynamicBatcher(held, MAX_BATCH, max_queue_delay_us=0)
    running = _submit(b, {"x": _rows(1, 2)})
    end = time.monotonic() + 10
    while not any(r.started.is_set() for r in held) and time.monotonic() < end:
        time.sleep(0.001)
    closer = threading.Thread(target=b.close, kwargs={"timeout": 20})
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # the batch is still running
    for r in held:
        r.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert running()[1] is None


# ------------------------------------------- submit(): requests nobody waits for (gRPC)

class _Answers:
    """submit() callbacks: each request's result, and the thread that delivered it."""

    def __init__(self):
        self.results, self.threads = {}, {}
        self.changed = threading.Condition()

    def callback(self, key):
        def done(request):
            with self.changed:
                self.results[key] = request.result
                self.threads[key] = threading.current_thread().name
                self.changed.notify_all()
        return done

    def wait(self, keys, timeout=30):
        with self.changed:
            assert self.changed.wait_for(lambda: all(k in self.results for k in keys), timeout), \
                f"no answer for {[k for k in keys if k not in self.results]}"
        return [self.results[k] for k in keys]


def _drain_on_a_thread(batcher, start):
    if start:
        threading.Thread(target=batcher.drain, name="drainer", daemon=True).start()


def test_submitted_requests_merge_and_each_gets_its_rows():
    """Behind a held run (an infer() caller's), three submitted requests and one more
    infer() caller merge into one batch; each gets its own rows through its callback."""
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    answers = _Answers()
    try:
        first = _submit(b, {"x": _rows(1, -1)})
        assert rec.started.wait(10)
        starts = []
        for i in range(3):
            _req, start = b.submit({"x": _rows(1, i)}, answers.callback(i))
            starts.append(start)
        assert starts == [True, False, False]  # one drain() per instance at most
        waiting = _submit(b, {"x": _rows(1, 9)})
        threading.Thread(target=b.drain, daemon=True).start()
        rec.release.set()
        assert first()[1] is None
        for i, (outs, error) in enumerate(answers.wait([0, 1, 2])):
            assert error is None
            np.testing.assert_array_equal(outs["y"], _rows(1, 2 * i))
        np.testing.assert_array_equal(waiting()[0]["y"], _rows(1, 18))
        assert rec.runs == [1, 4]
    finally:
        rec.release.set()
        b.close()


def test_drain_ends_with_the_queue_and_the_next_submit_starts_one():
    rec = Recorder()
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    answers = _Answers()
    try:
        for i in range(3):
            _req, start = b.submit({"x": _rows(1, i)}, answers.callback(i))
            assert start, f"request {i}: no drain() left to take it"
            _drain_on_a_thread(b, start)
            (outs, error), = answers.wait([i])
            assert error is None and answers.threads[i] == "drainer"
            np.testing.assert_array_equal(outs["y"], _rows(1, 2 * i))
            end = time.monotonic() + 10
            while b._drainers and time.monotonic() < end:  # the drainer returns once the queue is empty
                time.sleep(0.001)
    finally:
        b.close()


def test_one_drain_per_instance_runs_in_parallel():
    one, two = Recorder(hold=True), Recorder(hold=True)
    b = DynamicBatcher([one, two], 0, max_queue_delay_us=0)
    answers = _Answers()
    try:
        starts = []
        for i in range(3):
            _req, start = b.submit({"x": _rows(1, i)}, answers.callback(i))
            starts.append(start)
            _drain_on_a_thread(b, start)
        assert starts == [True, True, False]
        assert one.started.wait(10) and two.started.wait(10)  # both at once
        one.release.set()
        two.release.set()
        assert all(error is None for _outs, error in answers.wait([0, 1, 2]))
        assert sorted(one.runs + two.runs) == [1, 1, 1]
    finally:
        one.release.set()
        two.release.set()
        b.close()


def test_withdraw_takes_a_queued_request_only():
    rec = Recorder(hold=True)
    b = DynamicBatcher([rec], MAX_BATCH, max_queue_delay_us=0)
    answers = _Answers()
    try:
        running, start = b.submit({"x": _rows(1, 1)}, answers.callback("running"))
        _drain_on_a_thread(b, start)
        assert rec.started.wait(10)
        queued, start = b.submit({"x": _rows(1, 2)}, answers.callback("queued"))
        assert not start
        assert b.withdraw(queued) is True
        assert b.withdraw(running) is False  # being run: its answer is coming
        rec.release.set()
        (outs, error), = answers.wait(["running"])
        assert error is None
        time.sleep(0.05)
        assert "queued" not in answers.results and rec.runs == [1]
    finally:
        rec.release.set()
        b.close()


def test_submitted_requests_fail_together_and_close_runs_them():
    class Failing:
        def __init__(self):
            self.release = threading.Event()

        def run(self, feeds):
            self.release.wait(30)
            raise RuntimeError("disk on fire at /srv/secret")

    runner = Failing()
    b = DynamicBatcher([runner], MAX_BATCH, max_queue_delay_us=0)
    answers = _Answers()
    for i in range(3):
        _req, start = b.submit({"x": _rows(1, i)}, answers.callback(i))
        _drain_on_a_thread(b, start)
    closer = threading.Thread(target=b.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(RuntimeError):
        b.submit({"x": _rows(1, 9)}, answers.callback(9))
    runner.release.set()
    closer.join(30)
    assert not closer.is_alive()
    for outs, error in answers.wait([0, 1, 2]):
        assert outs is None and isinstance(error, RunError) and error.status == 500
        assert "/srv" not in error.message
