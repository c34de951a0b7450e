"""The public HTTP and gRPC ports of `poolexport serve`: each request is checked here
(serve/validation.py) before anything sized by it is allocated. With `--server poolexport`
(the default) the model runs in this process (serve/kserve.py, serve/batcher.py): an
infer request is checked, decoded and queued for the dynamic batcher here, and answered
from here, one hop. With `--server tritonserver` it is forwarded, once checked, to the
bundled tritonserver on loopback ports of its own (the rest of this docstring).

Why a front end: the bundled tritonserver (2.51, inside nvidia-pytriton 0.7) allocates
`element count * dtype size` bytes for a KServe v2 JSON input as soon as it has parsed
the input's declared shape, before it compares that shape with the model config
(src/http_server.cc, HTTPAPIServer::ParseJsonTritonIO: `serialized.resize(byte_size)`),
and has no option to cap it (--http-max-input-size came in 2.59). A 99-byte body that
declares 8x3x100000x100000 FP32 makes it ask for 960 GB: std::bad_alloc, abort, the
server is gone. No code of ours runs before that allocation, so the check has to sit in
front of it. Errors from the model (serve/triton_model.py) carry a per-server marker and
a status (`<marker>:<status>:<message>`); the front ends answer that status with the
message alone, and turn any other error text with a traceback or paths into one line.

HTTP: a threaded HTTP/1.1 proxy (keep-alive, one upstream connection per client
connection). Infer requests for the served model are read whole (at most
max_request_bytes, after gzip/deflate decoding), checked, and forwarded unchanged;
infer requests for any other model get 404 here, and so do GETs about another model
(metadata, ready, config, stats: tritonserver would say 400); other GET/HEAD requests
pass through; other POSTs
(model repository control, shared-memory registration, trace and log settings) are
refused with 403 (tritonserver also wants an access token for them that nobody holds).

gRPC, default server: grpc.aio on one event-loop thread; a lone client's requests run on
that thread, concurrent ones are queued for the batcher and run by a pool thread (see
_GrpcGate._run_local). With `--server tritonserver`:
a generic pass-through on grpc.aio (bytes in, bytes out) with ModelInfer and
ModelStreamInfer parsed and checked, the same methods as above refused (PERMISSION_DENIED), and the
message size capped by gRPC itself (grpc.max_receive_message_length).
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import re
import socket
import threading
import time
import zlib
from urllib.parse import unquote

import grpc

from .batcher import RunError
from .kserve import MODEL_VERSION, server_metadata
from .validation import (Limits, RequestError, check_inputs, grpc_infer_inputs, one_line,
                         parse_http_infer)

LOG = logging.getLogger("poolexport.serve")

_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]*))?/(infer|generate|generate_stream)/?")
# a GET about one model: metadata, ready, config, stats, trace settings (KServe v2 and Triton)
_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]*)?(?:/(?:ready|config|stats|trace/setting))?/?")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "trailers", "transfer-encoding", "upgrade", "expect", "host",
               "content-length"}
_GRPC_SERVICE = "/inference.GRPCInferenceService/"
_GRPC_REFUSED = {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "SystemSharedMemoryRegister",
                 "SystemSharedMemoryUnregister", "CudaSharedMemoryRegister",
                 "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings"}
_LOCAL_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]*))?(?:/(ready|config|stats|trace/setting))?")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"")
_PATHISH = re.compile(r"\S*[/\\]\S*")
GENERIC_500 = "inference failed on the server (details are in the server's log)"
MAX_SMALL_BODY = 64 << 10  # any request that is not an infer request
INLINE_AFTER = 2   # lone gRPC requests in a row before one runs on the event-loop thread
PROBE_EVERY = 16   # of a lone run, this often one goes through the pool to look for others
# only a model whose last run took at most this long runs on the event loop: a run there
# holds every other gRPC call (health, metadata) until it ends
INLINE_MAX_RUN_NS = 20_000_000


class _Reply(Exception):
    """Answer the client with `status` and a one-line {"error": message}."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, one_line(message), close


def upstream_error(message: str, marker: str | None) -> tuple[int, str] | None:
    """What to tell a client for an error text from tritonserver or the model: (status, message)
    when it must be rewritten, None when it can go out as it is."""
    if marker and marker in message:
        m = re.search(re.escape(marker) + r":(\d{3}):([^\n]*)", message)
        if m:
            return int(m.group(1)), one_line(m.group(2))
    if _TRACEBACK.search(message):
        return 500, GENERIC_500
    clean = one_line(_PATHISH.sub("<path>", message))
    return None if clean == message else (None, clean)


class _ByteBudget:
    """Request bodies held at once, in bytes; over it a request gets 503 at once."""

    def __init__(self, limit: int):
        self.limit, self.used, self._lock = limit, 0, threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit and self.used > 0:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    max_connections = 512  # one thread each; past it a new connection is closed at once

    def __init__(self, addr, handler, gate):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.gate = gate
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Upstream:
    """One keep-alive HTTP/1.1 connection to tritonserver's loopback port: each request in
    one write, the answer read by its Content-Length. (http.client's request building and
    header parsing cost about as much as the rest of the gate.)"""

    def __init__(self, host: str, port: int, timeout: float):
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass

    def request(self, method: str, path: str, headers, body: bytes | None):
        """Returns (status, headers, body, close)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        for k, v in headers:
            if "\r" not in v and "\n" not in v:  # a folded header: nothing to pass on
                lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(head + body if body else head)

        status_line = self.rfile.readline(65537)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionError("no HTTP answer from upstream")
        status = int(parts[1])
        out, length, chunked, close = [], None, False, False
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k, v = k.strip(), v.strip()
            out.append((k, v))
            lk = k.lower()
            if lk == "content-length":
                length = int(v)
            elif lk == "transfer-encoding":
                chunked = "chunked" in v.lower()
            elif lk == "connection":
                close = v.lower() == "close"
        if method == "HEAD" or status in (204, 304) or status < 200:
            data = b""
        elif chunked:
            data = self._read_chunked()
        elif length is not None:
            data = self.rfile.read(length)
            if len(data) != length:
                raise ConnectionError("upstream closed mid-body")
        else:
            data, close = self.rfile.read(), True
        return status, out, data, close

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "poolexport-serve"
    sys_version = ""
    timeout = 120  # seconds a client may stall mid-request

    def setup(self):
        super().setup()
        # Headers and body go out in one write (_send_all), and small answers at once: with
        # Nagle on, a client's delayed ACK held each batch-1 answer back by 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gate: Gate = self.server.gate
        self._upstream = None

    def finish(self):
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, fmt, *args):
        LOG.debug("gate %s: " + fmt, self.client_address[0], *args)

    # -- methods -------------------------------------------------------------------------
    def do_GET(self):
        self._handle(self._get)

    do_HEAD = do_GET

    def do_POST(self):
        self._handle(self._post)

    def _not_allowed(self):
        self._error(405, f"method {self.command} not allowed", close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_CONNECT = do_TRACE = _not_allowed

    def handle_expect_100(self):
        """Refuse an oversized body before the client sends it."""
        try:
            n = self._content_length()
        except _Reply as r:
            self._error(r.status, r.message, close=True)
            return False
        if n is not None and n > self.gate.limits.max_bytes:
            self._error(413, self._too_large(n), close=True)
            return False
        return super().handle_expect_100()

    # -- plumbing ------------------------------------------------------------------------
    def _handle(self, fn):
        try:
            fn()
        except _Reply as r:
            self._error(r.status, r.message, close=r.close)
        except (ConnectionError, socket.timeout, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug of ours: one line out, the details in our log
            LOG.exception("gate: %s %s", self.command, self.path)
            self._error(500, "internal error in the request gate", close=True)

    def _error(self, status, message, close=False):
        body = json.dumps({"error": message}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
            self._send_all(body if self.command != "HEAD" else b"")
        except (ConnectionError, socket.timeout, TimeoutError):
            pass
        if close:
            self.close_connection = True
            self._drain()

    def _send_all(self, body: bytes) -> None:
        """end_headers() and the body in one write."""
        self._headers_buffer.append(b"\r\n")
        if body:
            self._headers_buffer.append(body)
        self.flush_headers()
        self.wfile.flush()

    def _drain(self, max_bytes=256 << 20, max_s=10.0):
        """Read what the client is still sending so it can read our answer, then close."""
        try:
            self.connection.settimeout(1.0)
            end, got = time.monotonic() + max_s, 0
            while got < max_bytes and time.monotonic() < end:
                chunk = self.rfile.read1(1 << 20) if hasattr(self.rfile, "read1") else self.rfile.read(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except (OSError, ValueError):
            pass

    def _content_length(self):
        te = self.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise _Reply(501, f"Transfer-Encoding {te!r} is not supported", close=True)
            return None
        cl = self.headers.get_all("Content-Length") or []
        if len(set(cl)) > 1:
            raise _Reply(400, "conflicting Content-Length headers", close=True)
        if not cl:
            return 0
        try:
            n = int(cl[0])
        except ValueError:
            n = -1
        if n < 0 or not cl[0].strip().isdigit():
            raise _Reply(400, "bad Content-Length", close=True)
        return n

    def _too_large(self, n):
        return (f"request body is {n} bytes, more than the {self.gate.limits.max_bytes} allowed "
                "(--max-request-bytes)")

    def _read_body(self, limit: int) -> bytes:
        n = self._content_length()
        if n is None:  # chunked
            return self._read_chunked(limit)
        if n > limit:
            raise _Reply(413, self._too_large(n) if limit == self.gate.limits.max_bytes else
                         f"request body is {n} bytes, more than the {limit} allowed here", close=True)
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise ConnectionError("client closed mid-body")
        return data

    def _read_chunked(self, limit):
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise _Reply(400, "bad chunked body", close=True)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Reply(400, "bad chunk size", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > limit:
                raise _Reply(413, f"request body is more than the {limit} bytes allowed "
                                  "(--max-request-bytes)", close=True)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("client closed mid-body")
            parts.append(chunk)
            self.rfile.readline(8)

    def _decoded(self, body: bytes, limit: int) -> bytes:
        enc = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if enc == "identity":
            return body
        if enc in ("gzip", "x-gzip"):
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            d = zlib.decompressobj()
        else:
            raise _Reply(415, f"Content-Encoding {enc!r} is not supported (gzip, deflate)")
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise _Reply(400, f"body is not valid {enc} ({e})") from None
        if len(out) > limit or d.unconsumed_tail:
            raise _Reply(413, f"decompressed request body is more than the {limit} bytes allowed "
                              "(--max-request-bytes)")
        return out

    # -- the two kinds of requests -------------------------------------------------------
    def _get(self):
        self._read_body(MAX_SMALL_BODY)  # a GET body means nothing to Triton: dropped
        path = self.path.split("?", 1)[0]
        m = _MODEL_PATH.fullmatch(path)
        every_model = path.rstrip("/") == "/v2/models/stats"  # statistics of all models, not a model "stats"
        if m is not None and not every_model and unquote(m.group(1)) != self.gate.model_name:
            # tritonserver answers 400 for a model it does not know; KServe v2 says 404
            raise _Reply(404, f"unknown model {m.group(1)[:100]!r}; this server serves {self.gate.model_name!r}")
        if self.gate.model is not None:
            self._get_local(path, every_model)
        else:
            self._forward(None, drop=())

    def _get_local(self, path, every_model):
        """Health, metadata, config and statistics of the model this process runs."""
        model = self.gate.model
        path = path.rstrip("/") or "/"
        if path == "/v2/health/live":
            return self._answer(200, b"")
        if path == "/v2/health/ready":
            return self._answer(200 if model.ready else 400, b"")
        if path == "/v2":
            return self._answer_json(200, server_metadata())
        if every_model:
            return self._answer_json(200, {"model_stats": [model.statistics()]})
        m = _LOCAL_MODEL_PATH.fullmatch(path)
        if m is None:
            raise _Reply(404, "not found")
        version, what = m.group(2), m.group(3)
        if version is not None and version not in ("", MODEL_VERSION):
            raise _Reply(404, f"unknown version {version[:20]!r} of model {model.name!r}")
        if what is None:
            return self._answer_json(200, model.metadata())
        if what == "ready":
            return self._answer(200 if model.ready else 400, b"")
        if what == "config":
            return self._answer_json(200, model.config_json())
        if what == "stats":
            return self._answer_json(200, {"model_stats": [model.statistics()]})
        raise _Reply(403, "not served by poolexport serve: trace settings are off")

    def _answer(self, status, body: bytes, content_type="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self._send_all(body if self.command != "HEAD" else b"")

    def _answer_json(self, status, obj):
        self._answer(status, json.dumps(obj, separators=(",", ":")).encode())

    def _infer_local(self, body, header_length, ticket=None):
        try:
            data, head = self.gate.model.http_infer(body, header_length, self.gate.upstream_timeout, ticket)
        except (RequestError, RunError) as e:
            raise _Reply(e.status, e.message) from None
        except TimeoutError:
            raise _Reply(503, "the model did not answer in time") from None
        except RuntimeError:  # the batcher is closed: the server is stopping
            raise _Reply(503, "the server is stopping", close=True) from None
        if head is None:
            self._answer(200, data)
        else:
            self._answer(200, data, "application/octet-stream",
                         (("Inference-Header-Content-Length", str(head)),))

    def _post(self):
        path = self.path.split("?", 1)[0]
        m = _INFER_PATH.fullmatch(path)
        if m is None:  # model control, shared memory, trace and log settings
            small = self._small_enough()
            if small:
                self._read_body(MAX_SMALL_BODY)
            raise _Reply(403, "not served by poolexport serve: model control, shared-memory "
                              "registration, trace and log settings are off", close=not small)
        model, _version, kind = m.groups()
        if model != self.gate.model_name:
            small = self._small_enough()
            if small:
                self._read_body(MAX_SMALL_BODY)
            raise _Reply(404, f"unknown model {model[:100]!r}; this server serves "
                              f"{self.gate.model_name!r}", close=not small)
        if kind != "infer":
            raise _Reply(400, f"the {kind} extension is not served; use infer", close=True)
        limits = self.gate.limits
        n = self._content_length()
        if n is not None and n > limits.max_bytes:
            raise _Reply(413, self._too_large(n), close=True)
        hold = n if n is not None else limits.max_bytes
        if not self.gate.budget.take(hold):
            raise _Reply(503, "server busy: too many large requests at once; retry", close=True)
        ticket = self.gate.model.batcher.incoming() if self.gate.model is not None else contextlib.nullcontext()
        try:
            with ticket:  # a batch being formed waits for this request
                body = self._decoded(self._read_body(limits.max_bytes), limits.max_bytes)
                hdr = self.headers.get("Inference-Header-Content-Length")
                try:
                    header_length = None if hdr is None else int(hdr)
                except ValueError:
                    raise _Reply(400, "Inference-Header-Content-Length is not an integer") from None
                try:
                    check_inputs(parse_http_infer(body, header_length, limits.max_elements), limits)
                except RequestError as e:
                    raise _Reply(e.status, e.message) from None
                if self.gate.model is not None:
                    self._infer_local(body, header_length, ticket)
                else:
                    self._forward(body, drop=("content-encoding",))
        finally:
            self.gate.budget.give(hold)

    def _small_enough(self):
        try:
            n = self._content_length()
        except _Reply:
            return False
        return n is not None and n <= MAX_SMALL_BODY

    def _forward(self, body, drop):
        headers = [(k, v) for k, v in self.headers.items()
                   if k.lower() not in _HOP_BY_HOP and k.lower() not in drop]
        for attempt in (0, 1):
            try:
                if self._upstream is None:
                    self._upstream = _Upstream(self.gate.upstream_host, self.gate.upstream_http,
                                               self.gate.upstream_timeout)
                status, out_headers, data, close = self._upstream.request(
                    self.command, self.path, headers, body)
                if close:
                    self._upstream.close()
                    self._upstream = None
                break
            except (ConnectionError, OSError, ValueError):
                if self._upstream is not None:
                    self._upstream.close()
                    self._upstream = None
                if attempt:
                    raise _Reply(502, "the inference server did not answer") from None
        head_length = next((v for k, v in out_headers if k.lower() == "content-length"), "0")
        if status >= 400:
            new_status, new_data = self._clean_error(status, data)
            if new_data is not data:
                status, data = new_status, new_data
                out_headers = [("Content-Type", "application/json")]
        self.send_response(status)
        for k, v in out_headers:
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", head_length if self.command == "HEAD" else str(len(data)))
        self._send_all(data if self.command != "HEAD" else b"")

    def _clean_error(self, status, data):
        try:
            message = json.loads(data)["error"]
            if not isinstance(message, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            message = data.decode("utf-8", "replace")
        fixed = upstream_error(message, self.gate.marker)
        if fixed is None:
            return status, data
        new_status, new_message = fixed
        if new_status == 500 or (new_status is None and status >= 500):
            LOG.warning("gate: upstream error for %s answered as %s: %s", self.path,
                        new_message, one_line(message, 2000))
        return new_status or status, json.dumps({"error": new_message}).encode()


# ------------------------------------------------------------------------------- gRPC

def _grpc_code(status: int):
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
            413: grpc.StatusCode.RESOURCE_EXHAUSTED}.get(status, grpc.StatusCode.INTERNAL)


class _GrpcGate(grpc.GenericRpcHandler):
    """grpc.aio on one event-loop thread: a request is parsed, checked and forwarded without
    changing threads (the thread-pool server cost about as much as tritonserver itself)."""

    def __init__(self, gate: "Gate"):
        from tritonclient.grpc import service_pb2

        self.gate, self.pb, self.grpc = gate, service_pb2, grpc
        self.channel = None  # made on the event loop (start)
        self._calls = {}
        self._pool = None
        self._in_flight = 0  # infer requests between receipt and answer (event-loop thread)
        self._alone_streak = 0  # requests in a row that found no other one in flight
        self._handlers = {}  # method -> grpc method handler
        if gate.model is not None:  # threads that run the batcher's queue (DynamicBatcher.drain)
            import concurrent.futures

            self._pool = concurrent.futures.ThreadPoolExecutor(4 * gate.grpc_workers, "grpc-infer")

    async def open(self):
        if self.gate.model is not None:
            return  # nothing upstream
        self.channel = grpc.aio.insecure_channel(
            f"{self.gate.upstream_host}:{self.gate.upstream_grpc}",
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])

    def _upstream(self, method):
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self.channel.unary_unary(method)
        return call

    # grpc.GenericRpcHandler
    def service(self, details):
        """The handler of a method, made once per method of the service (a client names
        any method it likes: only ours are remembered)."""
        handler = self._handlers.get(details.method)
        if handler is None:
            handler = self._make_handler(details.method)
            if handler is not None and len(self._handlers) < 64:
                self._handlers[details.method] = handler
        return handler

    def _make_handler(self, method):
        grpc = self.grpc
        if not method.startswith(_GRPC_SERVICE):
            return None
        name = method[len(_GRPC_SERVICE):]
        if name in _GRPC_REFUSED:
            async def refuse(_req, context):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{name} is not served by poolexport serve")
            return grpc.unary_unary_rpc_method_handler(refuse)
        if self.gate.model is not None:
            return self._local_method(name)
        if name == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(self._stream)
        if name == "ModelInfer":
            return grpc.unary_unary_rpc_method_handler(self._infer)

        async def unary(req, ctx):
            return await self._unary(method, req, ctx)
        return grpc.unary_unary_rpc_method_handler(unary)

    def _metadata(self, context):
        return tuple((k, v) for k, v in context.invocation_metadata()
                     if not k.startswith((":", "grpc-")) and k not in ("user-agent", "content-type", "te"))

    async def _unary(self, method, raw, context):
        try:
            return await self._upstream(method)(raw, metadata=self._metadata(context),
                                                timeout=self.gate.upstream_timeout)
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
        fixed = upstream_error(details, self.gate.marker)
        if fixed is not None:
            status, details = fixed
            if status is not None:
                code = _grpc_code(status)
        await context.abort(code, details)

    def _check(self, raw) -> tuple[int, str] | None:
        bad, _req = self._parse_checked(raw)
        return bad

    def _parse_checked(self, raw):
        """(None, the parsed request) when it passes the checks, else ((status, message), None)."""
        try:
            req = self.pb.ModelInferRequest.FromString(raw)
        except Exception:
            return (400, "malformed ModelInferRequest"), None
        if req.model_name != self.gate.model_name:
            return (404, f"unknown model {req.model_name[:100]!r}; this server serves {self.gate.model_name!r}"), None
        try:
            check_inputs(grpc_infer_inputs(req), self.gate.limits)
        except RequestError as e:
            return (e.status, e.message), None
        return None, req

    async def _infer(self, raw, context):
        bad = self._check(raw)
        if bad is not None:
            await context.abort(_grpc_code(bad[0]), bad[1])
        return await self._unary(_GRPC_SERVICE + "ModelInfer", raw, context)

    async def _stream(self, request_iterator, context):
        """Requests that fail the check are answered in the stream (error_message), the rest
        go upstream; upstream answers come back with their error texts cleaned."""
        import asyncio

        out: asyncio.Queue = asyncio.Queue()
        upstream_in: asyncio.Queue = asyncio.Queue()
        end = object()

        async def feed():
            try:
                async for raw in request_iterator:
                    bad = self._check(raw)
                    if bad is None:
                        await upstream_in.put(raw)
                        continue
                    try:
                        req = self.pb.ModelInferRequest.FromString(raw)
                        rid, model = req.id, req.model_name
                    except Exception:
                        rid, model = "", ""
                    resp = self.pb.ModelStreamInferResponse(
                        error_message=bad[1],
                        infer_response=self.pb.ModelInferResponse(model_name=model, id=rid))
                    await out.put(resp.SerializeToString())
            except Exception:  # client went away
                pass
            finally:
                await upstream_in.put(end)

        async def requests():
            while (item := await upstream_in.get()) is not end:
                yield item

        call = self.channel.stream_stream(_GRPC_SERVICE + "ModelStreamInfer")(
            requests(), metadata=self._metadata(context))

        async def read():
            try:
                async for raw in call:
                    await out.put(self._clean_stream_response(raw))
            except grpc.aio.AioRpcError as e:
                await out.put(e)
            except asyncio.CancelledError:
                pass
            finally:
                await out.put(end)

        tasks = [asyncio.ensure_future(feed()), asyncio.ensure_future(read())]
        try:
            while (item := await out.get()) is not end:
                if isinstance(item, grpc.aio.AioRpcError):
                    fixed = upstream_error(item.details() or "", self.gate.marker)
                    code = item.code()
                    details = item.details() or ""
                    if fixed is not None:
                        details = fixed[1]
                        code = _grpc_code(fixed[0]) if fixed[0] is not None else code
                    await context.abort(code, details)
                yield item
        finally:
            call.cancel()
            for t in tasks:
                t.cancel()

    # -- the model in this process -------------------------------------------------------
    def _local_method(self, name):
        grpc, pb, model = self.grpc, self.pb, self.gate.model
        if name == "ModelInfer":
            return grpc.unary_unary_rpc_method_handler(self._infer_local)
        if name == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(self._stream_local)

        def served(req) -> bool:
            return req.name == model.name and req.version in ("", MODEL_VERSION)

        async def need_model(req, context):
            if not served(req):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {req.name[:100]!r} "
                                    f"version {req.version[:20]!r}; this server serves {model.name!r}")

        async def live(raw, context):
            return pb.ServerLiveResponse(live=True).SerializeToString()

        async def ready(raw, context):
            return pb.ServerReadyResponse(ready=model.ready).SerializeToString()

        async def model_ready(raw, context):
            req = pb.ModelReadyRequest.FromString(raw)
            return pb.ModelReadyResponse(ready=served(req) and model.ready).SerializeToString()

        async def server_meta(raw, context):
            meta = server_metadata()
            return pb.ServerMetadataResponse(**meta).SerializeToString()

        async def model_meta(raw, context):
            req = pb.ModelMetadataRequest.FromString(raw)
            await need_model(req, context)
            meta = model.metadata()
            resp = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                            platform=meta["platform"])
            for field, key in ((resp.inputs, "inputs"), (resp.outputs, "outputs")):
                for t in meta[key]:
                    field.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return resp.SerializeToString()

        async def model_config(raw, context):
            req = pb.ModelConfigRequest.FromString(raw)
            await need_model(req, context)
            resp = pb.ModelConfigResponse()
            resp.config.CopyFrom(model.config)
            return resp.SerializeToString()

        async def model_stats(raw, context):
            from google.protobuf.json_format import ParseDict

            req = pb.ModelStatisticsRequest.FromString(raw)
            if req.name:
                await need_model(req, context)
            resp = pb.ModelStatisticsResponse()
            ParseDict({"model_stats": [model.statistics()]}, resp, ignore_unknown_fields=True)
            return resp.SerializeToString()

        handlers = {"ServerLive": live, "ServerReady": ready, "ModelReady": model_ready,
                    "ServerMetadata": server_meta, "ModelMetadata": model_meta,
                    "ModelConfig": model_config, "ModelStatistics": model_stats}
        fn = handlers.get(name)
        return None if fn is None else grpc.unary_unary_rpc_method_handler(fn)

    async def _run_local(self, feeds, ticket, inline: bool):
        """The batcher's answer. A unary request (`inline`) from a lone client, with a
        model instance free and nothing queued, runs right here on the event-loop thread:
        handing it to another thread and back cost more CPU than the checks and decoding
        together. Otherwise it is queued without a thread waiting for it
        (DynamicBatcher.submit): a pool thread runs the queue (drain) while the event loop
        goes on receiving, so concurrent requests (and a stream's) meet in a batch, and each
        answer comes back to the loop with one call_soon_threadsafe.

        A model whose last run took over INLINE_MAX_RUN_NS never runs on the loop: health
        and metadata calls would wait for it.

        Lone client: the last INLINE_AFTER requests each found no other request in this
        front end. A run on the loop keeps later requests from reaching it, so that count
        would stay lone under load too: every PROBE_EVERY-th request goes through the queue
        anyway, and requests that came meanwhile show up beside it and end the lone run."""
        import asyncio

        batcher = self.gate.model.batcher
        lone = self._alone_streak
        if (inline and self._in_flight == 1 and lone >= INLINE_AFTER and lone % PROBE_EVERY
                and batcher.last_run_ns <= INLINE_MAX_RUN_NS and batcher.idle()):
            return batcher.infer(feeds, self.gate.upstream_timeout, ticket)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()

        def answered(request):  # on the thread that ran the batch
            try:
                loop.call_soon_threadsafe(_settle, answer, request.result)
            except RuntimeError:  # the loop is closed: the server stopped, nobody to answer
                pass

        request, start = batcher.submit(feeds, answered, ticket)
        if start:  # no thread waits for the request: one runs the queue
            self._pool.submit(batcher.drain)
        done, _ = await asyncio.wait({answer}, timeout=self.gate.upstream_timeout)
        if not done:
            if batcher.withdraw(request):
                raise TimeoutError("no answer from the model in time")
            await answer  # being run: its answer is coming
        outputs, error = answer.result()
        if error is not None:
            raise error
        return outputs

    async def _answer_local(self, raw, inline: bool = False) -> tuple:
        """(serialized ModelInferResponse, None) or (None, (status, message))."""
        self._in_flight += 1  # only touched on the event-loop thread
        if self._in_flight > 1:
            self._alone_streak = 0
        else:
            self._alone_streak += 1
        try:
            with self.gate.model.batcher.incoming() as ticket:  # a batch being formed waits for it
                bad, req = self._parse_checked(raw)
                if bad is not None:
                    return None, bad
                feeds, names = self.gate.model.grpc_feeds(req)
                outs = await self._run_local(feeds, ticket, inline)
        except (RequestError, RunError) as e:
            return None, (e.status, e.message)
        except TimeoutError:
            return None, (503, "the model did not answer in time")
        except RuntimeError:
            return None, (503, "the server is stopping")
        finally:
            self._in_flight -= 1
        return self.gate.model.grpc_response(self.pb, req, names, outs).SerializeToString(), None

    async def _infer_local(self, raw, context):
        resp, bad = await self._answer_local(raw, inline=True)
        if bad is not None:
            code = grpc.StatusCode.UNAVAILABLE if bad[0] == 503 else _grpc_code(bad[0])
            await context.abort(code, bad[1])
        return resp

    async def _stream_local(self, request_iterator, context):
        """Each request answered in the stream as it finishes; a refused one with its
        error_message."""
        import asyncio

        out: asyncio.Queue = asyncio.Queue()
        end = object()
        pending = set()

        async def one(raw):
            resp, bad = await self._answer_local(raw)
            if bad is not None:
                try:
                    req = self.pb.ModelInferRequest.FromString(raw)
                    rid, name = req.id, req.model_name
                except Exception:  # noqa: BLE001 - malformed: answered without an id
                    rid, name = "", ""
                msg = self.pb.ModelStreamInferResponse(
                    error_message=bad[1], infer_response=self.pb.ModelInferResponse(model_name=name, id=rid))
            else:
                msg = self.pb.ModelStreamInferResponse(infer_response=self.pb.ModelInferResponse.FromString(resp))
            await out.put(msg.SerializeToString())

        async def feed():
            try:
                async for raw in request_iterator:
                    task = asyncio.ensure_future(one(raw))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            except Exception:  # noqa: BLE001 - the client went away
                pass
            finally:
                if pending:
                    await asyncio.gather(*list(pending), return_exceptions=True)
                await out.put(end)

        reader = asyncio.ensure_future(feed())
        try:
            while (item := await out.get()) is not end:
                yield item
        finally:
            reader.cancel()
            for t in list(pending):
                t.cancel()

    def _clean_stream_response(self, raw):
        resp = self.pb.ModelStreamInferResponse.FromString(raw)
        if not resp.error_message:
            return raw
        fixed = upstream_error(resp.error_message, self.gate.marker)
        if fixed is None:
            return raw
        resp.error_message = fixed[1]
        return resp.SerializeToString()


def _settle(future, result) -> None:
    if not future.done():  # else the call was cancelled (the client went away)
        future.set_result(result)


# ------------------------------------------------------------------------------- both

class Gate:
    """The checked public ports in front of tritonserver's loopback ones."""

    def __init__(self, limits: Limits, model_name: str, host: str, http_port: int,
                 grpc_port: int, upstream_http: int | None = None, upstream_grpc: int | None = None,
                 marker: str | None = None, upstream_host: str = "127.0.0.1",
                 upstream_timeout: float = 600.0, grpc_workers: int = 32, model=None):
        """`model` (kserve.ServedModel): answer from this process; else forward to the
        upstream ports."""
        self.model = model
        self.limits, self.model_name, self.marker = limits, model_name, marker
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.upstream_host, self.upstream_http, self.upstream_grpc = upstream_host, upstream_http, upstream_grpc
        self.upstream_timeout = upstream_timeout
        self.grpc_workers = grpc_workers
        self.budget = _ByteBudget(max(4 * limits.max_bytes, 256 << 20))
        self._http = None
        self._http_thread = None
        self._grpc = None
        self._grpc_handler = None
        self._loop = None

    def start(self):
        import asyncio

        try:
            self._http = _HTTPServer((self.host, self.http_port), _Handler, self)
        except OSError as e:
            raise ValueError(f"serve: --http-port port {self.http_port} on {self.host} is not "
                             f"available ({e.strerror})") from None
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="gate-http",
                                             kwargs={"poll_interval": 0.2}, daemon=True)
        self._http_thread.start()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="gate-grpc", daemon=True)
        self._loop_thread.start()
        try:
            self.grpc_port = asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop).result(60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._loop is not None:
            import asyncio

            try:
                asyncio.run_coroutine_threadsafe(self._stop_grpc(), self._loop).result(15)
            except Exception:  # noqa: BLE001 - stopping anyway
                LOG.debug("gate: gRPC stop", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(10)
            self._loop.close()
            self._loop = None

    async def _start_grpc(self) -> int:
        handler = _GrpcGate(self)
        await handler.open()
        self._grpc_handler = handler
        self._grpc = grpc.aio.server(
            handlers=[handler], maximum_concurrent_rpcs=4 * self.grpc_workers,
            options=[("grpc.max_receive_message_length", min(self.limits.max_bytes, 2**31 - 1)),
                     ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            port = self._grpc.add_insecure_port(f"{host}:{self.grpc_port}")
        except RuntimeError:
            port = 0
        if not port:
            raise ValueError(f"serve: --grpc-port port {self.grpc_port} on {self.host} is not available")
        await self._grpc.start()
        return port

    async def _stop_grpc(self):
        if self._grpc is not None:
            await self._grpc.stop(grace=5)
            self._grpc = None
        if self._grpc_handler is not None:
            if self._grpc_handler.channel is not None:
                await self._grpc_handler.channel.close()
            if self._grpc_handler._pool is not None:
                self._grpc_handler._pool.shutdown(wait=False)
            self._grpc_handler = None


# ------------------------------------------------------------------------------- metrics

class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "poolexport-serve"
    sys_version = ""
    timeout = 30

    def log_message(self, fmt, *args):
        LOG.debug("metrics %s: " + fmt, self.client_address[0], *args)

    def do_GET(self):
        if self.path.split("?", 1)[0].rstrip("/") == "/metrics":
            status, body, ctype = 200, self.server.model.metrics_text().encode(), "text/plain; version=0.0.4"
        else:
            status, body, ctype = 404, b'{"error": "not found"}', "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET


class MetricsServer:
    """Prometheus text on GET /metrics, for the model this process runs."""

    def __init__(self, host: str, port: int, model):
        self.host, self.port, self.model = host, port, model
        self._http = None

    def start(self):
        server_cls = type("_MetricsHTTPServer", (http.server.ThreadingHTTPServer,),
                          {"daemon_threads": True, "allow_reuse_address": True,
                           "address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET})
        try:
            self._http = server_cls((self.host, self.port), _MetricsHandler)
        except OSError as e:
            raise ValueError(f"serve: --metrics-port port {self.port} on {self.host} is not "
                             f"available ({e.strerror})") from None
        self._http.model = self.model
        self.port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True,
                         kwargs={"poll_interval": 0.2}).start()
        return self

    def stop(self):
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
