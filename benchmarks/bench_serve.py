"""Served throughput (PyTriton: HTTP with binary tensors, gRPC) against a bare ONNX Runtime
session on the same ONNX file, at batch 1 from one client and from 8 concurrent clients
with dynamic batching. A benchmark, not a test: prints a Markdown table.

    python benchmarks/bench_serve.py                       # resnet_softpool, 32x32
    python benchmarks/bench_serve.py --model my.onnx --seconds 10 --json out.json

The server runs in its own process group (as `poolexport serve` would be deployed); the
clients are threads of this process. On a small machine they share the same cores, so
the served numbers include the clients' own cost.
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


def export_example(arch: str, path: str) -> str:
    import torch

    from poolexport.models import create_model, default_input_shape
    from poolexport.onnx import export_model
    import onnx

    torch.manual_seed(0)
    model = create_model(arch).eval()
    proto = export_model(model, torch.randn(default_input_shape(arch)), target="ort",
                         dynamic=("batch",))
    onnx.save(proto, path)
    return path


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def measure(fn, clients: int, seconds: float, warmup: int = 20):
    """Run fn(client_index) in `clients` threads for `seconds`; returns (calls/s, p50 ms, p99 ms)."""
    for k in range(clients):
        for _ in range(max(1, warmup // clients)):
            fn(k)
    lat = [[] for _ in range(clients)]
    stop_at = time.perf_counter() + seconds

    def loop(k):
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            fn(k)
            lat[k].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    wall = time.perf_counter() - t0
    all_lat = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    return len(all_lat) / wall, float(np.percentile(all_lat, 50)), float(np.percentile(all_lat, 99))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet_softpool",
                    help="a poolexport.models arch or an ONNX file with a dynamic batch dim")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-queue-delay-us", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from poolexport.serve.runtime import OrtBackend

    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    path = args.model if os.path.isfile(args.model) else export_example(
        args.model, os.path.join(tmp, f"{args.model}.onnx"))
    bare = OrtBackend(path, providers=["CPUExecutionProvider"])
    inp = bare.signature.inputs[0]
    shape = [1] + [d if d > 0 else 1 for d in inp.dims[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(inp.dtype)
    x8 = np.repeat(x, args.max_batch_size, axis=0)
    feeds1, feeds8 = {inp.name: x}, {inp.name: x8}
    want = bare.run(feeds1)

    print(f"model {args.model}: input {inp.name} {shape} ({'with' if bare.library else 'without'} "
          f"custom-op library); ort {ort.__version__}", flush=True)
    http, grpc, metrics = free_ports(3)
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "poolexport.serve", "serve", path, "--model-name", "m",
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--max-batch-size", str(args.max_batch_size),
         "--max-queue-delay-us", str(args.max_queue_delay_us)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=tmp)  # not the source tree: `python -m` puts cwd first on sys.path
    samples: dict[tuple, list] = {}
    try:
        probe = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {log.name}")
            try:
                if probe.is_model_ready("m"):
                    break
            except Exception:
                pass
            time.sleep(0.5)
        probe.close()

        # one client per thread: the HTTP client is gevent-based and bound to its thread
        local = threading.local()

        def client(kind):
            if not hasattr(local, kind):
                setattr(local, kind, httpclient.InferenceServerClient(f"127.0.0.1:{http}")
                        if kind == "http" else grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}"))
            return getattr(local, kind)

        out_names = [o.name for o in bare.signature.outputs]

        def http_call(k):
            i = httpclient.InferInput(inp.name, shape, inp.triton_dtype)
            i.set_data_from_numpy(x, binary_data=True)
            outs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in out_names]
            return client("http").infer("m", [i], outputs=outs)

        def grpc_call(k):
            i = grpcclient.InferInput(inp.name, shape, inp.triton_dtype)
            i.set_data_from_numpy(x)
            return client("grpc").infer("m", [i])

        for call in (http_call, grpc_call):  # served answers must be the bare session's
            got = call(0).as_numpy(out_names[0])
            np.testing.assert_allclose(got, want[out_names[0]], rtol=1e-4, atol=1e-5)

        n = args.clients
        plan = [("bare ORT session", 1, 1, lambda k: bare.run(feeds1)),
                ("served HTTP (binary)", 1, 1, http_call),
                ("served gRPC", 1, 1, grpc_call),
                ("bare ORT session", n, 1, lambda k: bare.run(feeds1)),
                (f"bare ORT session, batch {args.max_batch_size}", 1, args.max_batch_size,
                 lambda k: bare.run(feeds8)),
                ("served HTTP (binary), dynamic batching", n, 1, http_call),
                ("served gRPC, dynamic batching", n, 1, grpc_call)]
        # rounds interleave bare and served runs, so load from elsewhere hits both alike
        for r in range(args.rounds):
            for name, clients, batch, fn in plan:
                res = measure(fn, clients, args.seconds)
                samples.setdefault((name, clients, batch), []).append(res)
                print(f"  round {r}: {name:<40} x{clients} {res[0] * batch:8.1f} items/s "
                      f"p50 {res[1]:.2f} ms", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()

    rows = []
    for (name, clients, batch), res in samples.items():
        res = np.asarray(res)
        rows.append(dict(path=name, clients=clients, batch=batch,
                         items_per_s=float(np.median(res[:, 0])) * batch,
                         p50_ms=float(np.median(res[:, 1])), p99_ms=float(np.median(res[:, 2]))))
    base = {r["clients"]: r["items_per_s"] for r in rows if r["path"] == "bare ORT session"}
    print(f"\n{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores "
          f"(load average {os.getloadavg()[0]:.1f}), model {args.model}, batch-1 requests, "
          f"median of {args.rounds} interleaved rounds of {args.seconds:g} s\n")
    print("| path | clients | items/s | p50 ms | p99 ms | vs bare session, same clients |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        rel = ("" if r["path"].startswith("bare")
               else f"{100 * r['items_per_s'] / base[r['clients']]:.0f}%")
        print(f"| {r['path']} | {r['clients']} | {r['items_per_s']:.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {rel} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(date=str(datetime.date.today()), model=args.model, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
