"""Served throughput (`poolexport serve`: HTTP with binary tensors, gRPC) against a bare ONNX
Runtime session on the same ONNX file, at batch 1 from one client and from 8 concurrent
clients with dynamic batching. A benchmark, not a test: prints Markdown tables.

    python benchmarks/bench_serve.py        # resnet_softpool 32x32, mobilenet_se (SoftPool) 224
    python benchmarks/bench_serve.py --model my.onnx --seconds 10 --json out.json
    python benchmarks/bench_serve.py --server poolexport --server tritonserver  # side by side

The server runs in its own process group (as `poolexport serve` would be deployed); the
clients are threads of this process. On a small machine they share the same cores, so
the served numbers include the clients' own cost. The bare session has the served one's
options (idle threads do not spin; --bare-default-options for ONNX Runtime's defaults),
so the ratios measure serving alone. With several --server values each gets its own
server, and every round runs all of them between the bare runs.

Clients: tritonclient (HTTP with binary tensors, gRPC), and beside it a lean client
(rows labelled `lean client`: http.client with the binary tensor extension and a header
built once, a plain grpc channel with the request serialized once): tritonclient's own CPU
per request is large next to the server's on a small machine. --no-lean-clients: only
tritonclient.

CPU per request: for every phase the CPU time (user + system, from /proc) of each process
is read before and after, and divided by the requests served: the client (this process),
the server's front end (the `poolexport serve` process), tritonserver and the backend stub
where they run. A bare-session phase gives the ONNX Runtime run's own CPU per request. CPU
ms per request holds up on a shared machine, where throughput does not. The summary gives
the client's CPU per request beside the server's, the rows per model run of the
8-client phases (from the server's /metrics), and the ratio that CPU budget allows at most
when clients, server and model share the cores (ceilings()).

The load average is checked before the run (this benchmark's own server and clients raise
it during the run): above the core count the machine is busy with other work and no table
is printed unless --force.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


DEFAULT_MODELS = ["resnet_softpool:32", "mobilenet_se:224:pool=soft"]


def parse_model_spec(spec: str):
    """'ARCH[:SIZE][:KEY=VALUE...]' -> (arch, size or None, kwargs); an existing file is
    taken as it is."""
    if os.path.isfile(spec):
        return spec, None, {}
    arch, *rest = spec.split(":")
    size, kwargs = None, {}
    for part in rest:
        if "=" in part:
            k, v = part.split("=", 1)
            kwargs[k] = v
        else:
            size = int(part)
    return arch, size, kwargs


def export_example(spec: str, path: str) -> str:
    import onnx
    import torch

    from poolexport.models import create_model, default_input_shape
    from poolexport.onnx import export_model

    arch, size, kwargs = parse_model_spec(spec)
    shape = list(default_input_shape(arch))
    if size is not None:
        shape[-2:] = [size, size]
    torch.manual_seed(0)
    model = create_model(arch, **kwargs).eval()
    proto = export_model(model, torch.randn(shape), target="ort", dynamic=("batch",))
    onnx.save(proto, path)
    return path, shape


def cpu_seconds(pid) -> float:
    """user + system CPU of a process (all its threads), in seconds; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(root: int) -> dict[int, str]:
    """pid -> role for `root` and its descendants: 'front end' for root, else the command
    name (tritonserver, the stub is triton_python_b...)."""
    children, names = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                comm, rest = f.read().rsplit(")", 1)
            children.setdefault(int(rest.split()[1]), []).append(int(entry))
            names[int(entry)] = comm.split("(", 1)[1]
        except (OSError, IndexError, ValueError):
            continue
    roles, todo = {}, [root]
    while todo:
        pid = todo.pop()
        roles[pid] = "front end" if pid == root else (
            "stub" if names.get(pid, "").startswith("triton_python") else names.get(pid, "?"))
        todo += children.get(pid, [])
    return roles


def batch_counters(metrics_port: int) -> tuple[int, int]:
    """(rows run, model runs) from the server's Prometheus endpoint (Triton's
    nv_inference_count and nv_inference_exec_count, summed over labels)."""
    import urllib.request

    rows = runs = 0
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name == "nv_inference_count":
                rows += int(float(line.rsplit(None, 1)[1]))
            elif name == "nv_inference_exec_count":
                runs += int(float(line.rsplit(None, 1)[1]))
    return rows, runs


class CpuMeter:
    """CPU seconds per role between start() and stop(): this process is 'client'. With a
    metrics port, `mean_batch` is the rows per model run between them."""

    def __init__(self, roots=(), metrics_port: int | None = None):
        self.trees = {}
        for r in roots:
            self.trees.update(process_tree(r))
        self.metrics_port = metrics_port
        self.mean_batch = None

    def _read(self):
        out = {"client": cpu_seconds(os.getpid())}
        for pid, role in self.trees.items():
            out[role] = out.get(role, 0.0) + cpu_seconds(pid)
        return out

    def start(self):
        self._b0 = batch_counters(self.metrics_port) if self.metrics_port else None
        self._t0 = self._read()

    def stop(self) -> dict:
        t1 = self._read()
        if self._b0 is not None:
            rows, runs = (a - b for a, b in zip(batch_counters(self.metrics_port), self._b0))
            self.mean_batch = rows / runs if runs else None
        return {k: t1[k] - self._t0.get(k, 0.0) for k in t1}


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def measure(fn, clients: int, seconds: float, warmup: int = 20, meter: CpuMeter | None = None):
    """Run fn(client_index) in `clients` threads for `seconds`; returns (calls/s, p50 ms,
    p99 ms, CPU ms per call by role, rows per model run or None). Each thread first sends `warmup` requests of its own
    (its client, connection and channel are new), then all start the timed part together."""
    lat = [[] for _ in range(clients)]
    warmed, go = threading.Barrier(clients + 1), threading.Barrier(clients + 1)
    stop_at = [0.0]

    def loop(k):
        try:
            for _ in range(warmup):
                fn(k)
        finally:
            warmed.wait()
        go.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                return
            fn(k)
            lat[k].append(time.perf_counter() - t0)

    meter = meter or CpuMeter()
    with cf.ThreadPoolExecutor(clients) as pool:
        done = [pool.submit(loop, k) for k in range(clients)]
        warmed.wait()
        meter.start()
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        go.wait()
        for d in done:
            d.result()
    wall = time.perf_counter() - t0
    cpu = meter.stop()
    all_lat = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    n = max(len(all_lat), 1)
    return (len(all_lat) / wall, float(np.percentile(all_lat, 50)), float(np.percentile(all_lat, 99)),
            {k: 1e3 * v / n for k, v in cpu.items()}, meter.mean_batch)


class LeanHttpClient:
    """A lean KServe v2 HTTP client beside tritonclient's (which spends about 0.5-1 ms of CPU
    per 600 KB request on this machine's cores, shared with the server): http.client, one
    keep-alive connection, the binary tensor extension, the JSON header built once. It
    shows what the server costs when the client costs little."""

    def __init__(self, port: int, model: str, name: str, shape, datatype: str, nbytes: int, outputs):
        import http.client

        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.path = f"/v2/models/{model}/infer"
        self.header = json.dumps({
            "inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                        "parameters": {"binary_data_size": nbytes}}],
            "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs]}).encode()
        self.headers = {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(self.header))}

    def infer(self, x: np.ndarray) -> "LeanResult":
        self.conn.request("POST", self.path, self.header + x.tobytes(), self.headers)
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
        n = int(r.getheader("Inference-Header-Content-Length", len(body)))
        head, offset, arrays = json.loads(body[:n]), n, {}
        for o in head["outputs"]:
            size = o["parameters"]["binary_data_size"]
            arrays[o["name"]] = np.frombuffer(body, _NUMPY[o["datatype"]], size // np.dtype(
                _NUMPY[o["datatype"]]).itemsize, offset).reshape(o["shape"])
            offset += size
        return LeanResult(arrays)


class LeanGrpcClient:
    """A lean KServe v2 gRPC client beside tritonclient's: grpc's own channel, the request
    serialized once without its tensor, which is appended as raw_input_contents (field 7)."""

    def __init__(self, port: int, model: str, name: str, shape, datatype: str):
        import grpc
        from tritonclient.grpc import service_pb2

        self.pb = service_pb2
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self.call = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        req = service_pb2.ModelInferRequest(model_name=model)
        req.inputs.add(name=name, datatype=datatype, shape=list(shape))
        self.prefix = req.SerializeToString()

    def infer(self, x: np.ndarray) -> "LeanResult":
        data = x.tobytes()
        n, size = len(data), b""
        while True:  # the length as a protobuf varint
            size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                break
        resp = self.pb.ModelInferResponse.FromString(self.call(self.prefix + b"\x3a" + size + data))
        return LeanResult({o.name: np.frombuffer(raw, _NUMPY[o.datatype]).reshape(tuple(o.shape))
                           for o, raw in zip(resp.outputs, resp.raw_output_contents)})


class LeanResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays[name]


_NUMPY = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
          "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def load_text():
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def start_server(kind: str, path: str, args, tmp: str):
    """`poolexport serve` with `--server kind`; returns (process, http port, grpc port, log,
    metrics port)."""
    http, grpc, metrics = free_ports(3)
    log = open(os.path.join(tmp, f"server-{os.path.basename(path)}-{kind}.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolexport.serve", "serve", path, "--model-name", "m",
         "--server", kind,
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--max-batch-size", str(args.max_batch_size),
         "--max-queue-delay-us", str(args.max_queue_delay_us), *args.serve_arg],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=tmp)  # not the source tree: `python -m` puts cwd first on sys.path
    return proc, http, grpc, log, metrics


def wait_ready(proc, http, log):
    import tritonclient.http as httpclient

    probe = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {log.name}")
            try:
                if probe.is_model_ready("m"):
                    return
            except Exception:
                pass
            time.sleep(0.5)
    finally:
        probe.close()


def stop_server(proc, log):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    log.close()


def bench_model(model: str, args, tmp: str) -> list[dict]:
    """Interleaved rounds for one model; returns the table rows (medians)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from poolexport.serve.runtime import OrtBackend

    if os.path.isfile(model):
        path = model
    else:
        path, _ = export_example(model, os.path.join(tmp, model.replace(":", "_").replace("=", "-") + ".onnx"))
    # the served session's options, so the ratios measure serving alone: idle threads do
    # not spin unless the server is told they may (--serve-arg=--allow-spinning)
    spinning = args.bare_default_options or "--allow-spinning" in args.serve_arg
    bare = OrtBackend(path, providers=["CPUExecutionProvider"], allow_spinning=spinning)
    inp = bare.signature.inputs[0]
    shape = [1] + [d if d > 0 else 1 for d in inp.dims[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(inp.dtype)
    x8 = np.repeat(x, args.max_batch_size, axis=0)
    feeds1, feeds8 = {inp.name: x}, {inp.name: x8}
    want = bare.run(feeds1)
    out_names = [o.name for o in bare.signature.outputs]

    print(f"model {model}: input {inp.name} {shape} ({'with' if bare.library else 'without'} "
          f"custom-op library)", flush=True)
    servers = {}
    samples: dict[tuple, list] = {}
    try:
        for kind in args.server:
            servers[kind] = start_server(kind, path, args, tmp)
        for kind, (proc, http, _, log, _) in servers.items():
            wait_ready(proc, http, log)

        # one client per thread: the HTTP client is gevent-based and bound to its thread
        local = threading.local()

        def client(kind, proto):
            key = f"{kind}-{proto}"
            if not hasattr(local, key):
                _, http, grpc, _, _ = servers[kind]
                setattr(local, key, httpclient.InferenceServerClient(f"127.0.0.1:{http}")
                        if proto == "http" else grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}"))
            return getattr(local, key)

        def http_call(kind):
            def call(k):
                i = httpclient.InferInput(inp.name, shape, inp.triton_dtype)
                i.set_data_from_numpy(x, binary_data=True)
                outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in out_names]
                return client(kind, "http").infer("m", [i], outputs=outs)
            return call

        def grpc_call(kind):
            def call(k):
                i = grpcclient.InferInput(inp.name, shape, inp.triton_dtype)
                i.set_data_from_numpy(x)
                return client(kind, "grpc").infer("m", [i])
            return call

        def lean_call(kind, proto):
            def call(k):
                key = f"{kind}-lean-{proto}"
                if not hasattr(local, key):
                    _, http, grpc, _, _ = servers[kind]
                    setattr(local, key, LeanHttpClient(http, "m", inp.name, shape, inp.triton_dtype,
                                                       x.nbytes, out_names) if proto == "http" else
                            LeanGrpcClient(grpc, "m", inp.name, shape, inp.triton_dtype))
                return getattr(local, key).infer(x)
            return call

        n = args.clients
        bare1 = ("bare ORT session", None, 1, 1, lambda k: bare.run(feeds1))
        plan = [bare1]
        for kind in servers:
            plan += [(f"{kind}: served HTTP (binary)", kind, 1, 1, http_call(kind)),
                     (f"{kind}: served gRPC", kind, 1, 1, grpc_call(kind))]
            if args.lean_clients:
                plan += [(f"{kind}: served HTTP (binary), lean client", kind, 1, 1, lean_call(kind, "http")),
                         (f"{kind}: served gRPC, lean client", kind, 1, 1, lean_call(kind, "grpc"))]
        plan += [("bare ORT session", None, n, 1, lambda k: bare.run(feeds1)),
                 (f"bare ORT session, batch {args.max_batch_size}", None, 1, args.max_batch_size,
                  lambda k: bare.run(feeds8))]
        for kind in servers:
            plan += [(f"{kind}: served HTTP (binary), dynamic batching", kind, n, 1, http_call(kind)),
                     (f"{kind}: served gRPC, dynamic batching", kind, n, 1, grpc_call(kind))]
            if args.lean_clients:
                plan += [(f"{kind}: served HTTP (binary), dynamic batching, lean client", kind, n, 1,
                          lean_call(kind, "http")),
                         (f"{kind}: served gRPC, dynamic batching, lean client", kind, n, 1,
                          lean_call(kind, "grpc"))]
        for name, kind, clients, batch, fn in plan:  # served answers must be the bare session's
            if kind is not None:
                got = fn(0).as_numpy(out_names[0])
                np.testing.assert_allclose(got, want[out_names[0]], rtol=1e-4, atol=1e-5)
        meters = {kind: CpuMeter([proc.pid], metrics) for kind, (proc, _, _, _, metrics) in servers.items()}
        # rounds interleave bare and served runs, so load from elsewhere hits both alike
        for r in range(args.rounds):
            for name, kind, clients, batch, fn in plan:
                res = measure(fn, clients, args.seconds, meter=meters.get(kind))
                samples.setdefault((name, kind, clients, batch), []).append(res)
                cpu = " ".join(f"{k} {v / batch:.2f}" for k, v in res[3].items())
                rows_per_run = f"; {res[4]:.2f} rows per model run" if res[4] else ""
                print(f"  round {r}: {name:<52} x{clients} {res[0] * batch:8.1f} items/s "
                      f"p50 {res[1]:.2f} ms; CPU ms/item: {cpu}{rows_per_run}", flush=True)
    finally:
        for proc, _, _, log, _ in servers.values():
            stop_server(proc, log)

    rows = []
    for (name, kind, clients, batch), res in samples.items():
        cpu = {}
        for k in res[0][3]:
            cpu[k] = float(np.median([r[3].get(k, 0.0) for r in res])) / batch
        rows.append(dict(model=model, path=name, server=kind, clients=clients, batch=batch,
                         items_per_s=float(np.median([r[0] for r in res])) * batch,
                         per_round=[float(r[0]) * batch for r in res],
                         p50_ms=float(np.median([r[1] for r in res])),
                         p99_ms=float(np.median([r[2] for r in res])), cpu_ms_per_item=cpu,
                         rows_per_run=(float(np.median([r[4] for r in res])) if all(r[4] for r in res)
                                       else None)))
    bare_rows = {r["clients"]: r for r in rows if r["path"] == "bare ORT session"}
    for r in rows:
        if r["server"] is not None:
            b = bare_rows[r["clients"]]
            r["vs_bare"] = float(np.median(np.asarray(r["per_round"]) / np.asarray(b["per_round"])))
        if r["clients"] == 1 and r["batch"] == 1:
            # fixed per-request cost: served latency minus the bare session's, from throughput
            r["cost_ms"] = 1e3 / r["items_per_s"] - 1e3 / bare_rows[1]["items_per_s"]
    return rows


def server_cpu(row) -> float:
    """CPU ms per item of every process of the server (front end, tritonserver, stub)."""
    return sum(v for k, v in row["cpu_ms_per_item"].items() if k != "client")


def client_cpu(row) -> float:
    """CPU ms per item of the clients (this process; in a bare phase, the session's run)."""
    return row["cpu_ms_per_item"].get("client", 0.0)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ceilings(b1, b8, one, many) -> tuple[float, float]:
    """What the served/bare ratios can reach at most, from CPU per request (which holds on a
    shared machine, where throughput does not):
    - batch 1, one client: nothing overlaps (the client waits for the answer, the server
      for the next request), so a request takes at least the bare latency plus the
      client's CPU plus the server's CPU beyond the bare run's: bare latency / that.
    - N clients: client, server and model share the cores, so served items/s <= cores /
      (client + server CPU per item), while the bare session with N clients keeps the
      cores busy at its own CPU per item: bare CPU per item / (client + server CPU per item).
    Both take the served model run to cost what the bare one does and count only CPU
    (no waits); above 100% the CPU is not what holds the served path back."""
    lat = 1e3 / b1["items_per_s"]
    handling = max(server_cpu(one) - client_cpu(b1), 0.0)
    one_line = lat / (lat + client_cpu(one) + handling)
    spent = client_cpu(many) + server_cpu(many)
    many_line = client_cpu(b8) / spent if spent > 0 else float("inf")
    return one_line, many_line


def print_ceilings(budgets, args) -> None:
    print(f"\nCPU budget per request (ms) and the ratio it allows when the clients, the server "
          f"and the model share this machine's {usable_cores()} cores (see ceilings()):\n")
    print("| model | server | client | protocol | bare run CPU b1 / "
          f"{args.clients} clients | b1: client + server = all | b1 ceiling / measured "
          f"| {args.clients} clients: client + server = all | rows per model run "
          f"| {args.clients} clients ceiling / measured |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, kind, client, proto, b1, b8, one, many in budgets:
        top1, top8 = ceilings(b1, b8, one, many)
        rows = f"{many['rows_per_run']:.2f}" if many.get("rows_per_run") else ""
        print(f"| {os.path.basename(model)} | {kind} | {client} | {proto} "
              f"| {client_cpu(b1):.2f} / {client_cpu(b8):.2f} "
              f"| {client_cpu(one):.2f} + {server_cpu(one):.2f} = {client_cpu(one) + server_cpu(one):.2f} "
              f"| {100 * top1:.0f}% / {100 * one['vs_bare']:.0f}% "
              f"| {client_cpu(many):.2f} + {server_cpu(many):.2f} = {client_cpu(many) + server_cpu(many):.2f} "
              f"| {rows} | {100 * top8:.0f}% / {100 * many['vs_bare']:.0f}% |")


def print_tables(all_rows, args, load_before, load_after):
    print(f"\n{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, load "
          f"average before {load_before}, after {load_after} (this run's own processes "
          f"included); batch-1 requests, median of {args.rounds} interleaved rounds of "
          f"{args.seconds:g} s\n")
    by_model: dict[str, list] = {}
    for r in all_rows:
        by_model.setdefault(r["model"], []).append(r)
    print("| model (bare session latency, batch 1) | server | client | bare b1 | served b1 HTTP / gRPC "
          "| fixed cost per request HTTP / gRPC | CPU ms per request HTTP / gRPC: client, server "
          f"| bare, {args.clients} clients | {args.clients} clients, dynamic batching HTTP / gRPC "
          f"| {args.clients} clients, CPU ms per request HTTP / gRPC: client, server |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    clients = [("tritonclient", "")] + ([("lean", ", lean client")] if args.lean_clients else [])
    budgets = []
    for model, rows in by_model.items():
        get = {(r["path"], r["clients"]): r for r in rows}
        b1, b8 = get[("bare ORT session", 1)], get[("bare ORT session", args.clients)]
        lat = 1e3 / b1["items_per_s"]
        for kind in args.server:
            for client, suffix in clients:
                h1 = get[(f"{kind}: served HTTP (binary){suffix}", 1)]
                g1 = get[(f"{kind}: served gRPC{suffix}", 1)]
                h8 = get[(f"{kind}: served HTTP (binary), dynamic batching{suffix}", args.clients)]
                g8 = get[(f"{kind}: served gRPC, dynamic batching{suffix}", args.clients)]
                print(f"| {os.path.basename(model)} ({lat:.2f} ms) | {kind} | {client} "
                      f"| {b1['items_per_s']:.0f}/s "
                      f"| {100 * h1['vs_bare']:.0f}% / {100 * g1['vs_bare']:.0f}% "
                      f"| {h1['cost_ms']:.2f} / {g1['cost_ms']:.2f} ms "
                      f"| {client_cpu(h1):.2f}, {server_cpu(h1):.2f} / {client_cpu(g1):.2f}, {server_cpu(g1):.2f} "
                      f"| {b8['items_per_s']:.0f}/s "
                      f"| {100 * h8['vs_bare']:.0f}% / {100 * g8['vs_bare']:.0f}% "
                      f"| {client_cpu(h8):.2f}, {server_cpu(h8):.2f} / {client_cpu(g8):.2f}, {server_cpu(g8):.2f} |")
                for proto, one, many in (("HTTP", h1, h8), ("gRPC", g1, g8)):
                    budgets.append((model, kind, client, proto, b1, b8, one, many))
    print("\n(CPU: user + system CPU per request; client: this process, server: every process of the "
          "server, the model run included; `lean`: http.client / a plain grpc channel instead of "
          "tritonclient)")
    print_ceilings(budgets, args)
    roles = ["client", "front end", "tritonserver", "stub"]
    for model, rows in by_model.items():
        print(f"\n{os.path.basename(model)}: throughput, and CPU ms per item by process "
              "(client: this process, which also runs the bare session)\n")
        print("| path | clients | items/s | p50 ms | p99 ms | vs bare session, same clients | "
              + " | ".join(f"CPU {k}" for k in roles) + " | CPU all |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in roles) + " | ---: |")
        for r in rows:
            rel = f"{100 * r['vs_bare']:.0f}%" if "vs_bare" in r else ""
            cpu = r["cpu_ms_per_item"]
            cells = " | ".join(f"{cpu[k]:.2f}" if k in cpu else "" for k in roles)
            print(f"| {r['path']} | {r['clients']} | {r['items_per_s']:.0f} | {r['p50_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {rel} | {cells} | {sum(cpu.values()):.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None,
                    help="ARCH[:SIZE][:KEY=VALUE] (a poolexport.models arch, its input size, "
                         "create_model arguments) or an ONNX file with a dynamic batch dim; "
                         f"repeatable (default: {' and '.join(DEFAULT_MODELS)})")
    ap.add_argument("--server", action="append", default=None, choices=("poolexport", "tritonserver"),
                    help="`poolexport serve --server` value; repeatable, measured side by side "
                         "(default: poolexport)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-queue-delay-us", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra argument for `poolexport serve` (repeatable): --serve-arg=--allow-spinning")
    ap.add_argument("--bare-default-options", action="store_true",
                    help="bare session with ONNX Runtime's defaults (idle threads spin) instead of "
                         "the served session's options")
    ap.add_argument("--force", action="store_true",
                    help="run and print the tables even when the machine was busy before the run "
                         "(load average over the core count)")
    ap.add_argument("--no-lean-clients", dest="lean_clients", action="store_false",
                    help="only tritonclient: leave out the rows measured with the lean HTTP "
                         "(http.client) and gRPC (grpc channel, raw bytes) clients")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    models = args.model or DEFAULT_MODELS
    args.server = args.server or ["poolexport"]

    import onnxruntime as ort

    cores = os.cpu_count() or 1
    load_before = load_text()
    busy = os.getloadavg()[0] > cores
    print(f"load average before: {load_before} on {cores} cores; ort {ort.__version__}", flush=True)
    if busy and not args.force:
        print(f"\nnot run: the load average before the run ({load_before}) exceeds the {cores} "
              "cores, so the numbers would measure the machine's other work too. Rerun on a "
              "quiet machine, or pass --force.", file=sys.stderr)
        return 3
    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    rows = []
    for model in models:
        rows += bench_model(model, args, tmp)
    load_after = load_text()
    print(f"load average after: {load_after} (includes this run's server and clients)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(date=str(datetime.date.today()), cores=cores, load_before=load_before,
                           load_after=load_after, busy_before=busy, rows=rows), f, indent=1)
    print_tables(rows, args, load_before, load_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
