"""`poolexport serve`, two ways (`server=`):

"poolexport" (default): the ONNX Runtime session (or TensorRT engine) runs in this
process. The gate (gate.py) answers KServe v2 HTTP and gRPC itself (kserve.py) and runs
infer requests through the dynamic batcher (batcher.py): client -> this process ->
session, one hop. Measured per request, tritonserver and its Python-backend stub cost
more CPU than the session's own run for a small model, on top of the gate (see
benchmarks/bench_serve.py).

"tritonserver": the tritonserver binary bundled in the nvidia-pytriton wheel, run
directly on a generated model repository whose Python-backend model (triton_model.py)
owns the session in the backend's stub process: client -> gate (this process) ->
tritonserver -> stub -> session.

tritonserver listens on loopback ports of its own; the public HTTP and gRPC ports belong
to `gate.py`, which checks every infer request (`validation.py`) before tritonserver
sees it: tritonserver 2.51 allocates a JSON input's declared size before it checks it.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

from .runtime import load_backend
from .signature import default_model_name
from .validation import build_limits

LOG = logging.getLogger("poolexport.serve")
START_TIMEOUT_S = 180
# tritonserver APIs nobody reaches through the gate; closed on the loopback ports as well
RESTRICTED_APIS = "shared-memory,model-repository,trace,logging"
BUSY_INTRA_OP_THREADS = 1  # ONNX Runtime threads of a run while other requests wait (busy_intra_op_threads)


def ensure_libpython_visible(environ=os.environ) -> str | None:
    """Put this interpreter's libpython directory on LD_LIBRARY_PATH.

    The Python backend stub is a separate executable linked against libpython. With a
    pyenv, uv or conda interpreter the loader otherwise picks the system's libpython, whose
    threading internals differ, and the model fails to load ("'_thread.RLock' object
    has no attribute '_recursion_count'"). tritonserver_environment() applies it to
    tritonserver's environment, which the stub inherits.
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
    """Fail in a second with the port's name, not after tritonserver's start-up."""
    import socket

    for what, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds
            try:
                s.bind((host, port))
            except OSError as e:
                raise ValueError(f"serve: {what} port {port} on {host} is not available ({e.strerror})") from None


def bundled_tritonserver() -> dict:
    """Paths inside the installed nvidia-pytriton wheel: the tritonserver binary, its
    libraries, the Python backend and the stub built for this interpreter's version."""
    try:
        import pytriton
    except ImportError as e:
        raise ImportError("poolexport serve needs nvidia-pytriton (its bundled tritonserver): "
                          "pip install 'poolexport[serve]'") from e
    root = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = {"tritonserver": os.path.join(root, "bin", "tritonserver"),
             "libs": os.path.join(os.path.dirname(os.path.dirname(pytriton.__file__)),
                                  "nvidia_pytriton.libs"),
             "python_backend": os.path.join(root, "backends", "python"),
             "stub": os.path.join(root, "python_backend_stubs", version, "triton_python_backend_stub")}
    for what in ("tritonserver", "python_backend", "stub"):
        if not os.path.exists(paths[what]):
            raise ImportError(f"poolexport serve: the nvidia-pytriton wheel has no {what} "
                              f"({paths[what]}) for Python {version}")
    return paths


def _backend_directory(workdir: str, paths: dict) -> str:
    """A backends/ folder whose python/ holds the backend and this Python's stub (the
    backend looks for the stub beside itself; the wheel keeps one per Python version)."""
    python_dir = os.path.join(workdir, "backends", "python")
    os.makedirs(python_dir)
    for entry in os.listdir(paths["python_backend"]):
        if entry != "__pycache__":
            os.symlink(os.path.join(paths["python_backend"], entry), os.path.join(python_dir, entry))
    os.symlink(paths["stub"], os.path.join(python_dir, "triton_python_backend_stub"))
    return os.path.dirname(python_dir)


def tritonserver_environment(paths: dict, environ=os.environ) -> dict:
    """tritonserver's environment: its bundled libraries, and what the stub needs to run
    this interpreter (libpython on the loader path, its prefix found through PATH)."""
    env = dict(environ)
    ensure_libpython_visible(env)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (env.get("LD_LIBRARY_PATH", ""), paths["libs"]) if p)
    env["PATH"] = os.pathsep.join([os.path.join(sys.exec_prefix, "bin"), env.get("PATH", "")])
    return env


def _die_with_parent():
    """preexec_fn: tritonserver gets SIGKILL when this process dies, however it dies.
    (Strictly: when the thread that started it ends; serve_forever starts it from the
    main thread. Call Server.start() from a thread that outlives the server.)"""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def busy_intra_op_threads(intra_op_threads: int, cores: int | None = None) -> int:
    """ONNX Runtime threads of the runs made while other requests wait (0: no second
    session). By default (intra_op_threads 0) a lone request runs on one thread per core,
    the fastest answer, and runs under load on BUSY_INTRA_OP_THREADS: they cost less CPU
    per row, and the front ends receiving the next batch get the other cores. An explicit
    --intra-op-threads applies to every run."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return BUSY_INTRA_OP_THREADS if intra_op_threads == 0 and cores > BUSY_INTRA_OP_THREADS else 0


class Server:
    """Serve one model file; `start()` returns once it is ready, `stop()` tears it down.
    server: "poolexport" (the model in this process) or "tritonserver" (see above)."""

    def __init__(self, model_path, backend: str = "onnxruntime", model_name: str | None = None,
                 server: str = "poolexport",
                 host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, max_batch_size: int = 8,
                 max_queue_delay_us: int = 100, instances: int = 1, log_verbose: int = 0,
                 intra_op_threads: int = 0, allow_spinning: bool = False,
                 max_request_elements: int | None = None, max_request_bytes: int | None = None,
                 dim_bounds=()):
        if max_batch_size < 0:
            raise ValueError(f"serve: max_batch_size must be >= 0, got {max_batch_size}")
        if server not in ("poolexport", "tritonserver"):
            raise ValueError(f"serve: server must be 'poolexport' or 'tritonserver', got {server!r}")
        self.server = server
        if instances < 1:
            raise ValueError(f"serve: instances must be >= 1, got {instances}")
        if intra_op_threads < 0:
            raise ValueError(f"serve: intra_op_threads must be >= 0, got {intra_op_threads}")
        self.model_path = os.path.abspath(os.fspath(model_path))
        self.model_name = model_name or default_model_name(self.model_path)
        # Load once here so a file that cannot run fails now, in one line, not in the stub;
        # the session itself is the stub's (released below).
        loaded = load_backend(self.model_path, backend)
        self.backend_name, self.library = loaded.name, getattr(loaded, "library", None)
        self.signature = sig = loaded.signature
        del loaded
        if max_batch_size > 0 and not sig.batchable:
            LOG.warning("serve: %s has a fixed leading dim; serving without batching",
                        self.model_path)
            max_batch_size = 0
        self.max_batch_size = max_batch_size
        self.dim_bounds = list(dim_bounds)
        self.limits = build_limits(sig, max_batch_size, max_request_elements, max_request_bytes,
                                   self.dim_bounds)
        self.marker = "poolexport-reject-" + secrets.token_hex(8)
        self.host, self.http_port, self.grpc_port, self.metrics_port = (
            host, http_port, grpc_port, metrics_port)
        self.max_queue_delay_us = max_queue_delay_us
        self.instances = instances
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.log_verbose = log_verbose
        self._proc = None
        self._gate = None
        self._workdir = None
        self._batcher = None
        self._metrics = None

    def _repository(self, root: str) -> str:
        """The model repository tritonserver loads: the Python-backend model, pointing at
        the model file and library where they are (nothing copied)."""
        from .repository import write_python_model

        sig = self.signature
        limits = {"inputs": [{"name": t.name, "dtype": str(t.dtype), "dims": list(t.dims),
                              "dim_names": list(t.dim_names) or [""] * len(t.dims)}
                             for t in sig.inputs],
                  "max_batch_size": self.max_batch_size, "max_elements": self.limits.max_elements,
                  "max_bytes": self.limits.max_bytes, "dim_bounds": self.dim_bounds}
        write_python_model(
            os.path.join(root, self.model_name), self.model_name, sig, model_file="",
            backend=self.backend_name, max_batch_size=self.max_batch_size,
            max_queue_delay_us=self.max_queue_delay_us, instances=self.instances,
            kind="KIND_CPU", parameters={"intra_op_threads": self.intra_op_threads,
                                         "allow_spinning": int(self.allow_spinning)},
            private_parameters={"model_file": self.model_path, "op_library": self.library or "",
                                "limits": json.dumps(limits), "reject_marker": self.marker})
        return root

    def command(self, paths: dict, repository: str, backends: str, inner_http: int,
                inner_grpc: int) -> list[str]:
        token = secrets.token_hex(16)  # nobody holds it: the restricted APIs stay shut
        return [paths["tritonserver"], f"--model-repository={repository}",
                f"--backend-directory={backends}", "--model-control-mode=none",
                "--disable-auto-complete-config", "--strict-readiness=true",
                "--exit-on-error=true", "--exit-timeout-secs=10",
                "--http-address=127.0.0.1", f"--http-port={inner_http}",
                "--grpc-address=127.0.0.1", f"--grpc-port={inner_grpc}",
                "--allow-metrics=true", "--allow-gpu-metrics=false",
                "--pinned-memory-pool-byte-size=0",  # CPU serving; no CUDA probe at start
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                f"--http-restricted-api={RESTRICTED_APIS}:triton-access-token={token}",
                f"--grpc-restricted-protocol={RESTRICTED_APIS}:triton-access-token={token}",
                f"--log-verbose={self.log_verbose}",
                f"--log-info={'true' if self.log_verbose else 'false'}"]

    def start(self):
        _check_ports_free(self.host, {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                                      "--metrics-port": self.metrics_port})
        if self.server == "poolexport":
            return self._start_in_process()
        paths = bundled_tritonserver()
        self._workdir = tempfile.mkdtemp(prefix="poolexport-serve-")
        try:
            repository = self._repository(os.path.join(self._workdir, "models"))
            backends = _backend_directory(self._workdir, paths)
            inner_http, inner_grpc = _loopback_ports(2)
            self._proc = subprocess.Popen(
                self.command(paths, repository, backends, inner_http, inner_grpc),
                env=tritonserver_environment(paths), stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it
                preexec_fn=_die_with_parent)
            self._wait_ready(inner_http)
            from .gate import Gate
            self._gate = Gate(self.limits, self.model_name, self.host, self.http_port,
                              self.grpc_port, inner_http, inner_grpc, marker=self.marker).start()
        except BaseException:
            self.stop()
            raise
        self.http_port, self.grpc_port = self._gate.http_port, self._gate.grpc_port
        return self

    def _start_in_process(self):
        """The model in this process: one session per instance, the dynamic batcher, the
        gate answering KServe v2 itself, and a metrics endpoint."""
        from .batcher import DynamicBatcher
        from .gate import Gate, MetricsServer
        from .kserve import ServedModel
        from .repository import model_config

        try:
            runners = [self._runner() for _ in range(self.instances)]
            providers = getattr(getattr(runners[0], "session", None), "get_providers", lambda: [])()
            kind = "KIND_GPU" if "CUDAExecutionProvider" in providers or self.backend_name == "tensorrt" else "KIND_CPU"
            config = model_config(self.model_name, self.signature, self.backend_name, self.max_batch_size,
                                  self.max_queue_delay_us, self.instances, kind,
                                  parameters={"intra_op_threads": self.intra_op_threads,
                                              "allow_spinning": int(self.allow_spinning)})
            self._batcher = DynamicBatcher(runners, self.max_batch_size, self.max_queue_delay_us)
            model = ServedModel(self.model_name, self.signature, self.limits, self._batcher, config,
                                "tensorrt_plan" if self.backend_name == "tensorrt" else "onnxruntime_onnx")
            self._metrics = MetricsServer(self.host, self.metrics_port, model).start()
            self._gate = Gate(self.limits, self.model_name, self.host, self.http_port,
                              self.grpc_port, model=model).start()
        except BaseException:
            self.stop()
            raise
        self.http_port, self.grpc_port = self._gate.http_port, self._gate.grpc_port
        self.metrics_port = self._metrics.port
        return self

    def _runner(self):
        if self.backend_name == "tensorrt":
            return load_backend(self.model_path, "tensorrt")
        return load_backend(self.model_path, "onnxruntime", intra_op_threads=self.intra_op_threads,
                            allow_spinning=self.allow_spinning,
                            busy_intra_op_threads=busy_intra_op_threads(self.intra_op_threads))

    def _wait_ready(self, port: int) -> None:
        import http.client
        from urllib.parse import quote

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self._proc.returncode} while "
                                   "loading the model")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", f"/v2/models/{quote(self.model_name, safe='')}/ready")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        raise RuntimeError(f"tritonserver not ready after {START_TIMEOUT_S} s")

    def stop(self):
        if self._gate is not None:
            self._gate.stop()  # no new requests; gRPC calls in flight get a grace period
            self._gate = None
        if self._batcher is not None:
            self._batcher.close()  # what is queued still runs
            self._batcher = None
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)  # unloads the model, stops the stubs
                try:
                    self._proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                    self._proc.wait(10)
            self._proc = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def wait(self, stop_event: threading.Event, poll_s: float = 0.5):
        """Block until `stop_event` is set (True) or tritonserver dies (False)."""
        while not stop_event.wait(poll_s):
            if self.server == "poolexport":
                if self._gate is None:
                    return False
            elif self._proc is None or self._proc.poll() is not None:
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
              f"(backend {server.backend_name}, server {server.server}, max_batch_size {server.max_batch_size}); "
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
