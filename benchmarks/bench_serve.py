"""Served throughput (`poolexport serve`: HTTP with binary tensors, gRPC) against a bare ONNX
Runtime session on the same ONNX file, at batch 1 from one client and from 8 concurrent
clients with dynamic batching. A benchmark, not a test: prints Markdown tables.

    python benchmarks/bench_serve.py                 # resnet_softpool 32x32 and mobilenet_se 224
    python benchmarks/bench_serve.py --model my.onnx --seconds 10 --json out.json

The server runs in its own process group (as `poolexport serve` would be deployed); the
clients are threads of this process. On a small machine they share the same cores, so
the served numbers include the clients' own cost. The bare session has the served one's
options (idle threads do not spin; --bare-default-options for ONNX Runtime's defaults),
so the ratios measure serving alone. The load average is printed before and
after; above the core count the run measures the other work on the machine as much as
the server, so no table is printed then unless --force.
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


def load_text():
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def bench_model(model: str, args, tmp: str) -> list[dict]:
    """Interleaved rounds for one model; returns the table rows (medians)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from poolexport.serve.runtime import OrtBackend

    path = model if os.path.isfile(model) else export_example(model, os.path.join(tmp, f"{model}.onnx"))
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

    print(f"model {model}: input {inp.name} {shape} ({'with' if bare.library else 'without'} "
          f"custom-op library)", flush=True)
    http, grpc, metrics = free_ports(3)
    log = open(os.path.join(tmp, f"server-{os.path.basename(model)}.log"), "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "poolexport.serve", "serve", path, "--model-name", "m",
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--max-batch-size", str(args.max_batch_size),
         "--max-queue-delay-us", str(args.max_queue_delay_us), *args.serve_arg],
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
        # each round's served/bare ratio, then the median: rounds are side by side in time
        rows.append(dict(model=model, path=name, clients=clients, batch=batch,
                         items_per_s=float(np.median(res[:, 0])) * batch,
                         per_round=[float(v) * batch for v in res[:, 0]],
                         p50_ms=float(np.median(res[:, 1])), p99_ms=float(np.median(res[:, 2]))))
    bare_rows = {r["clients"]: r for r in rows if r["path"] == "bare ORT session"}
    for r in rows:
        if not r["path"].startswith("bare"):
            b = bare_rows[r["clients"]]
            r["vs_bare"] = float(np.median(np.asarray(r["per_round"]) / np.asarray(b["per_round"])))
        if r["clients"] == 1 and r["batch"] == 1:
            # fixed per-request cost: served latency minus the bare session's, from throughput
            r["cost_ms"] = 1e3 / r["items_per_s"] - 1e3 / bare_rows[1]["items_per_s"]
    return rows


def print_tables(all_rows, args, load_before, load_after):
    print(f"\n{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, load "
          f"average before {load_before}, after {load_after}; batch-1 requests, median of "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s\n")
    by_model: dict[str, list] = {}
    for r in all_rows:
        by_model.setdefault(r["model"], []).append(r)
    print("| model (bare session latency, batch 1) | bare b1 | served b1 HTTP / gRPC "
          "| fixed cost per request HTTP / gRPC | bare, 8 clients "
          "| 8 clients, dynamic batching HTTP / gRPC |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for model, rows in by_model.items():
        get = {(r["path"], r["clients"]): r for r in rows}
        b1, b8 = get[("bare ORT session", 1)], get[("bare ORT session", args.clients)]
        h1, g1 = get[("served HTTP (binary)", 1)], get[("served gRPC", 1)]
        h8 = get[("served HTTP (binary), dynamic batching", args.clients)]
        g8 = get[("served gRPC, dynamic batching", args.clients)]
        lat = 1e3 / b1["items_per_s"]
        print(f"| {os.path.basename(model)} ({lat:.2f} ms) | {b1['items_per_s']:.0f}/s "
              f"| {100 * h1['vs_bare']:.0f}% / {100 * g1['vs_bare']:.0f}% "
              f"| {h1['cost_ms']:.2f} / {g1['cost_ms']:.2f} ms | {b8['items_per_s']:.0f}/s "
              f"| {100 * h8['vs_bare']:.0f}% / {100 * g8['vs_bare']:.0f}% |")
    for model, rows in by_model.items():
        print(f"\n{os.path.basename(model)}:\n")
        print("| path | clients | items/s | p50 ms | p99 ms | vs bare session, same clients |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            rel = f"{100 * r['vs_bare']:.0f}%" if "vs_bare" in r else ""
            print(f"| {r['path']} | {r['clients']} | {r['items_per_s']:.0f} | {r['p50_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {rel} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None,
                    help="a poolexport.models arch or an ONNX file with a dynamic batch dim; "
                         "repeatable (default: resnet_softpool and mobilenet_se)")
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
                    help="print the tables even when the load average exceeded the core count")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    models = args.model or ["resnet_softpool", "mobilenet_se"]

    import onnxruntime as ort

    cores = os.cpu_count() or 1
    load_before = load_text()
    busy = os.getloadavg()[0] > cores
    print(f"load average before: {load_before} on {cores} cores; ort {ort.__version__}", flush=True)
    tmp = tempfile.mkdtemp(prefix="bench_serve_")
    rows = []
    for model in models:
        rows += bench_model(model, args, tmp)
        busy = busy or os.getloadavg()[0] > cores
    load_after = load_text()
    busy = busy or os.getloadavg()[0] > cores
    print(f"load average after: {load_after}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(date=str(datetime.date.today()), cores=cores, load_before=load_before,
                           load_after=load_after, rows=rows), f, indent=1)
    if busy and not args.force:
        print(f"\nno table: the load average exceeded the {cores} cores during the run, so the "
              "numbers above measure the machine's other work too. Rerun on a quiet machine, "
              "or pass --force to print it anyway.", file=sys.stderr)
        return 3
    print_tables(rows, args, load_before, load_after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
