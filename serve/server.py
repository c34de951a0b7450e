"""Embedded Triton-protocol server (NVIDIA PyTriton) around one ONNX Runtime / TensorRT model.

PyTriton runs a real Triton Inference Server (KServe v2 over HTTP and gRPC, metrics,
dynamic batching) and hands each batch to a Python callable through its Python-backend
stub. We bind that callable to a back end from `runtime.py`.

tritonserver listens on loopback ports of its own; the public HTTP and gRPC ports belong
to `gate.py`, which checks every infer request (`validation.py`) before tritonserver
sees it: tritonserver 2.51 allocates a JSON input's declared size before it checks it.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import sysconfig
import threading

import numpy as np

from .runtime import load_backend
from .signature import default_model_name
from .validation import (DeclaredInput, RequestError, build_limits, check_inputs,
                         model_error_reason)

LOG = logging.getLogger("poolexport.serve")


def ensure_libpython_visible(environ=os.environ) -> str | None:
    """Put this interpreter's libpython directory on LD_LIBRARY_PATH.

    PyTriton's stub is a separate executable linked against libpython. With a pyenv, uv
    or conda interpreter the loader otherwise picks the system's libpython, whose
    threading internals differ, and the model fails to load ("'_thread.RLock' object
    has no attribute '_recursion_count'"). tritonserver inherits our environment and the
    stub inherits tritonserver's, so setting it here (before start) is enough.
    Returns the directory added, or None when nothing was needed.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not ldlib.endswith(".so") and ".so." not in ldlib:
        return None  # static interpreter: nothing to point at
    if not os.path.exists(os.path.join(libdir, ldlib)):
        return None
    current = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir in current:
        return None
    environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *current])
    return libdir


class RequestRejected(Exception):
    """Raised in the model callable for a request the client got wrong. PyTriton's proxy
    turns any exception into a 500 carrying a traceback; the text carries
    `<marker>:<status>:<message>` so the gate can answer `status` and `message` alone."""


def _client_fault(e: Exception) -> bool:
    """An ONNX Runtime run failure caused by the input (too small for a kernel, a shape
    the graph cannot take), not by the server. Allocation failures are the server's."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C
    except ImportError:
        return False
    return isinstance(e, (C.InvalidArgument, C.Fail)) and "alloc" not in str(e).lower()


def _infer_callable(backend, batched: bool, limits=None, marker: str | None = None):
    """The function PyTriton calls with a list of requests; returns a list of responses.

    With `limits`, each request's shapes are checked again (the gate did it already; this
    is for whatever reaches tritonserver's own loopback ports) and a run that fails on the
    input raises RequestRejected tagged with `marker`, which the gate answers as a 400."""
    in_names = [t.name for t in backend.signature.inputs]
    in_dtypes = {t.name: t.dtype for t in backend.signature.inputs}

    def run_one(feeds):
        feeds = {n: np.ascontiguousarray(feeds[n], dtype=in_dtypes[n]) for n in in_names}
        return backend.run(feeds)

    if batched:
        from pytriton.decorators import batch

        @batch
        def run(**feeds):
            return run_one(feeds)
    else:
        def run(requests):
            return [run_one(r) for r in requests]

    def reject(status, message):
        raise RequestRejected(f"{marker}:{status}:{message}" if marker else message)

    def infer(requests):
        if limits is not None:
            for r in requests:
                declared = []
                for n, a in r.items():
                    rule = limits.rule(n)
                    itemsize = rule.itemsize if rule is not None else 0
                    declared.append(DeclaredInput(n, rule.datatype if rule else "?", tuple(a.shape),
                                                  byte_size=int(np.prod(a.shape, dtype=object)) * itemsize))
                try:
                    check_inputs(declared, limits)
                except RequestError as e:
                    reject(e.status, e.message)
        try:
            return run(requests)
        except Exception as e:
            if limits is None or not _client_fault(e):
                raise
            shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in requests[0].items())
            reject(400, f"the model cannot run on this input ({shapes}): {model_error_reason(e)}")
    return infer


def _loopback_ports(n: int) -> list[int]:
    """Free loopback ports for tritonserver's own HTTP and gRPC endpoints."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _check_ports_free(host: str, ports: dict) -> None:
    """Fail in a second with the port's name, not after PyTriton's long start-up timeout."""
    import socket

    for what, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds
            try:
                s.bind((host, port))
            except OSError as e:
                raise ValueError(f"serve: {what} port {port} on {host} is not available ({e.strerror})") from None


class Server:
    """Serve one model file; `start()` returns once it is ready, `stop()` tears it down."""

    def __init__(self, model_path, backend: str = "onnxruntime", model_name: str | None = None,
                 host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, max_batch_size: int = 8,
                 max_queue_delay_us: int = 100, instances: int = 1, log_verbose: int = 0,
                 intra_op_threads: int = 0, allow_spinning: bool = False,
                 max_request_elements: int | None = None, max_request_bytes: int | None = None,
                 dim_bounds=()):
        if max_batch_size < 0:
            raise ValueError(f"serve: max_batch_size must be >= 0, got {max_batch_size}")
        if instances < 1:
            raise ValueError(f"serve: instances must be >= 1, got {instances}")
        self.model_path = os.fspath(model_path)
        self.model_name = model_name or default_model_name(self.model_path)
        kwargs = ({"intra_op_threads": intra_op_threads, "allow_spinning": allow_spinning}
                  if backend == "onnxruntime" else {})
        self.backend = load_backend(self.model_path, backend, **kwargs)
        sig = self.backend.signature
        if max_batch_size > 0 and not sig.batchable:
            LOG.warning("serve: %s has a fixed leading dim; serving without batching",
                        self.model_path)
            max_batch_size = 0
        self.max_batch_size = max_batch_size
        self.limits = build_limits(sig, max_batch_size, max_request_elements, max_request_bytes,
                                   dim_bounds)
        self.marker = "poolexport-reject-" + secrets.token_hex(8)
        self.host, self.http_port, self.grpc_port, self.metrics_port = (
            host, http_port, grpc_port, metrics_port)
        self.max_queue_delay_us = max_queue_delay_us
        self.instances = instances
        self.log_verbose = log_verbose
        self._triton = None
        self._gate = None

    def start(self):
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        _check_ports_free(self.host, {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                                      "--metrics-port": self.metrics_port})
        ensure_libpython_visible()
        sig, mbs = self.backend.signature, self.max_batch_size
        inner_http, inner_grpc = _loopback_ports(2)
        config = TritonConfig(
            http_address="127.0.0.1", http_port=inner_http,
            grpc_address="127.0.0.1", grpc_port=inner_grpc,
            metrics_address=self.host, metrics_port=self.metrics_port,
            log_verbose=self.log_verbose, exit_on_error=True)
        self._triton = Triton(config=config)
        tensors = lambda specs: [  # noqa: E731
            Tensor(name=t.name, dtype=t.dtype, shape=sig.dims(t, mbs)) for t in specs]
        infer = _infer_callable(self.backend, batched=mbs > 0, limits=self.limits,
                                marker=self.marker)
        self._triton.bind(
            model_name=self.model_name,
            # one callable per instance; ONNX Runtime sessions are safe to share.
            infer_func=[infer] * self.instances if self.instances > 1 else infer,
            inputs=tensors(sig.inputs), outputs=tensors(sig.outputs),
            config=ModelConfig(
                batching=mbs > 0, max_batch_size=max(mbs, 1),
                batcher=DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_us)),
            strict=False)
        self._triton.run()
        from .gate import Gate
        try:
            self._gate = Gate(self.limits, self.model_name, self.host, self.http_port,
                              self.grpc_port, inner_http, inner_grpc, marker=self.marker).start()
        except BaseException:
            self.stop()
            raise
        self.http_port, self.grpc_port = self._gate.http_port, self._gate.grpc_port
        return self

    def stop(self):
        if self._gate is not None:
            self._gate.stop()
            self._gate = None
        if self._triton is not None:
            self._triton.stop()
            self._triton = None

    def wait(self, stop_event: threading.Event, poll_s: float = 1.0):
        """Block until `stop_event` is set or the server dies."""
        while not stop_event.wait(poll_s):
            if self._triton is None or not self._triton.is_alive():
                return False
        return True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def serve_forever(server: Server) -> int:
    """Start, print the endpoints, block until SIGINT/SIGTERM, then stop cleanly."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
        except Exception as e:  # model refused by Triton, ...: one line, no traceback
            print(f"error: serve: server did not start: {type(e).__name__}: {e} "
                  "(rerun with --log-verbose 1 for Triton's log)", file=sys.stderr, flush=True)
            return 1
        print(f"poolexport serve: model {server.model_name!r} ready "
              f"(backend {server.backend.name}, max_batch_size {server.max_batch_size}); "
              f"http {server.host}:{server.http_port} grpc {server.host}:{server.grpc_port} "
              f"metrics {server.host}:{server.metrics_port}", flush=True)
        clean = server.wait(stop)
    finally:
        server.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    if not clean:
        print("poolexport serve: server exited unexpectedly", flush=True)
        return 1
    print("poolexport serve: stopped", flush=True)
    return 0
