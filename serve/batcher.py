"""The dynamic batcher of `poolexport serve`: requests from the HTTP and gRPC front ends
are merged into one model run, as Triton's dynamic batcher does, in the server's own
process.

A batch starts with the oldest queued request and takes the queued requests of the same
shape (past the batch dim) behind it while their rows fit in `max_batch_size`. While the
front ends are still receiving other requests (`incoming()`: read, checked, decoded, not
yet queued) it waits for them, at most `max_queue_delay_us` after the oldest one arrived.
It does not hold a request for others nobody has sent yet: on a lone request the delay
bought nothing and cost a timed wait (about 0.1-0.3 ms of latency and 30 us of CPU here),
and under load batches fill anyway while the previous one runs. It runs once
on a free model instance (each instance has its own session; ONNX Runtime and TensorRT
release the GIL while they run), and each request gets its own rows of the outputs back.
A request alone over `max_batch_size` rows (the front ends refuse those first) runs
alone. Requests are taken in arrival order: one of another shape ends the batch.

Two ways in: `infer()` (a thread that waits: the HTTP front end's, one per connection)
and `submit()` (nobody waits: the gRPC front end's event loop queues the request and gets
a callback; `drain()` on a pool thread runs the queue, one per model instance at most).
Both kinds merge into the same batches.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
import traceback

import numpy as np

class RunError(Exception):
    """A model run failed; `status` 400 when the input caused it, else 500."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Request:
    """One queued request: its feeds, and once run `result`: (its own output rows, None)
    or (None, RunError)."""

    __slots__ = ("feeds", "rows", "key", "result", "queued_ns", "callback")

    def __init__(self, feeds: dict, batching: bool, callback=None):
        self.feeds, self.result, self.callback = feeds, None, callback
        first = next(iter(feeds.values()))
        self.rows = int(first.shape[0]) if batching and first.ndim else 1
        # requests merge only when every input has the same shape past the batch dim
        self.key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()) if batching else None
        self.queued_ns = time.monotonic_ns()


class Stats:
    """Counters for /metrics and the statistics endpoints (Triton's names)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.success = self.failure = 0
        self.inference_count = 0     # rows run (Triton: nv_inference_count)
        self.execution_count = 0     # model runs (nv_inference_exec_count)
        self.request_ns = 0          # arrival to answer, successful requests
        self.queue_ns = 0
        self.compute_ns = 0
        self.failure_ns = 0
        self.last_inference_ms = 0

    def executed(self, rows: int) -> None:
        with self._lock:
            self.execution_count += 1
            self.inference_count += rows

    def finished(self, ok: bool, total_ns: int, queue_ns: int = 0, compute_ns: int = 0) -> None:
        with self._lock:
            if ok:
                self.success += 1
                self.request_ns += total_ns
                self.queue_ns += queue_ns
                self.compute_ns += compute_ns
            else:
                self.failure += 1
                self.failure_ns += total_ns
            self.last_inference_ms = int(time.time() * 1e3)


def run_error(e: Exception, feeds: dict) -> RunError:
    from .validation import client_fault, model_error_reason

    if client_fault(e):
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in feeds.items())
        return RunError(400, f"the model cannot run on this input ({shapes}): {model_error_reason(str(e))}")
    traceback.print_exc(file=sys.stderr)  # the server's fault: the details go to its log only
    return RunError(500, "inference failed on the server (details are in the server's log): "
                         f"{type(e).__name__}")


class Incoming:
    """A request a front end is receiving (see DynamicBatcher.incoming)."""

    __slots__ = ("_batcher", "_open")

    def __init__(self, batcher):
        self._batcher, self._open = batcher, False

    def __enter__(self):
        with self._batcher._changed:
            self._batcher._incoming += 1
            self._open = True
        return self

    def settle_locked(self) -> None:
        """No longer incoming (queued or dropped); the caller holds the batcher's lock."""
        if self._open:
            self._open = False
            self._batcher._incoming -= 1
            self._batcher._arrived.notify_all()

    def __exit__(self, *exc):
        with self._batcher._changed:
            self.settle_locked()


class DynamicBatcher:
    """`infer(feeds)` queues a request and returns its outputs; `runners` are the model
    instances (objects with `run(feeds) -> {name: array}`), at most one batch each at a
    time, merged up to `max_batch_size` rows (0: no batching, every request runs alone).

    No thread of its own: a caller that finds a runner free and requests queued takes
    the runner and runs the oldest batch itself (which need not hold its own request),
    then hands every member its rows; the others wait. A lone request thus runs on the
    thread that received it, with no hand-over between threads.

    A runner may also have `run_busy(feeds)`: used for a batch run while other requests
    are in it, queued, being received, or running on another instance (see
    runtime.OrtBackend.run_busy); a lone request uses `run`."""

    def __init__(self, runners, max_batch_size: int, max_queue_delay_us: int, stats: Stats | None = None):
        if max_batch_size < 0 or max_queue_delay_us < 0:
            raise ValueError("max_batch_size and max_queue_delay_us must be >= 0")
        self._free = list(runners)
        if not self._free:
            raise ValueError("DynamicBatcher needs at least one runner")
        self._count = len(self._free)
        self.max_batch_size = max_batch_size
        self.delay_ns = max_queue_delay_us * 1000
        self.stats = stats or Stats()
        self._queue: collections.deque[Request] = collections.deque()
        lock = threading.Lock()
        self._changed = threading.Condition(lock)  # a runner came free, a request finished or came
        self._arrived = threading.Condition(lock)  # a request came: for a caller filling a batch
        self._closed = False
        self.received = 0  # requests queued so far
        self._incoming = 0  # requests the front ends are receiving (incoming())
        self._drainers = 0  # drain() calls running or started (submit)
        self.last_run_ns = 0  # how long the last batch ran

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def idle(self) -> bool:
        """A model instance is free and no request waits (a hint: read without the lock)."""
        return bool(self._free) and not self._queue

    def incoming(self) -> "Incoming":
        """`with batcher.incoming() as ticket:` around receiving a request, checking and
        decoding it, and `infer(feeds, ticket=ticket)`: batches being formed wait for it."""
        return Incoming(self)

    def infer(self, feeds: dict, timeout: float | None = None, ticket: "Incoming | None" = None) -> dict:
        """The request's own output rows; raises RunError when the run failed,
        RuntimeError once close() was called, TimeoutError after `timeout` s in the queue."""
        request = Request(feeds, self.batching)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._enqueue_locked(request, ticket)
        while True:
            with self._changed:
                while request.result is None and not (self._free and self._queue):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if request in self._queue:
                            self._queue.remove(request)
                            raise TimeoutError("no answer from the model in time")
                        left = None  # being run: its answer is coming
                    self._changed.wait(left)
                if request.result is not None:
                    break
                runner = self._free.pop()
                batch = self._take_batch()
                busy = self._busy_locked(batch)
            self._run_and_release(runner, batch, busy)
        outputs, error = request.result
        if error is not None:
            raise error
        return outputs

    def submit(self, feeds: dict, callback, ticket: "Incoming | None" = None) -> tuple[Request, bool]:
        """Queue a request whose caller does not wait: `callback(request)` is called, on the
        thread that ran it, once `request.result` is set. Returns (request, start): when
        `start` the caller must run `drain()` on a thread (no drain() call left would take
        this request). Raises RuntimeError once close() was called."""
        request = Request(feeds, self.batching, callback)
        with self._changed:
            self._enqueue_locked(request, ticket)
            start = self._drainers < self._count  # one per instance at most
            if start:
                self._drainers += 1
        return request, start

    def withdraw(self, request: Request) -> bool:
        """Take a submitted request out of the queue (its caller gave up); False when it
        is running or has run."""
        with self._changed:
            if request in self._queue:
                self._queue.remove(request)
                return True
        return False

    def drain(self) -> None:
        """Run batches while requests are queued (for submit(): no thread waits for those);
        returns when the queue is empty. Each call was announced by submit()'s `start`."""
        while True:
            with self._changed:
                while self._queue and not self._free:
                    self._changed.wait()
                if not self._queue:
                    self._drainers -= 1
                    return
                runner = self._free.pop()
                batch = self._take_batch()
                busy = self._busy_locked(batch)
            self._run_and_release(runner, batch, busy)

    def _busy_locked(self, batch: list[Request]) -> bool:
        """Under the lock, once the batch is taken: other requests are in the batch, queued,
        being received, or running on another instance. Such a run goes to the runner's
        `run_busy` (fewer threads), a lone one to `run` (every core)."""
        return (len(batch) > 1 or bool(self._queue) or self._incoming > 0
                or len(self._free) < self._count - 1)

    def _enqueue_locked(self, request: Request, ticket: "Incoming | None") -> None:
        """Queue a request (the lock is held): its receipt is settled, the batch being formed
        and an idle leader are told. RuntimeError once close() was called."""
        if ticket is not None:
            ticket.settle_locked()
        if self._closed:
            raise RuntimeError("the server is stopping")
        self._queue.append(request)
        self.received += 1
        self._arrived.notify_all()
        self._changed.notify()

    def _run_and_release(self, runner, batch: list[Request], busy: bool = False) -> None:
        """Run a batch on a taken instance, then give the instance back and wake the
        batch's members and the next leader."""
        try:
            self._run(runner, batch, busy)
        finally:
            with self._changed:
                self._free.append(runner)
                self._changed.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests; returns once the queued ones have run (or after `timeout`)."""
        end = time.monotonic() + timeout
        with self._changed:
            self._closed = True
            while (self._queue or len(self._free) < self._count) and time.monotonic() < end:
                self._changed.wait(0.1)

    # -- the caller that runs a batch --------------------------------------------------
    def _take_batch(self) -> list[Request]:
        """Under the lock: the oldest request and those that may join it, waiting up to the
        queue delay (from the oldest one's arrival) for the batch to fill."""
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        if not self.batching or rows >= self.max_batch_size:
            return batch
        deadline = first.queued_ns + self.delay_ns
        while rows < self.max_batch_size:
            if self._queue:
                nxt = self._queue[0]
                if nxt.key != first.key or rows + nxt.rows > self.max_batch_size:
                    break
                batch.append(self._queue.popleft())
                rows += nxt.rows
                continue
            left = deadline - time.monotonic_ns()
            if left <= 0 or self._closed or not self._incoming:
                break  # nothing on its way: waiting would only delay this batch
            self._arrived.wait(left / 1e9)
        return batch

    def _run(self, runner, batch: list[Request], busy: bool = False) -> None:
        run = getattr(runner, "run_busy", runner.run) if busy else runner.run
        start = time.monotonic_ns()
        try:
            if len(batch) == 1:
                outs = [run(batch[0].feeds)]
            else:
                merged = {n: np.concatenate([r.feeds[n] for r in batch]) for n in batch[0].feeds}
                out = run(merged)
                bounds = np.cumsum([r.rows for r in batch])[:-1]
                split = {n: np.split(a, bounds) for n, a in out.items()}
                outs = [{n: split[n][i] for n in out} for i in range(len(batch))]
            error = None
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer
            error = run_error(e, batch[0].feeds)
        end = time.monotonic_ns()
        self.last_run_ns = end - start  # read by the gRPC front end's inline rule
        if error is None:
            self.stats.executed(sum(r.rows for r in batch))
        for i, r in enumerate(batch):
            if error is None:
                self.stats.finished(True, end - r.queued_ns, start - r.queued_ns, end - start)
            else:
                self.stats.finished(False, end - r.queued_ns)
            r.result = (None, error) if error is not None else (outs[i], None)
        for r in batch:
            if r.callback is not None:
                try:
                    r.callback(r)
                except Exception:  # noqa: BLE001 - one caller's failure is not the batch's
                    traceback.print_exc(file=sys.stderr)
