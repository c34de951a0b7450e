"""The public HTTP and gRPC ports of `poolexport serve`: each request is checked here
(serve/validation.py) before it reaches tritonserver, which listens on loopback ports of
its own.

Why a front end: the bundled tritonserver (2.51, inside nvidia-pytriton 0.7) allocates
`element count * dtype size` bytes for a KServe v2 JSON input as soon as it has parsed
the input's declared shape, before it compares that shape with the model config
(src/http_server.cc, HTTPAPIServer::ParseJsonTritonIO: `serialized.resize(byte_size)`),
and has no option to cap it (--http-max-input-size came in 2.59). A 99-byte body that
declares 8x3x100000x100000 FP32 makes it ask for 960 GB: std::bad_alloc, abort, the
server is gone. No code of ours runs before that allocation, so the check has to sit in
front of it. Errors raised by the model callable travel through PyTriton's proxy as a
500 whose text is a Python traceback; the front ends turn those into one-line messages
(a 400 when the callable says the input was at fault, see server.py).

HTTP: a threaded HTTP/1.1 proxy (keep-alive, one upstream connection per client
connection). Infer requests for the served model are read whole (at most
max_request_bytes, after gzip/deflate decoding), checked, and forwarded unchanged;
infer requests for any other model get 404 here, and so do GETs about another model
(metadata, ready, config, stats: tritonserver would say 400); other GET/HEAD requests
pass through; other POSTs
(model repository control, shared-memory registration, trace and log settings) are
refused with 403 (PyTriton's tritonserver wants an access token for them anyway).

gRPC: a generic pass-through (bytes in, bytes out) with ModelInfer and ModelStreamInfer
parsed and checked, the same methods as above refused (PERMISSION_DENIED), and the
message size capped by gRPC itself (grpc.max_receive_message_length).
"""
from __future__ import annotations

import http.client
import http.server
import json
import logging
import queue
import re
import socket
import threading
import time
import zlib
from urllib.parse import unquote

import grpc

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
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"")
_PATHISH = re.compile(r"\S*[/\\]\S*")
GENERIC_500 = "inference failed on the server (details are in the server's log)"
MAX_SMALL_BODY = 64 << 10  # any request that is not an infer request


class _Reply(Exception):
    """Answer the client with `status` and a one-line {"error": message}."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, one_line(message), close


def upstream_error(message: str, marker: str | None) -> tuple[int, str] | None:
    """What to tell a client for an error text from tritonserver/PyTriton: (status, message)
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


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "poolexport-serve"
    sys_version = ""
    timeout = 120  # seconds a client may stall mid-request

    def setup(self):
        super().setup()
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
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except (ConnectionError, socket.timeout, TimeoutError):
            pass
        if close:
            self.close_connection = True
            self._drain()

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
        self._forward(None, drop=())

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
        try:
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
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _HOP_BY_HOP and k.lower() not in drop}
        for attempt in (0, 1):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    self.gate.upstream_host, self.gate.upstream_http, timeout=self.gate.upstream_timeout)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                resp = self._upstream.getresponse()
                data = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise _Reply(502, "the inference server did not answer") from None
        status, out_headers = resp.status, resp.getheaders()
        if status >= 400:
            new_status, new_data = self._clean_error(status, data)
            if new_data is not data:
                status, data = new_status, new_data
                out_headers = [("Content-Type", "application/json")]
        self.send_response(status)
        for k, v in out_headers:
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

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
    def __init__(self, gate: "Gate"):
        from tritonclient.grpc import service_pb2

        self.gate, self.pb, self.grpc = gate, service_pb2, grpc
        self.channel = grpc.insecure_channel(
            f"{gate.upstream_host}:{gate.upstream_grpc}",
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])

    # grpc.GenericRpcHandler
    def service(self, details):
        grpc = self.grpc
        method = details.method
        if not method.startswith(_GRPC_SERVICE):
            return None
        name = method[len(_GRPC_SERVICE):]
        if name in _GRPC_REFUSED:
            def refuse(_req, context):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{name} is not served by poolexport serve")
            return grpc.unary_unary_rpc_method_handler(refuse)
        if name == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(self._stream)
        if name == "ModelInfer":
            return grpc.unary_unary_rpc_method_handler(self._infer)
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: self._unary(method, req, ctx))

    def _metadata(self, context):
        return tuple((k, v) for k, v in context.invocation_metadata()
                     if not k.startswith((":", "grpc-")) and k not in ("user-agent", "content-type", "te"))

    def _unary(self, method, raw, context):
        try:
            return self.channel.unary_unary(method)(raw, metadata=self._metadata(context),
                                                    timeout=self.gate.upstream_timeout)
        except self.grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            fixed = upstream_error(details, self.gate.marker)
            if fixed is not None:
                status, details = fixed
                if status is not None:
                    code = _grpc_code(status)
            context.abort(code, details)

    def _check(self, raw) -> tuple[int, str] | None:
        try:
            req = self.pb.ModelInferRequest.FromString(raw)
        except Exception:
            return 400, "malformed ModelInferRequest"
        if req.model_name != self.gate.model_name:
            return 404, f"unknown model {req.model_name[:100]!r}; this server serves {self.gate.model_name!r}"
        try:
            check_inputs(grpc_infer_inputs(req), self.gate.limits)
        except RequestError as e:
            return e.status, e.message
        return None

    def _infer(self, raw, context):
        bad = self._check(raw)
        if bad is not None:
            context.abort(_grpc_code(bad[0]), bad[1])
        return self._unary(_GRPC_SERVICE + "ModelInfer", raw, context)

    def _stream(self, request_iterator, context):
        """Requests that fail the check are answered in the stream (error_message), the rest
        go upstream; upstream answers come back with their error texts cleaned."""
        out: queue.Queue = queue.Queue()
        upstream_in: queue.Queue = queue.Queue()
        end = object()

        def feed():
            try:
                for raw in request_iterator:
                    bad = self._check(raw)
                    if bad is None:
                        upstream_in.put(raw)
                        continue
                    try:
                        req = self.pb.ModelInferRequest.FromString(raw)
                        rid, model = req.id, req.model_name
                    except Exception:
                        rid, model = "", ""
                    resp = self.pb.ModelStreamInferResponse(
                        error_message=bad[1],
                        infer_response=self.pb.ModelInferResponse(model_name=model, id=rid))
                    out.put(resp.SerializeToString())
            except Exception:  # client went away
                pass
            finally:
                upstream_in.put(end)

        def requests():
            while (item := upstream_in.get()) is not end:
                yield item

        call = self.channel.stream_stream(_GRPC_SERVICE + "ModelStreamInfer")(
            requests(), metadata=self._metadata(context))

        def read():
            try:
                for raw in call:
                    out.put(self._clean_stream_response(raw))
            except self.grpc.RpcError as e:
                out.put(e)
            finally:
                out.put(end)

        context.add_callback(call.cancel)
        threading.Thread(target=feed, daemon=True).start()
        threading.Thread(target=read, daemon=True).start()
        while (item := out.get()) is not end:
            if isinstance(item, self.grpc.RpcError):
                fixed = upstream_error(item.details() or "", self.gate.marker)
                code = item.code()
                details = item.details() or ""
                if fixed is not None:
                    details = fixed[1]
                    code = _grpc_code(fixed[0]) if fixed[0] is not None else code
                context.abort(code, details)
            yield item

    def _clean_stream_response(self, raw):
        resp = self.pb.ModelStreamInferResponse.FromString(raw)
        if not resp.error_message:
            return raw
        fixed = upstream_error(resp.error_message, self.gate.marker)
        if fixed is None:
            return raw
        resp.error_message = fixed[1]
        return resp.SerializeToString()


# ------------------------------------------------------------------------------- both

class Gate:
    """The checked public ports in front of tritonserver's loopback ones."""

    def __init__(self, limits: Limits, model_name: str, host: str, http_port: int,
                 grpc_port: int, upstream_http: int, upstream_grpc: int,
                 marker: str | None = None, upstream_host: str = "127.0.0.1",
                 upstream_timeout: float = 600.0, grpc_workers: int = 32):
        self.limits, self.model_name, self.marker = limits, model_name, marker
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.upstream_host, self.upstream_http, self.upstream_grpc = upstream_host, upstream_http, upstream_grpc
        self.upstream_timeout = upstream_timeout
        self.grpc_workers = grpc_workers
        self.budget = _ByteBudget(max(4 * limits.max_bytes, 256 << 20))
        self._http = None
        self._http_thread = None
        self._grpc = None

    def start(self):
        import concurrent.futures as cf

        try:
            self._http = _HTTPServer((self.host, self.http_port), _Handler, self)
        except OSError as e:
            raise ValueError(f"serve: --http-port port {self.http_port} on {self.host} is not "
                             f"available ({e.strerror})") from None
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="gate-http",
                                             kwargs={"poll_interval": 0.2}, daemon=True)
        self._http_thread.start()
        handler = _GrpcGate(self)
        self._grpc = grpc.server(
            cf.ThreadPoolExecutor(max_workers=self.grpc_workers, thread_name_prefix="gate-grpc"),
            handlers=[handler], maximum_concurrent_rpcs=4 * self.grpc_workers,
            options=[("grpc.max_receive_message_length", min(self.limits.max_bytes, 2**31 - 1)),
                     ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = self._grpc.add_insecure_port(f"{host}:{self.grpc_port}")
        if not port:
            self.stop()
            raise ValueError(f"serve: --grpc-port port {self.grpc_port} on {self.host} is not available")
        self.grpc_port = port
        self._grpc.start()
        self._grpc_handler = handler
        return self

    def stop(self):
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait(10)
            self._grpc = None
            self._grpc_handler.channel.close()
